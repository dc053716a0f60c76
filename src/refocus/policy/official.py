"""Import a checkpoint in the authors' layout (github interlive-team/ReFoCUS) as a refocus policy.

Their ``RefocusForFrameSelection`` (``refocus/model/language_model/modeling_refocus.py``) is
mamba_ssm's ``MambaLMHeadModel`` with LLaVA's multimodal parts (``refocus/model/llava_arch.py``)
and the selection heads. Every one of its conventions maps to an option of
:class:`~refocus.policy.FramePolicyConfig`, so the imported policy runs the ordinary refocus code
paths (sampling, replay, training)::

    theirs (source file)                                  ours (FramePolicyConfig)
    SigLIP with its last encoder layer deleted, read at   vision_feature_layer=-2,
      hidden_states[-1] (multimodal_encoder/siglip_...)     vision_use_final_norm=False
      i.e. before post_layernorm
    frames resized to 384, mean = std = 0.5               image_size (the tower's), image_mean/std
    get_2dPool(stride=2) by mm_spatial_pool_mode          token_pool_stride=2, token_pool_mode
      (llava_arch.py)
    mm_projector_type linear / mlpNx_gelu                 projector_type (the same names)
      (multimodal_projector/builder.py)
    visual_tails: each frame's last token (llava_arch)    the policy's readout (Appendix B.5)
    key/query_head d_model -> d_model, no bias            head_dim=None (d_model)
    softplus(logit_scale) / temperature                   logit_scale_fn="softplus" (or "exp")
    / sqrt(d_model) only if attention_scaling             attention_scaling
    <start_of_frame> = embedding row                      start_of_frame_token_id
      start_of_frame_token_id
    conv_fpo + "<image>\\n" + question (conversation.py,   prompt_template
      HF_FS_refocus.py)

Values come from the checkpoint's ``config.json``; a field it does not hold takes the class
default of their ``RefocusConfig`` / mamba_ssm's ``MambaConfig`` / ``Mamba2``, each named below.
Tensors the policy does not compute with (the tied LM head, SigLIP's ``post_layernorm``, the
rank head) are reported as unused with the reason; any other tensor, or a missing one, is an
error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refocus.errors import ConfigError, RefocusError

TOWER = "mm_model.vision_tower.vision_tower.vision_model."
PROJECTOR = "mm_model.mm_projector."
# conv_templates["fpo"] (refocus/conversation.py) with `DEFAULT_IMAGE_TOKEN + "\n" + context`
# (eval/refocus_eval/models/HF_FS_refocus.py): the frames take the place of <image>.
AUTHORS_PROMPT = (
    "<|system|>You are a helpful AI assistant.<|endoftext|><|user|>{frames}\n{question}<|endoftext|>"
)
EXPECTED = (
    "expected a checkpoint of the authors' RefocusForFrameSelection (github interlive-team/ReFoCUS): "
    "config.json with model_type 'refocus', d_model, n_layer, ssm_cfg and mm_vision_tower, and "
    "model.safetensors or pytorch_model.bin (sharded or not)"
)
# Class defaults a saved config.json may omit (PretrainedConfig.to_dict saves instance attributes).
REFOCUS_DEFAULTS = {  # RefocusConfig, modeling_refocus.py
    "frame_generation_method": "block",
    "reinit_backbone_layers": 1,
    "value_embedding_init_range": 0.02,
    "value_head_init_gain": 0.1,
    "value_head_norm": False,
    "score_head_init_gain": 0.1,
    "score_head_norm": False,
    "logit_scale_fn": "softplus",
    "logit_scale_init": 1.0,
    "logit_scale_type": "scalar",
    "start_of_frame_token_id": None,
    "mixer_norm_rescale": 1.0,
    "attention_scaling": False,
    "frame_replacement": True,
    "use_rank_head": False,
}
MAMBA_DEFAULTS = {  # mamba_ssm MambaConfig (models/config_mamba.py)
    "d_intermediate": 0,
    "vocab_size": 50277,
    "ssm_cfg": {},
    "attn_layer_idx": [],
    "rms_norm": True,
    "residual_in_fp32": True,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": True,
}
MAMBA2_DEFAULTS = {  # mamba_ssm Mamba2.__init__ (modules/mamba2.py)
    "d_state": 128,
    "d_conv": 4,
    "expand": 2,
    "headdim": 64,
    "d_ssm": None,
    "ngroups": 1,
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "dt_limit": (0.0, math.inf),
    "bias": False,
    "conv_bias": True,
    "chunk_size": 256,
}
SIGLIP_DEFAULTS = {  # SigLipVisionConfig / SigLipImageProcessor (multimodal_encoder/siglip_encoder.py)
    "num_attention_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "image_size": 384,
}
MIXER_KEYS = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
              "norm.weight", "out_proj.weight")


@dataclass
class ImportReport:
    """What the converter did with each source tensor, and the values it had to assume."""

    consumed: dict[str, str] = field(default_factory=dict)
    """source key -> policy parameter it was copied into (and computes with)."""
    unused: dict[str, str] = field(default_factory=dict)
    """source key -> why the policy does not compute with it."""
    assumed: dict[str, Any] = field(default_factory=dict)
    """config values absent from the checkpoint, with the default of their code used instead."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"consumed": self.consumed, "unused": self.unused, "assumed": self.assumed,
                "notes": self.notes}


# ------------------------------------------------------------------ reading the checkpoint


def read_source_config(src: Path) -> dict:
    path = src / "config.json"
    if not src.is_dir():
        raise RefocusError(f"{src}: not a directory; {EXPECTED}")
    if not path.is_file():
        raise RefocusError(f"{src}: no config.json; {EXPECTED}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RefocusError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    model_type = config.get("model_type")
    if model_type == "refocus_frame_policy":
        raise RefocusError(f"{src} is already a refocus policy; use it directly with --policy")
    missing = [k for k in ("d_model", "n_layer", "mm_vision_tower") if k not in config]
    if model_type not in ("refocus", "mamba2", "llava_mamba") or missing:
        what = f"model_type {model_type!r}" + (f", no {', '.join(missing)}" if missing else "")
        raise RefocusError(f"{path}: {what}; {EXPECTED}")
    return config


def load_source_tensors(src: Path) -> dict:
    """All tensors of the checkpoint as float32 (:class:`refocus.policy.build.Checkpoint`:
    safetensors, sharded or not, or PyTorch weights)."""
    from refocus.policy.build import Checkpoint

    try:
        ckpt = Checkpoint(src)
    except ConfigError as exc:
        raise RefocusError(f"{exc}; {EXPECTED}") from None
    return {k: v.float() for k, v in ckpt.tensors(ckpt.keys()).items()}


def _value(config: dict, key: str, defaults: dict, report: ImportReport, where: str = "") -> Any:
    if key in config:
        return config[key]
    report.assumed[where + key] = defaults[key]
    return defaults[key]


def _unsupported(what: str, got: Any, expected: str) -> RefocusError:
    return RefocusError(f"unsupported checkpoint: {what} is {got!r}; the importer handles {expected}")


def backbone_config(config: dict, tensors: dict, report: ImportReport) -> dict:
    """transformers ``Mamba2Config`` values of their mamba_ssm ``MixerModel``
    (:func:`refocus.policy.build.mamba_ssm_config`, with the embedding table's padded rows)."""
    from refocus.policy.build import mamba_ssm_config

    for key in ("d_intermediate", "vocab_size", "ssm_cfg", "attn_layer_idx", "rms_norm",
                "residual_in_fp32", "pad_vocab_size_multiple", "tie_embeddings"):
        _value(config, key, MAMBA_DEFAULTS, report)
    ssm = config.get("ssm_cfg") or {}
    for key in MAMBA2_DEFAULTS:
        _value(ssm, key, MAMBA2_DEFAULTS, report, "ssm_cfg.")
    backbone = mamba_ssm_config(config, "config.json")
    embedding = tensors.get("backbone.embedding.weight")
    if embedding is None:
        raise RefocusError(f"no tensor backbone.embedding.weight; {EXPECTED}")
    vocab = int(config.get("vocab_size", MAMBA_DEFAULTS["vocab_size"]))
    multiple = int(config.get("pad_vocab_size_multiple", MAMBA_DEFAULTS["pad_vocab_size_multiple"]))
    padded = vocab + (-vocab) % multiple  # MambaLMHeadModel pads the table
    if tuple(embedding.shape) != (padded, backbone["hidden_size"]):
        raise RefocusError(
            f"backbone.embedding.weight is {tuple(embedding.shape)}, the config gives "
            f"({padded}, {backbone['hidden_size']}) (vocab_size {vocab} padded to a multiple of {multiple})"
        )
    backbone["vocab_size"] = padded
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype"):
        backbone.pop(key, None)
    return backbone


def _tower_own_config(config: dict, vision_config: Path | None) -> tuple[dict, str]:
    """The tower's own config.json: --vision-config, else the directory mm_vision_tower names."""
    candidates = [vision_config] if vision_config is not None else []
    candidates.append(Path(str(config["mm_vision_tower"])))
    for path in candidates:
        file = path / "config.json" if path.is_dir() else path
        if file.is_file():
            own = json.loads(file.read_text())
            return (own.get("vision_config", own) if own.get("model_type") == "siglip" else own), str(file)
        if path is vision_config:
            raise RefocusError(f"--vision-config {path}: no config.json there")
    return {}, ""


def vision_config(config: dict, tensors: dict, report: ImportReport, own_path: Path | None) -> dict:
    """SigLIP config of the tower as their code builds it, one encoder layer short."""
    tower = str(config["mm_vision_tower"])
    if "siglip" not in tower.lower():  # multimodal_encoder/builder.py: only SigLIP towers
        raise _unsupported("mm_vision_tower", tower, "SigLIP towers (their builder accepts no other)")
    patch = tensors.get(TOWER + "embeddings.patch_embedding.weight")
    pos = tensors.get(TOWER + "embeddings.position_embedding.weight")
    if patch is None or pos is None:
        raise RefocusError(f"no SigLIP tower tensors under {TOWER}; {EXPECTED}")
    layer_ids = {int(m.group(1)) for k in tensors if (m := re.match(re.escape(TOWER) + r"encoder\.layers\.(\d+)\.", k))}
    if layer_ids != set(range(len(layer_ids))) or not layer_ids:
        raise RefocusError(f"tower encoder layers {sorted(layer_ids)} are not 0..N-1")
    own, own_file = _tower_own_config(config, own_path)
    width, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    if int(config.get("mm_hidden_size", width)) != width:
        raise RefocusError(f"mm_hidden_size {config['mm_hidden_size']} != the tower's width {width}")
    values = {}
    for key in SIGLIP_DEFAULTS:
        if key in own:
            values[key] = own[key]
        else:
            values[key] = SIGLIP_DEFAULTS[key]
            report.assumed[f"vision.{key}"] = SIGLIP_DEFAULTS[key]
    side = math.isqrt(int(pos.shape[0]))
    if side * side != pos.shape[0] or int(values["image_size"]) // patch_size != side:
        raise RefocusError(
            f"the tower has {pos.shape[0]} positions ({patch_size}px patches) but image_size "
            f"{values['image_size']}; pass --vision-config with the tower's config.json"
        )
    stored = len(layer_ids)
    if own and int(own.get("num_hidden_layers", stored + 1)) != stored + 1:
        report.notes.append(
            f"the tower config ({own_file}) has {own['num_hidden_layers']} layers and the checkpoint "
            f"{stored}; their tower deletes one, so {stored} layers are read as they are stored"
        )
    if own_file:
        report.notes.append(f"tower config read from {own_file}")
    return {
        "hidden_size": width,
        "intermediate_size": int(tensors[f"{TOWER}encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": stored + 1,  # the tower as built; vision_feature_layer=-2 drops the last
        "num_attention_heads": int(values["num_attention_heads"]),
        "num_channels": channels,
        "image_size": int(values["image_size"]),
        "patch_size": patch_size,
        "hidden_act": values["hidden_act"],
        "layer_norm_eps": float(values["layer_norm_eps"]),
        "attention_dropout": 0.0,
        "vision_use_head": False,  # their tower sets head = nn.Identity()
    }


def _projector_type(config: dict) -> str:
    kind = config.get("mm_projector_type", "linear")  # build_vision_projector's default
    if kind == "linear" or re.fullmatch(r"mlp[1-9]\d*x_gelu", str(kind)):
        return kind
    raise _unsupported("mm_projector_type", kind, "'linear' and 'mlpNx_gelu'")


def selection_options(config: dict, report: ImportReport) -> dict:
    """FramePolicyConfig fields of their heads, logit scale and <start_of_frame>."""
    get = lambda k: _value(config, k, REFOCUS_DEFAULTS, report)  # noqa: E731
    if get("frame_generation_method") != "autoregressive":
        raise _unsupported("frame_generation_method", config.get("frame_generation_method", "block"),
                           "'autoregressive' (the paper's selector, with value_head)")
    for key, ok in (("score_head_norm", not get("score_head_norm") or get("score_head_norm") == "False"),
                    ("value_head_norm", not get("value_head_norm") or get("value_head_norm") == "False"),
                    ("logit_scale_type", get("logit_scale_type") == "scalar"),
                    ("logit_scale_fn", get("logit_scale_fn") in ("softplus", "exp"))):
        if not ok:
            expected = {"logit_scale_type": "'scalar'", "logit_scale_fn": "'softplus' or 'exp'"}.get(key, "false")
            raise _unsupported(key, config[key], expected)
    sof = get("start_of_frame_token_id")
    if sof is None:
        raise RefocusError("config.json has no start_of_frame_token_id (their autoregressive selector needs it)")
    if get("frame_replacement"):
        report.notes.append(
            "frame_replacement is true: their forward samples with replacement unless told otherwise, and "
            "their export passes replace=False (scripts/_common.sh); refocus selects without replacement, "
            "as that export"
        )
    scale_fn = get("logit_scale_fn")
    return {
        "head_dim": None,  # d_model -> d_model heads
        "attention_scaling": bool(get("attention_scaling")),
        "logit_scale_fn": scale_fn,
        "start_of_frame_token_id": int(sof),
        # initialisation constants (only used when something is re-initialised)
        "num_reinit_layers": int(get("reinit_backbone_layers")),
        "reinit_norm_weight": float(get("mixer_norm_rescale")),
        "qk_init_gain": float(get("score_head_init_gain")),
        "v_init_gain": float(get("value_head_init_gain")),
        "sof_init_std": float(get("value_embedding_init_range")),
        "logit_scale_init": float(get("logit_scale_init")),
    }


def pooling_options(config: dict) -> dict:
    if config.get("mm_patch_merge_type", "flat") != "flat":  # their prepare_inputs: flat only
        raise _unsupported("mm_patch_merge_type", config["mm_patch_merge_type"], "'flat'")
    mode = config.get("mm_spatial_pool_mode")
    if mode not in ("average", "max", "bilinear"):  # get_2dPool raises on anything else
        raise _unsupported("mm_spatial_pool_mode", mode, "'average', 'max' or 'bilinear'")
    # encode_images calls get_2dPool(features) with its default stride 2, whatever
    # mm_spatial_pool_stride says.
    return {"token_pool_mode": mode, "token_pool_stride": 2}


# ------------------------------------------------------------------ tensors


UNUSED = {
    "lm_head.weight": "language-model head (tied to the embedding table): selection reads no token logits",
    TOWER + "post_layernorm.weight": "SigLIP post_layernorm: their tower's features are read before it",
    TOWER + "post_layernorm.bias": "SigLIP post_layernorm: their tower's features are read before it",
    "rank_head.weight": "use_rank_head: a candidate-ranking logit their forward returns beside the "
    "selection, not used to select",
}


def map_tensors(tensors: dict, n_layer: int, tower_prefix: str, report: ImportReport) -> dict:
    """Policy state dict from the source tensors; each source key lands in ``report.consumed``
    (with its policy name) or ``report.unused`` (with the reason); anything else is an error.

    ``tower_prefix``: where the policy's tower keeps SigLIP's transformer (``vision_tower.`` or
    ``vision_tower.vision_model.``, depending on the transformers class)."""
    table = {"backbone.embedding.weight": "backbone.embeddings.weight",
             "backbone.norm_f.weight": "backbone.norm_f.weight",
             "key_head.weight": "key_head.weight", "query_head.weight": "query_head.weight",
             "value_head.weight": "value_head.weight", "value_head.bias": "value_head.bias",
             "logit_scale": "logit_scale"}
    for i in range(n_layer):
        table[f"backbone.layers.{i}.norm.weight"] = f"backbone.layers.{i}.norm.weight"
        for key in MIXER_KEYS + ("in_proj.bias", "out_proj.bias"):
            table[f"backbone.layers.{i}.mixer.{key}"] = f"backbone.layers.{i}.mixer.{key}"
    mapped: dict = {}
    for key, tensor in tensors.items():
        if key in UNUSED:
            report.unused[key] = UNUSED[key]
            continue
        if key in table:
            target = table[key]
        elif key.startswith(TOWER) and not key.startswith(TOWER + "head."):
            target = tower_prefix + key[len(TOWER):]
        elif key.startswith(PROJECTOR):
            target = "projector." + key[len(PROJECTOR):]
        else:
            raise RefocusError(f"unexpected tensor {key!r} {tuple(tensor.shape)}; {EXPECTED}")
        mapped[target] = tensor
        report.consumed[key] = target
    return mapped


def build_config(config: dict, tensors: dict, report: ImportReport, vision: Path | None) -> dict:
    """All FramePolicyConfig values of the imported policy."""
    backbone = backbone_config(config, tensors, report)
    options = {
        "vision_model_type": "siglip_vision_model",
        "vision_config": vision_config(config, tensors, report, vision),
        "vision_feature_layer": -2,  # their tower deletes its last layer, reads hidden_states[-1]
        "vision_use_final_norm": False,  # ... which is before post_layernorm
        "image_size": None,  # the tower's own
        "image_mean": [0.5, 0.5, 0.5],  # SigLipImageProcessor
        "image_std": [0.5, 0.5, 0.5],
        "projector_type": _projector_type(config),
        "backbone_config": backbone,
        "prompt_template": AUTHORS_PROMPT,
        "freeze_vision": True,
        **pooling_options(config),
        **selection_options(config, report),
    }
    if not 0 <= options["start_of_frame_token_id"] < backbone["vocab_size"]:
        raise RefocusError(
            f"start_of_frame_token_id {options['start_of_frame_token_id']} is outside the embedding "
            f"table ({backbone['vocab_size']} rows)"
        )
    options["num_reinit_layers"] = min(options["num_reinit_layers"], backbone["num_hidden_layers"])
    return options


def _check_against(own: dict, mapped: dict, report: ImportReport, tower_prefix: str) -> None:
    """Every policy tensor provided, with the shape the config implies; errors name source keys."""
    source_of = {target: key for key, target in report.consumed.items()}
    for key, tensor in mapped.items():
        if key not in own:
            raise RefocusError(
                f"unexpected tensor {source_of[key]!r} {tuple(tensor.shape)}: config.json implies no such "
                f"tensor (mm_projector_type, n_layer, ssm_cfg.bias); {EXPECTED}"
            )
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise RefocusError(
                f"tensor {source_of[key]!r} is {tuple(tensor.shape)}, its config implies {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(mapped))
    if missing:
        name = missing[0]
        for ours, theirs in ((tower_prefix, TOWER), ("projector.", PROJECTOR),
                             ("backbone.embeddings.", "backbone.embedding.")):
            if name.startswith(ours):
                name = theirs + name[len(ours):]
                break
        raise RefocusError(
            f"the checkpoint lacks {len(missing)} tensor(s) its config implies, e.g. {name!r}; {EXPECTED}"
        )


def _tokenizer(src: Path, tokenizer: Path | None):
    from transformers import AutoTokenizer

    where = tokenizer if tokenizer is not None else src
    if tokenizer is None and not any((src / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise RefocusError(
            f"{src} holds no tokenizer (the authors load EleutherAI/gpt-neox-20b's separately); "
            "pass --tokenizer DIR with a local copy of it"
        )
    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RefocusError(f"cannot load a tokenizer from {where}: {' '.join(str(exc).split())[:200]}") from None


def import_official(
    src: str | Path, out: str | Path, tokenizer: str | Path | None = None,
    vision_config_path: str | Path | None = None,
) -> ImportReport:
    """Convert the authors' checkpoint at ``src`` into a refocus policy directory ``out``.

    Writes the policy (``save_pretrained``), its tokenizer, and ``import_report.json`` (which
    source tensor went where, which were unused and why, which values were assumed).
    """
    import torch

    from refocus.policy.configuration import FramePolicyConfig
    from refocus.policy.modeling import FramePolicy

    src, out = Path(src), Path(out)
    config = read_source_config(src)
    tok = _tokenizer(src, Path(tokenizer) if tokenizer is not None else None)
    tensors = load_source_tensors(src)
    report = ImportReport()
    options = build_config(config, tensors, report, Path(vision_config_path) if vision_config_path else None)
    if len(tok) > options["backbone_config"]["vocab_size"]:
        raise RefocusError(
            f"the tokenizer has {len(tok)} tokens, the embedding table {options['backbone_config']['vocab_size']} rows"
        )
    policy = FramePolicy(FramePolicyConfig(**options))
    nested = any(k.startswith("vision_model.") for k in policy.vision_tower.state_dict())
    tower_prefix = "vision_tower.vision_model." if nested else "vision_tower."
    mapped = map_tensors(tensors, options["backbone_config"]["num_hidden_layers"], tower_prefix, report)
    _check_against(policy.state_dict(), mapped, report, tower_prefix)
    with torch.no_grad():
        policy.load_state_dict(mapped, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    tok.save_pretrained(out)
    payload = {"source": str(src.resolve()), "source_config": config, **report.to_dict()}
    (out / "import_report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return report
