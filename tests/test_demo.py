"""refocus demo: task configuration and the report's tables (the full run is measured, not tested)."""

from __future__ import annotations

import pytest

from refocus.demo import TASK_BUDGET, TASKS, DemoConfig, write_report
from refocus.errors import RefocusError


def _row(acc, rec, rec_all, cats=None):
    return {"accuracy": acc, "accuracy_std": 0.0, "evidence_recall": rec, "evidence_recall_all": rec_all,
            "per_category": cats or {}, "seconds_per_item": 0.01, "training_reference_calls": None}


def _results(task, selectors):
    return {"task": task, "budget": TASK_BUDGET[task], "selectors": selectors, "heldout_items": 10,
            "splits": {f"reference-{k}": f"/d/reference-{k}/qa.jsonl" for k in TASKS} | {"train": "t", "heldout": "h"},
            "reference": {"trained_now": True, "val_acc_with_evidence_k4": 0.9, "val_acc_without_evidence_k4": float("nan")},
            "filter": {"kept": 5, "total": 10, "tau": 0.1},
            "train": {"policy": {"steps": 3, "reference_calls": 100, "last_metrics": {}}},
            "niah": None, "timings_s": {"synth": 1.0}, "config": {"quick": False}}


def test_task_picks_the_budget_and_bad_tasks_fail():
    assert DemoConfig().task == "query" and DemoConfig().eval_budget == 4
    assert DemoConfig(task="multi").eval_budget == DemoConfig(task="niah").eval_budget == 8
    assert DemoConfig(task="niah", budget=16).eval_budget == 16
    assert DemoConfig.quick_config("multi").task == "multi"
    with pytest.raises(RefocusError, match="unknown demo task"):
        DemoConfig(task="haystack")


def test_the_multi_demo_trains_a_reference_that_can_learn_multi():
    """`multi` gets the recipe's switches (the defaults answer it at chance); the other tasks the
    defaults; a demo's own overrides win, and every task's set is a valid training config."""
    from refocus.demo import TASK_REFERENCE
    from refocus.reference.small_training import SmallReferenceTrainConfig

    multi = DemoConfig(task="multi").reference_overrides
    assert multi["appearance_codes"] is True and multi["fresh_plan_fraction"] > 0 and multi["multi_share"] > 0.5
    assert DemoConfig(task="query").reference_overrides == DemoConfig(task="niah").reference_overrides == {}
    quick = DemoConfig.quick_config("multi").reference_overrides
    assert quick["align_steps"] == 150 and quick["appearance_codes"] is True
    assert set(TASK_REFERENCE) == set(TASKS)
    for task in TASKS:
        SmallReferenceTrainConfig(**DemoConfig(task=task).reference_overrides)


def test_cached_splits_are_keyed_on_the_generators_version(monkeypatch):
    """A new SYNTH_VERSION names new split directories, so a cache written by older generators is
    not reused (nor the reference model trained on it, keyed on the splits' paths)."""
    import refocus.data.synth as synth
    from refocus.demo import _split_key

    before = _split_key(160, (64, 256), 2)
    assert _split_key(160, (64, 256), 2) == before
    monkeypatch.setattr(synth, "SYNTH_VERSION", synth.SYNTH_VERSION + 1)
    assert _split_key(160, (64, 256), 2) != before


def test_query_report_has_the_blind_policy_in_its_headline(tmp_path):
    sel = {name: _row(a, r, r) for name, a, r in [("uniform", 0.3, 0.1), ("random", 0.3, 0.1),
                                                  ("policy-blind", 0.4, 0.3), ("policy", 0.9, 0.95),
                                                  ("oracle", 0.95, 1.0)]}
    results = _results("query", sel) | {"query_blind_ceiling": 0.4}
    text = write_report(tmp_path, results, {"niah": None, "training": None, "filter": None}).read_text()
    assert "task `query`" in text and "**4 frames**" in text
    assert "never reads the question holds the named object at most 0.40" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "0.0100" in line]
    assert [r.split(" | ")[0][2:] for r in rows] == ["uniform", "random", "policy-blind", "policy", "oracle"]
    assert "question withheld" in text and "Per category" not in text and "V-NIAH" not in text
    assert "with_evidence_k4 = 0.900" in text and "without_evidence_k4" not in text  # NaN left out


def test_multi_report_adds_all_spans_and_per_category(tmp_path):
    cats = {"count": {"accuracy": 0.5, "evidence_recall": 0.9, "evidence_recall_all": 0.25, "n": 4},
            "order": {"accuracy": 0.75, "evidence_recall": 1.0, "evidence_recall_all": 0.5, "n": 6}}
    sel = {"uniform": _row(0.3, 0.5, 0.125, cats), "policy": _row(0.6, 0.9, 0.75, cats)}
    text = write_report(tmp_path, _results("multi", sel), {"niah": None, "training": None, "filter": None}).read_text()
    assert "Caveat" not in text  # the blind ceiling is a query matter
    assert "| selector | accuracy | evidence recall | all evidence spans hit |" in text
    assert "| uniform | 0.300 | 0.500 | 0.125 |" in text
    assert "## Per category" in text and "| selector | count | order |" in text
    assert "| policy | 0.500 / 0.900 / 0.250 | 0.750 / 1.000 / 0.500 |" in text


@pytest.mark.slow
@pytest.mark.parametrize("task", ["query", "multi"])
def test_a_tiny_demo_runs_every_stage(task, tmp_path, monkeypatch):
    """The whole demo at toy sizes: every stage runs and writes what the report promises."""
    import json

    import torch

    from refocus import demo

    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    tiny = DemoConfig(task=task, reference_videos=4, train_videos=6, heldout_videos=4, frames=(48, 64), seeds=1,
                      reference={"align_steps": 2, "vision_steps": 2, "steps": 2, "batch_size": 4,
                                 "vision_batch_size": 8, "val_fraction": 0.0},
                      min_train_items=4, train_steps=2)
    monkeypatch.setattr(demo.DemoConfig, "quick_config", classmethod(lambda cls, t="query": tiny))
    threads = torch.get_num_threads()
    try:
        result = demo.run_demo(tmp_path / "out", quick=True, progress=False, task=task)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out"
    names = ["uniform", "random", *(["policy-blind"] if task == "query" else []), "policy", "oracle"]
    assert list(result.results["selectors"]) == names
    assert (out / "reference" / "config.json").is_file() and (out / "policy" / "config.json").is_file()
    assert (out / "policy-blind").is_dir() == (task == "query")
    if task == "query":
        assert json.loads((out / "policy-blind" / "config.json").read_text())["question_blind"] is True
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == task and saved["budget"] == TASK_BUDGET[task] and saved["niah"] is None
    assert (saved["query_blind_ceiling"] is None) == (task != "query")
    if task == "query":
        assert 0.0 < saved["query_blind_ceiling"] <= 1.0
    assert set(saved["splits"]) == {"reference-query", "reference-niah", "reference-multi", "train", "heldout"}
    report = (out / "report.md").read_text()
    assert all(f"| {n} |" in report for n in names)
    assert ("## Per category" in report) == (task == "multi")


def test_side_by_side_training_equals_one_after_another(tmp_path, monkeypatch):
    """The demo's two policies trained in two processes end with the weights they get trained
    one after the other, and a job's error reaches the caller."""
    import torch
    from safetensors.torch import load_file
    from tiny_models import tiny_small_reference_config

    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.demo import train_side_by_side
    from refocus.reference.small_model import save_untrained_small_reference
    from refocus.training.config import GRPOConfig

    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    qa = make_benchmark("query", tmp_path / "q", videos=4, frames=(40, 48), seed=0)
    ref = save_untrained_small_reference(tmp_path / "ref", load_questions(qa), tiny_small_reference_config())
    policy = {"vision_from_reference": True, "tokens_per_frame": 1, "head_dim": 8,
              "backbone_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_heads": 4, "head_dim": 8,
                                  "state_size": 8}}

    def config(**extra) -> GRPOConfig:
        return GRPOConfig(num_generations=4, per_device_train_batch_size=2, selection_sizes=[2], curriculum_starts=[0],
                          max_steps=3, learning_rate=1e-2, learning_rate_reinit=1e-2, bf16=False,
                          gradient_checkpointing=False, save_steps=3, policy={**policy, **extra}, seed=3)

    def jobs(root):
        return {"policy": (qa, ref, root / "a", config()), "policy-blind": (qa, ref, root / "b", config(question_blind=True))}

    threads = torch.get_num_threads()
    try:
        alone = train_side_by_side(jobs(tmp_path / "seq"), progress=False, parallel=False)
        together = train_side_by_side(jobs(tmp_path / "par"), progress=False, parallel=True)
        assert list(together) == ["policy", "policy-blind"]
        for name in alone:
            a = load_file(str(alone[name].policy_dir / "model.safetensors"))
            b = load_file(str(together[name].policy_dir / "model.safetensors"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            assert together[name].reference_calls == alone[name].reference_calls > 0
        broken = jobs(tmp_path / "bad")
        broken["policy-blind"] = (tmp_path / "missing.jsonl", *broken["policy-blind"][1:])
        with pytest.raises(Exception, match="missing.jsonl"):
            train_side_by_side(broken, progress=False, parallel=True)
    finally:
        torch.set_num_threads(threads)
