"""Kozachenko–Leonenko differential entropy of selected timestamps (paper §4.3, Figure 6).

Pure numpy/scipy, used by training (the ``select/temporal_entropy`` metric) and by
:mod:`refocus.analysis.entropy`; it imports nothing else of refocus.

The paper tracks how spread out a policy's chosen frames are in time. A selection is a small
set of timestamps (``T'`` = 4..32 values), too few for a histogram; the nearest-neighbour
estimator of Kozachenko and Leonenko (1987), in the k-NN form of Kraskov et al. (2004), needs
no bins:

    H = psi(n) - psi(k) + log(c_d) + (d / n) * sum_i log(eps_i)

with ``d = 1``, ``c_1 = 2`` (the length of the unit ball [-1, 1]) and ``eps_i`` the distance
from ``x_i`` to its ``k``-th nearest neighbour. Units are nats, in the units of ``x``: the
estimate of ``a * x`` is that of ``x`` plus ``log(a)``, so compare selections in the same time
unit (seconds, or relative position in [0, 1] across videos of different lengths).

Duplicates: a repeated value gives ``eps_i = 0`` and ``log(0) = -inf``. Distances are floored at
``min_dist`` (default 1e-10) instead, which is deterministic (jitter would not be) and keeps the
estimate finite; it then drops sharply, as it should for a distribution with atoms. One
policy selection never repeats a frame, so the floor only matters for pooled samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import digamma


def knn_distances(x: np.ndarray | Sequence[float], k: int = 1) -> np.ndarray:
    """Distance from each sample to its ``k``-th nearest other sample, ``(n,)``; needs ``n > k``.

    In one dimension the ``k`` nearest neighbours of a point are among the ``k`` sorted
    neighbours on each side, so this is exact in ``O(n k)`` after sorting.
    """
    values = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))  # (n,)
    n = values.size
    if k < 1 or n <= k:
        raise ValueError(f"need k >= 1 and more than k samples, got k={k}, n={n}")
    offsets = np.concatenate([np.arange(-k, 0), np.arange(1, k + 1)])  # (2k,)
    idx = np.arange(n)[:, None] + offsets[None, :]  # (n, 2k)
    valid = (idx >= 0) & (idx < n)
    dist = np.abs(values[np.clip(idx, 0, n - 1)] - values[:, None])  # (n, 2k)
    dist[~valid] = np.inf
    return np.partition(dist, k - 1, axis=1)[:, k - 1]


def kl_entropy(x: np.ndarray | Sequence[float], k: int = 1, min_dist: float = 1e-10) -> float:
    """Kozachenko–Leonenko estimate (nats) of the differential entropy of 1-D samples ``(n,)``.

    Returns ``nan`` when there are too few samples (``n < k + 1``); raises on non-finite
    values. See the module docstring for the formula, the units and the duplicate floor.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    values = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ValueError("kl_entropy needs finite samples")
    n = values.size
    if n < k + 1:
        return float("nan")
    eps = np.maximum(knn_distances(values, int(k)), min_dist)  # (n,)
    return float(digamma(n) - digamma(k) + math.log(2.0) + np.mean(np.log(eps)))


def kl_entropy_batch(
    samples: np.ndarray | Sequence[np.ndarray | Sequence[float]],
    k: int = 1,
    min_dist: float = 1e-10,
) -> np.ndarray:
    """:func:`kl_entropy` of each row: ``(G, n)`` array or a list of ``G`` 1-D arrays -> ``(G,)``.

    Used for the ``G`` candidate selections of one question (one entropy per candidate); the
    rows of a list may have different lengths.
    """
    if isinstance(samples, np.ndarray) and samples.ndim != 2:
        raise ValueError(f"samples must be (G, n) or a list of 1-D arrays, got {samples.shape}")
    return np.array([kl_entropy(row, k, min_dist) for row in samples], dtype=np.float64)
