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
    """Metadata of a video stream, from the container and its packets (no frame decoded)."""

    width: int
    """Stored width in pixels (before any display rotation)."""
    height: int
    """Stored height in pixels."""
    duration: float
    """Seconds of video: the stream's own duration, else its last packet's end minus its
    start (see :func:`stream_duration`); 0.0 when nothing tells."""
    frame_duration: float
    """Seconds per frame from the nominal rate (0.0 when the stream has none)."""
    time_base: Fraction | None
    """Seconds per pts tick of the video stream."""
    start: float | None = None
    """Presentation time of the stream's first frame, seconds (negative or late starts are
    kept); None when the packets carry no timestamps."""


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
    """Metadata of an opened stream; scans packet timestamps when no duration is stored."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    frame_duration = float(1 / rate) if rate else 0.0
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else None
    if stream.duration and tb:
        duration = float(stream.duration * tb)  # the video track's own (MP4, MOV, AVI)
    else:
        start, duration = stream_duration(path, stream.index, start, frame_duration)
    return VideoInfo(
        width=int(stream.codec_context.width),
        height=int(stream.codec_context.height),
        duration=duration,
        frame_duration=frame_duration,
        time_base=Fraction(tb) if tb else None,
        start=start,
    )


def probe_orientation(path: str | os.PathLike):
    """The display orientation of ``path``'s video (its first decoded frame's display matrix),
    for backends that do not expose it; :data:`~refocus.video.orientation.IDENTITY` if none."""
    from refocus.video.orientation import IDENTITY, frame_orientation

    container, stream = open_video(path)
    with container:
        try:
            for frame in container.decode(stream):
                return frame_orientation(frame)
        except av_errors():
            pass
    return IDENTITY


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open, validate and read the metadata of ``path`` (raises :class:`VideoError`)."""
    container, stream = open_video(path)
    with container:
        return stream_info(path, container, stream)


def stream_duration(path: str | os.PathLike, index: int, start: float | None,
                    frame_duration: float) -> tuple[float | None, float]:
    """``(start, duration)`` of video stream ``index`` from its packets, not the container's.

    The container's duration is not the video's when the video does not start at 0 (Matroska
    stores the end time, so a stream starting at 1.48 s reads 5.48 s for 4 s of video) or when
    audio outlasts the video (a WebM with 30 s of audio and 4 s of video reads 30 s). So the
    end is the last video packet's ``pts + duration``, read after seeking to the last keyframe
    (the index makes this a few packets' read); if that seek fails or finds no video packet,
    every packet is read. Packets without any timestamp (raw H.264/HEVC elementary streams)
    count as one frame each at the nominal rate, starting at 0.
    """
    tail = _scan_packets(path, index, frame_duration, from_end=True) if start is not None else None
    if tail is None or tail[1] is None:
        tail = _scan_packets(path, index, frame_duration, from_end=False)
    if tail is None:
        return start, 0.0
    first, end, untimed = tail
    if first is None:  # no timestamps at all
        return None, untimed * frame_duration
    begin = first if start is None else start
    return begin, max((end or begin) - begin, 0.0)


def _scan_packets(path: str | os.PathLike, index: int, frame_duration: float,
                  from_end: bool) -> tuple[float | None, float | None, int] | None:
    """``(first pts, last pts + duration, packets without timestamps)`` in seconds, or None."""
    import av

    first = end = None
    untimed = 0
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams[index]
            tb = stream.time_base
            if from_end:
                far = (stream.start_time or 0) + int(10 * 365 * 86400 / tb)  # past any end
                container.seek(far, stream=stream, backward=True)
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or tb is None:
                    untimed += 1
                    continue
                t = float(ts * tb)
                stop = t + (float(packet.duration * tb) if packet.duration else frame_duration)
                first = t if first is None else min(first, t)
                end = stop if end is None else max(end, stop)
    except av_errors():
        if from_end and first is None:
            return None  # the seek failed: read from the start instead
        # a damaged tail: keep what was read; decoding reports real errors
    return first, end, untimed
