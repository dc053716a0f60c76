"""Frame selectors: exact uniform rule, seeded random, oracle coverage, policy modes, registry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from refocus.data.evidence import evidence_frame_mask
from refocus.data.questions import load_questions
from refocus.errors import RefocusError
from refocus.selectors import (
    BaseSelector,
    Selector,
    available_selectors,
    get_selector,
    register_selector,
    uniform_indices,
)
from refocus.selectors.oracle import oracle_indices, spread_order


def fake_video(num_frames: int, fps: float = 4.0) -> SimpleNamespace:
    return SimpleNamespace(frames=np.zeros((num_frames, 2, 2, 3), np.uint8), timestamps=np.arange(num_frames) / fps)


def fake_item(item_id: str, evidence=None) -> SimpleNamespace:
    return SimpleNamespace(id=item_id, evidence=evidence, question="q", options=("a", "b"), video=f"/v/{item_id}.mp4")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def niah(tmp_path_factory):
    """A tiny synthetic needle set, decoded at 32 px (frames, timestamps) per item."""
    from refocus.data.synth import make_benchmark
    from refocus.video import load_video

    root = tmp_path_factory.mktemp("niah")
    items = load_questions(make_benchmark("niah", root, videos=6, frames=(32, 48), seed=0))
    videos = [load_video(it.video, size=32, cache=False) for it in items]
    return items, videos


# ---------------------------------------------------------------------------- uniform


def test_uniform_rule_exact_values():
    assert uniform_indices(10, 4) == [1, 3, 6, 8]  # floor((j + 0.5) * 10 / 4)
    assert uniform_indices(9, 3) == [1, 4, 7]
    assert uniform_indices(100, 1) == [50]
    assert uniform_indices(4, 8) == [0, 1, 2, 3]  # T <= budget: every frame
    assert get_selector("uniform").select(fake_video(10), fake_item("a"), 4) == [1, 3, 6, 8]


@pytest.mark.parametrize("num_frames,budget", [(11, 4), (512, 32), (33, 32), (1000, 7)])
def test_uniform_picks_one_frame_per_bin(num_frames, budget):
    idx = uniform_indices(num_frames, budget)
    assert len(idx) == budget and idx == sorted(set(idx))
    for j, i in enumerate(idx):  # frame i (time span [i, i+1)) holds bin j's midpoint
        mid = (j + 0.5) * num_frames / budget
        assert i <= mid < i + 1
        assert j * num_frames / budget < i + 1 and i < (j + 1) * num_frames / budget


# ---------------------------------------------------------------------------- random


def test_random_is_seeded_sorted_and_item_order_independent():
    video = fake_video(200)
    items = [fake_item(f"q{i}") for i in range(6)]
    a = get_selector("random", seed=5)
    forward = {it.id: a.select(video, it, 8) for it in items}
    backward = {it.id: get_selector("random", seed=5).select(video, it, 8) for it in reversed(items)}
    assert forward == backward
    for idx in forward.values():
        assert len(idx) == 8 and idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < 200
    assert len({tuple(v) for v in forward.values()}) > 1  # items differ from each other
    a.reseed(6)
    reseeded = {it.id: a.select(video, it, 8) for it in items}
    assert reseeded != forward
    assert reseeded == {it.id: get_selector("random", seed=6).select(video, it, 8) for it in items}
    assert a.select(fake_video(5), items[0], 8) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- oracle


def test_spread_order_starts_central_then_farthest():
    assert spread_order(range(10)) == [4, 9, 0, 2, 6, 1, 3, 5, 7, 8]
    assert spread_order(range(10), start=[0], count=3) == [9, 4, 2]
    assert spread_order([3, 5], start=[3, 5]) == []


def test_oracle_takes_one_frame_per_span_before_a_second():
    t = np.arange(40) / 4.0  # 10 s at 4 fps
    spans = [(8.0, 9.0), (1.0, 2.0), (5.0, 5.5)]  # frames 32-35, 4-7, 20-21
    idx = oracle_indices(t, spans, 3)
    assert [sum(1 for i in idx if lo <= i <= hi) for lo, hi in [(32, 35), (4, 7), (20, 21)]] == [1, 1, 1]
    idx = oracle_indices(t, spans, 6)  # two rounds: two frames from every span
    assert [sum(1 for i in idx if lo <= i <= hi) for lo, hi in [(32, 35), (4, 7), (20, 21)]] == [2, 2, 2]
    idx = oracle_indices(t, spans, 12)  # all 10 evidence frames, then 2 uniform fill frames
    assert len(idx) == 12 == len(set(idx)) and idx == sorted(idx)
    assert int(evidence_frame_mask(t, spans)[idx].sum()) == 10
    assert set(idx) - set(range(32, 36)) - set(range(4, 8)) - {20, 21} <= set(uniform_indices(40, 12))
    # a span between two sampled frames stands for the frame nearest its centre
    assert oracle_indices(t, [(3.1, 3.2)], 1) == [13]


def test_oracle_hits_evidence_for_every_item_and_fills_to_budget(niah):
    items, videos = niah
    oracle = get_selector("oracle")
    for budget in (1, 4, 8):
        for item, video in zip(items, videos, strict=True):
            idx = oracle.select(video, item, budget)
            assert len(idx) == budget and idx == sorted(set(idx))
            assert evidence_frame_mask(video.timestamps, item.evidence)[idx].any(), (item.id, budget)
    with pytest.raises(RefocusError, match="evidence"):
        oracle.select(videos[0], replace(items[0], evidence=None), 4)


# ---------------------------------------------------------------------------- registry


def test_registry_errors_and_plugins():
    assert {"uniform", "random", "oracle", "policy"} <= set(available_selectors())
    with pytest.raises(RefocusError, match="unknown selector 'nope'.*uniform"):
        get_selector("nope")
    with pytest.raises(RefocusError, match="takes no argument"):
        get_selector("uniform:x")
    with pytest.raises(RefocusError, match="no modes"):
        get_selector("random", mode="greedy")
    with pytest.raises(RefocusError, match="checkpoint directory"):
        get_selector("policy")

    @register_selector("lastframes-test")
    class LastFrames(BaseSelector):
        name = "lastframes-test"

        def _select(self, video, item, budget):
            return list(range(len(video.timestamps) - budget, len(video.timestamps)))

    try:
        sel = get_selector("lastframes-test")
        assert isinstance(sel, Selector)
        assert sel.select(fake_video(10), fake_item("a"), 3) == [7, 8, 9]
        assert "lastframes-test" in available_selectors()
    finally:
        from refocus.selectors import SELECTORS

        SELECTORS.unregister("lastframes-test")


# ---------------------------------------------------------------------------- policy


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, niah):
    from refocus.policy import FramePolicy, FramePolicyConfig
    from refocus.reference.small_model import train_tokenizer

    items, _ = niah
    tokenizer = train_tokenizer([f"{it.question} " + " ".join(it.options) for it in items])
    torch.manual_seed(0)
    config = FramePolicyConfig(
        tokens_per_frame=4,
        vision_config={"image_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
        backbone_config={"vocab_size": len(tokenizer), "hidden_size": 32, "head_dim": 8, "num_heads": 8,
                         "num_hidden_layers": 2},
        head_dim=16,
    )
    path = tmp_path_factory.mktemp("policy")
    FramePolicy(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_policy_greedy_is_deterministic_and_returns_budget_frames(policy_dir, niah):
    items, videos = niah
    sel = get_selector(f"policy:{policy_dir}")
    assert sel.mode == "greedy" and sel.deterministic and sel.image_size == 32
    assert sel.name == f"policy:{policy_dir}"
    first = [sel.select(v, it, 6) for it, v in zip(items[:3], videos[:3], strict=True)]
    for idx, v in zip(first, videos, strict=False):
        assert len(idx) == 6 and idx == sorted(set(idx)) and idx[-1] < len(v.timestamps)
    sel.reseed(123)
    assert [sel.select(v, it, 6) for it, v in zip(items[:3], videos[:3], strict=True)] == first
    assert sel.select(videos[0], items[0], 500) == list(range(len(videos[0].timestamps)))


def test_policy_sample_is_seeded(policy_dir, niah):
    items, videos = niah
    a = get_selector(f"policy:{policy_dir}", mode="sample", seed=1)
    b = get_selector(f"policy:{policy_dir}", mode="sample", seed=1)
    assert not a.deterministic
    runs = [a.select(v, it, 6) for it, v in zip(items[:3], videos[:3], strict=True)]
    assert runs == [b.select(v, it, 6) for it, v in zip(items[:3], videos[:3], strict=True)]
    for idx in runs:
        assert len(idx) == 6 and idx == sorted(set(idx))
    b.reseed(2)
    assert runs != [b.select(v, it, 6) for it, v in zip(items[:3], videos[:3], strict=True)]


def test_question_blind_policy_ignores_the_question(policy_dir, niah, tmp_path):
    """The same weights with ``question_blind``: the selection no longer depends on the question."""
    import dataclasses

    from transformers import AutoTokenizer

    from refocus.policy import BLIND_QUESTION, FramePolicy, tokenize_question

    items, videos = niah
    other = dataclasses.replace(items[1], question=items[0].question)
    assert other.question != items[1].question
    policy = FramePolicy.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    dists = {}
    for blind in (False, True):
        policy.config.question_blind = blind
        policy.save_pretrained(tmp_path / str(blind))
        tokenizer.save_pretrained(tmp_path / str(blind))
        sel = get_selector(f"policy:{tmp_path / str(blind)}", mode="distribution", seed=0)
        assert sel.policy.config.question_blind is blind  # the switch is saved with the checkpoint
        dists[blind] = [sel.selection_distribution(videos[1], it, 5) for it in (items[1], other)]
    # untrained, the question moves the distribution by only ~1e-7 (its state decays), but it does
    assert np.abs(dists[False][0] - dists[False][1]).max() > 1e-8
    np.testing.assert_array_equal(*dists[True])
    ids = tokenize_question(tokenizer, items[1], blind=True)
    assert ids.after.tolist() == tokenize_question(tokenizer, BLIND_QUESTION).after.tolist()


def test_policy_distribution_mode_takes_top_frames(policy_dir, niah):
    items, videos = niah
    sel = get_selector(f"policy:{policy_dir}", mode="distribution", seed=0)
    dist = sel.selection_distribution(videos[1], items[1], 5)
    assert dist.shape == (len(videos[1].timestamps),) and abs(dist.sum() - 1) < 1e-5
    idx = sel.select(videos[1], items[1], 5)
    assert idx == sorted(np.argsort(-dist, kind="stable")[:5].tolist())
    with pytest.raises(RefocusError, match="one of"):
        get_selector(f"policy:{policy_dir}", mode="beam")


def test_policy_selector_runs_in_the_given_dtype(policy_dir, niah, tmp_path):
    items, videos = niah
    fp32 = get_selector(f"policy:{policy_dir}", device="cpu", dtype="float32")
    bf16 = get_selector(f"policy:{policy_dir}", device="cpu", dtype="bfloat16")
    assert next(bf16.policy.parameters()).dtype == torch.bfloat16
    assert next(fp32.policy.parameters()).dtype == torch.float32
    picked = bf16.select(videos[0], items[0], 6)
    assert len(picked) == 6 and picked == sorted(set(picked))
    # the command line reaches the same place
    from refocus.cli import main

    bench = Path(items[0].video).parents[1]
    out = tmp_path / "sel.jsonl"
    assert main(["select", "--policy", str(policy_dir), "--data", str(bench), "--budget", "4",
                 "--out", str(out), "--device", "cpu", "--dtype", "bfloat16"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(len(r["indices"]) == 4 for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_policy_selector_defaults_to_bf16_on_cuda(policy_dir, niah):
    items, videos = niah
    sel = get_selector(f"policy:{policy_dir}")
    param = next(sel.policy.parameters())
    assert param.device.type == "cuda" and param.dtype == torch.bfloat16
    greedy = sel.select(videos[0], items[0], 6)
    cpu = get_selector(f"policy:{policy_dir}", device="cpu", dtype="float32").select(videos[0], items[0], 6)
    assert len(greedy) == 6 and len(set(greedy) & set(cpu)) >= 4  # bf16 may flip near-ties


def test_selector_specs_take_key_value_options():
    from refocus.selectors import parse_spec

    assert parse_spec("policy:runs/x/policy") == ("policy", "runs/x/policy", {})
    assert parse_spec("policy:dir=runs/x,mode=sample") == ("policy", None, {"dir": "runs/x", "mode": "sample"})
    assert parse_spec("policy:/a=b/c") == ("policy", "/a=b/c", {})  # a path stays the bare argument
    assert parse_spec("uniform") == ("uniform", None, {})
    with pytest.raises(RefocusError, match="no option 'colour'"):
        get_selector("random:colour=red")
    with pytest.raises(RefocusError, match="not a policy checkpoint"):
        get_selector("policy:dir=/nonexistent/policy,mode=greedy")
