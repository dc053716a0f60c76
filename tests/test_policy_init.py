"""The policy from pretrained parts: `refocus policy init`, `refocus train --policy`, paper.yaml.

Tiny SigLIP and Mamba2 checkpoints are saved offline in Hugging Face and mamba_ssm formats;
the tests check what lands where (tower and first blocks equal the sources, the last two
blocks re-initialised once) and that the result trains, warm-starts and selects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from refocus.cli import main
from refocus.data.questions import load_questions
from refocus.data.synth import make_benchmark
from refocus.errors import ConfigError
from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference

LAYERS = 4


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = "where is the red ball needle A. B. C. D. left right up down what colour".split()
    tok.train_from_iterator([" ".join(words)] * 4, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|system|>", "<|user|>"]})
    return fast


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """A tiny SigLIP tower; a tiny Mamba2 LM in HF format (with tokenizer) and in mamba_ssm format (without)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2))
    vision.save_pretrained(root / "siglip")
    (root / "siglip" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    tokenizer = _tokenizer()
    lm = Mamba2ForCausalLM(Mamba2Config(
        vocab_size=len(tokenizer) + 3, hidden_size=32, num_hidden_layers=LAYERS, state_size=8, expand=2,
        head_dim=8, num_heads=8, n_groups=1, chunk_size=16))
    lm.save_pretrained(root / "mamba2_hf")
    tokenizer.save_pretrained(root / "mamba2_hf")
    tokenizer.save_pretrained(root / "tokenizer")
    # mamba_ssm layout: its config.json keys and "backbone.embedding" names, no tokenizer
    ssm = root / "mamba2_ssm"
    ssm.mkdir()
    state = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v
             for k, v in lm.state_dict().items()}
    torch.save(state, ssm / "pytorch_model.bin")
    (ssm / "config.json").write_text(json.dumps({
        "d_model": 32, "d_intermediate": 0, "n_layer": LAYERS, "vocab_size": len(tokenizer) + 3,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "expand": 2, "ngroups": 1, "chunk_size": 16},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 1, "tie_embeddings": True}))
    return {"vision": root / "siglip", "hf": root / "mamba2_hf", "ssm": ssm, "tokenizer": root / "tokenizer"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_benchmark("niah", tmp_path_factory.mktemp("niah"), videos=4, frames=(16, 24), seed=0)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, bench) -> Path:
    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1), vision_heads=(2, 2),
                               text_hidden=32, text_layers=1, text_heads=2)
    return save_untrained_small_reference(tmp_path_factory.mktemp("ref"), load_questions(bench), cfg)


def _train_yaml(tmp_path: Path, **policy) -> Path:
    cfg = {"num_generations": 4, "per_device_train_batch_size": 2, "selection_sizes": [2],
           "curriculum_starts": [0], "max_steps": 3, "learning_rate": 1e-2, "learning_rate_reinit": 1e-2,
           "bf16": False, "gradient_checkpointing": False, "save_steps": 3, "policy": policy}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _backbone_state(parts, fmt: str) -> dict[str, torch.Tensor]:
    from transformers import Mamba2ForCausalLM

    return {k[len("backbone."):]: v for k, v in Mamba2ForCausalLM.from_pretrained(parts["hf"]).state_dict().items()
            if k.startswith("backbone.")}


@pytest.mark.parametrize("fmt", ["hf", "ssm"])
def test_init_train_warm_start_select(tmp_path, parts, bench, reference_dir, fmt):
    from transformers import SiglipVisionModel

    from refocus.policy import FramePolicy

    out = tmp_path / "init"
    args = ["policy", "init", "--vision", str(parts["vision"]), "--backbone", str(parts[fmt]), "--out", str(out)]
    if fmt == "ssm":
        assert main(args) == 1  # mamba_ssm checkpoints carry no tokenizer: a one-line error says so
        args += ["--tokenizer", str(parts["tokenizer"])]
    assert main(args) == 0
    init = load_file(out / "model.safetensors")
    tower = SiglipVisionModel.from_pretrained(parts["vision"]).state_dict()
    for name, value in tower.items():
        if not name.startswith("head."):  # the pooling head is never read, so not kept
            assert torch.equal(init[f"vision_tower.{name}"], value), name
    source = _backbone_state(parts, fmt)
    for name, value in source.items():
        block = int(name.split(".")[1]) if name.startswith("layers.") else None
        if block is not None and block >= LAYERS - 2:
            continue
        assert torch.equal(init[f"backbone.{name}"], value), name
    for block in (LAYERS - 2, LAYERS - 1):
        key = f"layers.{block}.mixer.in_proj.weight"
        assert not torch.equal(init[f"backbone.{key}"], source[key])
        assert torch.all(init[f"backbone.layers.{block}.mixer.norm.weight"] == 0.1)
    assert json.loads((out / "policy_init.json").read_text())["reinitialised_blocks"] == [LAYERS - 2, LAYERS - 1]
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_config"]["vocab_size"] == source["embeddings.weight"].shape[0]
    assert config["image_size"] == 32

    # 3 GRPO steps from the init output, then a warm start from the trained policy
    cfg = _train_yaml(tmp_path)
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    common = ["train", "--data", str(bench), "--reference", str(reference_dir), "--config", str(cfg)]
    assert main([*common, "--out", str(run1), "--policy", str(out)]) == 0
    trained = load_file(run1 / "policy" / "model.safetensors")
    assert not torch.equal(trained["backbone.layers.0.mixer.in_proj.weight"], init["backbone.layers.0.mixer.in_proj.weight"])
    from refocus.training.config import load_config
    from refocus.training.core import build_policy

    warm, _ = build_policy(load_config(cfg, init_policy=str(run1 / "policy")), None)
    for name, value in warm.state_dict().items():  # loaded as it is: nothing re-initialised
        assert torch.equal(value, trained[name]), name
    assert main([*common, "--out", str(run2), "--policy", str(run1 / "policy")]) == 0
    sel = tmp_path / "sel.jsonl"
    assert main(["select", "--policy", str(run2 / "policy"), "--data", str(bench), "--budget", "3",
                 "--out", str(sel)]) == 0
    rows = [json.loads(line) for line in sel.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["indices"]) == 3 for r in rows)
    assert FramePolicy.from_pretrained(run2 / "policy").config.image_size == 32


def test_policy_fields_in_the_training_config_build_the_same_policy(tmp_path, parts, bench, reference_dir):
    cfg = _train_yaml(tmp_path, vision_model=str(parts["vision"]), backbone_model=str(parts["hf"]),
                      vision_feature_layer=-2, vision_use_final_norm=False)
    assert main(["train", "--data", str(bench), "--reference", str(reference_dir), "--config", str(cfg),
                 "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    config = json.loads((tmp_path / "run" / "policy" / "config.json").read_text())
    assert config["vision_feature_layer"] == -2 and config["vision_use_final_norm"] is False
    weights = load_file(tmp_path / "run" / "policy" / "model.safetensors")
    # layer -2 of a 3-layer tower: the last layer and the unused final norm are not kept
    assert "vision_tower.encoder.layers.1.mlp.fc1.weight" in weights
    assert not any(k.startswith(("vision_tower.encoder.layers.2.", "vision_tower.post_layernorm")) for k in weights)


@pytest.mark.parametrize("family", ["internvl", "qwen2_5_vl", "llava_onevision"])
def test_train_with_real_vlm_references(tmp_path, parts, bench, family):
    """`refocus train` against tiny InternVL3-hf / Qwen2.5-VL / LLaVA-OneVision references: the
    policy from its own parts, then the reference's own tower reused (vision_from_reference)."""
    from tiny_models import build_tiny

    ref = build_tiny(family, tmp_path / family)
    cfg = _train_yaml(tmp_path, vision_model=str(parts["vision"]), backbone_model=str(parts["hf"]))
    common = ["train", "--data", str(bench), "--reference", str(ref), "--max-steps", "2"]
    assert main([*common, "--config", str(cfg), "--out", str(tmp_path / "own")]) == 0
    cfg = _train_yaml(tmp_path, vision_from_reference=True, backbone_model=str(parts["hf"]))
    assert main([*common, "--config", str(cfg), "--out", str(tmp_path / "reused")]) == 0
    config = json.loads((tmp_path / "reused" / "policy" / "config.json").read_text())
    assert config["vision_model_type"] == {"internvl": "internvl_vision", "qwen2_5_vl": "qwen2_5_vl_vision",
                                           "llava_onevision": "siglip_vision_model"}[family]
    summary = json.loads((tmp_path / "reused" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["nonfinite_steps"] == 0


def test_paper_yaml_names_each_missing_path(capsys, tmp_path):
    from refocus.training.config import packaged_config

    code = main(["policy", "init", "--config", str(packaged_config("paper")), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert [line.split(": ")[2].split(" ")[0] for line in err] == [
        "policy.vision_model", "policy.backbone_model", "policy.tokenizer"]
    assert "Traceback" not in "".join(err)


def test_misspelled_keys_at_any_level_name_the_key_and_file(tmp_path, capsys):
    from refocus.training.config import load_config

    for body, key in [("num_generation: 4\n", "num_generation"),
                      ("policy:\n  head_dims: 8\n", "policy.head_dims"),
                      ("policy:\n  backbone_config:\n    hiden_size: 8\n", "policy.backbone_config.hiden_size"),
                      ("policy:\n  vision_config:\n    patch_sise: 8\n", "policy.vision_config.patch_sise")]:
        path = tmp_path / "bad.yaml"
        path.write_text(body)
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert str(exc.value).startswith(str(path)) and key.split(".")[-1] in str(exc.value), body
        assert key in str(exc.value) or key == "num_generation"
        assert main(["policy", "init", "--config", str(path), "--out", str(tmp_path / "p")]) == 1


def test_language_from_reference_starts_in_the_references_word_space(tmp_path, bench, reference_dir):
    """`language_from_reference`: the fresh backbone takes the reference's input embeddings and
    projector, so a frame's projected features are the reference's own image tokens (the space its
    word embeddings live in), and trains; a wrong width or a pretrained backbone is refused."""
    from refocus.policy.build import init_policy
    from refocus.reference import load_reference
    from refocus.reference.small_training import _image_tokens

    ref = load_reference(reference_dir, device="cpu", dtype="float32")
    torch.manual_seed(0)
    policy, tok, provenance = init_policy(
        reference=ref, vision_from_reference=True, language_from_reference=True,
        overrides={"backbone_config": {"num_hidden_layers": 2, "head_dim": 16, "state_size": 8}},
    )
    assert provenance["language"] == "reference" and len(tok) == len(ref.processor.tokenizer)
    words = ref.model.get_input_embeddings().weight
    assert policy.config.backbone_hidden_size == words.shape[1] == 32
    assert policy.config.backbone_config["num_heads"] == 2 * 32 // 16
    assert torch.equal(policy.backbone.embeddings.weight[: words.shape[0]], words)
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8).numpy()
    with torch.no_grad():
        ours = policy.projector(policy.encode_frames(frames))
        pixels = ref.processor.image_processor(list(frames), return_tensors="pt")["pixel_values"]
        theirs = _image_tokens(ref.model, pixels)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    with pytest.raises(ConfigError, match="hidden_size 64"):
        init_policy(reference=ref, vision_from_reference=True, language_from_reference=True,
                    overrides={"backbone_config": {"hidden_size": 64, "num_heads": 8, "head_dim": 16}})
    with pytest.raises(ConfigError, match="fresh backbone"):
        init_policy(reference=ref, backbone="any", language_from_reference=True)

    cfg = _train_yaml(tmp_path, vision_from_reference=True, language_from_reference=True,
                      backbone_config={"num_hidden_layers": 2, "num_heads": 4, "head_dim": 16, "state_size": 8})
    assert main(["train", "--data", str(bench), "--reference", str(reference_dir), "--config", str(cfg),
                 "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["nonfinite_steps"] == 0
