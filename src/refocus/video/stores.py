"""Decoded videos and frozen-encoder features, prepared once per video and reused."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from refocus.data.questions import QAItem


@dataclass
class DecodedFrames:
    frames: np.ndarray  # (T, S, S, 3) uint8
    timestamps: np.ndarray  # (T,) seconds


class FrameStore:
    """Decodes each video once per frame size and keeps the most recent ones in memory.

    Decoding errors are returned as exceptions to the caller, who skips and reports the item.
    The on-disk frame cache of ``refocus.video`` makes a re-decode after eviction cheap.
    """

    def __init__(self, fps: float = 4.0, max_frames: int = 512, capacity: int = 4096) -> None:
        self.fps = fps
        self.max_frames = max_frames
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], DecodedFrames] = OrderedDict()

    def get(self, item: QAItem, size: int) -> DecodedFrames:
        from refocus.video import load_video

        key = (str(item.video), size)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        dv = load_video(item.video, fps=self.fps, max_frames=self.max_frames, size=size)
        out = DecodedFrames(dv.frames, np.asarray(dv.timestamps, dtype=np.float64))
        self._cache[key] = out
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return out


class FeatureStore:
    """Frozen vision-encoder features of each video, computed once (the encoder never trains)."""

    def __init__(self, policy, frames: FrameStore, capacity: int = 4096) -> None:
        self.policy = policy
        self.frames = frames
        self.capacity = capacity
        self._cache: OrderedDict[str, object] = OrderedDict()

    def get(self, item: QAItem):
        import torch

        key = str(item.video)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        decoded = self.frames.get(item, int(self.policy.config.vision_config["image_size"]))
        with torch.no_grad():
            feats = self.policy.encode_frames(decoded.frames)  # (T, P, Dv)
        self._cache[key] = feats
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return feats
