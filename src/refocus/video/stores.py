"""Decoded videos and frozen-encoder features, prepared once per video and reused."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from refocus.data.questions import QAItem
from refocus.video.config import DecodeConfig


@dataclass
class DecodedFrames:
    frames: np.ndarray  # (T, S, S, 3) uint8
    timestamps: np.ndarray  # (T,) seconds


class _LRU:
    """Least-recently-used entries, bounded by count and by bytes (the newest entry is always
    kept, however large)."""

    def __init__(self, capacity: int | None, max_bytes: int | None, size_of) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.bytes = 0
        self._entries: OrderedDict = OrderedDict()

    def get(self, key):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        return None

    def put(self, key, value) -> None:
        self._entries[key] = value
        self.bytes += self.size_of(value)
        while len(self._entries) > 1 and (
            (self.capacity is not None and len(self._entries) > self.capacity)
            or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            _, old = self._entries.popitem(last=False)
            self.bytes -= self.size_of(old)

    def __len__(self) -> int:
        return len(self._entries)


def _gb(value: float | None) -> int | None:
    return None if value is None else int(value * 2**30)


class FrameStore:
    """Decodes each video once per frame size and keeps the most recent ones in memory.

    Bounded by ``capacity`` videos and ``max_gb`` of frames (None: no bound of that kind).
    Decoding errors are returned as exceptions to the caller, who skips and reports the item.
    The on-disk frame cache of ``refocus.video`` (``disk_cache=True``) makes a re-decode after
    eviction cheap.
    """

    def __init__(self, fps: float = DecodeConfig.fps, max_frames: int = DecodeConfig.max_frames, capacity: int | None = 4096,
                 max_gb: float | None = None, disk_cache: bool = True) -> None:
        self.fps = fps
        self.max_frames = max_frames
        self.capacity = capacity
        self.disk_cache = disk_cache
        self._cache = _LRU(capacity, _gb(max_gb), lambda d: d.frames.nbytes + d.timestamps.nbytes)

    @property
    def nbytes(self) -> int:
        return self._cache.bytes

    def get(self, item: QAItem, size: int) -> DecodedFrames:
        from refocus.video import load_video

        key = (str(item.video), size)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        dv = load_video(item.video, fps=self.fps, max_frames=self.max_frames, size=size,
                        cache=self.disk_cache)
        out = DecodedFrames(dv.frames, np.asarray(dv.timestamps, dtype=np.float64))
        self._cache.put(key, out)
        return out


class FeatureStore:
    """Frozen vision-encoder features of each video, computed once (the encoder never trains).

    Features are kept on ``device`` (default the CPU, off the accelerator: consumers move
    what they need per step) in ``dtype`` (default the encoder's), bounded by ``capacity``
    videos and ``max_gb``. At the paper's sizes one video is 512 x 729 x 1152 values
    (0.86 GB in bfloat16), so a count bound alone would not bound memory.
    """

    def __init__(self, policy, frames: FrameStore, capacity: int | None = 4096,
                 max_gb: float | None = None, device="cpu", dtype=None) -> None:
        self.policy = policy
        self.frames = frames
        self.capacity = capacity
        self.device = device
        self.dtype = dtype
        self._cache = _LRU(capacity, _gb(max_gb), lambda t: t.numel() * t.element_size())

    @property
    def nbytes(self) -> int:
        return self._cache.bytes

    def get(self, item: QAItem):
        import torch

        key = str(item.video)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decoded = self.frames.get(item, int(self.policy.config.image_size))  # the saved policy's size
        with torch.no_grad():
            feats = self.policy.encode_frames(decoded.frames)  # (T, P, Dv)
        feats = feats.to(device=self.device, dtype=self.dtype or feats.dtype)
        self._cache.put(key, feats)
        return feats
