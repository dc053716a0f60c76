"""Temporal entropy and selection-distribution distances against hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import differential_entropy, entropy, wasserstein_distance

from refocus.analysis.distances import (
    bin_centres,
    js_divergence,
    pairwise_mean,
    rebin,
    symmetric_kl,
    wasserstein,
)
from refocus.estimators import kl_entropy, kl_entropy_batch, knn_distances

# --- Kozachenko–Leonenko ------------------------------------------------------------------


def test_kl_entropy_hand_example():
    # x = [0, 1, 3]; 1-NN distances 1, 1, 2; psi(3) - psi(1) = 1 + 1/2.
    assert kl_entropy([0.0, 1.0, 3.0]) == pytest.approx(1.5 + math.log(2) + math.log(2) / 3)
    # 2-NN distances 3, 2, 3; psi(3) - psi(2) = 1/2.
    hand_k2 = 0.5 + math.log(2) + (2 * math.log(3) + math.log(2)) / 3
    assert kl_entropy([3.0, 0.0, 1.0], k=2) == pytest.approx(hand_k2)


def test_knn_distances_match_brute_force():
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(0, 10, size=40), 1)  # rounding makes ties
    brute = np.abs(x[:, None] - x[None, :])
    np.fill_diagonal(brute, np.inf)
    for k in (1, 2, 4):
        expected = np.sort(brute, axis=1)[:, k - 1]
        np.testing.assert_array_equal(np.sort(knn_distances(x, k)), np.sort(expected))
        # knn_distances returns values in sorted-sample order
        np.testing.assert_array_equal(knn_distances(x, k), expected[np.argsort(x, kind="stable")])


@pytest.mark.parametrize(
    ("name", "analytic"),
    [
        ("uniform01", 0.0),
        ("uniform08", math.log(8.0)),
        ("normal2", 0.5 * math.log(2 * math.pi * math.e * 4.0)),
    ],
)
def test_kl_entropy_large_samples_match_analytic_and_scipy(name, analytic):
    rng = np.random.default_rng(1)
    x = {
        "uniform01": lambda: rng.uniform(0, 1, 20000),
        "uniform08": lambda: rng.uniform(0, 8, 20000),
        "normal2": lambda: rng.normal(0, 2, 20000),
    }[name]()
    for k in (1, 3):
        assert kl_entropy(x, k=k) == pytest.approx(analytic, abs=0.05)
    assert kl_entropy(x, k=3) == pytest.approx(differential_entropy(x), abs=0.05)


def test_kl_entropy_scale_shift_and_spread():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 32)
    assert kl_entropy(3.0 * x + 7.0) == pytest.approx(kl_entropy(x) + math.log(3.0))
    spread = np.linspace(0, 100, 16)
    clumped = np.concatenate([np.linspace(0, 3, 8), np.linspace(97, 100, 8)])
    assert kl_entropy(spread) > kl_entropy(clumped)


def test_kl_entropy_duplicates_small_and_bad_inputs():
    with_dup = kl_entropy([0.0, 1.0, 1.0, 3.0])
    assert np.isfinite(with_dup)
    assert with_dup < kl_entropy([0.0, 1.0, 2.0, 3.0]) - 5  # log(1e-10) pulls it far down
    assert math.isnan(kl_entropy([1.0]))
    assert math.isnan(kl_entropy([1.0, 2.0], k=2))
    assert math.isnan(kl_entropy([]))
    with pytest.raises(ValueError):
        kl_entropy([0.0, float("inf"), 1.0])
    with pytest.raises(ValueError):
        kl_entropy([0.0, 1.0], k=0)


def test_kl_entropy_batch():
    rows = [np.array([0.0, 1.0, 3.0]), np.array([5.0, 1.0, 2.0, 9.0]), np.array([4.0])]
    out = kl_entropy_batch(rows)
    assert out.shape == (3,)
    assert out[0] == pytest.approx(kl_entropy(rows[0]))
    assert out[1] == pytest.approx(kl_entropy(rows[1]))
    assert math.isnan(out[2])
    grid = np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 6.0]])
    np.testing.assert_allclose(
        kl_entropy_batch(grid), [kl_entropy(grid[0]), kl_entropy(grid[0]) + math.log(2)]
    )
    with pytest.raises(ValueError):
        kl_entropy_batch(np.zeros(4))


# --- resampling ---------------------------------------------------------------------------


def test_rebin_exact_cases():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(64))
    np.testing.assert_allclose(rebin(p, 64), p, atol=1e-15)  # T == M: identity
    q = rng.dirichlet(np.ones(128))
    np.testing.assert_allclose(rebin(q, 64), q.reshape(64, 2).sum(1), atol=1e-15)  # blocks
    np.testing.assert_allclose(rebin([1.0, 0.0], 4), [0.5, 0.5, 0.0, 0.0], atol=1e-15)
    # frame 0 covers [0, 1/2) with density 0.5, frame 1 covers [1/2, 1) with density 1.5.
    np.testing.assert_allclose(rebin([0.25, 0.75], 3), [1 / 6, 1 / 3, 1 / 2], atol=1e-15)
    np.testing.assert_allclose(rebin([2.0, 6.0], None), [0.25, 0.75])  # normalised only
    for T in (1, 7, 100, 513):
        r = rebin(rng.dirichlet(np.ones(T)), 64)
        assert r.shape == (64,) and r.min() >= 0 and r.sum() == pytest.approx(1.0)


def test_bad_distributions():
    with pytest.raises(ValueError):
        rebin([0.5, -0.1, 0.6])
    with pytest.raises(ValueError):
        rebin([0.0, 0.0])
    with pytest.raises(ValueError):
        rebin(np.ones((2, 2)))
    with pytest.raises(ValueError):
        js_divergence([0.5, 0.5], [0.2, 0.3, 0.5], bins=None)
    with pytest.raises(ValueError):
        pairwise_mean([np.ones(3), np.ones(4)], "js", bins=None)


# --- distances ----------------------------------------------------------------------------


def test_disjoint_point_masses():
    p, q = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    for bins in (None, 3):  # T = 3 = M: resampling is the identity
        assert wasserstein(p, q, bins=bins) == pytest.approx(2 / 3)  # centres 1/6 and 5/6
        assert js_divergence(p, q, bins=bins) == pytest.approx(1.0)  # disjoint: 1 bit
        e = 1e-10
        one_way = math.log((1 + e) / e) / (1 + 3 * e)
        assert symmetric_kl(p, q, eps=e, bins=bins) == pytest.approx(2 * one_way, rel=1e-9)


def test_hand_values():
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    m = (p + q) / 2
    hand_js = 0.5 * (np.sum(p * np.log2(p / m)) + math.log2(1 / 0.75))
    assert js_divergence(p, q, bins=None) == pytest.approx(hand_js)
    assert js_divergence(p, q, bins=None) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    # Shift of one frame out of three: W1 = 1/3.
    assert wasserstein([0.5, 0.5, 0.0], [0.0, 0.5, 0.5], bins=None) == pytest.approx(1 / 3)
    a, b = np.array([0.2, 0.3, 0.5]), np.array([0.4, 0.4, 0.2])
    hand_skl = np.sum(a * np.log(a / b)) + np.sum(b * np.log(b / a))
    assert symmetric_kl(a, b, eps=0.0, bins=None) == pytest.approx(hand_skl)


def test_symmetry_and_zero_for_identical():
    rng = np.random.default_rng(4)
    p, q = rng.dirichlet(np.ones(50)), rng.dirichlet(np.ones(80))
    for f in (js_divergence, symmetric_kl, wasserstein):
        assert f(p, q) == pytest.approx(f(q, p), rel=1e-12)
        assert f(p, q) > 0
        assert f(p, p) == pytest.approx(0.0, abs=1e-12)
        # uniform over 10 frames and over 37 frames are the same distribution in relative time
        assert f(np.ones(10), np.ones(37)) == pytest.approx(0.0, abs=1e-9)


def test_pairwise_mean_equals_per_pair_scipy():
    rng = np.random.default_rng(5)
    dists = [rng.dirichlet(np.full(T, 0.3)) for T in (20, 64, 100, 37, 512, 8)]
    binned = [rebin(d, 64) for d in dists]
    centres = bin_centres(64)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    scipy_ref = {
        "js": [jensenshannon(binned[i], binned[j], base=2) ** 2 for i, j in pairs],
        "wasserstein": [
            wasserstein_distance(centres, centres, binned[i], binned[j]) for i, j in pairs
        ],
        "symmetric_kl": [
            entropy(binned[i] + 1e-10, binned[j] + 1e-10)
            + entropy(binned[j] + 1e-10, binned[i] + 1e-10)
            for i, j in pairs
        ],
    }
    funcs = {"js": js_divergence, "wasserstein": wasserstein, "symmetric_kl": symmetric_kl}
    for name, ref in scipy_ref.items():
        per_pair = [funcs[name](dists[i], dists[j]) for i, j in pairs]
        np.testing.assert_allclose(per_pair, ref, rtol=1e-9, atol=1e-12)
        assert pairwise_mean(dists, name) == pytest.approx(np.mean(ref), rel=1e-9)
    assert pairwise_mean(dists, wasserstein) == pytest.approx(np.mean(scipy_ref["wasserstein"]))


def test_pairwise_mean_small_cases():
    # three point masses at relative positions 1/6, 1/2, 5/6: distances 1/3, 2/3, 1/3.
    dists = [np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])]
    assert pairwise_mean(dists, "wasserstein", bins=None) == pytest.approx(4 / 9)
    assert pairwise_mean(dists, "js", bins=None) == pytest.approx(1.0)
    assert math.isnan(pairwise_mean(dists[:1], "js"))
    with pytest.raises(ValueError):
        pairwise_mean(dists, "cosine")
