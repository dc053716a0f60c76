"""The frame-selector interface and the index checks the selectors share (the pure index rules,
such as :func:`uniform_indices`, live in :mod:`refocus.data.indices`).

A selector reads the densely decoded frames of one video (T frames by presentation time,
``refocus.video``) and one question, and returns the indices of ``budget`` (K) frames to show
the answering model, sorted in temporal order. Every selector (uniform, random, oracle, the
trained policy, later CLIP or Frame-Voyager baselines) implements :class:`Selector`, so
``refocus select``, ``refocus eval``, the analyses and the demo treat them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from refocus.data.indices import (
    uniform_indices as uniform_indices,  # re-exported: the selectors' grid rule
)
from refocus.errors import RefocusError


class VideoFrames(Protocol):
    """What a selector reads of a decoded video: ``refocus.video.DecodedVideo`` and
    ``refocus.video.stores.DecodedFrames`` both fit."""

    frames: np.ndarray
    """(T, S, S, 3) uint8 RGB."""
    timestamps: np.ndarray
    """(T,) float64 seconds (pts of the decoded frames)."""


@runtime_checkable
class Selector(Protocol):
    """Picks ``budget`` frames of a decoded video for a question."""

    name: str
    """The spec it was built from, e.g. ``"uniform"`` or ``"policy:runs/demo/policy"``."""
    image_size: int | None
    """Frame side (pixels) the selector wants frames decoded at; None: it ignores pixels, any
    size will do (evaluation then reuses the answerer's decode)."""
    deterministic: bool
    """True if the selection does not depend on the seed (evaluation then runs it once)."""
    seed: int

    def select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        """Sorted unique indices into ``video.frames``: ``budget`` of them, or all T frames
        when T <= budget. Raises RefocusError for an item it cannot handle."""
        ...

    def reseed(self, seed: int) -> None:
        """Use ``seed`` for the following selections (a no-op for deterministic selectors)."""
        ...


class BaseSelector:
    """Shared plumbing: construction from a spec, seeding, the budget check.

    Subclasses set ``name``, ``image_size``, ``deterministic`` and implement ``_select`` for
    the case T > budget (the base class returns all frames when T <= budget). A selector that
    takes an argument (``policy:DIR``) or modes overrides :meth:`from_spec`.
    """

    name: ClassVar[str] = "base"
    image_size: int | None = None
    deterministic: ClassVar[bool] = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    @classmethod
    def from_spec(cls, arg: str | None, *, seed: int = 0, mode: str | None = None) -> BaseSelector:
        """Build from the part of the spec after ``NAME:`` (None if absent) and the options."""
        if arg:
            raise RefocusError(f"selector {cls.name!r} takes no argument, got {cls.name}:{arg}")
        if mode is not None:
            raise RefocusError(f"selector {cls.name!r} has no modes, got mode={mode!r}")
        return cls(seed=seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)

    def select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        num_frames = check_budget(video, budget)
        if num_frames <= budget:
            return list(range(num_frames))
        return self._select(video, item, budget)

    def _select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed})"


# ---------------------------------------------------------------------------- pure functions


def check_budget(video: VideoFrames, budget: int) -> int:
    """T of ``video`` after checking ``budget`` is a positive int; raises ValueError otherwise."""
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    num_frames = len(video.timestamps)
    if num_frames < 1:
        raise RefocusError("the video has no decoded frames")
    return num_frames


def validate_indices(indices: Sequence[int], num_frames: int, budget: int, who: str) -> list[int]:
    """Check a selector's output contract; returns the indices as plain ints.

    Sorted, unique, within [0, T), and exactly ``min(budget, T)`` of them. A violation is a
    bug in the selector, so it raises ValueError rather than skipping the item.
    """
    out = [int(i) for i in indices]
    expected = min(budget, num_frames)
    if len(out) != expected:
        raise ValueError(
            f"selector {who} returned {len(out)} indices, expected {expected} "
            f"(budget {budget}, T {num_frames})"
        )
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"selector {who} returned indices that are not sorted and unique: {out}")
    if out and (out[0] < 0 or out[-1] >= num_frames):
        raise ValueError(f"selector {who} returned indices outside [0, {num_frames}): {out}")
    return out
