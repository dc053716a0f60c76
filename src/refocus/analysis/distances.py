"""Distances between frame-selection distributions (paper §4.3, Table 3, Appendix C).

A selection distribution ``p`` is a probability vector over the ``T`` decoded frames of one
video (Appendix C: the policy's step distributions averaged over steps and candidates).
Items of a group have videos of different lengths, so every distribution is first resampled
onto a common support of ``M`` bins (default 64) of relative time ``[0, 1]``:

* frame ``t`` of ``T`` covers the interval ``[t/T, (t+1)/T)`` with its mass spread uniformly
  over it, and bin ``j`` receives the mass that falls in ``[j/M, (j+1)/M)`` (the exact
  integral of that piecewise-constant density, via its piecewise-linear CDF). Mass is
  conserved; ``T == M`` is the identity, and ``T`` a multiple of ``M`` sums blocks of frames;
* ``bins=None`` skips the resampling; the two vectors must then have the same length and
  frame ``t`` sits at relative position ``(t + 1/2) / T``.

Definitions (inputs are normalised to sum 1 first):

* ``js_divergence``: Jensen–Shannon *divergence* in bits,
  ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2`` (scipy returns the JS distance,
  the square root), so it lies in ``[0, 1]``;
* ``symmetric_kl``: ``KL(p||q) + KL(q||p)`` in nats with ``scipy.stats.entropy``, after
  additive smoothing ``(p + eps) / sum`` so disjoint supports stay finite;
* ``wasserstein``: 1-Wasserstein (earth mover's) distance between the two distributions
  placed on the bin centres ``(j + 1/2) / M``, ``scipy.stats.wasserstein_distance``, in units
  of the video's length (1 = the whole video).

``pairwise_mean`` over a group computes the same quantities with matrix algebra on all pairs
at once (hundreds of items make ~10^5 pairs, minutes of per-pair scipy calls); the tests check
it against the per-pair scipy functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon, pdist
from scipy.stats import entropy, wasserstein_distance

DEFAULT_BINS = 64
Metric = Callable[..., float]


def _as_distribution(p: np.ndarray | Sequence[float], name: str = "p") -> np.ndarray:
    v = np.asarray(p, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D probability vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    total = v.sum()
    if total <= 0:
        raise ValueError(f"{name} has no mass")
    return v / total


def rebin(p: np.ndarray | Sequence[float], bins: int | None = DEFAULT_BINS) -> np.ndarray:
    """Resample a ``(T,)`` distribution over frames onto ``bins`` bins of relative time.

    Returns a ``(bins,)`` probability vector (or the normalised input when ``bins`` is None).
    """
    v = _as_distribution(p)  # (T,)
    if bins is None:
        return v
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    T = v.size
    knots = np.arange(T + 1, dtype=np.float64) / T  # (T+1,) frame boundaries
    cdf = np.concatenate([[0.0], np.cumsum(v)])  # (T+1,)
    edges = np.linspace(0.0, 1.0, bins + 1)  # (M+1,)
    mass = np.maximum(np.diff(np.interp(edges, knots, cdf)), 0.0)  # (M,)
    return mass / mass.sum()


def _pair(p, q, bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    P, Q = rebin(p, bins), rebin(q, bins)
    if P.size != Q.size:
        raise ValueError(
            f"distributions of different lengths ({P.size}, {Q.size}) need bins=<int> to resample"
        )
    return P, Q


def bin_centres(size: int) -> np.ndarray:
    """Relative positions ``(j + 1/2) / size`` of ``size`` equal bins of ``[0, 1]``."""
    return (np.arange(size, dtype=np.float64) + 0.5) / size


def js_divergence(p, q, bins: int | None = DEFAULT_BINS) -> float:
    """Jensen–Shannon divergence in bits, in [0, 1]: ``jensenshannon(p, q, base=2) ** 2``."""
    P, Q = _pair(p, q, bins)
    return float(jensenshannon(P, Q, base=2) ** 2)


def symmetric_kl(p, q, eps: float = 1e-10, bins: int | None = DEFAULT_BINS) -> float:
    """``KL(p'||q') + KL(q'||p')`` in nats, with ``p' = (p + eps) / sum(p + eps)``."""
    P, Q = _pair(p, q, bins)
    Ps, Qs = (P + eps) / (P + eps).sum(), (Q + eps) / (Q + eps).sum()
    return float(entropy(Ps, Qs) + entropy(Qs, Ps))


def wasserstein(p, q, bins: int | None = DEFAULT_BINS) -> float:
    """1-Wasserstein distance on the bin centres, in units of the video's length."""
    P, Q = _pair(p, q, bins)
    centres = bin_centres(P.size)
    return float(wasserstein_distance(centres, centres, P, Q))


METRICS: dict[str, Metric] = {
    "js": js_divergence,
    "symmetric_kl": symmetric_kl,
    "wasserstein": wasserstein,
}


def _pairwise_values(X: np.ndarray, metric: str, eps: float) -> np.ndarray:
    """Condensed vector (as ``pdist``) of the metric over all unordered row pairs of ``X``."""
    M = X.shape[1]
    if metric == "js":
        # scipy's JS distance uses natural logs; the divergence in bits is its square / ln 2.
        return pdist(X, "jensenshannon") ** 2 / math.log(2.0)
    if metric == "wasserstein":
        # On equally spaced points the 1-D W1 is the L1 distance of the CDFs times the spacing.
        return pdist(np.cumsum(X, axis=1)[:, :-1], "cityblock") / M
    if metric == "symmetric_kl":
        S = (X + eps) / (X + eps).sum(axis=1, keepdims=True)  # (n, M)
        logS = np.log(S)
        self_term = np.sum(S * logS, axis=1)  # (n,) sum_m s log s
        cross = S @ logS.T  # (n, n): cross[i, j] = sum_m S_i log S_j
        full = self_term[:, None] + self_term[None, :] - cross - cross.T  # KL(i||j) + KL(j||i)
        iu = np.triu_indices(X.shape[0], k=1)
        return np.maximum(full[iu], 0.0)
    raise ValueError(f"metric must be one of {sorted(METRICS)} or a callable, got {metric!r}")


def pairwise_mean(
    dists: Sequence[np.ndarray],
    metric: str | Metric = "js",
    bins: int | None = DEFAULT_BINS,
    eps: float = 1e-10,
) -> float:
    """Mean of ``metric`` over all unordered pairs of distributions (Table 3's diversity).

    ``metric`` is ``"js"``, ``"symmetric_kl"``, ``"wasserstein"`` (computed for all pairs at
    once, equal to the per-pair functions of this module) or any callable ``f(p, q) -> float``,
    which receives the resampled ``(bins,)`` vectors. ``eps`` is the smoothing of
    ``symmetric_kl``. Fewer than two distributions give ``nan``.
    """
    if len(dists) < 2:
        return float("nan")
    rows = [rebin(d, bins) for d in dists]
    if len({row.size for row in rows}) > 1:
        raise ValueError("distributions of different lengths need bins=<int> to resample")
    X = np.stack(rows)  # (n, M)
    if callable(metric):
        values = [metric(X[i], X[j]) for i in range(len(X)) for j in range(i + 1, len(X))]
        return float(np.mean(values))
    return float(np.mean(_pairwise_values(X, metric, eps)))
