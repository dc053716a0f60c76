"""A new policy from pretrained parts (``refocus policy init``; paper §3.2, Appendix B.2).

The paper's policy is a vision tower (SigLIP-so400m at 384 px), a projector and a pretrained
Mamba2 language model whose LM head is removed and whose last two blocks are re-initialised.
:func:`init_policy` builds that from checkpoint directories, all offline:

- ``vision``: a Hugging Face vision model (SigLIP / SigLIP2 / CLIP, as a tower or a dual
  encoder) or a vision-language model whose tower is reused (InternVL3-hf, Qwen2.5-VL,
  LLaVA-OneVision, LLaVA). Only the tower's tensors are read from its safetensors.
- ``backbone``: a Hugging Face Mamba2 checkpoint (``model_type: mamba2``) or a mamba_ssm
  directory (``d_model``, ``n_layer``, ``ssm_cfg`` in config.json; ``backbone.embedding`` key
  names). The LM head is dropped.
- ``tokenizer``: the backbone's tokenizer (its directory, or ``tokenizer`` when the backbone
  has none: mamba_ssm checkpoints use EleutherAI/gpt-neox-20b's). The policy's vocabulary is
  the backbone's.

The last ``num_reinit_layers`` blocks are re-initialised here, once, and only over a pretrained
language model; a saved policy (``refocus train --policy DIR``) is loaded as it is.

Without a pretrained backbone (the CPU-sized runs), ``language_from_reference`` stands in for
the paper's starting point: its policy begins as an SFT video-LLM (Video-MA²mba, §4), whose
word embeddings and projector already place a frame and the words that describe it close
together. The reference model is the only such model a CPU run has, so the fresh backbone takes
its input embeddings and its projector (:func:`reference_language`); the Mamba2 blocks, the
heads and everything after stay fresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from refocus.errors import ConfigError
from refocus.policy.vision import FAMILIES, patch_multiple, tower_image_size

# Dual encoders whose config carries the tower under ``vision_config``.
_DUAL = {"siglip": "siglip_vision_model", "siglip2": "siglip2_vision_model", "clip": "clip_vision_model"}
# mamba_ssm's Mamba2 layer defaults (mamba_ssm/modules/mamba2.py), for keys a config leaves out.
_MAMBA_SSM_DEFAULTS = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc})") from None


# ---------------------------------------------------------------------------- checkpoint tensors


class Checkpoint:
    """Lazy access to a checkpoint directory's tensors (safetensors, sharded or not, or .bin)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index)["weight_map"]
            self._files = {k: self.path / f for k, f in weight_map.items()}
        elif (self.path / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(self.path / "model.safetensors"), "pt") as f:
                self._files = {k: self.path / "model.safetensors" for k in f.keys()}
        elif (self.path / "pytorch_model.bin").is_file():
            self._files = None
            self._bin: dict | None = None
        else:
            raise ConfigError(f"{self.path}: no model.safetensors or pytorch_model.bin")

    def keys(self) -> list[str]:
        return list(self._files) if self._files is not None else list(self._load_bin())

    def _load_bin(self) -> dict:
        if self._bin is None:
            import torch

            self._bin = torch.load(self.path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return self._bin

    def tensors(self, keys: list[str]) -> dict[str, Any]:
        if self._files is None:
            state = self._load_bin()
            return {k: state[k] for k in keys}
        from safetensors import safe_open

        out: dict[str, Any] = {}
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self._files[k], []).append(k)
        for file, names in by_file.items():
            with safe_open(str(file), "pt") as f:
                out.update({k: f.get_tensor(k) for k in names})
        return out


class _LazyState(Mapping):
    """A read-only state dict over a checkpoint; tensors are read when looked up."""

    def __init__(self, ckpt: Checkpoint, rename: Callable[[str], str] = lambda k: k) -> None:
        self.ckpt = ckpt
        self._names = {rename(k): k for k in ckpt.keys()}

    def __getitem__(self, key: str):
        return self.ckpt.tensors([self._names[key]])[self._names[key]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# ---------------------------------------------------------------------------- vision


def vision_source(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], Mapping]:
    """(policy config values, tower config dict, lazy state dict) of a vision checkpoint dir.

    The values are the tower's ``vision_model_type`` and ``vision_config``, its image
    normalisation from the processor config, and, for a vision-language model, the layer it
    reads (``vision_feature_layer``, read before the final norm as those models do).
    """
    path = Path(path)
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    values: dict[str, Any] = {}
    if model_type in FAMILIES:
        tower = dict(config)
    elif model_type in _DUAL:
        tower = dict(config.get("vision_config") or {})
        tower.setdefault("model_type", _DUAL[model_type])
    elif isinstance(config.get("vision_config"), dict):  # a vision-language model
        tower = dict(config["vision_config"])
        if isinstance(config.get("vision_feature_layer"), int):
            values["vision_feature_layer"] = config["vision_feature_layer"]
            values["vision_use_final_norm"] = False
    else:
        raise ConfigError(f"{path}: config.json model_type {model_type!r} has no vision tower")
    tower_type = tower.get("model_type")
    if tower_type not in FAMILIES:
        raise ConfigError(
            f"{path}: vision tower type {tower_type!r} is not supported (one of {', '.join(FAMILIES)})"
        )
    values["vision_model_type"] = tower_type
    values.update(_normalisation(path))
    complete = _complete(tower_type, tower)
    if tower_image_size(tower_type, complete) is None:  # Qwen2.5-VL: the processor's pixel budget
        size = _processor_side(path)
        if size is not None:
            values["image_size"] = _round_down(size, patch_multiple(tower_type, complete))
    return values, complete, _LazyState(Checkpoint(path))


def _round_down(size: int, multiple: int) -> int:
    return max(multiple, size // multiple * multiple)


def _processor_side(path: Path) -> int | None:
    """Side of a square image within the processor's ``longest_edge`` pixel budget (Qwen2-VL)."""
    import math

    for name in ("preprocessor_config.json", "processor_config.json"):
        if (path / name).is_file():
            proc = _read_json(path / name)
            proc = proc.get("image_processor", proc)
            pixels = (proc.get("size") or {}).get("longest_edge") or proc.get("max_pixels")
            if pixels:
                return math.isqrt(int(pixels))
    return None


def _complete(tower_type: str, tower: dict[str, Any]) -> dict[str, Any]:
    """Every field of the tower's config (a saved config may omit its class defaults)."""
    from refocus.policy.vision import make_config

    fields = {k: v for k, v in tower.items() if k != "model_type"}
    return {**make_config(tower_type, fields).to_dict(), "model_type": tower_type}


def _normalisation(path: Path) -> dict[str, Any]:
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (path / name).is_file():
            proc = _read_json(path / name)
            proc = proc.get("image_processor", proc)
            if "image_mean" in proc and "image_std" in proc:
                return {"image_mean": list(proc["image_mean"]), "image_std": list(proc["image_std"])}
    return {}


def reference_tower(reference: Any) -> tuple[dict[str, Any], Any]:
    """(policy config values, tower module) of a loaded reference model's vision tower."""
    model = reference.model
    for owner in (model, getattr(model, "model", None)):
        for attr in ("vision_tower", "visual", "vision_model"):
            tower = getattr(owner, attr, None) if owner is not None else None
            if tower is not None:
                break
        else:
            continue
        break
    else:
        raise ConfigError(f"cannot find a vision tower in {type(model).__name__}")
    tower_type = getattr(tower.config, "model_type", None)
    if tower_type not in FAMILIES:
        raise ConfigError(f"the reference's vision tower type {tower_type!r} is not supported")
    values: dict[str, Any] = {
        "vision_model_type": tower_type, "vision_config": _complete(tower_type, tower.config.to_dict())
    }
    if tower_image_size(tower_type, values["vision_config"]) is None:  # Qwen2.5-VL: the reference's size
        multiple = patch_multiple(tower_type, values["vision_config"])
        values["image_size"] = _round_down(int(reference.image_size), multiple)
    layer = getattr(model.config, "vision_feature_layer", None)
    if isinstance(layer, int):
        values |= {"vision_feature_layer": layer, "vision_use_final_norm": False}
    processor = getattr(getattr(reference, "processor", None), "image_processor", None)
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        values |= {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}
    return values, tower


# ---------------------------------------------------------------------------- backbone


def mamba_ssm_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """A `Mamba2Config` dict from a mamba_ssm config.json (``d_model``, ``n_layer``, ``ssm_cfg``)."""
    ssm = {**_MAMBA_SSM_DEFAULTS, **(config.get("ssm_cfg") or {})}
    checks = {
        # mamba_ssm's create_block builds Mamba1 when ssm_cfg names no layer
        "ssm_cfg.layer": (ssm.get("layer", "Mamba1") == "Mamba2", "only Mamba2 layers"),
        "ssm_cfg.d_ssm": (ssm.get("d_ssm") in (None, int(ssm["expand"]) * int(config["d_model"])),
                          "the SSM on all expand * d_model channels"),
        "d_intermediate": (not config.get("d_intermediate"), "no MLP blocks"),
        "attn_layer_idx": (not config.get("attn_layer_idx"), "no attention layers"),
        "rms_norm": (config.get("rms_norm", True), "RMSNorm"),
        "ssm_cfg.rmsnorm": (ssm.get("rmsnorm", True), "the gated RMSNorm"),
        "ssm_cfg.norm_before_gate": (not ssm.get("norm_before_gate", False), "norm after the gate"),
        "ssm_cfg.D_has_hdim": (not ssm.get("D_has_hdim", False), "a scalar D per head"),
    }
    for key, (ok, needs) in checks.items():
        if not ok:
            raise ConfigError(f"{where}: {key} is not supported (transformers' Mamba2 has {needs})")
    d_model, expand, headdim = int(config["d_model"]), int(ssm["expand"]), int(ssm["headdim"])
    out = {
        "hidden_size": d_model,
        "num_hidden_layers": int(config["n_layer"]),
        "vocab_size": int(config.get("vocab_size", 50277)),
        "state_size": int(ssm["d_state"]),
        "conv_kernel": int(ssm["d_conv"]),
        "expand": expand,
        "head_dim": headdim,
        "num_heads": d_model * expand // headdim,
        "n_groups": int(ssm["ngroups"]),
        "chunk_size": int(ssm["chunk_size"]),
        "use_bias": bool(ssm.get("bias", False)),
        "use_conv_bias": bool(ssm.get("conv_bias", True)),
        "residual_in_fp32": bool(config.get("residual_in_fp32", True)),
        "layer_norm_epsilon": float(config.get("norm_epsilon", 1e-5)),
        "tie_word_embeddings": bool(config.get("tie_embeddings", True)),
    }
    for ours, theirs in (("time_step_min", "dt_min"), ("time_step_max", "dt_max"), ("time_step_floor", "dt_init_floor")):
        if theirs in ssm:
            out[ours] = float(ssm[theirs])
    if "dt_limit" in ssm:
        out["time_step_limit"] = tuple(float(x) for x in ssm["dt_limit"])
    from transformers import Mamba2Config

    return Mamba2Config(**out).to_dict()  # complete: nothing falls back to the tiny defaults


def backbone_source(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Mamba2Config dict, backbone state dict with transformers' ``Mamba2Model`` key names)."""
    path = Path(path)
    config = _read_json(path / "config.json")
    ckpt = Checkpoint(path)
    if config.get("model_type") == "mamba2":
        from transformers import Mamba2Config

        backbone = Mamba2Config.from_pretrained(path).to_dict()
        rename = {"embedding.": "embeddings."}
    elif "d_model" in config and "n_layer" in config:
        backbone = mamba_ssm_config(config, str(path / "config.json"))
        rename = {"embedding.": "embeddings."}
    else:
        raise ConfigError(
            f"{path}: not a Mamba2 checkpoint (config.json needs model_type 'mamba2', or d_model and n_layer)"
        )
    keys = [k for k in ckpt.keys() if not k.startswith("lm_head.")]
    prefix = "backbone." if any(k.startswith("backbone.") for k in keys) else ""
    keys = [k for k in keys if k.startswith(prefix)]
    tensors = ckpt.tensors(keys)
    state = {}
    for key, value in tensors.items():
        name = key[len(prefix):]
        for old, new in rename.items():
            if name.startswith(old):
                name = new + name[len(old):]
        state[name] = value
    if "embeddings.weight" not in state:
        raise ConfigError(f"{path}: no token embedding among the checkpoint's tensors")
    backbone["vocab_size"] = int(state["embeddings.weight"].shape[0])  # padded rows included
    for k in ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype"):
        backbone.pop(k, None)
    return backbone, state


def load_tokenizer(backbone: str | Path | None, tokenizer: str | Path | None):
    """The policy's tokenizer: ``tokenizer``, else the backbone's own (error if it has none)."""
    from transformers import AutoTokenizer

    source = tokenizer or backbone
    if source is None:
        return None
    source = Path(source)
    if not any((source / f).is_file() for f in _TOKENIZER_FILES):
        field = "tokenizer" if tokenizer else "backbone_model"
        raise ConfigError(
            f"{source}: no tokenizer files (set policy.tokenizer / --tokenizer to the backbone's "
            f"tokenizer; mamba_ssm checkpoints use EleutherAI/gpt-neox-20b's) [{field}]"
        )
    return AutoTokenizer.from_pretrained(source)


# ---------------------------------------------------------------------------- the policy


def reference_language(reference: Any) -> tuple[Any, dict[str, Any] | None]:
    """(input embedding table, projector state dict or None) of a loaded reference model.

    The projector is read where it is a LLaVA-style ``multi_modal_projector`` (``linear_1``, GELU,
    ``linear_2``: the small reference model's), renamed to the policy's ``mlp2x_gelu`` indices
    0 and 2; other projectors (InternVL's has a LayerNorm first, Qwen2.5-VL's merger lives in
    the tower) are not the policy's shape, so only the embeddings are given (None).
    """
    model = reference.model
    embeddings = model.get_input_embeddings().weight.detach()
    inner = getattr(model, "model", model)
    projector = getattr(inner, "multi_modal_projector", None)
    names = {name for name, _ in projector.named_children()} if projector is not None else set()
    if names != {"linear_1", "act", "linear_2"} or type(projector.act).__name__ not in ("GELUActivation", "GELU"):
        return embeddings, None
    state = {
        f"{index}.{part}": getattr(getattr(projector, layer), part).detach()
        for index, layer in ((0, "linear_1"), (2, "linear_2")) for part in ("weight", "bias")
    }
    return embeddings, state


def _reference_width(backbone_config: Mapping[str, Any], width: int) -> dict[str, Any]:
    """``backbone_config`` with ``hidden_size`` defaulting to the reference's text ``width`` and
    ``num_heads`` to what fills Mamba2's inner width (``expand * hidden_size / head_dim``)."""
    from transformers import Mamba2Config

    config = {"hidden_size": int(width), **backbone_config}
    if "num_heads" not in config:
        defaults = Mamba2Config()
        inner = int(config.get("expand", defaults.expand)) * int(config["hidden_size"])
        config["num_heads"] = max(1, inner // int(config.get("head_dim", defaults.head_dim)))
    return config


def _load_language(policy: Any, embeddings: Any, projector: dict[str, Any] | None) -> None:
    """Copy the reference's embeddings (and projector) into a new policy; shapes must agree."""
    import torch

    own = policy.backbone.embeddings.weight
    if own.shape[1] != embeddings.shape[1]:
        raise ConfigError(
            f"language_from_reference: the reference's text width is {embeddings.shape[1]}, the policy's "
            f"backbone_config.hidden_size {own.shape[1]} (leave it out to take the reference's)"
        )
    if own.shape[0] < embeddings.shape[0]:
        raise ConfigError(
            f"language_from_reference: the reference has {embeddings.shape[0]} token embeddings, the policy "
            f"vocabulary {own.shape[0]} (use the reference's tokenizer)"
        )
    with torch.no_grad():
        own[: embeddings.shape[0]].copy_(embeddings.to(own.dtype))
        if projector is not None:
            if policy.config.projector_type not in ("mlp", "mlp2x_gelu"):
                raise ConfigError(
                    "language_from_reference copies the reference's two-layer GELU projector: "
                    f"projector_type must be 'mlp' or 'mlp2x_gelu', got {policy.config.projector_type!r}"
                )
            policy.projector.load_state_dict(projector, strict=True)


def init_policy(
    vision: str | Path | None = None,
    backbone: str | Path | None = None,
    tokenizer: str | Path | Any | None = None,
    overrides: Mapping[str, Any] | None = None,
    reference: Any = None,
    vision_from_reference: bool = False,
    language_from_reference: bool = False,
):
    """Build a new policy from parts; returns ``(policy, tokenizer, provenance dict)``.

    ``vision``: a vision checkpoint dir; None: the ``reference`` model's tower if
    ``vision_from_reference``, else a random tower from ``overrides["vision_config"]``.
    ``backbone``: a Mamba2 checkpoint dir, or None for a fresh backbone from
    ``overrides["backbone_config"]`` whose vocabulary is ``tokenizer``'s (or the reference's).
    ``language_from_reference`` (no ``backbone``): the fresh backbone's input embeddings, and its
    projector where the reference's has the same shape, are copied from the ``reference`` model
    (:func:`reference_language`); the backbone width defaults to the reference's text width and
    ``num_heads`` to what fills Mamba2's inner width.
    ``overrides``: FramePolicyConfig fields; they win over what the checkpoints imply.
    """
    from refocus.policy.configuration import FramePolicyConfig
    from refocus.policy.modeling import FramePolicy

    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    vision_state, provenance = None, {"vision": None, "backbone": None, "reinitialised_blocks": []}
    if vision is not None and vision_from_reference:
        raise ConfigError("set policy.vision_model or policy.vision_from_reference, not both")
    if language_from_reference and backbone is not None:
        raise ConfigError("policy.language_from_reference is for a fresh backbone: leave out backbone_model")
    if language_from_reference and reference is None:
        raise ConfigError("policy.language_from_reference needs a reference model")
    if vision is not None:
        implied, tower_config, vision_state = vision_source(vision)
        values |= implied | {"vision_config": tower_config}
        provenance["vision"] = str(vision)
    elif vision_from_reference:
        if reference is None:
            raise ConfigError("policy.vision_from_reference needs a reference model")
        implied, tower = reference_tower(reference)
        values |= implied
        vision_state = tower.state_dict()
        provenance["vision"] = "reference"
    if isinstance(tokenizer, str | Path) or tokenizer is None:
        tokenizer = load_tokenizer(backbone, tokenizer) if backbone or tokenizer else None
    backbone_state, language = None, None
    if language_from_reference:
        language = reference_language(reference)
        provenance["language"] = "reference" if language[1] is not None else "reference (embeddings only)"
        overrides["backbone_config"] = _reference_width(overrides.get("backbone_config") or {}, language[0].shape[1])
    if backbone is not None:
        backbone_config, backbone_state = backbone_source(backbone)
        user = overrides.pop("backbone_config", None) or {}
        values["backbone_config"] = {**backbone_config, **user}
        provenance["backbone"] = str(backbone)
    else:
        if tokenizer is None and reference is not None:
            tokenizer = reference.processor.tokenizer
        if tokenizer is None:
            raise ConfigError("the policy needs a tokenizer: set policy.tokenizer or policy.backbone_model")
        values["backbone_config"] = {**overrides.pop("backbone_config", {}), "vocab_size": len(tokenizer)}
    if tokenizer is None:
        raise ConfigError("the policy needs a tokenizer: set policy.tokenizer or policy.backbone_model")
    if "vision_config" in overrides and "vision_config" in values:
        values["vision_config"] = {**values["vision_config"], **overrides.pop("vision_config")}
    config = FramePolicyConfig(**(values | overrides))
    vocab = int(config.backbone_config["vocab_size"])
    if len(tokenizer) > vocab:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the backbone's vocabulary {vocab}")
    policy = FramePolicy(config)
    if vision_state is not None:
        policy.load_vision_tower(vision_state)
    if language is not None:
        _load_language(policy, *language)
    if backbone_state is not None:
        policy.init_from_pretrained_backbone(backbone_state)  # B.2: fresh last blocks, gamma 0.1
        n = config.num_reinit_layers
        layers = config.backbone_config["num_hidden_layers"]
        provenance["reinitialised_blocks"] = list(range(layers - n, layers))
    return policy.eval(), tokenizer, provenance


def save_policy(policy: Any, tokenizer: Any, out: str | Path, provenance: dict | None = None) -> Path:
    """Write the policy, its tokenizer and ``policy_init.json`` (where the parts came from)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if provenance is not None:
        (out / "policy_init.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def policy_section(path: str | Path) -> dict[str, Any]:
    """The ``policy:`` section of a training config YAML (or a file of policy fields alone),
    its keys checked (a misspelled one is an error naming it and the file)."""
    from refocus.configuration import read_yaml_mapping
    from refocus.policy.configuration import check_policy_keys

    loaded = read_yaml_mapping(path, "config fields (or a policy: section)")
    section = loaded.get("policy", loaded if "policy" not in loaded and _looks_like_policy(loaded) else {})
    try:
        check_policy_keys(section)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dict(section)


def _looks_like_policy(values: dict[str, Any]) -> bool:
    from refocus.policy.configuration import BUILD_KEYS, policy_field_names

    return bool(values) and set(values) <= policy_field_names() | set(BUILD_KEYS)


def init_from_config(
    out: str | Path,
    config: str | Path | None = None,
    vision: str | Path | None = None,
    backbone: str | Path | None = None,
    tokenizer: str | Path | None = None,
    seed: int = 0,
):
    """``refocus policy init``: the policy section of ``config`` with the given paths over its
    ``vision_model`` / ``backbone_model`` / ``tokenizer``; builds, saves to ``out``, returns
    ``(policy, provenance)``. Values still marked ``???`` stop it, one line per field."""
    import torch

    from refocus.policy.configuration import raise_if_missing

    section = policy_section(config) if config is not None else {}
    given = {"vision_model": vision, "backbone_model": backbone, "tokenizer": tokenizer}
    section.update({k: str(v) for k, v in given.items() if v is not None})
    raise_if_missing({"policy": section}, str(config or "refocus policy init"))
    for key, instead in (("vision_from_reference", "use --vision"), ("language_from_reference", "leave it out")):
        if section.pop(key, False):
            raise ConfigError(f"refocus policy init has no reference model: {instead} ({key} is for training)")
    parts = {k: section.pop(k, None) for k in given}
    torch.manual_seed(seed)  # the fresh weights (projector, heads, re-initialised blocks)
    policy, tok, provenance = init_policy(
        vision=parts["vision_model"], backbone=parts["backbone_model"], tokenizer=parts["tokenizer"],
        overrides=section,
    )
    if tok is None:
        raise ConfigError("refocus policy init needs a tokenizer: give --backbone (with one) or --tokenizer")
    provenance["seed"] = seed
    save_policy(policy, tok, out, provenance)
    return policy, provenance
