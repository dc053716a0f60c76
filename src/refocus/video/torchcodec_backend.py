"""Optional decoder: torchcodec 0.13 (``pip install 'refocus[torchcodec]'``).

Needs FFmpeg's shared libraries on the system (e.g. ``apt install libavcodec59 libavformat59
libavfilter8 libavdevice59``). ``get_frames_played_at`` returns the frame on screen at each
time, which is the sampling rule's "last frame at or before t"; duplicates are dropped by pts.
"""

from __future__ import annotations

import os

import numpy as np

from refocus.errors import VideoError
from refocus.video.orientation import reorient_turned
from refocus.video.probe import describe, probe_orientation, probe_video
from refocus.video.sampling import EPS, sampling_plan, target_times
from refocus.video.types import DecodedVideo


def decode_torchcodec(path: str | os.PathLike, fps: float, max_frames: int,
                      size: int, autorotate: bool = True) -> DecodedVideo:
    """Decode ``path`` with torchcodec, sampling by presentation time like the PyAV backend.

    torchcodec turns frames by the display matrix' angle and ignores its mirroring; that turn
    is undone and the matrix applied as ffmpeg does (read with PyAV). Files it cannot decode
    (AVI with B-frames, damaged packets, raw H.264/HEVC, negative starts) raise
    :class:`VideoError` naming the pyav backend.
    """
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    info = probe_video(path)
    orient = probe_orientation(path)
    try:
        decoder = VideoDecoder(os.fspath(path), dimension_order="NHWC", seek_mode="exact",
                               transforms=[Resize((size, size))])
        meta = decoder.metadata
        begin = float(meta.begin_stream_seconds)
        end = float(meta.end_stream_seconds)
        targets = target_times(begin, info.duration, fps, max_frames) + EPS  # EPS: same tie rule
        # Played-at times must lie in [begin, end); later targets show the last frame anyway.
        last = np.nextafter(end, -np.inf)
        batch = decoder.get_frames_played_at(seconds=np.clip(targets, begin, last).tolist())
        pts = batch.pts_seconds.double().numpy()  # (N,) with repeats for targets in one frame
        _, first = np.unique(pts, return_index=True)
        frames = batch.data[first].numpy()  # (T, S, S, 3) uint8
    except VideoError:
        raise
    except Exception as exc:  # torchcodec raises RuntimeError / ValueError from its C++ core
        raise VideoError(path, f"torchcodec cannot decode ({describe(exc)}); the pyav backend "
                         "decodes past damage and reads raw streams and AVI B-frames") from exc
    if frames.shape[0] == 0:
        raise VideoError(path, "no decodable video frames")
    frames = reorient_turned(frames, orient, autorotate)
    width, height = orient.display_size(info.width, info.height) if autorotate else (info.width, info.height)
    return DecodedVideo(
        path=os.fspath(path),
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=pts[first],
        fps=float(sampling_plan(info.duration, fps, max_frames)[1]),
        duration=info.duration,
        width=width,
        height=height,
        backend="torchcodec",
        rotation=orient.rotation,
    )
