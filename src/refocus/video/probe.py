"""Opening a video with PyAV: input checks, error wrapping and stream metadata.

Every backend probes with PyAV first so that bad files fail the same way whatever the
backend, and so all backends share one ``duration`` (and hence the same target times).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from refocus.errors import VideoError

if TYPE_CHECKING:
    import av.container
    import av.video.stream


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video stream, from the container (no frame decoded)."""

    width: int
    """Source width in pixels."""
    height: int
    """Source height in pixels."""
    duration: float
    """Seconds: stream duration, else container duration, else last pts + frame duration."""
    frame_duration: float
    """Seconds per frame from the nominal rate (only used to estimate durations)."""
    time_base: Fraction | None
    """Seconds per pts tick of the video stream."""


def check_path(path: str | os.PathLike) -> Path:
    """Fail early, with a clear reason, on paths no decoder could read."""
    p = Path(path)
    if not p.exists():
        raise VideoError(path, "file not found")
    if p.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    if not p.is_file():
        raise VideoError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise VideoError(path, "permission denied")
    return p


def av_errors() -> tuple[type[BaseException], ...]:
    """Exceptions PyAV raises on bad input; caught and turned into :class:`VideoError`."""
    import av

    return (av.FFmpegError, OSError, ValueError, EOFError, UnicodeDecodeError)


def describe(exc: BaseException) -> str:
    """A one-line reason from a decoder exception, without the path repeated."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def open_video(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return the container and its first video stream (caller closes)."""
    import av

    check_path(path)
    try:
        container = av.open(os.fspath(path), mode="r")
    except av_errors() as exc:
        raise VideoError(
            path, f"cannot open as a video ({describe(exc)}): not a video file, or truncated"
        ) from exc
    if not container.streams.video:
        kinds = [s.type for s in container.streams]
        container.close()
        found = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds))) or "no streams"
        raise VideoError(path, f"no video stream (found: {found})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.width or not ctx.height:
        container.close()
        raise VideoError(path, "video stream has no frame size (unsupported or corrupt codec data)")
    return container, stream


def stream_info(path: str | os.PathLike, container: av.container.InputContainer,
                stream: av.video.stream.VideoStream) -> VideoInfo:
    """Metadata of an opened stream; estimates the duration by demuxing when none is stored."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    frame_duration = float(1 / rate) if rate else 0.0
    duration = 0.0
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        import av

        duration = container.duration / av.time_base
    if duration <= 0:
        duration = _demux_duration(path, frame_duration)
    return VideoInfo(
        width=int(stream.codec_context.width),
        height=int(stream.codec_context.height),
        duration=duration,
        frame_duration=frame_duration,
        time_base=Fraction(stream.time_base) if stream.time_base else None,
    )


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open, validate and read the metadata of ``path`` (raises :class:`VideoError`)."""
    container, stream = open_video(path)
    with container:
        return stream_info(path, container, stream)


def _demux_duration(path: str | os.PathLike, frame_duration: float) -> float:
    """Duration from packet timestamps (no decoding): last pts + its duration - first pts."""
    import av

    first = last_end = None
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            for packet in container.demux(stream):
                if packet.pts is None or tb is None:
                    continue
                t = float(packet.pts * tb)
                end = t + (float(packet.duration * tb) if packet.duration else frame_duration)
                first = t if first is None else min(first, t)
                last_end = end if last_end is None else max(last_end, end)
    except av_errors():
        pass  # a damaged tail: keep what was read; decoding reports real errors
    if first is None or last_end is None:
        return 0.0
    return max(last_end - first, 0.0)
