"""Appendix A of the paper: temporal windows, their complements and the 16 probe subsets.

Reward-variance filtering asks whether a question's answer depends on *which* part of the
video is shown. Each video of ``T`` decoded frames is cut into overlapping windows; every
window ``W_i`` and its complement ``C_i = [0, T) \\ W_i`` gives one frame subset of at most
``k`` uniformly spaced frames. The reference model scores the subsets, and the population
variance of the margins decides whether the item is kept (``variance > tau``).

Window rule (``window_rule="quarter"``, the default), with ``n = num_windows = 8``::

    w = ceil(T / 4)            # = ceil(2T / n): n windows at stride w/2 go round the video twice
    s = ceil(w / 2)            # stride, = ceil(T / 8)
    W_1..W_7 = [i*s, i*s + w)  for i = 0..6, clipped to [0, T)
    W_8      = [0, s) U [7s, T)   # the window that wraps around the end

The paper prints ``w = ceil(T/8)``. That contradicts its own ``W_8 = [0, s) U [7s, T)``: with
``w = T/8`` the first seven windows cover only the first half of the video and ``W_8`` alone
spans more than half of it. ``w = ceil(T/4)`` is the reading under which ``W_8`` is a window
like the others; the printed rule stays available as ``window_rule="paper_printed"``.

Coverage under the default rule (checked by the tests for every ``T`` up to 600): when ``w``
is even (``w == 2s``; for ``n = 8`` that is ``T mod 8`` in {0, 5, 6, 7}) every frame lies in
exactly two windows. When ``w`` is odd (``w == 2s - 1``) a window is one frame shorter than
two strides, so the frames ``(j+1)*s - 1`` for ``j = 1..n-2`` (those below ``T``) lie in one
window only, and every other frame in exactly two (for ``n = 8`` that leaves at least one
single-covered frame for every ``T mod 8`` in {1, 2, 3, 4} except ``T = 1``). ``W_1..W_{n-1}`` have length ``w`` unless
clipped at ``T``; ``W_n`` has ``s + max(0, T - (n-1)s)`` frames.

Tiny videos: a window can be empty (it starts at or past ``T``), and a complement can be empty
(the window covers the whole video). In every such case the region's nominal interval lies at
or past the end of the video, so its nearest frame is the last one: an empty region falls back
to ``[T - 1]``. No subset is ever empty, and nothing raises for any ``T >= 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

WindowRule = Literal["quarter", "paper_printed"]
WINDOW_RULES: tuple[str, ...] = ("quarter", "paper_printed")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def window_size_and_stride(
    T: int, num_windows: int = 8, window_rule: WindowRule = "quarter"
) -> tuple[int, int]:
    """Return ``(w, s)``: the window length and stride, in frames, for a ``T``-frame video.

    ``quarter``: ``w = ceil(2T / n)`` (``ceil(T/4)`` for ``n = 8``); ``paper_printed``:
    ``w = ceil(T / n)`` as printed in Appendix A. Both use ``s = ceil(w / 2)``.
    """
    T = _check_positive_int("T", T)
    n = _check_positive_int("num_windows", num_windows, minimum=2)
    if window_rule == "quarter":
        w = _ceil_div(2 * T, n)
    elif window_rule == "paper_printed":
        # Appendix A as printed; see the module docstring for why it is not the default.
        w = _ceil_div(T, n)
    else:
        raise ValueError(f"window_rule must be one of {WINDOW_RULES}, got {window_rule!r}")
    return w, _ceil_div(w, 2)


def temporal_windows(
    T: int, num_windows: int = 8, window_rule: WindowRule = "quarter"
) -> list[np.ndarray]:
    """The ``num_windows`` overlapping windows of Appendix A, as sorted int64 frame indices.

    Windows ``0..n-2`` are ``[i*s, i*s + w)`` clipped to ``[0, T)`` (possibly empty for tiny
    ``T``); the last one wraps around: ``[0, s) U [(n-1)*s, T)`` (never empty).
    """
    w, s = window_size_and_stride(T, num_windows, window_rule)
    n = int(num_windows)
    windows = [np.arange(min(i * s, T), min(i * s + w, T), dtype=np.int64) for i in range(n - 1)]
    head = np.arange(0, min(s, T), dtype=np.int64)
    tail = np.arange(min((n - 1) * s, T), T, dtype=np.int64)
    windows.append(np.union1d(head, tail).astype(np.int64))
    return windows


def complement(window: np.ndarray | Sequence[int], T: int) -> np.ndarray:
    """``[0, T) \\ window`` as sorted int64 indices (indices outside ``[0, T)`` are ignored)."""
    T = _check_positive_int("T", T)
    return np.setdiff1d(np.arange(T, dtype=np.int64), np.asarray(window, dtype=np.int64))


def uniform_pick(region_indices: np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """``k`` frames spread uniformly over a region: the midpoints of ``k`` equal bins.

    The region's sorted unique indices are split into ``k`` equal bins by position; bin ``j``
    contributes the element at position ``floor((j + 1/2) * n / k)`` (exact integer
    arithmetic). Positions are distinct because the bins are wider than one element when
    ``n > k``. A region of ``n <= k`` frames is returned whole; an empty region gives an
    empty array (callers choose the fallback).
    """
    k = _check_positive_int("k", k)
    region = np.unique(np.asarray(region_indices, dtype=np.int64))  # (n,) sorted
    n = region.size
    if n <= k:
        return region
    positions = ((2 * np.arange(k, dtype=np.int64) + 1) * n) // (2 * k)  # (k,)
    return region[positions]


def filter_subsets(
    T: int, k: int = 32, num_windows: int = 8, window_rule: WindowRule = "quarter"
) -> list[list[int]]:
    """The ``2 * num_windows`` probe subsets of Appendix A: windows first, then complements.

    Each subset holds at most ``k`` frames picked by :func:`uniform_pick`, sorted and unique;
    an empty region falls back to the last frame ``[T - 1]`` (its nearest frame, see the
    module docstring), so no subset is ever empty.
    """
    k = _check_positive_int("k", k)
    windows = temporal_windows(T, num_windows, window_rule)
    regions = windows + [complement(wnd, T) for wnd in windows]
    subsets: list[list[int]] = []
    for region in regions:
        picked = uniform_pick(region, k)
        subsets.append(picked.tolist() if picked.size else [T - 1])
    return subsets


def reward_variance(margins: Sequence[float] | np.ndarray) -> float:
    """Population variance (``ddof=0``) of a question's subset margins: Var(m) of Appendix A.

    The paper writes ``Var({r_j})`` over the 16 margins with no sample correction; the
    population form is also what makes ``tau = 0.21`` reachable by margins in ``[-1, 1]``
    (its maximum is 1, when half the margins are +1 and half -1).
    """
    m = np.asarray(margins, dtype=np.float64).reshape(-1)
    if m.size == 0:
        raise ValueError("reward_variance needs at least one margin")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"margins must be finite, got {m.tolist()}")
    return float(np.var(m, ddof=0))
