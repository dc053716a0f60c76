"""The paper's analyses end to end on tiny models: the V-NIAH grid and heatmap, selection
diversity, temporal entropy over checkpoints, likelihood bins, their figures and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from scipy.stats import wasserstein_distance

from refocus.analysis.bins import (
    BinsConfig,
    bin_size,
    likelihood_bins,
    likelihood_rank,
    pick_from_bin,
    run_bins_analysis,
)
from refocus.analysis.distances import bin_centres, rebin
from refocus.analysis.diversity import (
    DiversityConfig,
    distance_table,
    length_groups,
    run_diversity_analysis,
    uniform_distribution,
)
from refocus.analysis.entropy import (
    EntropyConfig,
    find_checkpoints,
    relative_times,
    run_entropy_analysis,
    selection_entropies,
)
from refocus.analysis.niah import NiahConfig, run_niah_analysis
from refocus.cli import main
from refocus.data.evidence import evidence_frame_mask
from refocus.data.questions import load_questions
from refocus.data.synth import COLORS
from refocus.data.synth.grid import load_grid, needle_start, write_niah_grid
from refocus.errors import RefocusError
from refocus.estimators import kl_entropy
from refocus.selectors import get_selector
from refocus.selectors.base import uniform_indices
from refocus.video import load_video
from refocus.video.stores import FrameStore

LENGTHS = (16, 40)
POSITIONS = 3
PER_CELL = 2
SIZE = 48  # written frame side
IMAGE = 32  # the tiny models' input side
TOL = 30  # max channel error for "the needle's colour" after H.264


@pytest.fixture(autouse=True, scope="module")
def env(tmp_path_factory):
    """One thread (tiny models, shared 2-core machine) and a private frame cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    return write_niah_grid(tmp_path_factory.mktemp("grid"), LENGTHS, POSITIONS, PER_CELL, seed=5, size=SIZE)


@pytest.fixture(scope="module")
def items(grid):
    return load_questions(grid)


@pytest.fixture(scope="module")
def tokenizer(items):
    from refocus.reference.small_model import train_tokenizer

    return train_tokenizer([f"{it.question} {' '.join(it.options)}" for it in items])


@pytest.fixture(scope="module")
def answerer_dir(tmp_path_factory, tokenizer) -> Path:
    from refocus.reference.small_model import SmallReferenceConfig, build_small_reference

    torch.manual_seed(0)
    cfg = SmallReferenceConfig(image_size=IMAGE, vision_hidden_sizes=(32, 64), vision_depths=(1, 1),
                               vision_heads=(2, 2), text_hidden=32, text_layers=1, text_heads=2)
    model, processor = build_small_reference(tokenizer, cfg)
    path = tmp_path_factory.mktemp("reference")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def answerer(answerer_dir):
    from refocus.reference import load_reference

    return load_reference(answerer_dir)


def save_policy(path: Path, tokenizer, seed: int = 0, logit_scale: float = 1.0) -> Path:
    from refocus.policy import FramePolicy, FramePolicyConfig

    torch.manual_seed(seed)
    config = FramePolicyConfig(
        vision_config={"image_size": IMAGE},
        tokens_per_frame=4,
        backbone_config={"vocab_size": len(tokenizer), "hidden_size": 32, "head_dim": 8,
                         "num_heads": 8, "num_hidden_layers": 2},
        head_dim=16,
    )
    policy = FramePolicy(config)
    with torch.no_grad():
        policy.logit_scale.fill_(logit_scale)
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer) -> Path:
    return save_policy(tmp_path_factory.mktemp("policy"), tokenizer, seed=1, logit_scale=4.0)


def check_png(path: Path, min_width: int = 300, min_height: int = 200) -> np.ndarray:
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 10_000, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] >= min_width and image.shape[0] >= min_height
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image


# ---------------------------------------------------------------------------- the grid


def color_fraction(frames: np.ndarray, color: str) -> np.ndarray:
    diff = np.abs(frames.astype(np.int16) - np.array(COLORS[color], np.int16)).max(-1)
    return (diff <= TOL).mean((1, 2))


def test_grid_videos_have_the_requested_lengths_and_needle_positions(grid, items):
    spec, loaded = load_grid(grid.parent)
    assert spec.lengths == LENGTHS and spec.positions == (0.0, 0.5, 1.0)
    assert len(items) == len(loaded) == len(LENGTHS) * POSITIONS * PER_CELL
    cells = {(it.meta["grid_length"], it.meta["grid_position"]) for it in items}
    assert cells == {(n, p) for n in LENGTHS for p in (0.0, 0.5, 1.0)}
    # categories alternate in grid order, so every cell with 2 videos has one of each
    assert [it.category for it in items[:4]] == ["needle_color", "needle_shape"] * 2
    for item in items:
        video = load_video(item.video, fps=4.0, max_frames=2048, size=SIZE, cache=False)
        length, position = item.meta["grid_length"], item.meta["grid_position"]
        assert len(video.timestamps) == length
        first, last = item.meta["needle_frames"]
        assert first == needle_start(length, last - first + 1, position)
        if position == 0.0:
            assert first == 0
        if position == 1.0:
            assert last == length - 1
        mask = evidence_frame_mask(video.timestamps, item.evidence)
        assert np.flatnonzero(mask).tolist() == list(range(first, last + 1))
        inside = color_fraction(video.frames[mask], item.meta["color"])
        assert inside.min() > 0.01, (item.id, inside)  # >= 23 px of 48 x 48
        assert color_fraction(video.frames[~mask], item.meta["color"]).max() < 0.005, item.id


def test_default_grid_does_not_sit_on_uniform_bin_edges():
    """With 5 positions every needle falls between uniform's picks; the default 8 does not."""
    from refocus.data.synth.grid import DEFAULT_LENGTHS, DEFAULT_POSITIONS, needle_positions

    def uniform_recall(count: int) -> float:
        hits = [any(s <= i < s + n for i in uniform_indices(t, 8))
                for t in DEFAULT_LENGTHS for p in needle_positions(count) for n in (3, 4)
                for s in [needle_start(t, n, p)]]
        return float(np.mean(hits))

    assert uniform_recall(5) < 0.05
    assert uniform_recall(DEFAULT_POSITIONS) > 0.15  # ~ the 0.17 of randomly placed needles


def test_grid_is_reused_when_the_parameters_match(grid):
    before = {p: p.stat().st_mtime_ns for p in (grid.parent / "videos").iterdir()}
    again = write_niah_grid(grid.parent, LENGTHS, POSITIONS, PER_CELL, seed=5, size=SIZE)
    assert again == grid
    assert {p: p.stat().st_mtime_ns for p in (grid.parent / "videos").iterdir()} == before
    with pytest.raises(RefocusError, match="lengths"):
        write_niah_grid(grid.parent / "bad", lengths=(2,))


# ---------------------------------------------------------------------------- niah


def test_niah_heatmap_matches_hand_computed_uniform_recall_and_direct_answers(
    tmp_path, items, answerer, policy_dir
):
    budget = 4
    uniform = get_selector("uniform")
    policy = get_selector(f"policy:{policy_dir}")
    config = NiahConfig(budget=budget, train_max_frames=16)
    result = run_niah_analysis(answerer, [uniform, policy], tmp_path, config, items=items,
                               progress=False)
    on_disk = json.loads((tmp_path / "niah.json").read_text())
    assert on_disk["selectors"].keys() == result["selectors"].keys() == {"uniform", policy.name}
    assert on_disk["lengths"] == list(LENGTHS) and on_disk["positions"] == [0.0, 0.5, 1.0]

    store = FrameStore(max_frames=1024)
    res = on_disk["selectors"]["uniform"]
    assert len(res["cells"]) == len(LENGTHS) * POSITIONS
    assert np.array(res["evidence_recall_matrix"]).shape == (POSITIONS, len(LENGTHS))
    recalls = []
    for cell in res["cells"]:
        mine = [it for it in items if (it.meta["grid_length"], it.meta["grid_position"])
                == (cell["length"], cell["position"])]
        assert cell["n"] == PER_CELL == len(mine)
        hits, correct = [], []
        for item in mine:
            first, last = item.meta["needle_frames"]
            picks = uniform_indices(cell["length"], budget)  # by hand from the grid
            hits.append(any(first <= i <= last for i in picks))
            frames = store.get(item, answerer.image_size).frames
            logits = answerer.option_logits(item, frames, [picks])[0]
            correct.append(item.letters[int(np.argmax(logits))] == item.answer)
        assert cell["evidence_recall"] == pytest.approx(np.mean(hits))
        assert cell["accuracy"] == pytest.approx(np.mean(correct))
        recalls.append(np.mean(hits))
    assert res["evidence_recall"] == pytest.approx(np.mean(recalls))
    # the grid is built so uniform sampling at budget 4 misses a 3-4 frame needle in 40 frames
    assert 0.0 < res["evidence_recall"] < 1.0

    image = check_png(tmp_path / "niah.png", min_width=600)
    assert image.shape[1] > image.shape[0]  # two selector columns side by side


# ---------------------------------------------------------------------------- diversity


def test_diversity_distances_equal_scipy_on_hand_made_distributions():
    bins = 6
    dists = [np.array([4, 1, 1, 0, 0, 2.0]), np.array([0, 0, 1, 3, 3, 1.0]),
             np.array([1, 1, 1, 1, 1, 1.0]), np.array([0, 2, 0, 2, 0, 2.0])]
    records = [{"group": g, "num_frames": 6, "policy": d, "uniform": uniform_distribution(6, 2)}
               for g, d in zip(["short", "short", "long", "long"], dists, strict=True)]
    table = distance_table(records, bins)
    for group, members in (("short", dists[:2]), ("long", dists[2:]), ("all", dists)):
        pairs = [(members[i] / members[i].sum(), members[j] / members[j].sum())
                 for i in range(len(members)) for j in range(i + 1, len(members))]
        eps = 1e-10
        js = np.mean([jensenshannon(p, q, base=2) ** 2 for p, q in pairs])
        skl = np.mean([scipy_entropy((p + eps) / (p + eps).sum(), (q + eps) / (q + eps).sum())
                       + scipy_entropy((q + eps) / (q + eps).sum(), (p + eps) / (p + eps).sum())
                       for p, q in pairs])
        w = np.mean([wasserstein_distance(bin_centres(bins), bin_centres(bins), p, q) for p, q in pairs])
        got = table[group]["policy"]
        assert got["js"] == pytest.approx(js, abs=1e-6)
        assert got["symmetric_kl"] == pytest.approx(skl, rel=1e-5)
        assert got["wasserstein"] == pytest.approx(w, abs=1e-6)
        assert table[group]["uniform"] == {"js": 0.0, "symmetric_kl": 0.0, "wasserstein": 0.0}
        assert table[group]["n_items"] == len(members)


def test_uniform_distributions_coincide_across_lengths_on_3k_bins():
    budget = 8
    bins = 3 * budget
    dists = [uniform_distribution(t, budget) for t in (48, 64, 97, 300, 512)]
    assert all(d.sum() == pytest.approx(1.0) and np.count_nonzero(d) == budget for d in dists)
    binned = [rebin(d, bins) for d in dists]
    for d in binned[1:]:
        np.testing.assert_allclose(d, binned[0], atol=1e-12)
    # 64 bins put the midpoints on bin edges: the same selection lands in different bins
    assert not np.allclose(rebin(dists[0], 64), rebin(dists[2], 64))


def test_length_groups_tertiles_and_thresholds():
    frames = [300, 10, 50, 50, 20, 400]
    assert length_groups(frames) == ["long", "short", "medium", "medium", "short", "long"]
    assert length_groups(frames, (20, 300)) == ["medium", "short", "medium", "medium", "short", "long"]


def test_diversity_analysis_on_a_tiny_policy(tmp_path, items, policy_dir):
    policy = get_selector(f"policy:{policy_dir}", mode="distribution")
    config = DiversityConfig(budget=4, samples=8, seed=3)
    result = run_diversity_analysis(items, policy, tmp_path, config, progress=False)
    on_disk = json.loads((tmp_path / "diversity.json").read_text())
    assert on_disk["bins"] == 12 and on_disk["grouping"] == "tertiles"
    groups = on_disk["groups"]
    assert [groups[g]["n_items"] for g in ("short", "medium", "long", "all")] == [4, 4, 4, 12]
    # short = only 16-frame videos, long = only 40-frame ones: uniform picks the same times
    assert groups["short"]["frames"] == [16, 16] and groups["long"]["frames"] == [40, 40]
    for g in ("short", "long"):
        assert all(v == pytest.approx(0.0, abs=1e-9) for v in groups[g]["uniform"].values())
        assert all(v > 0 for v in groups[g]["policy"].values())
    # stored distributions are the selector's Appendix C distributions, resampled
    first = items[0]
    video = FrameStore().get(first, policy.image_size)
    policy.reseed(3)
    dist = policy.selection_distribution(video, first, 4, num_samples=8)
    assert dist.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(on_disk["items"][0]["policy_binned"], rebin(dist, 12), atol=1e-5)
    assert len(result["examples"]) == 3
    check_png(tmp_path / "diversity.png", min_width=800)


# ---------------------------------------------------------------------------- entropy


def test_selection_entropies_and_relative_times_by_hand():
    times = relative_times(np.arange(10) * 0.25 + 1.0)
    np.testing.assert_allclose(times, np.arange(10) / 10)
    orders = np.array([[0, 5, 9, 2], [1, 2, 3, 4]])
    got = selection_entropies(times, orders, ks=(2, 3, 8))
    assert set(got) == {2, 3}  # 8 > the 4 steps that were run
    assert got[3] == pytest.approx(np.mean([kl_entropy(times[[0, 5, 9]]), kl_entropy(times[[1, 2, 3]])]))


def test_entropy_over_two_checkpoints(tmp_path, items, tokenizer):
    run = tmp_path / "run"
    save_policy(run / "checkpoints" / "step-000005", tokenizer, seed=2, logit_scale=1.0)
    save_policy(run / "policy", tokenizer, seed=2, logit_scale=6.0)
    (run / "policy" / "train_config.yaml").write_text("max_steps: 10\n")
    assert [s for s, _ in find_checkpoints(run)] == [5, 10]

    subset = items[::3]
    config = EntropyConfig(ks=(2, 4), samples=4, max_items=None, seed=1)
    result = run_entropy_analysis(run, subset, tmp_path / "out", config, device="cpu", progress=False)
    on_disk = json.loads((tmp_path / "out" / "entropy.json").read_text())
    assert [c["step"] for c in on_disk["checkpoints"]] == [5, 10]
    for row in on_disk["checkpoints"]:
        assert row["n"] == {"2": len(subset), "4": len(subset)}
        assert all(math.isfinite(v) for v in row["entropy"].values())
    # uniform reference by hand: KL entropy of the bin midpoints at i / T
    for k in (2, 4):
        hand = np.mean([kl_entropy(np.array(uniform_indices(it.meta["grid_length"], k))
                                   / it.meta["grid_length"]) for it in subset])
        assert on_disk["uniform"][str(k)] == pytest.approx(hand, abs=1e-5)
    # the same checkpoint measured again gives the same numbers (common random numbers)
    again = run_entropy_analysis(None, subset, None, config, checkpoints=[(5, run / "checkpoints" / "step-000005")],
                                 device="cpu", progress=False)
    assert again["checkpoints"][0]["entropy"] == result["checkpoints"][0]["entropy"]
    check_png(tmp_path / "out" / "entropy.png")


# ---------------------------------------------------------------------------- bins


def test_likelihood_bins_by_hand():
    dist = np.array([0.05, 0.30, 0.10, 0.10, 0.25, 0.02, 0.08, 0.10])
    assert likelihood_rank(dist).tolist() == [1, 4, 2, 3, 7, 6, 0, 5]  # ties: earlier first
    over, under = likelihood_bins(dist, 25)
    assert over.tolist() == [1, 4] and under.tolist() == [0, 5]
    assert bin_size(8, 10) == 1 and bin_size(8, 50) == 4 and bin_size(7, 50) == 3
    assert pick_from_bin([9, 3, 7, 1], 2) == [3, 9]
    assert pick_from_bin([5, 2], 4) == [2, 5]


def test_bins_come_from_the_right_likelihood_ranks(tmp_path, items, answerer, policy_dir):
    policy = get_selector(f"policy:{policy_dir}", mode="distribution")
    subset = [it for it in items if it.meta["grid_length"] == 40][:3]
    config = BinsConfig(budget=4, percents=(10, 25, 50), samples=8, seed=2)
    result = run_bins_analysis(subset, answerer, policy, tmp_path, config, progress=False)
    on_disk = json.loads((tmp_path / "bins.json").read_text())
    assert on_disk["n_items"] == 3 and [r["percent"] for r in on_disk["bins"]] == [10, 25, 50]
    store = FrameStore()
    for item, row in zip(subset, on_disk["items"], strict=True):
        video = store.get(item, policy.image_size)
        policy.reseed(2)
        dist = policy.selection_distribution(video, item, 4, num_samples=8)
        rank = likelihood_rank(dist).tolist()
        for k in (10, 25, 50):
            n = bin_size(40, k)
            over, under = row["selections"][f"over-{k:g}"], row["selections"][f"under-{k:g}"]
            assert len(over) == len(under) == min(4, n)
            assert set(over) <= set(rank[:n]) and set(under) <= set(rank[-n:])
            assert not set(over) & set(under)
        # correctness flags agree with a direct answerer call
        frames = store.get(item, answerer.image_size).frames
        logits = answerer.option_logits(item, frames, [row["selections"]["over-10"]])[0]
        assert row["correct"]["over-10"] == (int(np.argmax(logits)) == item.answer_index)
    uniform = np.mean([r["correct"]["uniform"] for r in on_disk["items"]])
    assert on_disk["uniform"]["accuracy"] == pytest.approx(uniform)
    assert result["bins"][0]["over"]["accuracy"] == pytest.approx(
        np.mean([r["correct"]["over-10"] for r in on_disk["items"]]))
    check_png(tmp_path / "bins.png", min_width=600)


# ---------------------------------------------------------------------------- CLI


def test_cli_niah_in_process(tmp_path, grid, answerer_dir, policy_dir, capsys):
    out = tmp_path / "niah"
    code = main(["analyze", "niah", "--answerer", str(answerer_dir), "--policy", str(policy_dir),
                 "--out", str(out), "--grid-dir", str(grid.parent), "--lengths", ",".join(map(str, LENGTHS)),
                 "--positions", str(POSITIONS), "--per-cell", str(PER_CELL), "--seed", "5",
                 "--size", str(SIZE), "--budget", "4", "--device", "cpu"])
    assert code == 0
    result = json.loads((out / "niah.json").read_text())
    assert list(result["selectors"]) == ["uniform", f"policy:{policy_dir}"]
    assert result["grid_dir"] == str(grid.parent)  # reused, not rewritten under OUT/grid
    assert not (out / "grid").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("analyze niah: uniform recall")
    check_png(out / "niah.png")


@pytest.mark.parametrize("argv, message", [
    (["niah", "--lengths", "2,4"], "lengths"),
    (["bins", "--percents", "60", "--policy", "x", "--answerer", "y", "--data", "z"], "percents"),
    (["entropy", "--run", "{tmp}", "--data", "{qa}"], "no policy checkpoints"),
    (["diversity", "--policy", "{tmp}", "--data", "{qa}"], "not a policy checkpoint"),
])
def test_cli_errors_are_one_line(tmp_path, grid, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, qa=grid) for a in argv]
    assert main(["analyze", *argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]
