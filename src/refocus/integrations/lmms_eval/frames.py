"""Which frames an lmms-eval question is shown: a refocus selection, decoded for the answerer.

Two sources, both keyed by the question id of the lmms-eval document:

- ``selection=SEL.jsonl``: a file written by ``refocus select`` (one record per question id);
- ``policy=DIR,budget=K``: the same selection made on the fly, by the same code
  (:func:`refocus.selectors.records.selection_records` around ``policy:DIR``), so both give the
  frames ``refocus select`` gives.

Indices in a selection point into the video decoded by presentation time at ``fps`` (at most
``max_frames`` frames), the decode ``refocus select`` made. The answerer's frames are decoded
again with the same rule at the answerer's size, and the selected indices must land on the
timestamps the selection recorded: a selection made with another ``--fps`` / ``--max-frames``
is an error, not a silent shift. Nothing here imports lmms-eval.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refocus.errors import RefocusError
from refocus.video.config import DecodeConfig

TIME_TOLERANCE = 1e-4
"""Seconds a re-decoded frame's timestamp may differ from the selection's (it stores 6 decimals)."""

_LETTER_PREFIX = re.compile(r"^\s*([A-Z])[.)]\s*")


@dataclass(frozen=True)
class DocItem:
    """The parts of an lmms-eval document a selector reads (a ``QAItem`` look-alike)."""

    id: str
    video: Path
    question: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class ShownFrames:
    """The frames one question is shown, in temporal order."""

    id: str
    video: str
    indices: list[int]
    """Into the video decoded at ``fps`` / ``max_frames``."""
    timestamps: list[float]
    """Seconds, the frames' presentation times."""
    num_frames: int
    """T of that decode."""
    frames: np.ndarray
    """(K, S, S, 3) uint8 RGB at the answerer's frame size."""

    def log_record(self) -> dict[str, Any]:
        """What the answerer was shown, for ``frames_log``: ids, times and a hash per frame."""
        return {
            "id": self.id,
            "video": self.video,
            "indices": self.indices,
            "timestamps": self.timestamps,
            "num_frames": self.num_frames,
            "frame_sha256": [frame_digest(f) for f in self.frames],
        }


def frame_digest(frame: np.ndarray) -> str:
    """SHA-256 of one frame's RGB bytes (the test of what an answerer saw compares these)."""
    return hashlib.sha256(np.ascontiguousarray(frame, dtype=np.uint8).tobytes()).hexdigest()


def strip_letters(options: list[str]) -> tuple[str, ...]:
    """Options without "A. " / "B) " prefixes when every option carries its own letter in order
    (lmms-eval tasks such as Video-MME store them that way; refocus adds letters itself)."""
    matches = [_LETTER_PREFIX.match(str(o)) for o in options]
    letters = string.ascii_uppercase[: len(options)]
    if options and all(m is not None and m.group(1) == letters[i] for i, m in enumerate(matches)):
        return tuple(str(o)[m.end():] for o, m in zip(options, matches, strict=True))
    return tuple(str(o) for o in options)


def load_selections(path: str | Path) -> dict[str, dict]:
    """Selection records of a ``refocus select`` file by question id (error lines left out)."""
    path = Path(path)
    if not path.is_file():
        raise RefocusError(f"{path}: selection file not found")
    records: dict[str, dict] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RefocusError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "id" not in record:
            raise RefocusError(f"{path}:{lineno}: not a selection record (no 'id')")
        if "error" in record or record["id"] is None:
            continue
        if "indices" not in record or "timestamps" not in record:
            raise RefocusError(f"{path}:{lineno}: selection record without 'indices' / 'timestamps'")
        key = str(record["id"])
        if key in records:
            raise RefocusError(f"{path}:{lineno}: duplicate id {key!r}")
        records[key] = record
    if not records:
        raise RefocusError(f"{path}: no selection records")
    return records


class FrameSource:
    """Frames per question from a selection file or a policy (see the module docstring).

    selection: path of a ``refocus select`` output. policy: a policy checkpoint directory,
    with budget (frames per question), mode (greedy / sample / distribution) and seed as in
    ``refocus select``. fps, max_frames: the decode the selection indexes (``refocus select``'s
    ``--fps`` / ``--max-frames``). frame_size: side in pixels of the frames handed to the answerer.
    device: where the policy runs (default: CUDA when available).
    """

    def __init__(self, *, frame_size: int, selection: str | None = None, policy: str | None = None,
                 budget: int | None = None, mode: str | None = None, seed: int = 0,
                 fps: float = DecodeConfig.fps, max_frames: int = DecodeConfig.max_frames,
                 device: str | None = None) -> None:
        if (selection is None) == (policy is None):
            raise RefocusError("give exactly one of selection=SEL.jsonl or policy=DIR (with budget=K)")
        if policy is not None and (budget is None or int(budget) < 1):
            raise RefocusError(f"policy=DIR needs budget=K with K >= 1, got budget={budget!r}")
        if selection is not None and (budget is not None or mode is not None):
            raise RefocusError("budget= and mode= go with policy=DIR; a selection file already has its frames")
        self.frame_size = int(frame_size)
        self.fps = float(fps)
        self.max_frames = int(max_frames)
        self.budget = None if budget is None else int(budget)
        self.selections = load_selections(selection) if selection is not None else None
        self.selector = None
        if policy is not None:
            from refocus.selectors import get_selector

            self.selector = get_selector(f"policy:{policy}", seed=int(seed), mode=mode, device=device)

    @property
    def description(self) -> str:
        if self.selector is not None:
            return f"{self.selector.name}@{self.budget}"
        return f"selection file ({len(self.selections)} questions)"

    def select(self, item: DocItem) -> dict:
        """The selection record of ``item`` (from the file, or made now by the policy)."""
        if self.selections is not None:
            record = self.selections.get(item.id)
            if record is None:
                raise RefocusError(f"question id {item.id!r} is not in the selection file")
            if Path(record.get("video", item.video)).name != item.video.name:
                raise RefocusError(f"question {item.id!r}: the selection is for video {record['video']}, "
                                   f"the task gives {item.video}")
            return record
        from refocus.selectors.records import selection_records

        (record,) = selection_records([item], self.selector, self.budget, fps=self.fps,
                                      max_frames=self.max_frames, progress=False)
        if "error" in record:
            raise RefocusError(f"question {item.id!r}: {record['error']}")
        return record

    def frames(self, item: DocItem) -> ShownFrames:
        """The selected frames of ``item`` decoded at the answerer's size, with their times."""
        from refocus.video import load_video

        record = self.select(item)
        video = load_video(item.video, fps=self.fps, max_frames=self.max_frames, size=self.frame_size)
        indices = [int(i) for i in record["indices"]]
        want = np.asarray(record["timestamps"], dtype=np.float64)
        if record.get("num_frames", video.num_frames) != video.num_frames or (
            indices and (max(indices) >= video.num_frames
                         or np.abs(video.timestamps[indices] - want).max() > TIME_TOLERANCE)):
            raise RefocusError(
                f"question {item.id!r}: the selection does not match {item.video} decoded at fps="
                f"{self.fps:g}, max_frames={self.max_frames} ({video.num_frames} frames); pass the "
                "fps= and max_frames= that `refocus select` used")
        return ShownFrames(id=item.id, video=str(item.video), indices=indices,
                           timestamps=[float(t) for t in video.timestamps[indices]],
                           num_frames=video.num_frames, frames=np.asarray(video.frames[indices]))
