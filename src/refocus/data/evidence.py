"""Which decoded frames lie inside a question's evidence spans (seconds)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def evidence_frame_mask(
    timestamps: np.ndarray, evidence: Sequence[Sequence[float]] | None
) -> np.ndarray | None:
    """Boolean mask (T,) of frames whose timestamp t satisfies start <= t < end for some span.

    Spans are half-open so a span [s, s + n / fps) covers exactly the n frames shown from s.
    A zero-length span [s, s] covers a frame exactly at s. Returns None when there are no spans.
    """
    if not evidence:
        return None
    t = np.asarray(timestamps, dtype=np.float64)
    mask = np.zeros(t.shape, dtype=bool)
    eps = 1e-6  # pts arithmetic is in float seconds
    for start, end in evidence:
        if end <= start:
            mask |= np.abs(t - start) <= eps
        else:
            mask |= (t >= start - eps) & (t < end - eps)
    return mask


def evidence_spans_frames(
    timestamps: np.ndarray, evidence: Sequence[Sequence[float]] | None
) -> list[np.ndarray]:
    """For each evidence span, the indices of the frames inside it (possibly empty)."""
    if not evidence:
        return []
    return [np.flatnonzero(evidence_frame_mask(timestamps, [span])) for span in evidence]


def hits_evidence(indices: Sequence[int], mask: np.ndarray | None) -> bool | None:
    """True if any selected frame is an evidence frame; None when the item has no spans."""
    if mask is None:
        return None
    idx = np.asarray(list(indices), dtype=np.int64)
    return bool(idx.size and mask[idx].any())


def hits_all_evidence(indices: Sequence[int], spans: Sequence[np.ndarray] | None) -> bool | None:
    """True if every evidence span holds a selected frame; None when the item has no spans.

    ``spans``: the frame indices per span (:func:`evidence_spans_frames`). A span holding no
    decoded frame cannot be hit; it is ignored unless no span holds one (then False).
    """
    if not spans:
        return None
    chosen = set(int(i) for i in indices)
    held = [s for s in spans if len(s)]
    return bool(held) and all(chosen.intersection(s.tolist()) for s in held)
