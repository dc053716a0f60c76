"""Frame-Voyager baseline: combination sampling, ranking order and labels, the ranking loss by
hand, training, save/load, resume, the voyager selector, run_voyager's call budget, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refocus.data.questions import load_questions
from refocus.data.synth import make_benchmark
from refocus.errors import ConfigError, RefocusError
from refocus.reference import load_reference, margin_rewards
from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference
from refocus.voyager.collect import (
    clip_bounds,
    collect_rankings,
    load_rankings,
    question_quota,
    sample_combinations,
)
from refocus.voyager.config import CollectConfig, VoyagerConfig, load_voyager_config
from refocus.voyager.model import best_combination, combination_scores, first_step_logprobs
from refocus.voyager.ranking import (
    loss_ranks,
    pairwise_ranking_loss,
    preference_pairs,
    reference_losses,
)
from refocus.voyager.train import VoyagerTrainer, run_voyager, train_voyager

TINY_POLICY = {  # as configs/voyager.yaml: tower, word embeddings and projector from the reference
    "vision_from_reference": True,
    "language_from_reference": True,
    "tokens_per_frame": 1,
    "head_dim": 8,
    "backbone_config": {"num_hidden_layers": 2, "head_dim": 8, "state_size": 8},
}
TINY_COLLECT = CollectConfig(combination_size=2, clip_length=8, max_combinations=6)


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_benchmark("niah", tmp_path_factory.mktemp("niah"), videos=4, frames=(16, 24), seed=0)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, bench) -> Path:
    """An untrained small reference model: real architecture, random weights."""
    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1), vision_heads=(2, 2),
                               text_hidden=32, text_layers=1, text_heads=2)
    return save_untrained_small_reference(tmp_path_factory.mktemp("ref"), load_questions(bench), cfg)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, bench, reference_dir) -> Path:
    out = tmp_path_factory.mktemp("collect")
    collect_rankings(load_questions(bench), load_reference(reference_dir), out, TINY_COLLECT,
                     reference_path=reference_dir, progress=False)
    return out


def tiny_config(**kw) -> VoyagerConfig:
    base = dict(max_steps=4, per_device_train_batch_size=2, combinations_per_question=4, min_loss_gap=0.0,
                learning_rate=1e-2, learning_rate_reinit=1e-2, save_steps=2, save_total_limit=10,
                policy=TINY_POLICY, seed=3)
    base.update(kw)
    return load_voyager_config(**base)


# ---------------------------------------------------------------------------- sampling


def test_clip_bounds_examples():
    assert clip_bounds(70, 32, 4) == [(0, 32), (32, 64), (64, 70)]
    assert clip_bounds(70, 32, 8) == [(0, 32), (32, 70)]  # a 6-frame tail holds no 8-combination
    assert clip_bounds(10, 32, 4) == [(0, 10)]
    assert clip_bounds(64, 32, 4) == [(0, 32), (32, 64)]


@pytest.mark.parametrize("num_frames,size,clip,cap", [(23, 2, 8, 6), (100, 4, 32, 50), (9, 3, 4, 1000), (40, 4, 16, 7)])
def test_sample_combinations_distinct_inside_clips_and_spread(num_frames, size, clip, cap):
    combos = sample_combinations(num_frames, size, clip, cap, np.random.default_rng(0))
    bounds = clip_bounds(num_frames, clip, size)
    total = sum(math.comb(b - a, size) for a, b in bounds)
    assert len(combos) == min(cap, total)
    assert len({c.indices for c in combos}) == len(combos)
    per_clip = np.zeros(len(bounds), dtype=int)
    for c in combos:
        a, b = bounds[c.clip]
        assert list(c.indices) == sorted(set(c.indices)) and len(c.indices) == size
        assert a <= c.indices[0] and c.indices[-1] < b
        per_clip[c.clip] += 1
    if total > cap:  # round robin: clip counts differ by at most one while no clip runs dry
        full = [math.comb(b - a, size) for a, b in bounds]
        open_counts = [n for n, f in zip(per_clip, full, strict=True) if n < f]
        assert max(open_counts, default=0) - min(open_counts, default=0) <= 1
    again = sample_combinations(num_frames, size, clip, cap, np.random.default_rng(0))
    assert again == combos  # seeded


def test_sample_combinations_short_video():
    assert sample_combinations(3, 4, 8, 10, np.random.default_rng(0)) == []
    assert len(sample_combinations(4, 4, 8, 10, np.random.default_rng(0))) == 1


def test_question_quota_shares_a_budget():
    assert question_quota(32, None, 5) == 32
    assert question_quota(32, 100, 10) == 10
    assert question_quota(8, 100, 10) == 8
    assert question_quota(32, 5, 10) == 2  # a pair while calls are left
    assert question_quota(32, 1, 3) == 0


def test_collect_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="clip_length"):
        CollectConfig(combination_size=8, clip_length=4)
    with pytest.raises(ConfigError, match="max_combinations"):
        CollectConfig(max_combinations=1)
    with pytest.raises(ConfigError, match="scoring"):
        VoyagerConfig(scoring="list")


# ---------------------------------------------------------------------------- math


def test_reference_losses_is_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)) * 3
    want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.full((5,), 2), reduction="none")
    np.testing.assert_allclose(reference_losses(logits, 2), want.numpy(), rtol=1e-12)
    big = np.array([[1000.0, 0.0], [0.0, 1000.0]])  # no overflow
    np.testing.assert_allclose(reference_losses(big, 0), [0.0, 1000.0])
    assert loss_ranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist() == [2, 0, 3, 1]


def test_pairwise_ranking_loss_by_hand():
    scores = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    losses = torch.tensor([[0.1, 0.5, 0.3]])
    # pairs (better, worse): (0, 1), (0, 2), (2, 1); s_i - s_j = 1, -1, 2
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 - softplus
    loss, stats = pairwise_ranking_loss(scores, losses)
    assert loss.item() == pytest.approx((sp(-1) + sp(1) + sp(-2)) / 3, rel=1e-6)
    assert stats["pairs"] == 3 and stats["pair_accuracy"] == pytest.approx(2 / 3)
    assert stats["score_gap"] == pytest.approx(2 / 3)
    loss.backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d/ds_0 of mean softplus(-(d)): -(sig(-1) + sig(1)) / 3, etc.
    want = [-(sig(-1) + sig(1)) / 3, (sig(-1) + sig(-2)) / 3, (sig(1) - sig(-2)) / 3]
    np.testing.assert_allclose(scores.grad[0].numpy(), want, rtol=1e-5)

    margin_loss, _ = pairwise_ranking_loss(scores, losses, margin=0.5)
    assert margin_loss.item() == pytest.approx((sp(-0.5) + sp(1.5) + sp(-1.5)) / 3, rel=1e-6)
    gap_loss, gap_stats = pairwise_ranking_loss(scores, losses, min_gap=0.25)  # only (0, 1) differs by > 0.25
    assert gap_stats["pairs"] == 1 and gap_loss.item() == pytest.approx(sp(-1), rel=1e-6)
    valid = torch.tensor([[True, True, False]])
    _, valid_stats = pairwise_ranking_loss(scores, losses, valid=valid)
    assert valid_stats["pairs"] == 1
    none, none_stats = pairwise_ranking_loss(scores, torch.zeros(1, 3))
    assert none.item() == 0.0 and none_stats["pairs"] == 0
    assert preference_pairs(losses).sum() == 3 and not preference_pairs(losses).diagonal(dim1=1, dim2=2).any()


# ---------------------------------------------------------------------------- collection


def test_collection_ranked_by_reference_loss(tmp_path, bench, reference_dir, collection):
    items, rankings, summary = load_rankings(collection)
    ref = load_reference(reference_dir)
    from refocus.video.stores import FrameStore

    store = FrameStore(4.0, 512)
    total = 0
    assert [it.id for it in items] == [r["id"] for r in rankings] and len(items) == 4
    for item, row in zip(items, rankings, strict=True):
        combos = row["combinations"]
        total += len(combos)
        assert len(combos) == TINY_COLLECT.max_combinations and row["combination_size"] == 2
        losses = [c["loss"] for c in combos]
        assert losses == sorted(losses)
        assert [c["rank"] for c in combos] == list(range(len(combos)))
        frames = store.get(item, ref.image_size).frames
        assert row["num_frames"] == len(frames)
        # the label is the cross-entropy of the answer, recomputed from a fresh reference call
        logits = ref.option_logits(item, frames, [c["indices"] for c in combos])
        ce = torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64),
                                               torch.full((len(combos),), item.answer_index), reduction="none")
        np.testing.assert_allclose(losses, ce.numpy(), atol=1e-5)
        np.testing.assert_allclose([c["margin"] for c in combos], margin_rewards(logits, item.answer_index), atol=1e-5)
        np.testing.assert_allclose([c["logits"] for c in combos], logits, atol=1e-5)
    assert summary["reference_calls"] == total == 24
    assert summary["config"]["combination_size"] == 2 and summary["skipped"] == []
    assert Path(summary["reference"]) == reference_dir.resolve()


def test_collection_honours_a_call_budget_and_skips_short_videos(tmp_path, bench, reference_dir):
    ref = load_reference(reference_dir)
    items = load_questions(bench)
    res = collect_rankings(items, ref, tmp_path / "b", TINY_COLLECT, max_reference_calls=9, progress=False)
    assert res.reference_calls <= 9 and res.questions == 4  # 2 + 2 + 2 + 3
    res = collect_rankings(items, ref, tmp_path / "c", TINY_COLLECT, max_reference_calls=5, progress=False)
    assert res.reference_calls == 4 and res.questions == 2
    assert [s["reason"] for s in res.skipped] == ["reference-call budget exhausted"] * 2
    big = CollectConfig(combination_size=30, clip_length=30, max_combinations=4)  # videos have <= 24 frames
    res = collect_rankings(items, ref, tmp_path / "d", big, progress=False)
    assert res.questions == 0 and len(res.skipped) == 4 and "a ranking needs 2" in res.skipped[0]["reason"]


# ---------------------------------------------------------------------------- scoring


def _policy_inputs(collection, reference_dir, cfg=None):
    items, rankings, summary = load_rankings(collection)
    trainer = VoyagerTrainer(cfg or tiny_config(), items, rankings, summary, load_reference(reference_dir),
                             Path("/nonexistent-unused"), progress=False)
    from refocus.policy import tokenize_question

    feats = [trainer.features.get(it) for it in items]
    ids = [tokenize_question(trainer.tokenizer, it) for it in items]
    return trainer, feats, ids, rankings


def test_scores_agree_with_the_policy_sampler_and_replay(collection, reference_dir):
    trainer, feats, ids, _ = _policy_inputs(collection, reference_dir)
    policy = trainer.policy.eval()
    with torch.no_grad():
        logp = first_step_logprobs(policy, feats, ids)  # (B, T) padded
        for b, f in enumerate(feats):
            t = f.shape[0]
            assert torch.isinf(logp[b, t:]).all() and torch.isfinite(logp[b, :t]).all()
            one = torch.arange(t).view(1, t, 1)
            replay, _ = policy.replay_logprobs([f], [ids[b]], one)  # step 1 of every frame
            torch.testing.assert_close(logp[b, :t], replay[0, :, 0], atol=1e-5, rtol=1e-5)
            greedy = policy.select([f], [ids[b]], k=1, mode="greedy")
            assert int(greedy.order[0, 0, 0]) == int(logp[b, :t].argmax())
        combos = torch.tensor([[[0, 3, 5], [5, 1, 2]]] * len(feats))
        s = combination_scores(policy, feats, ids, combos, "set")
        torch.testing.assert_close(s, logp.gather(1, combos.view(len(feats), -1)).view(len(feats), 2, 3).mean(-1))
        seq = combination_scores(policy, feats, ids, combos, "sequence")
        replay, _ = policy.replay_logprobs(feats, ids, combos.sort(-1).values)
        torch.testing.assert_close(seq, replay.sum(-1))
        # the set argmax is the top-k of step 1 and beats every other combination of a small video
        k = 3
        best = best_combination(policy, feats[0], ids[0], k, "set")
        top = combination_scores(policy, [feats[0]], [ids[0]], torch.tensor([[best]]), "set")
        rng = np.random.default_rng(0)
        others = torch.tensor([[sorted(rng.choice(feats[0].shape[0], k, replace=False)) for _ in range(50)]])
        assert (combination_scores(policy, [feats[0]], [ids[0]], others, "set") <= top + 1e-6).all()


# ---------------------------------------------------------------------------- training


def _fixed_batch_loss(trainer, feats, ids, rankings, scoring):
    """Ranking loss of every labelled combination of every question (no sampling)."""
    trainer.policy.eval()
    total, accs = 0.0, []
    with torch.no_grad():
        for f, q, row in zip(feats, ids, rankings, strict=True):
            combos = torch.tensor([[c["indices"] for c in row["combinations"]]])
            losses = torch.tensor([[c["loss"] for c in row["combinations"]]])
            s = combination_scores(trainer.policy, [f], [q], combos, scoring)
            loss, stats = pairwise_ranking_loss(s, losses)
            total += float(loss)
            accs.append(stats["pair_accuracy"])
    return total / len(feats), float(np.mean(accs))


@pytest.mark.parametrize("scoring", ["set", "sequence"])
def test_training_lowers_the_ranking_loss_and_logs_metrics(tmp_path, collection, reference_dir, scoring):
    cfg = tiny_config(scoring=scoring, max_steps=25, per_device_train_batch_size=4, combinations_per_question=6,
                      lr_scheduler_type="constant", save_steps=100)
    items, rankings, summary = load_rankings(collection)
    trainer = VoyagerTrainer(cfg, items, rankings, summary, load_reference(reference_dir), tmp_path, progress=False)
    from refocus.policy import tokenize_question

    feats = [trainer.features.get(it) for it in items]
    ids = [tokenize_question(trainer.tokenizer, it) for it in items]
    before_loss, before_acc = _fixed_batch_loss(trainer, feats, ids, rankings, scoring)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    result = trainer.train()
    after_loss, after_acc = _fixed_batch_loss(trainer, feats, ids, rankings, scoring)
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)  # measured: ~0.7 -> ~0.01
    assert after_acc > max(before_acc, 0.9)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 26))
    for key in ("train/loss", "train/pair_accuracy", "train/pairs", "train/score_gap", "train/grad_norm",
                "train/lr", "time/step"):
        assert key in rows[-1], key
    assert 0.0 <= rows[-1]["train/pair_accuracy"] <= 1.0 and rows[-1]["train/pairs"] > 0
    assert result.reference_calls == 24 and result.scoring == scoring
    # every trainable parameter moved, except the value head in set scoring (it is never read there)
    for name, p in trainer.policy.named_parameters():
        unused = scoring == "set" and name.startswith("value_head.")
        if p.requires_grad and not unused:
            assert not torch.equal(before[name], p.detach()), f"{name} did not change"
        else:
            assert torch.equal(before[name], p.detach()), f"{name} changed"


def test_save_load_gives_identical_scores_and_selections(tmp_path, bench, collection, reference_dir):
    from refocus.policy import FramePolicy, tokenize_question
    from refocus.selectors import get_selector
    from refocus.video.stores import FrameStore

    result = train_voyager(collection, tmp_path, tiny_config(max_steps=3, scoring="set"), progress=False)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["reference_calls"] == 24 and summary["steps"] == 3 and summary["scoring"] == "set"
    assert json.loads((result.policy_dir / "voyager.json").read_text())["scoring"] == "set"
    loaded = FramePolicy.from_pretrained(result.policy_dir).eval()
    items, rankings, _ = load_rankings(collection)
    trainer, feats, ids, _ = _policy_inputs(collection, reference_dir)
    trainer.policy.load_state_dict(load_file(result.policy_dir / "model.safetensors"))
    combos = torch.tensor([[c["indices"] for c in r["combinations"]] for r in rankings])
    with torch.no_grad():
        a = combination_scores(trainer.policy.eval(), feats, ids, combos, "set")
        feats2 = [loaded.encode_frames(FrameStore().get(it, loaded.config.image_size).frames) for it in items]
        b = combination_scores(loaded, feats2, ids, combos, "set")
    assert torch.equal(a, b)

    for spec in (f"voyager:{tmp_path}", f"voyager:{result.policy_dir}"):  # run dir or policy dir
        sel = get_selector(spec)
        assert sel.deterministic and sel.mode == "top-k"
        for item in items:
            video = FrameStore().get(item, sel.image_size)
            picked = sel.select(video, item, 5)
            assert picked == sorted(set(picked)) and len(picked) == 5
            assert all(0 <= i < len(video.timestamps) for i in picked)
            with torch.no_grad():
                logp = first_step_logprobs(loaded, [sel.prepare(video, item)], [tokenize_question(sel.tokenizer, item, sel.policy.config.prompt_template)])[0]
            assert picked == sorted(torch.topk(logp, 5).indices.tolist())
            assert sel.select(video, item, 500) == list(range(len(video.timestamps)))


def test_sequence_selector_is_greedy_decoding(tmp_path, bench, collection):
    from refocus.policy import tokenize_question
    from refocus.selectors import get_selector
    from refocus.video.stores import FrameStore

    train_voyager(collection, tmp_path, tiny_config(max_steps=2, scoring="sequence"), progress=False)
    sel = get_selector(f"voyager:{tmp_path}")
    assert sel.scoring == "sequence" and sel.mode == "greedy"
    item = load_questions(bench)[1]
    video = FrameStore().get(item, sel.image_size)
    picked = sel.select(video, item, 4)
    out = sel.policy.select([sel.prepare(video, item)], [tokenize_question(sel.tokenizer, item, sel.policy.config.prompt_template)], k=4, mode="greedy")
    assert picked == out.indices[0, 0].tolist() and len(set(picked)) == 4


def test_selector_errors(tmp_path):
    from refocus.selectors import get_selector

    with pytest.raises(RefocusError, match="voyager:DIR"):
        get_selector("voyager")
    with pytest.raises(RefocusError, match="no voyager.json"):
        get_selector(f"voyager:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RefocusError, match="policy:DIR"):
        get_selector(f"voyager:{tmp_path}")


def test_resume_equals_uninterrupted(tmp_path, collection):
    full = tmp_path / "full"
    train_voyager(collection, full, tiny_config(), progress=False)
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000004")
    shutil.rmtree(crashed / "policy")
    (crashed / "checkpoints" / "latest").write_text("step-000002\n")
    result = train_voyager(collection, crashed, tiny_config(), resume=True, progress=False)
    assert result.steps == 4
    a, b = load_file(full / "policy" / "model.safetensors"), load_file(crashed / "policy" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5
    steps = [json.loads(x)["step"] for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    with pytest.raises(RefocusError, match="no checkpoint"):
        train_voyager(collection, tmp_path / "empty", tiny_config(), resume=True, progress=False)


def test_run_voyager_at_a_call_budget(tmp_path, bench, reference_dir):
    out = run_voyager(bench, reference_dir, tmp_path, collect=TINY_COLLECT,
                      config=tiny_config(max_steps=2), max_reference_calls=10, progress=False)
    assert out["reference_calls"] <= 10 and out["questions"] == 4 and out["steps"] == 2
    assert (Path(out["policy_dir"]) / "model.safetensors").is_file()
    assert json.loads((tmp_path / "train" / "train_summary.json").read_text())["reference_calls"] == out["reference_calls"]


def test_cli_collect_train_eval(tmp_path, bench, reference_dir):
    from refocus.cli import main

    col, run = tmp_path / "col", tmp_path / "run"
    assert main(["voyager", "collect", "--data", str(bench), "--reference", str(reference_dir), "--out", str(col),
                 "--combination-size", "2", "--max-combinations", "4", "--clip-length", "6"]) == 0
    rows = [json.loads(x) for x in (col / "rankings.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["combinations"]) == 4 for r in rows)
    assert all(c["indices"][1] - c["indices"][0] < 6 for r in rows for c in r["combinations"])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("max_steps: 2\nper_device_train_batch_size: 2\ncombinations_per_question: 4\n"
                   f"policy: {json.dumps(TINY_POLICY)}\n")
    assert main(["voyager", "train", "--data", str(col), "--out", str(run), "--config", str(cfg)]) == 0
    assert (run / "policy" / "voyager.json").is_file()
    assert main(["eval", "--data", str(bench), "--answerer", str(reference_dir), "--selector", f"voyager:{run}",
                 "--budget", "3", "--out", str(tmp_path / "eval")]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["n_items"] == 4 and res["mode"] == "greedy"  # sequence scoring by default
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    assert main(["voyager", "train", "--data", str(col), "--out", str(run), "--config", str(bad)]) == 1
    assert main(["voyager", "train", "--data", str(tmp_path), "--out", str(run)]) == 1
