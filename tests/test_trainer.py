"""GRPO trainer: metrics, checkpoints, resume == uninterrupted, NaN handling, bad items, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refocus.data.questions import load_questions, write_questions
from refocus.data.synth import make_benchmark
from refocus.errors import ConfigError
from refocus.reference import load_reference
from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference
from refocus.training.config import GRPOConfig, load_config
from refocus.training.train import train_policy
from refocus.training.trainer import GRPOTrainer, TrainingDiverged

TINY_POLICY = {
    "vision_from_reference": True,
    "tokens_per_frame": 1,
    "head_dim": 8,
    "backbone_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_heads": 4, "head_dim": 8, "state_size": 8},
}


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("niah")
    return make_benchmark("niah", out, videos=4, frames=(16, 24), seed=0)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, bench) -> Path:
    """An untrained small reference model: real architecture, random weights."""
    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1), vision_heads=(2, 2),
                               text_hidden=32, text_layers=1, text_heads=2)
    return save_untrained_small_reference(tmp_path_factory.mktemp("ref"), load_questions(bench), cfg)


def tiny_config(**kw) -> GRPOConfig:
    base = dict(num_generations=4, per_device_train_batch_size=2, selection_sizes=[2, 3],
                curriculum_starts=[0, 2], max_steps=4, learning_rate=1e-2, learning_rate_reinit=1e-2,
                bf16=False, gradient_checkpointing=False, save_steps=2, save_total_limit=10,
                policy=TINY_POLICY, seed=3)
    base.update(kw)
    if base["max_steps"] <= base["curriculum_starts"][-1]:  # a curriculum stage past the run is rejected
        base.update(selection_sizes=base["selection_sizes"][:1], curriculum_starts=[0])
    return GRPOConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_train_logs_metrics_checkpoints_and_updates_all_trainable_params(tmp_path, bench, reference_dir):
    ref = load_reference(reference_dir)
    trainer = GRPOTrainer(tiny_config(max_steps=3, save_steps=2), load_questions(bench), ref, tmp_path, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    result = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("train/loss", "reward/mean", "reward/std", "reward/frac_zero_std", "reward/accuracy",
                "select/entropy", "select/temporal_entropy", "select/k", "train/clip_ratio",
                "train/grad_norm", "train/lr", "time/sample", "time/reward", "time/update"):
        assert key in rows[-1], key
    assert [r["select/k"] for r in rows] == [2, 2, 3]  # curriculum 2 -> 3 at step 2
    assert 0.0 <= rows[-1]["reward/accuracy"] <= 1.0
    assert 0.0 <= rows[-1]["reward/evidence_recall"] <= 1.0  # niah items carry evidence spans
    assert result.reference_calls == 3 * 2 * 4
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000002", "step-000003"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert (result.policy_dir / "model.safetensors").is_file()
    after = dict(trainer.policy.named_parameters())
    for name, p in after.items():
        if p.requires_grad:  # every trainable parameter moved (TRL's check)
            assert not torch.equal(before[name], p.detach()), f"{name} did not change"
        else:  # the frozen encoder did not
            assert torch.equal(before[name], p.detach()), f"frozen {name} changed"


def test_evidence_recall_counts_candidates_holding_an_evidence_frame():
    from types import SimpleNamespace

    from refocus.data.questions import QAItem
    from refocus.training.trainer import _Batch

    def item(evidence):
        return QAItem(id="q", video=Path("v.mp4"), question="?", options=("a", "b"), answer="A", evidence=evidence)

    frames = SimpleNamespace(timestamps=np.arange(8) * 0.5)  # frames 2, 3 lie in [1.0, 2.0)
    batch = _Batch([item(((1.0, 2.0),)), item(None)], [], [], [frames, frames])
    indices = torch.tensor([[[0, 1], [2, 5], [3, 4], [6, 7]], [[2, 3]] * 4])
    # Item 1: candidates 2 and 3 of 4 hold an evidence frame; item 2 has no spans and is left out.
    assert GRPOTrainer.evidence_recall(batch, SimpleNamespace(indices=indices)) == 0.5
    no_spans = _Batch([item(None)], [], [], [frames])
    assert np.isnan(GRPOTrainer.evidence_recall(no_spans, SimpleNamespace(indices=indices[1:])))


def test_reward_floor_raises_margins_before_the_advantages(tmp_path, bench, reference_dir):
    items, ref = load_questions(bench), load_reference(reference_dir)
    trainer = GRPOTrainer(tiny_config(max_steps=1), items, ref, tmp_path, progress=False)
    batch = trainer._batch()
    out = trainer.sample(batch, 2)
    margins, correct, _ = trainer.rewards(batch, out)
    floor = float(margins.median())  # half of the margins lie below it
    trainer.cfg.reward_floor = floor
    raised, correct_floored, _ = trainer.rewards(batch, out)
    assert (margins < floor).any() and (margins > floor).any()
    assert torch.equal(raised, margins.clamp(min=floor))
    assert torch.equal(correct, correct_floored)  # correctness is the reference's, floor or not
    with pytest.raises(ConfigError, match="reward_floor"):
        tiny_config(reward_floor=1.0)


def test_resume_equals_uninterrupted(tmp_path, bench, reference_dir):
    items = load_questions(bench)
    full = tmp_path / "full"
    GRPOTrainer(tiny_config(), items, load_reference(reference_dir), full, progress=False).train()

    # Simulate a crash right after the step-2 checkpoint: step 4 never happened.
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000004")
    shutil.rmtree(crashed / "policy")
    (crashed / "checkpoints" / "latest").write_text("step-000002\n")
    trainer = GRPOTrainer(tiny_config(), items, load_reference(reference_dir), crashed, resume=True, progress=False)
    assert trainer.step == 2
    trainer.train()

    a, b = weights(full / "policy"), weights(crashed / "policy")
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-5
    steps = [json.loads(x)["step"] for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # lines after the checkpoint were dropped, not duplicated


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, bench, reference_dir):
    from refocus.errors import RefocusError

    with pytest.raises(RefocusError, match="no checkpoint"):
        GRPOTrainer(tiny_config(), load_questions(bench), load_reference(reference_dir), tmp_path,
                    resume=True, progress=False)


def _nan_reference(reference_dir: Path, tmp_path: Path) -> Path:
    """A corrupted reference checkpoint whose logits are NaN: a real failure mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(reference_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    out = tmp_path / "nan_ref"
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(reference_dir).save_pretrained(out)
    return out


def test_nonfinite_steps_are_skipped_then_training_stops(tmp_path, bench, reference_dir):
    ref = load_reference(_nan_reference(reference_dir, tmp_path))
    items = load_questions(bench)
    trainer = GRPOTrainer(tiny_config(max_steps=2, max_consecutive_nonfinite=3), items, ref,
                          tmp_path / "skip", progress=False)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    result = trainer.train()
    assert result.nonfinite_steps == 2
    for n, p in trainer.policy.named_parameters():  # skipped steps never touch the weights
        assert torch.equal(before[n], p.detach())

    trainer = GRPOTrainer(tiny_config(max_steps=10, max_consecutive_nonfinite=2), items, ref,
                          tmp_path / "stop", progress=False)
    with pytest.raises(TrainingDiverged, match="2 steps in a row"):
        trainer.train()
    assert trainer.step == 1  # stopped during the second step


def test_bad_items_are_skipped_and_reported(tmp_path, bench, reference_dir):
    items = load_questions(bench)
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_text("this is not a video")
    import dataclasses

    broken = dataclasses.replace(items[0], id="broken", video=bad_video)
    qa = tmp_path / "qa.jsonl"
    write_questions(qa, [*items, broken])
    with qa.open("a") as f:
        f.write('{"id": "invalid", "video": "x.mp4", "question": "q", "options": ["a"], "answer": "A"}\n')
    result = train_policy(qa, reference_dir, tmp_path / "run", config=tiny_config(max_steps=3), progress=False)
    reasons = {s["id"]: s["reason"] for s in result.skipped}
    assert "broken" in reasons and "broken.mp4" in reasons["broken"]
    assert any(k is None and "options" in v for k, v in reasons.items())
    assert result.steps == 3
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert any(s["id"] == "broken" for s in summary["skipped"])


def test_config_rejects_inconsistent_settings(tmp_path):
    from refocus.errors import ConfigError

    with pytest.raises(ConfigError, match="same length"):
        GRPOConfig(selection_sizes=[4, 8], curriculum_starts=[0])
    with pytest.raises(ConfigError, match="epsilon_high needs epsilon"):
        GRPOConfig(epsilon_high=0.3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_generation: 4\n")
    with pytest.raises(ConfigError, match="unknown config field"):
        load_config(bad)
    assert GRPOConfig(epsilon=0.2).epsilon_high == 0.2
    assert GRPOConfig().selection_size_at(600) == 16


def test_packaged_configs_load():
    from refocus.training.config import packaged_config

    tiny = load_config(packaged_config("tiny"))
    with pytest.raises(ConfigError) as missing:  # paper.yaml's policy parts are marked ???
        load_config(packaged_config("paper"))
    lines = str(missing.value).split("\nerror: ")
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == [
        "policy.vision_model", "policy.backbone_model", "policy.tokenizer"]
    paper = load_config(packaged_config("paper"), init_policy="some/policy")  # a given policy needs no parts
    assert paper.importance_sampling_level == "subset" and paper.policy["token_pool_stride"] == 2
    assert paper.num_generations == 16 and paper.entropy_coef == 0.002 and paper.epsilon is None
    assert paper.selection_sizes == [4, 8, 16, 32] and paper.adam_beta2 == 0.99
    assert tiny.max_steps < paper.max_steps


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test")
def test_two_processes_keep_identical_replicas(tmp_path, bench, reference_dir):
    cfg = tmp_path / "cfg.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_config(max_steps=2, save_steps=2).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REFOCUS_CACHE_DIR": str(tmp_path / "cache")}
    # --multi_gpu picks the torchrun launcher; on a CPU-only machine Accelerator then runs gloo DDP.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "refocus", "train", "--data", str(bench), "--reference", str(reference_dir),
           "--out", str(tmp_path / "run"), "--config", str(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["replica_max_abs_diff"] == 0.0
    assert summary["reference_calls"] == 2 * 2 * 2 * 4  # steps x processes x questions x G


def _launch_train(tmp_path, bench, reference_dir, out: Path, cfg: Path, deepspeed: bool, resume: bool = False):
    """``accelerate launch`` of ``refocus train`` on 2 CPU processes, as the README runs it."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REFOCUS_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    if deepspeed:  # the README's DeepSpeed command with the shipped ZeRO-1 configuration
        shipped = Path(__file__).resolve().parents[1] / "configs" / "deepspeed_zero1.json"
        launch += ["--use_deepspeed", "--deepspeed_config_file", str(shipped)]
        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    else:
        launch += ["--multi_gpu"]
    cmd = [*launch, "-m", "refocus", "train", "--data", str(bench), "--reference", str(reference_dir),
           "--out", str(out), "--config", str(cfg), *(["--resume"] if resume else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "train_summary.json").read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="multi-process test")
@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_two_process_resume_restores_every_process_state(tmp_path, bench, reference_dir, backend):
    """Each process's sampler RNG and optimiser state (under ZeRO-1: its shard) come back."""
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(max_steps=4, save_steps=2).to_dict()))
    full = tmp_path / "full"
    summary = _launch_train(tmp_path, bench, reference_dir, full, cfg, backend == "deepspeed")
    assert summary["num_processes"] == 2 and summary["replica_max_abs_diff"] == 0.0
    step2 = full / "checkpoints" / "step-000002"
    assert sorted(p.name for p in step2.glob("process-*.pt")) == ["process-00000.pt", "process-00001.pt"]
    if backend == "deepspeed":  # accelerate accepted the prepare call; one ZeRO shard per process
        shards = sorted(p.name for p in (step2 / "deepspeed").rglob("*optim_states.pt"))
        assert len(shards) == 2 and "rank_0" in shards[0] and "rank_1" in shards[1]

    crashed = tmp_path / "crashed"  # a crash right after the step-2 checkpoint
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000004")
    shutil.rmtree(crashed / "policy")
    (crashed / "checkpoints" / "latest").write_text("step-000002\n")
    resumed = _launch_train(tmp_path, bench, reference_dir, crashed, cfg, backend == "deepspeed", resume=True)
    assert resumed["reference_calls"] == summary["reference_calls"]
    a, b = weights(full / "policy"), weights(crashed / "policy")
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) == 0.0


def test_resume_is_strict_and_config_checked(tmp_path, bench, reference_dir):
    from refocus.errors import RefocusError

    items, ref = load_questions(bench), load_reference(reference_dir)
    run = tmp_path / "run"
    GRPOTrainer(tiny_config(max_steps=2, save_steps=2), items, ref, run, progress=False).train()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss/policy_loss", "loss/entropy", "loss/ratio_mean", "loss/clip_ratio",
                "loss/clip_ratio_low", "loss/clip_ratio_high", "loss/loss", "loss/approx_kl",
                "select/k_effective"):
        assert key in rows[-1], key
    assert rows[-1]["loss/approx_kl"] >= 0.0

    # A field that changes what is learnt: refused, naming the field and both values.
    with pytest.raises(RefocusError, match=r"learning_rate: 0\.01 -> 0\.02"):
        GRPOTrainer(tiny_config(max_steps=2, save_steps=2, learning_rate=2e-2), items, ref, run,
                    resume=True, progress=False)
    # Bookkeeping fields may differ.
    resumed = GRPOTrainer(tiny_config(max_steps=2, save_steps=1, logging_steps=2), items, ref, run,
                          resume=True, progress=False)
    assert resumed.step == 2

    # Weights that do not fit the policy are an error, not silently skipped (strict load).
    from safetensors.torch import load_file, save_file

    ckpt = run / "checkpoints" / "step-000002"
    weights = load_file(ckpt / "model.safetensors")
    weights.pop(sorted(weights)[0])
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RefocusError, match="do not fit"):
        GRPOTrainer(tiny_config(max_steps=2, save_steps=2), items, ref, run, resume=True, progress=False)


def test_train_policy_honours_max_steps_and_seed_with_a_config_object(tmp_path, bench, reference_dir):
    result = train_policy(bench, reference_dir, tmp_path / "run", config=tiny_config(max_steps=4),
                          max_steps=3, seed=11, progress=False)
    assert result.steps == 3
    saved = (tmp_path / "run" / "train_config.yaml").read_text()
    assert "max_steps: 3\n" in saved and "seed: 11\n" in saved
