"""lmms-eval integration: lmms-eval's own command line, offline, with a refocus model.

A synthetic V-NIAH set becomes a local lmms-eval task (``refocus data lmms-task``); a tiny
random policy selects frames (``refocus select``); lmms-eval's CLI evaluates the task with
``refocus_qwen2_5_vl`` (lmms-eval's Qwen2.5-VL class, a tiny checkpoint built from a config)
selecting on the fly from the policy. The frames the answerer was shown (its ``frames_log``:
indices, times, a hash per frame) must be the frames ``refocus select`` chose, and lmms-eval
must report an accuracy. lmms-eval finds the model through the ``lmms_eval.models`` entry
point that ``pyproject.toml`` declares.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from refocus.errors import RefocusError
from refocus.integrations.lmms_eval.frames import DocItem, FrameSource, frame_digest, strip_letters
from refocus.integrations.lmms_eval.messages import with_frames

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 4
FRAME_SIZE = 56  # the tiny Qwen2.5-VL's 56 x 56 input: 4 x 4 patches, 4 merged tokens a frame
TASK = "niah_tiny"

if importlib.util.find_spec("lmms_eval") is None:
    if os.environ.get("CI"):
        raise RuntimeError('lmms-eval is not installed: run `pip install --no-deps "lmms-eval==0.7.3"` '
                           "after the README's install (it is part of the test command)")
    pytest.skip("lmms-eval not installed (README: Evaluating with lmms-eval)", allow_module_level=True)


def declared_entry_point() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["entry-points"]["lmms_eval.models"]["refocus"]


def installed_entry_point() -> str | None:
    from importlib.metadata import entry_points

    found = [ep.value for ep in entry_points(group="lmms_eval.models") if ep.name == "refocus"]
    return found[0] if found else None


def cli_env(tmp: Path) -> dict[str, str]:
    """Offline, one thread, our cache; the entry point from an install, or from pyproject.toml.

    With refocus installed (CI runs ``pip install -e``) lmms-eval reads the installed entry
    point. A source checkout run with PYTHONPATH=src has no installed metadata, so the same
    entry point is written as a ``.dist-info`` on the subprocess's path (as an install would).
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", REFOCUS_CACHE_DIR=str(tmp / "cache"), HF_HOME=str(tmp / "hf"))
    paths = [str(ROOT / "src")]
    installed = installed_entry_point()
    if installed is None:
        assert not os.environ.get("CI"), "CI installs refocus: its lmms_eval.models entry point is missing"
        info = tmp / "site" / "refocus-0.0.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: refocus\nVersion: 0.0.0\n")
        (info / "entry_points.txt").write_text(f"[lmms_eval.models]\nrefocus = {declared_entry_point()}\n")
        paths.append(str(tmp / "site"))
    else:
        assert installed == declared_entry_point()
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Benchmark, tiny policy and tiny Qwen2.5-VL, the selection file and the task."""
    from tiny_models import build_tiny

    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.policy import FramePolicy, FramePolicyConfig
    from refocus.reference.small_model import train_tokenizer

    tmp = tmp_path_factory.mktemp("lmms")
    qa = make_benchmark("niah", tmp / "bench", videos=4, frames=(32, 48), seed=0)
    items = load_questions(qa)
    tokenizer = train_tokenizer([f"{it.question} " + " ".join(it.options) for it in items])
    torch.manual_seed(0)
    config = FramePolicyConfig(
        tokens_per_frame=4,
        vision_config={"image_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
        backbone_config={"vocab_size": len(tokenizer), "hidden_size": 32, "head_dim": 8, "num_heads": 8,
                         "num_hidden_layers": 2},
        head_dim=16,
    )
    policy = tmp / "policy"
    FramePolicy(config).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    answerer = build_tiny("qwen2_5_vl", tmp / "qwen")

    env = cli_env(tmp)
    refocus = [sys.executable, "-m", "refocus"]
    run(refocus + ["select", "--policy", str(policy), "--data", str(qa), "--budget", str(BUDGET),
                   "--out", str(tmp / "sel.jsonl")], env, tmp)
    run(refocus + ["data", "lmms-task", "--data", str(qa), "--out", str(tmp / "tasks"), "--name", TASK],
        env, tmp)
    selections = {r["id"]: r for r in map(json.loads, (tmp / "sel.jsonl").read_text().splitlines())}
    return {"tmp": tmp, "items": items, "policy": policy, "answerer": answerer, "env": env,
            "selections": selections}


def expected_digests(item, record) -> list[str]:
    from refocus.video import load_video

    video = load_video(item.video, size=FRAME_SIZE, cache=False)
    return [frame_digest(video.frames[i]) for i in record["indices"]]


def test_lmms_eval_cli_shows_the_answerer_the_frames_refocus_select_chose(setup):
    tmp, env = setup["tmp"], setup["env"]
    model_args = ",".join([
        f"pretrained={setup['answerer']}", "device=cpu", "device_map=cpu", "dtype=float32",
        "min_pixels=3136", "max_pixels=3136", f"frame_size={FRAME_SIZE}",
        f"policy={setup['policy']}", f"budget={BUDGET}", f"frames_log={tmp / 'shown.jsonl'}",
    ])
    proc = run([sys.executable, "-m", "lmms_eval", "--model", "refocus_qwen2_5_vl", "--model_args", model_args,
                "--tasks", TASK, "--include_path", str(tmp / "tasks"), "--batch_size", "1",
                "--output_path", str(tmp / "out"), "--log_samples"], env, tmp)

    shown = {r["id"]: r for r in map(json.loads, (tmp / "shown.jsonl").read_text().splitlines())}
    assert set(shown) == {it.id for it in setup["items"]}
    for item in setup["items"]:
        chosen, got = setup["selections"][item.id], shown[item.id]
        assert len(got["indices"]) == BUDGET
        assert got["indices"] == chosen["indices"]
        assert got["timestamps"] == pytest.approx(chosen["timestamps"], abs=1e-6)
        assert got["num_frames"] == chosen["num_frames"]
        assert got["frame_sha256"] == expected_digests(item, chosen)

    (results_file,) = glob.glob(str(tmp / "out" / "*" / "*_results.json"))
    accuracy = json.loads(Path(results_file).read_text())["results"][TASK]["exact_match,letter"]
    (samples_file,) = glob.glob(str(tmp / "out" / "*" / f"*_samples_{TASK}.jsonl"))
    samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    assert len(samples) == len(setup["items"])
    assert all(s["token_counts"][0]["output_tokens"] > 0 for s in samples)  # the answerer generated
    assert accuracy == pytest.approx(np.mean([s["exact_match"] for s in samples]))
    assert 0.0 <= accuracy <= 1.0 and TASK in proc.stdout


@pytest.mark.slow
def test_lmms_eval_cli_internvl_from_a_selection_file(setup):
    """InternVL3 (-hf) through lmms-eval's own InternVLHf.generate_until, frames from SEL.jsonl."""
    from tiny_models import build_tiny

    tmp, env = setup["tmp"], setup["env"]
    answerer = build_tiny("internvl", tmp / "internvl")
    model_args = ",".join([f"pretrained={answerer}", "device=cpu", "device_map=cpu", "dtype=float32",
                           f"frame_size={FRAME_SIZE}", f"selection={tmp / 'sel.jsonl'}",
                           f"frames_log={tmp / 'shown_internvl.jsonl'}"])
    run([sys.executable, "-m", "lmms_eval", "--model", "refocus_internvl_hf", "--model_args", model_args,
         "--tasks", TASK, "--include_path", str(tmp / "tasks"), "--batch_size", "1",
         "--output_path", str(tmp / "out_internvl")], env, tmp)
    shown = {r["id"]: r for r in map(json.loads, (tmp / "shown_internvl.jsonl").read_text().splitlines())}
    for item in setup["items"]:
        assert shown[item.id]["indices"] == setup["selections"][item.id]["indices"]
        assert shown[item.id]["frame_sha256"] == expected_digests(item, setup["selections"][item.id])
    assert glob.glob(str(tmp / "out_internvl" / "*" / "*_results.json"))


def test_every_manifest_resolves_in_lmms_evals_registry():
    """The entry point's payload, registered as lmms-eval registers it, gives chat classes.

    (The CLI test above shows lmms-eval finding the entry point itself.)
    """
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from refocus.integrations.lmms_eval import MODELS, manifests

    registry = ModelRegistryV2()
    for manifest in manifests():
        registry.register_manifest(manifest)
    assert registry.list_canonical_model_ids() == sorted(MODELS)
    for name in MODELS:
        resolved = registry.resolve(name)
        cls = registry.get_model_class(name)  # imports it and checks it is a chat lmms class
        assert resolved.model_type == "chat" and issubclass(cls, lmms) and not cls.is_simple


def test_import_refocus_does_not_import_lmms_eval():
    code = ("import sys, refocus, refocus.integrations.lmms_eval, refocus.integrations.lmms_eval.frames\n"
            "assert 'lmms_eval' not in sys.modules, 'lmms_eval imported'\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


# ---------------------------------------------------------------- frame source, no lmms-eval CLI


def test_selection_file_source_gives_the_selected_frames_and_rejects_mismatches(setup):
    tmp = setup["tmp"]
    item = setup["items"][0]
    doc = DocItem(id=item.id, video=item.video, question=item.question, options=item.options)
    source = FrameSource(frame_size=FRAME_SIZE, selection=str(tmp / "sel.jsonl"))
    shown = source.frames(doc)
    assert shown.indices == setup["selections"][item.id]["indices"]
    assert [frame_digest(f) for f in shown.frames] == expected_digests(item, setup["selections"][item.id])

    with pytest.raises(RefocusError, match="not in the selection file"):
        source.frames(DocItem(id="nope", video=item.video, question="q", options=("a", "b")))
    with pytest.raises(RefocusError, match="pass the fps= and max_frames="):
        FrameSource(frame_size=FRAME_SIZE, selection=str(tmp / "sel.jsonl"), fps=2.0).frames(doc)
    with pytest.raises(RefocusError, match="exactly one of"):
        FrameSource(frame_size=FRAME_SIZE)
    with pytest.raises(RefocusError, match="needs budget"):
        FrameSource(frame_size=FRAME_SIZE, policy=str(setup["policy"]))


def test_messages_put_each_frame_after_its_time_and_keep_the_task_text():
    messages = [{"role": "user", "content": [{"type": "video", "url": "/v.mp4"},
                                             {"type": "text", "text": "Which colour?"}]}]
    out = with_frames(messages, ["img1", "img2"], [0.25, 12.5])
    assert out[0]["content"] == [
        {"type": "text", "text": "Frame1 at 0.25s: "}, {"type": "image", "url": "img1"},
        {"type": "text", "text": "\nFrame2 at 12.50s: "}, {"type": "image", "url": "img2"},
        {"type": "text", "text": "\nWhich colour?"},
    ]
    assert messages[0]["content"][0]["type"] == "video"  # the task's messages are left as they were
    with pytest.raises(ValueError, match="one video"):
        with_frames([{"role": "user", "content": [{"type": "text", "text": "q"}]}], [], [])


def test_option_letters_are_stripped_only_when_every_option_has_its_own():
    assert strip_letters(["A. red", "B. blue"]) == ("red", "blue")
    assert strip_letters(["A. red", "C. blue"]) == ("A. red", "C. blue")
    assert strip_letters(["red", "blue"]) == ("red", "blue")
