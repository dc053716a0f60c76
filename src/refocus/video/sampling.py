"""Which decoded frames to keep: sampling by presentation time.

The rule (shared by every backend, so they return the same frames):

1. ``start`` is the presentation time of the first decoded frame, ``duration`` the video's
   duration in seconds (see :func:`refocus.video.probe.probe_video`).
2. Target times are ``t_j = start + j / fps`` for ``j = 0, 1, ...`` while
   ``j / fps < duration - END_SLACK`` (``j = 0`` always), i.e. ``ceil((duration - END_SLACK) * fps)``
   targets. The end is exclusive because at ``t = start + duration`` the last frame has
   finished displaying; the slack keeps a container's rounding (3.0003 s for 90 frames at
   30 fps) from adding a target for a fraction of a millisecond of video.
3. If that is more than ``max_frames``, the rate drops to ``fps = max_frames / duration``: the
   ``max_frames`` targets ``t_j = start + j * duration / max_frames`` spread evenly over the whole
   video (first at ``start``, last one step before the end).
4. Each target takes the frame *on screen* at that time: the last frame whose presentation
   time is at or before ``t_j`` (within ``EPS``). Inside a timeline gap this is the frame
   shown before the gap, so no frame is invented.
5. A frame claimed by several targets is returned once, so a video with fewer real frames
   than targets returns its real frames; timestamps are the real ``pts * time_base``.

``select_frames`` is the vectorised form (for backends that index all frames first);
``OnlineSelector`` is the same rule for a forward decode that must not hold every frame.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-6
"""Seconds of tolerance when comparing a target time with a frame's presentation time: a frame
at ``t_j + EPS`` still counts as "at" ``t_j`` (float rounding of ``j / fps`` vs ``pts * tb``)."""


END_SLACK = 1e-3
"""Seconds of a duration's end that do not earn a target (container rounding of the last frame)."""


def sampling_plan(duration: float, fps: float, max_frames: int) -> tuple[int, float]:
    """Number of target times and the rate they are spaced at, for the rule in the module doc.

    Returns ``(n, rate)``: targets are ``start + j / rate`` for ``j < n``.
    """
    if duration <= 0 or not math.isfinite(duration):
        return 1, fps
    n = max(1, math.ceil((duration - END_SLACK) * fps - EPS))
    if n > max_frames:
        return max_frames, max_frames / duration
    return n, fps


def target_times(start: float, duration: float, fps: float, max_frames: int) -> np.ndarray:
    """The target times (seconds, float64, increasing) of the sampling rule."""
    n, rate = sampling_plan(duration, fps, max_frames)
    return start + np.arange(n, dtype=np.float64) / rate


def select_frames(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Indices (sorted, unique) of the frames on screen at each target time.

    ``frame_times`` must be increasing. Targets before the first frame take the first frame.
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    if frame_times.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.searchsorted(frame_times, np.asarray(targets) + EPS, side="right") - 1
    return np.unique(np.clip(idx, 0, frame_times.size - 1)).astype(np.int64)


class OnlineSelector:
    """:func:`select_frames` for frames arriving one at a time in presentation order.

    Call :meth:`push` with each frame's time; it answers whether the *previous* frame is
    selected (a frame is known to be on screen at a target only once the next frame's time is
    seen). After the last frame, :meth:`finish` answers whether that last frame is selected.
    :attr:`done` turns true once every target is resolved, so decoding can stop early.
    """

    def __init__(self, duration: float, fps: float, max_frames: int) -> None:
        self.n, self.rate = sampling_plan(duration, fps, max_frames)
        self.start: float | None = None
        self.j = 0

    @property
    def done(self) -> bool:
        return self.j >= self.n

    def push(self, t: float) -> bool:
        if self.start is None:
            self.start = t
            return False
        claimed = False
        while self.j < self.n and self.start + self.j / self.rate + EPS < t:
            self.j += 1
            claimed = True
        return claimed

    def finish(self) -> bool:
        return self.start is not None and self.j < self.n
