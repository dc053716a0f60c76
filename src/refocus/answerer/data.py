"""Questions, decoded videos and evidence subsets for answerer training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refocus.data.questions import QAItem, load_questions
from refocus.errors import RefocusError
from refocus.reference.small_training import _Video, sample_subset, video_for
from refocus.video.config import DecodeConfig


def load_items(path: str | Path) -> list[QAItem]:
    """A question file, or a benchmark directory holding ``qa.jsonl``."""
    p = Path(path)
    if p.is_dir():
        p = p / "qa.jsonl"
    if not p.is_file():
        raise RefocusError(f"{p}: question file not found")
    return load_questions(p)


class EvidenceVideos:
    """Decoded frames (at one size) plus evidence masks, per video, decoded once."""

    def __init__(self, size: int, fps: float = DecodeConfig.fps, max_frames: int = DecodeConfig.max_frames) -> None:
        from refocus.video.stores import FrameStore

        self.size = size
        self.store = FrameStore(fps, max_frames)
        self._videos: dict[str, _Video] = {}

    def get(self, item: QAItem) -> _Video:
        key = str(item.video)
        if key not in self._videos:
            dec = self.store.get(item, self.size)
            self._videos[key] = video_for(item, dec.frames, dec.timestamps)
        return self._videos[key]

    def decoded(self, item: QAItem):
        return self.store.get(item, self.size)

    def usable(self, items: list[QAItem], skipped: list[dict]) -> list[QAItem]:
        """Items whose video decodes; the others are appended to ``skipped``."""
        out = []
        for item in items:
            try:
                self.get(item)
            except RefocusError as exc:
                skipped.append({"id": item.id, "reason": " ".join(str(exc).split())})
                continue
            out.append(item)
        return out


def evidence_frames(video: _Video, k: int, rng: np.random.Generator) -> list[int]:
    """A sorted K-frame subset covering every evidence span (the rest random haystack)."""
    return sample_subset(rng, video, k, "positive")
