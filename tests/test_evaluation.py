"""refocus eval / select: metrics consistent with predictions, one decode per size, skipping, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import refocus.video
from refocus.cli import main
from refocus.data.evidence import evidence_frame_mask
from refocus.data.questions import load_questions
from refocus.evaluation import evaluate, write_evaluation
from refocus.selectors import get_selector
from refocus.video.stores import FrameStore


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Six synthetic needle videos (qa.jsonl) and qa_bad.jsonl = the same + a text file named .mp4."""
    from refocus.data.synth import make_benchmark

    root = tmp_path_factory.mktemp("bench")
    qa = make_benchmark("niah", root, videos=6, frames=(32, 48), seed=0)
    (root / "videos" / "broken.mp4").write_text("this is not a video\n")
    bad = json.loads(qa.read_text().splitlines()[0])
    bad.update(id="broken-1", video="videos/broken.mp4")
    (root / "qa_bad.jsonl").write_text(qa.read_text() + json.dumps(bad) + "\n")
    return root


@pytest.fixture(scope="module")
def items(bench):
    return load_questions(bench / "qa.jsonl")


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory, items):
    """An untrained tiny small-reference LLaVA at 32 px: a valid REF directory."""
    from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference

    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(32, 64), vision_depths=(1, 1), vision_heads=(2, 2),
                               text_hidden=32, text_layers=1, text_heads=2, max_position_embeddings=1024)
    return save_untrained_small_reference(tmp_path_factory.mktemp("ref"), items, cfg)


@pytest.fixture(scope="module")
def answerer(ref_dir):
    from refocus.reference import load_reference

    return load_reference(ref_dir)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, items):
    """A tiny untrained policy that wants 48 px frames (the answerer wants 32 px)."""
    from refocus.policy import FramePolicy, FramePolicyConfig
    from refocus.reference.small_model import train_tokenizer

    tokenizer = train_tokenizer([f"{it.question} " + " ".join(it.options) for it in items])
    torch.manual_seed(0)
    config = FramePolicyConfig(
        tokens_per_frame=4,
        vision_config={"image_size": 48, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
        backbone_config={"vocab_size": len(tokenizer), "hidden_size": 32, "head_dim": 8, "num_heads": 8,
                         "num_hidden_layers": 2},
        head_dim=16,
    )
    path = tmp_path_factory.mktemp("policy")
    FramePolicy(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class CountingDecoder:
    """Counts calls to the real ``refocus.video.load_video`` (FrameStore imports it per call)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, int]] = []
        real = refocus.video.load_video

        def counting(path, *args, **kwargs):
            self.calls.append((str(path), kwargs.get("size")))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(refocus.video, "load_video", counting)


# ---------------------------------------------------------------------------- library


def test_oracle_recall_is_one_and_deterministic_runs_once(items, answerer):
    result = evaluate(items, answerer, get_selector("oracle"), [2, 4], seeds=3, progress=False)
    for k, res in result["budgets"].items():
        assert res["budget"] == k and res["evidence_recall"] == 1.0 and res["evidence_recall_std"] == 0.0
        assert res["seeds"] == [0] and res["deterministic"] and res["accuracy_std"] == 0.0
        assert res["n_items"] == 6 and res["skipped"] == []
    assert len(result["predictions"]) == 6 * 2  # once per item and budget, not per seed
    assert all(r["hit_evidence"] for r in result["predictions"])


def test_metrics_agree_with_predictions(items, answerer, bench, tmp_path):
    result = evaluate(items, answerer, get_selector("random"), [4, 8], seeds=[0, 1, 2], progress=False)
    out = write_evaluation(result, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 2 * 3
    top = json.loads(out.read_text())
    assert set(top["budgets"]) == {"4", "8"}
    by_id = {it.id: it for it in items}
    for k in (4, 8):
        res = json.loads((tmp_path / "out" / f"budget-{k}" / "results.json").read_text())
        assert res == top["budgets"][str(k)]
        acc = [np.mean([r["correct"] for r in rows if r["budget"] == k and r["seed"] == s]) for s in (0, 1, 2)]
        rec = [np.mean([r["hit_evidence"] for r in rows if r["budget"] == k and r["seed"] == s]) for s in (0, 1, 2)]
        assert res["accuracy"] == pytest.approx(np.mean(acc), abs=1e-6)
        assert res["accuracy_std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-6)
        assert res["evidence_recall"] == pytest.approx(np.mean(rec), abs=1e-6)
        assert sum(c["n"] for c in res["per_category"].values()) == res["n_items"] == 6
        for cat, c in res["per_category"].items():
            mine = [r for r in rows if r["budget"] == k and r["category"] == cat]
            assert c["accuracy"] == pytest.approx(np.mean([r["correct"] for r in mine]), abs=1e-6)
        assert res["seconds_per_item"] > 0
    store = FrameStore()
    for r in rows[::7]:
        item = by_id[r["id"]]
        assert r["prediction"] == item.letters[int(np.argmax(r["logits"]))]
        assert r["correct"] == (r["prediction"] == item.answer == r["answer"])
        assert (r["margin"] > 0) == r["correct"]
        frames = store.get(item, answerer.image_size)
        assert r["timestamps"] == pytest.approx(frames.timestamps[r["indices"]].tolist())
        assert r["hit_evidence"] == bool(evidence_frame_mask(frames.timestamps, item.evidence)[r["indices"]].any())
        direct = answerer.option_logits(item, frames.frames, [r["indices"]])[0]
        assert np.allclose(direct, r["logits"], atol=1e-4)


def test_budgets_and_seeds_decode_each_video_once_per_size(items, answerer, policy_dir, monkeypatch):
    decoder = CountingDecoder(monkeypatch)
    store = FrameStore()
    policy = get_selector(f"policy:{policy_dir}", mode="sample")
    assert policy.image_size == 48 != answerer.image_size
    result = evaluate(items, answerer, policy, [2, 4, 8], seeds=2, store=store, progress=False)
    assert len(result["predictions"]) == 6 * 3 * 2
    assert sorted(decoder.calls) == sorted((str(it.video), s) for it in items for s in (32, 48))
    evaluate(items, answerer, get_selector("uniform"), [2, 4, 8], store=store, progress=False)
    assert len(decoder.calls) == 12  # a shared store serves the next selector without decoding
    res = result["budgets"][4]
    assert not res["deterministic"] and res["seeds"] == [0, 1] and res["mode"] == "sample"
    for r in result["predictions"]:
        assert len(r["indices"]) == r["budget"] and r["indices"] == sorted(set(r["indices"]))


def test_bad_video_and_missing_evidence_are_skipped(bench, answerer):
    items = load_questions(bench / "qa_bad.jsonl")
    items[1] = replace(items[1], evidence=None)
    result = evaluate(items, answerer, get_selector("oracle"), 4, seeds=1, progress=False)
    reasons = {s["id"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"broken-1", items[1].id}
    assert "broken.mp4" in reasons["broken-1"] and "evidence" in reasons[items[1].id]
    assert result["budgets"][4]["n_items"] == 5
    assert {r["id"] for r in result["predictions"]} == {it.id for it in items} - set(reasons)


def test_selection_only_run_without_answerer(items):
    result = evaluate(items, None, get_selector("uniform"), [1, 64], progress=False)
    assert result["budgets"][1]["accuracy"] is None
    assert result["budgets"][64]["evidence_recall"] == 1.0  # every frame of <= 48-frame videos
    assert all(r["prediction"] is None for r in result["predictions"])


def test_evidence_recall_all_needs_every_span(tmp_path):
    from refocus.data.evidence import evidence_spans_frames, hits_all_evidence
    from refocus.data.synth import make_benchmark

    spans = [np.array([2, 3]), np.array([9]), np.array([], dtype=np.int64)]
    assert hits_all_evidence([3, 9], spans) is True  # the empty span cannot be hit: ignored
    assert hits_all_evidence([2, 3, 5], spans) is False
    assert hits_all_evidence([1], [np.array([], dtype=np.int64)]) is False
    assert hits_all_evidence([1], []) is None

    multi = load_questions(make_benchmark("multi", tmp_path / "multi", videos=6, frames=(40, 56), seed=1))
    store = FrameStore()
    result = evaluate(multi, None, get_selector("oracle"), [1, 16], store=store, progress=False)
    one, many = result["budgets"][1], result["budgets"][16]
    assert one["evidence_recall"] == many["evidence_recall"] == 1.0
    assert many["evidence_recall_all"] == 1.0  # at most 6 events: one frame each fits in 16
    single = [len(evidence_spans_frames(store.get(it, 64).timestamps, it.evidence)) == 1 for it in multi]
    assert one["evidence_recall_all"] == pytest.approx(np.mean(single), abs=1e-6)  # one frame covers one span
    assert 0 < one["evidence_recall_all"] < 1
    for r in result["predictions"]:
        assert r["hit_all_evidence"] == (r["budget"] == 16 or single[[it.id for it in multi].index(r["id"])])
    assert set(one["per_category"]) == {"order", "count", "compare"}
    assert one["per_category"]["order"]["evidence_recall_all"] == 0.0  # three events, one frame


# ---------------------------------------------------------------------------- CLI


def test_cli_eval_several_budgets(bench, ref_dir, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text((bench / "qa_bad.jsonl").read_text().replace("videos/", f"{bench}/videos/") + '{"id": "x"}\n')
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(qa), "--answerer", str(ref_dir), "--selector", "uniform",
                 "--budget", "4,8", "--out", str(out), "--seeds", "3"])
    assert code == 0
    top = json.loads((out / "results.json").read_text())
    assert top["selector"] == "uniform" and set(top["budgets"]) == {"4", "8"}
    res = top["budgets"]["4"]
    assert res["n_items"] == 6 and res["seeds"] == [0] and res["deterministic"]
    assert [s["id"] for s in res["skipped"]] == [None, "broken-1"]  # invalid line, bad video
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6 * 2
    assert json.loads((out / "budget-8" / "results.json").read_text())["budget"] == 8
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("eval uniform: @4 accuracy") and "(6 items, 2 skipped" in line and str(out) in line


def test_cli_eval_single_budget_and_errors(bench, ref_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(bench), "--answerer", str(ref_dir), "--selector", "random",
                 "--budget", "4", "--out", str(out), "--seeds", "2", "--seed", "7"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["budget"] == 4 and res["seeds"] == [7, 8] and res["n_items"] == 6
    assert "eval random@4: accuracy" in capsys.readouterr().err
    assert main(["eval", "--data", str(bench), "--answerer", str(ref_dir), "--selector", "nope",
                 "--budget", "4", "--out", str(out)]) == 1
    assert "error: unknown selector 'nope'" in capsys.readouterr().err
    assert main(["eval", "--data", str(bench), "--answerer", str(ref_dir), "--selector", "uniform",
                 "--budget", "4,x", "--out", str(out)]) == 1
    assert "--budget" in capsys.readouterr().err


def test_cli_select_writes_selection_file(bench, policy_dir, tmp_path, capsys):
    sel = tmp_path / "sel.jsonl"
    assert main(["select", "--policy", str(policy_dir), "--data", str(bench / "qa_bad.jsonl"),
                 "--budget", "4", "--out", str(sel), "--seed", "3"]) == 0
    records = [json.loads(line) for line in sel.read_text().splitlines()]
    assert len(records) == 7
    errors = [r for r in records if "error" in r]
    assert [r["id"] for r in errors] == ["broken-1"] and "broken.mp4" in errors[0]["error"]
    items = {it.id: it for it in load_questions(bench / "qa.jsonl")}
    for r in records:
        if "error" in r:
            continue
        assert set(r) >= {"id", "video", "selector", "budget", "indices", "timestamps", "num_frames", "fps", "seed"}
        assert r["selector"] == f"policy:{policy_dir}" and r["mode"] == "greedy" and r["seed"] == 3
        assert r["budget"] == 4 and r["indices"] == sorted(set(r["indices"])) and len(r["indices"]) == 4
        video = refocus.video.load_video(items[r["id"]].video, size=48)
        assert r["num_frames"] == video.num_frames and r["fps"] == pytest.approx(video.fps)
        assert r["timestamps"] == pytest.approx(video.timestamps[r["indices"]].tolist())
    assert "1 skipped" in capsys.readouterr().err
    assert main(["select", "--selector", "uniform", "--policy", str(policy_dir), "--data", str(bench),
                 "--budget", "4", "--out", str(sel)]) == 1
    assert "exactly one of" in capsys.readouterr().err
    assert main(["select", "--selector", "uniform", "--data", str(bench), "--budget", "4",
                 "--out", str(sel)]) == 0
    assert json.loads(sel.read_text().splitlines()[0])["indices"] == [
        ((2 * j + 1) * json.loads(sel.read_text().splitlines()[0])["num_frames"]) // 8 for j in range(4)
    ]
