"""Optional decoder: decord (``pip install 'refocus[decord]'``).

Kept for comparison and for users who already rely on it; decord is unmaintained (known
hangs and leaks), so PyAV stays the default. Frame times come from decord's pts-based
``get_frame_timestamp``, and the frames are chosen by the same rule as PyAV's.
"""

from __future__ import annotations

import os

import numpy as np

from refocus.errors import VideoError
from refocus.video.orientation import reorient_turned
from refocus.video.probe import describe, probe_orientation, probe_video
from refocus.video.sampling import sampling_plan, select_frames, target_times
from refocus.video.types import DecodedVideo


def decode_decord(path: str | os.PathLike, fps: float, max_frames: int, size: int,
                  autorotate: bool = True) -> DecodedVideo:
    """Decode ``path`` with decord, sampling by presentation time like the PyAV backend.

    decord turns frames by the display matrix' angle on its own and ignores its mirroring;
    that turn is undone and the matrix applied as ffmpeg does (read with PyAV). decord times
    frames from the stream start, so a stream starting late is shifted back to its pts. Files
    decord cannot time (AVI with B-frames: its timestamps are garbage and its frames out of
    order) or decode (raw H.264/HEVC, damaged packets, some negative starts) raise
    :class:`VideoError` naming the pyav backend, instead of returning wrong frames.
    """
    import decord

    info = probe_video(path)  # same checks, errors and duration as the other backends
    orient = probe_orientation(path)
    try:
        reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), width=size, height=size)
        n = len(reader)
        if n == 0:
            raise VideoError(path, "no decodable video frames")
        frame_times = _exact_times(reader.get_frame_timestamp(np.arange(n))[:, 0], info.time_base)
        if info.start and abs(frame_times[0]) < 1e-3 and abs(info.start) > 1e-3:
            frame_times = frame_times + info.start  # decord counts from the stream start
        keep = np.concatenate([[True], np.diff(frame_times) > 0])  # drop repeated pts, as PyAV does
        candidates = np.flatnonzero(keep)
        if not np.all(np.isfinite(frame_times)) or np.abs(frame_times).max() > 1e7 \
                or candidates.size < 0.9 * n:
            raise VideoError(path, "decord reports invalid or out-of-order frame times for this "
                             "file (AVI with B-frames?); use the pyav backend")
        targets = target_times(frame_times[candidates[0]], info.duration, fps, max_frames)
        indices = candidates[select_frames(frame_times[candidates], targets)]
        try:
            frames = reader.get_batch(indices.tolist()).asnumpy()  # (T, S, S, 3) uint8
        except decord.DECORDError:
            # decord's scaler fails for some output sizes (16, 24, 48, 72 ...): decode at the
            # source size and resize with Pillow instead.
            del reader
            native = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0))
            frames = _resize(native.get_batch(indices.tolist()).asnumpy(), size)
    except VideoError:
        raise
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError types
        raise VideoError(path, f"decord cannot decode ({describe(exc)}); the pyav backend "
                         "decodes past damage and reads raw streams") from exc
    frames = reorient_turned(frames, orient, autorotate)
    width, height = orient.display_size(info.width, info.height) if autorotate else (info.width, info.height)
    return DecodedVideo(
        path=os.fspath(path),
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=frame_times[indices],
        fps=float(sampling_plan(info.duration, fps, max_frames)[1]),
        duration=info.duration,
        width=width,
        height=height,
        backend="decord",
        rotation=orient.rotation,
    )


def _exact_times(seconds: np.ndarray, time_base) -> np.ndarray:
    """decord reports float32 seconds; snap them back to whole pts ticks of the stream."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if not time_base:
        return seconds
    pts = np.round(seconds / float(time_base))
    return np.array([float(int(p) * time_base) for p in pts], dtype=np.float64)


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, S, S, 3) uint8 with bilinear filtering."""
    from PIL import Image

    return np.stack([
        np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames
    ])
