"""Frame-index rules that depend only on a video's length, its timestamps and its evidence
spans: uniform bin midpoints, farthest-point spreading, and the oracle's choice.

They live below ``refocus.selectors`` (which re-exports them) so that training code outside
the selectors, such as the small reference model's, can draw the same subsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refocus.data.evidence import evidence_spans_frames


def uniform_indices(num_frames: int, budget: int) -> list[int]:
    """Midpoints of ``budget`` equal bins over T frames: ``floor((j + 0.5) * T / budget)``.

    j = 0 .. budget - 1; all T frames when T <= budget. Exact integer arithmetic:
    ``((2j + 1) * T) // (2 * budget)``. Distinct because consecutive midpoints are T / budget
    > 1 apart. Example: T = 10, budget = 4 -> [1, 3, 6, 8].
    """
    if num_frames <= budget:
        return list(range(num_frames))
    return [((2 * j + 1) * num_frames) // (2 * budget) for j in range(budget)]


def spread_order(candidates: Sequence[int], start: Sequence[int] = (), count: int | None = None) -> list[int]:
    """Greedy farthest-point order of ``candidates`` given already chosen frames ``start``.

    Each next frame is the candidate farthest (in frame index) from every frame chosen so far
    (``start`` plus earlier picks); ties go to the earlier frame. With no ``start`` the first
    pick is the candidate nearest the candidates' centre. Returns at most ``count`` frames.
    """
    cand = np.asarray(sorted({int(c) for c in candidates} - {int(s) for s in start}), dtype=np.int64)
    count = len(cand) if count is None else min(count, len(cand))
    dist = None  # (C,) distance of each candidate to the nearest chosen frame
    for anchor in start:
        d = np.abs(cand - int(anchor)).astype(np.float64)
        dist = d if dist is None else np.minimum(dist, d)
    taken = np.zeros(len(cand), dtype=bool)
    order: list[int] = []
    for _ in range(count):
        if dist is None:
            pick = int(np.argmin(np.abs(cand - (cand[0] + cand[-1]) / 2.0)))
        else:
            pick = int(np.argmax(np.where(taken, -np.inf, dist)))  # first of ties
        taken[pick] = True
        order.append(int(cand[pick]))
        d = np.abs(cand - cand[pick]).astype(np.float64)
        dist = d if dist is None else np.minimum(dist, d)
    return order


def oracle_indices(timestamps: np.ndarray, evidence: Sequence[Sequence[float]], budget: int) -> list[int]:
    """Evidence frames first, spread over the spans, then uniform fill; sorted.

    1. Each span's frames (``start <= t < end``, as :func:`refocus.data.evidence.evidence_frame_mask`)
       are put in spread order (centre first, then farthest from those taken). A span that
       holds no decoded frame (shorter than the sampling interval) stands for the frame
       nearest its centre, the best any selector can do.
    2. Round robin over the spans in time order: one frame from every span before a second
       from any, until the budget or the evidence frames run out.
    3. Fill: the uniform midpoints (:func:`uniform_indices` at ``budget``) not yet taken, in
       farthest-point order from the evidence frames; then any remaining frame, likewise.
    """
    t = np.asarray(timestamps, dtype=np.float64)
    num_frames = len(t)
    if num_frames <= budget:
        return list(range(num_frames))
    per_span = []
    for (start, end), frames in zip(evidence, evidence_spans_frames(t, evidence), strict=True):
        if len(frames) == 0:
            frames = np.array([int(np.argmin(np.abs(t - (start + end) / 2.0)))])
        per_span.append(spread_order(frames, count=budget))
    per_span.sort(key=lambda order: min(order))
    chosen: list[int] = []
    seen: set[int] = set()
    for rank in range(budget):
        for order in per_span:
            if rank < len(order) and order[rank] not in seen and len(chosen) < budget:
                chosen.append(order[rank])
                seen.add(order[rank])
    need = budget - len(chosen)
    if need:
        grid = spread_order(uniform_indices(num_frames, budget), start=chosen, count=need)
        chosen += grid
        need -= len(grid)
    if need:
        chosen += spread_order(range(num_frames), start=chosen, count=need)
    return sorted(chosen)
