"""Appendix A window arithmetic, checked against hand computations and exact coverage counts."""

from __future__ import annotations

import numpy as np
import pytest

from refocus.filtering.windows import (
    complement,
    filter_subsets,
    reward_variance,
    temporal_windows,
    uniform_pick,
    window_size_and_stride,
)


def _coverage(windows: list[np.ndarray], T: int) -> np.ndarray:
    counts = np.zeros(T, dtype=np.int64)
    for wnd in windows:
        assert np.all(np.diff(wnd) > 0), "window indices must be sorted and unique"
        counts[wnd] += 1
    return counts


def _single_covered(T: int) -> set[int]:
    """Frames the module docstring says lie in only one window (default rule, n = 8)."""
    w, s = window_size_and_stride(T)
    if w == 2 * s:
        return set()
    return {(j + 1) * s - 1 for j in range(1, 7) if (j + 1) * s - 1 < T}


def test_hand_example_T16():
    w, s = window_size_and_stride(16)
    assert (w, s) == (4, 2)
    windows = temporal_windows(16)
    expected = [list(range(a, a + 4)) for a in (0, 2, 4, 6, 8, 10, 12)] + [[0, 1, 14, 15]]
    assert [wnd.tolist() for wnd in windows] == expected
    subsets = filter_subsets(16, k=4)
    assert len(subsets) == 16
    assert subsets[:8] == expected  # 4-frame windows are taken whole at k = 4
    # C1 = [4, 16): 12 frames, 4 bins of 3 -> positions 1, 4, 7, 10 -> frames 5, 8, 11, 14.
    assert subsets[8] == [5, 8, 11, 14]
    # C8 = [2, 14): positions 1, 4, 7, 10 -> frames 3, 6, 9, 12.
    assert subsets[15] == [3, 6, 9, 12]
    # C4 = [0, 6) U [10, 16): 12 frames -> frames 1, 4, 11, 14.
    assert subsets[11] == [1, 4, 11, 14]


@pytest.mark.parametrize("T", [8, 64, 100, 512, 513])
def test_every_frame_in_two_windows_or_as_documented(T):
    windows = temporal_windows(T)
    assert len(windows) == 8
    counts = _coverage(windows, T)
    ones = set(np.flatnonzero(counts == 1).tolist())
    assert ones == _single_covered(T)
    assert set(np.unique(counts).tolist()) <= {1, 2}
    w, s = window_size_and_stride(T)
    if T % 8 in (0, 5, 6, 7):
        assert w == 2 * s and np.all(counts == 2)


def test_exactly_two_iff_window_even_for_all_small_T():
    for T in range(1, 601):
        w, s = window_size_and_stride(T)
        assert s == -(-T // 8)  # nested ceilings collapse: ceil(ceil(T/4)/2) = ceil(T/8)
        counts = _coverage(temporal_windows(T), T)
        # w odd leaves single-covered frames for every T except T = 1 (one frame, in W1 and W8).
        assert (w % 2 == 0 or T == 1) == bool(np.all(counts == 2)), T
        assert (w % 2 == 0) == (T % 8 in (0, 5, 6, 7)), T
        assert set(np.flatnonzero(counts == 1).tolist()) == _single_covered(T), T
        assert counts.min() >= 1


@pytest.mark.parametrize("T", [8, 64, 100, 512, 513])
def test_window_lengths(T):
    w, s = window_size_and_stride(T)
    windows = temporal_windows(T)
    for i, wnd in enumerate(windows[:7]):
        assert len(wnd) == min(i * s + w, T) - min(i * s, T)
        if i * s + w <= T:
            assert len(wnd) == w
    assert len(windows[7]) == s + max(0, T - 7 * s)
    if T % 8 == 0:
        assert all(len(wnd) == w for wnd in windows)


@pytest.mark.parametrize("T", [8, 64, 100, 512, 513])
def test_complements_partition_with_windows(T):
    for wnd in temporal_windows(T):
        comp = complement(wnd, T)
        assert np.intersect1d(wnd, comp).size == 0
        assert np.array_equal(np.union1d(wnd, comp), np.arange(T))


@pytest.mark.parametrize("T", [8, 64, 100, 512, 513])
def test_subset_sizes(T):
    k = 32
    windows = temporal_windows(T)
    regions = windows + [complement(wnd, T) for wnd in windows]
    subsets = filter_subsets(T, k=k)
    assert len(subsets) == 16
    for region, sub in zip(regions, subsets, strict=True):
        assert sub == sorted(set(sub))
        assert len(sub) == max(1, min(k, len(region)))
        assert set(sub) <= set(region.tolist())


def test_paper_printed_rule_is_available_and_lopsided():
    T = 512
    w, s = window_size_and_stride(T, window_rule="paper_printed")
    assert (w, s) == (64, 32)
    windows = temporal_windows(T, window_rule="paper_printed")
    first_seven = np.unique(np.concatenate(windows[:7]))
    assert first_seven.max() == 6 * s + w - 1 == 255  # only the first half of the video
    assert len(windows[7]) == 32 + (T - 224) > T // 2  # W8 spans more than half of it


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 7, 9])
def test_tiny_videos_never_crash_and_never_give_empty_subsets(T):
    for rule in ("quarter", "paper_printed"):
        subsets = filter_subsets(T, k=32, window_rule=rule)
        assert len(subsets) == 16
        for sub in subsets:
            assert sub and all(0 <= i < T for i in sub) and sub == sorted(set(sub))


def test_tiny_video_fallback_is_last_frame():
    # T = 1: W2..W7 start past the end and C1, C8 are empty; all fall back to frame 0.
    assert filter_subsets(1) == [[0]] * 16
    # T = 2: w = s = 1; W3..W7 start past the end -> [1]; W1 = [0], W2 = [1], W8 = [0].
    subsets = filter_subsets(2)
    assert subsets[:8] == [[0], [1], [1], [1], [1], [1], [1], [0]]
    # The complement of an empty window is the whole video.
    assert subsets[8:] == [[1], [0], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1], [1]]


def test_uniform_pick_midpoints():
    assert uniform_pick(np.arange(10), 2).tolist() == [2, 7]  # bins [0,5), [5,10)
    assert uniform_pick(np.arange(100, 110), 5).tolist() == [101, 103, 105, 107, 109]
    assert uniform_pick([9, 3, 3, 7], 8).tolist() == [3, 7, 9]  # smaller region: all of it
    assert uniform_pick(np.array([], dtype=np.int64), 4).size == 0
    picked = uniform_pick(np.arange(513), 32)
    assert picked.size == 32 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, np.floor((np.arange(32) + 0.5) * 513 / 32).astype(int))
    with pytest.raises(ValueError):
        uniform_pick(np.arange(4), 0)


def test_reward_variance_is_population_variance():
    m = [1.0, -1.0, 0.5, 0.5]  # mean 0.25
    hand = ((0.75**2) + (1.25**2) + 2 * (0.25**2)) / 4
    assert reward_variance(m) == pytest.approx(hand)
    assert reward_variance(m) == pytest.approx(np.var(m))
    assert reward_variance(m) != pytest.approx(np.var(m, ddof=1))
    assert reward_variance([1.0] * 8 + [-1.0] * 8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        reward_variance([])
    with pytest.raises(ValueError):
        reward_variance([0.1, float("nan")])


def test_bad_arguments():
    with pytest.raises(ValueError):
        temporal_windows(0)
    with pytest.raises(ValueError):
        temporal_windows(16, window_rule="eighth")
    with pytest.raises(TypeError):
        temporal_windows(16.0)
