"""Device and dtype of the reference model, and filter / eval sharded under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from refocus.cli import main
from refocus.data.questions import load_questions
from refocus.data.synth import make_benchmark
from refocus.distributed import gather_in_order, resolve_device, resolve_dtype, shard
from refocus.errors import RefocusError
from refocus.reference import load_reference
from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_benchmark("niah", tmp_path_factory.mktemp("niah"), videos=5, frames=(16, 24), seed=1)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, bench) -> Path:
    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1),
                               vision_heads=(2, 2), text_hidden=32, text_layers=1, text_heads=2)
    return save_untrained_small_reference(tmp_path_factory.mktemp("ref"), load_questions(bench), cfg)


def test_device_and_dtype_defaults_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype("float16") == torch.float16
    with pytest.raises(RefocusError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")
    with pytest.raises(RefocusError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RefocusError, match="CUDA is not available"):
            resolve_device("cuda")


def test_shard_and_gather_in_one_process_are_the_identity():
    items = list("abcde")
    assert shard(items) == list(enumerate(items))
    assert gather_in_order([(2, "c"), (0, "a"), (1, "b")]) == ["a", "b", "c"]
    parts = [shard(items, rank=r, world=2) for r in (0, 1)]
    assert parts == [[(0, "a"), (2, "c"), (4, "e")], [(1, "b"), (3, "d")]]
    assert gather_in_order(parts[1] + parts[0]) == items


def test_load_reference_places_the_model_in_the_given_dtype(bench, reference_dir):
    item = load_questions(bench)[0]
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    subsets = [[0, 2, 4], [1, 3, 5]]
    fp32 = load_reference(reference_dir, device="cpu", dtype="auto")
    bf16 = load_reference(reference_dir, device="cpu", dtype="bfloat16", attn_implementation="eager")
    assert fp32.model.dtype == torch.float32 and bf16.model.dtype == torch.bfloat16
    assert bf16.model.config._attn_implementation == "eager"
    a, b = fp32.option_logits(item, frames, subsets), bf16.option_logits(item, frames, subsets)
    assert a.dtype == b.dtype == np.float32
    assert 0 < np.abs(a - b).max() < 0.1  # bf16 rounding: close, not identical


def test_filter_and_eval_pass_device_and_dtype_to_the_reference(tmp_path, bench, reference_dir):
    outs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["filter", "--data", str(bench), "--reference", str(reference_dir), "--out",
                     str(out / "kept.jsonl"), "--frames-per-subset", "4", "--device", "cpu",
                     "--dtype", dtype]) == 0
        summary = json.loads((out / "kept.summary.json").read_text())
        assert summary["reference"] == {"name": reference_dir.name, "device": "cpu", "dtype": dtype}
        assert main(["eval", "--data", str(bench), "--answerer", str(reference_dir), "--selector",
                     "uniform", "--budget", "3", "--out", str(out / "eval"), "--device", "cpu",
                     "--dtype", dtype]) == 0
        rows = [json.loads(x) for x in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
        outs[dtype] = np.array([r["logits"] for r in rows])
    assert 0 < np.abs(outs["float32"] - outs["bfloat16"]).max() < 0.1


def test_bad_device_is_a_one_line_error(tmp_path, bench, reference_dir, capsys):
    code = main(["filter", "--data", str(bench), "--reference", str(reference_dir), "--out",
                 str(tmp_path / "k.jsonl"), "--dtype", "int3"])
    assert code == 1 and "error: --dtype: unknown dtype 'int3'" in capsys.readouterr().err


def _run(args: list[str], tmp_path: Path, launch: bool) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REFOCUS_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    prefix = [sys.executable]
    if launch:
        # --multi_gpu picks the torchrun launcher; without CUDA each process runs on the CPU (gloo).
        prefix += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run([*prefix, "-m", "refocus", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _eval_results(path: Path) -> dict:
    results = json.loads(path.read_text())
    for res in results["budgets"].values():
        res.pop("seconds_per_item")  # wall-clock time differs between runs
    return results


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test")
def test_filter_under_two_processes_writes_what_one_process_writes(tmp_path, bench, reference_dir):
    args = ["filter", "--data", str(bench), "--reference", str(reference_dir),
            "--frames-per-subset", "4", "--tau", "0.0", "--device", "cpu"]
    _run([*args, "--out", str(tmp_path / "one" / "kept.jsonl")], tmp_path, launch=False)
    log = _run([*args, "--out", str(tmp_path / "two" / "kept.jsonl")], tmp_path, launch=True)
    assert "on 2 processes" in log  # both processes took part, each with its shard
    for name in ("kept.jsonl", "kept.all.jsonl"):
        one, two = (tmp_path / d / name for d in ("one", "two"))
        assert one.read_text() == two.read_text(), name
    assert len((tmp_path / "one" / "kept.all.jsonl").read_text().splitlines()) == 5


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test")
def test_eval_under_two_processes_writes_what_one_process_writes(tmp_path, bench, reference_dir):
    args = ["eval", "--data", str(bench), "--answerer", str(reference_dir), "--selector", "random",
            "--budget", "2,3", "--seeds", "2"]
    _run([*args, "--out", str(tmp_path / "one")], tmp_path, launch=False)
    log = _run([*args, "--out", str(tmp_path / "two")], tmp_path, launch=True)
    assert "on 2 processes" in log
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "predictions.jsonl").read_text() == (two / "predictions.jsonl").read_text()
    assert len((one / "predictions.jsonl").read_text().splitlines()) == 5 * 2 * 2
    assert _eval_results(one / "results.json") == _eval_results(two / "results.json")
