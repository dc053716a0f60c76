"""The policy's frozen vision tower: which Hugging Face encoders it can be, and how it is read.

A tower is any of the vision encoders below, built from its transformers config (kept inside
the policy config, so a checkpoint is self-contained). Two options say what the policy reads:

- ``vision_feature_layer``: index into the tower's hidden states, as transformers' LLaVA-family
  ``vision_feature_layer``: 0 is the patch embeddings, ``i`` the output of encoder layer ``i``,
  negative values count from the end (-1: the last layer, -2: drop the last layer, as LLaVA and
  the ReFoCUS authors' SigLIP tower do). Layers after the read one are removed from the module,
  so they cost nothing and are not saved.
- ``vision_use_final_norm``: pass the read layer's output through the tower's final norm
  (SigLIP's ``post_layernorm``, CLIP's ``post_layernorm`` applied to every token, InternViT's
  ``layernorm``) or not. Qwen2.5-VL's tower always ends with its patch merger (the merger's own
  RMSNorm and MLP), which turns 2 x 2 patches into one token of the language model's width.

Families (``model_type`` of the vision config; the towers inside InternVL3-hf, Qwen2.5-VL and
LLaVA-OneVision checkpoints are the ``internvl_vision``, ``qwen2_5_vl_vision`` and
``siglip_vision_model`` entries):
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from refocus.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TowerFamily:
    """How one transformers vision encoder is built, truncated and read."""

    layers: str | None
    """Attribute path of the encoder's list of layers (None: the tower cannot be truncated)."""
    norm: str | None
    """Attribute path of the final norm after the last layer (None: none to choose)."""
    norm_in_output: bool
    """Whether ``last_hidden_state`` has already passed through ``norm``."""
    cls_token: bool
    """Whether the first output token is a CLS token rather than a patch."""
    inputs: str
    """"pixels" (B, 3, S, S), "naflex" (SigLIP2's flattened patches) or "qwen" (Qwen2.5-VL's
    flattened temporal patches with a grid per frame)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    """Default normalisation of the family's image processor (a checkpoint's
    ``preprocessor_config.json`` overrides it at ``refocus policy init``)."""
    drop_head: str | None = None
    """Config key that removes a pooling head the policy never reads (SigLIP's ``vision_use_head``)."""


FAMILIES: dict[str, TowerFamily] = {
    "siglip_vision_model": TowerFamily(
        "encoder.layers", "post_layernorm", True, False, "pixels", HALF, HALF, "vision_use_head"
    ),
    "siglip2_vision_model": TowerFamily(
        "encoder.layers", "post_layernorm", True, False, "naflex", HALF, HALF, "vision_use_head"
    ),
    "clip_vision_model": TowerFamily(
        "encoder.layers", "post_layernorm", False, True, "pixels", CLIP_MEAN, CLIP_STD
    ),
    "internvl_vision": TowerFamily(
        "encoder.layer", "layernorm", True, True, "pixels", IMAGENET_MEAN, IMAGENET_STD
    ),
    "qwen2_5_vl_vision": TowerFamily("blocks", None, False, False, "qwen", CLIP_MEAN, CLIP_STD),
    # LeViT: the conv-stem tower of the project's small reference model (read as a whole).
    "levit": TowerFamily(None, None, False, False, "pixels", IMAGENET_MEAN, IMAGENET_STD),
}
VISION_MODEL_TYPES = tuple(FAMILIES)
__doc__ += "".join(f"``{name}``, " for name in VISION_MODEL_TYPES[:-1]) + "``levit``.\n"


def family(model_type: str) -> TowerFamily:
    if model_type not in FAMILIES:
        raise ConfigError(f"vision_model_type must be one of {VISION_MODEL_TYPES}, got {model_type!r}")
    return FAMILIES[model_type]


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


def tower_image_size(model_type: str, vision_config: dict[str, Any]) -> int | None:
    """The square input size the tower was built for, or None when it takes any size (Qwen2.5-VL)."""
    if model_type == "siglip2_vision_model":
        return math.isqrt(int(vision_config["num_patches"])) * int(vision_config["patch_size"])
    if "image_size" in vision_config:
        return _first(vision_config["image_size"])
    return None


def patch_multiple(model_type: str, vision_config: dict[str, Any]) -> int:
    """Input sizes must be a multiple of this (patch size, times the merge size for Qwen2.5-VL)."""
    if model_type == "levit":
        return 1
    patch = _first(vision_config.get("patch_size", 1))
    return patch * int(vision_config.get("spatial_merge_size", 1)) if model_type == "qwen2_5_vl_vision" else patch


def make_config(model_type: str, vision_config: dict[str, Any]):
    """The tower's transformers config object."""
    if model_type == "qwen2_5_vl_vision":
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

        return Qwen2_5_VLVisionConfig(**vision_config)
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **vision_config)


def output_width(model_type: str, config: Any) -> int:
    """Width Dv of the tokens the tower gives the projector."""
    if model_type == "qwen2_5_vl_vision":
        return int(config.out_hidden_size)
    return int(config.hidden_size)


def _get(module: nn.Module, path: str) -> Any:
    for name in path.split("."):
        module = getattr(module, name)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    for name in parents:
        module = getattr(module, name)
    setattr(module, last, value)


def kept_layers(model_type: str, num_layers: int, feature_layer: int) -> int:
    """Encoder layers kept to read hidden state ``feature_layer`` (see the module docstring)."""
    index = num_layers + 1 + feature_layer if feature_layer < 0 else feature_layer
    if not 0 <= index <= num_layers:
        raise ConfigError(
            f"vision_feature_layer={feature_layer} is outside the tower's hidden states "
            f"(-{num_layers + 1} .. {num_layers} for {num_layers} layers)"
        )
    if family(model_type).layers is None and index != num_layers:
        raise ConfigError(f"a {model_type} tower is read whole: vision_feature_layer must be -1")
    return index


def build_tower(model_type: str, vision_config: dict[str, Any], feature_layer: int, use_norm: bool) -> nn.Module:
    """The tower module, truncated after the read layer, its final norm kept only if used."""
    fam = family(model_type)
    config = make_config(model_type, vision_config)
    if model_type == "qwen2_5_vl_vision":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
        )

        tower = Qwen2_5_VisionTransformerPretrainedModel(config)
    else:
        from transformers import AutoModel

        tower = AutoModel.from_config(config)
    if fam.layers is not None:
        layers = _get(tower, fam.layers)
        keep = kept_layers(model_type, len(layers), feature_layer)
        _set(tower, fam.layers, nn.ModuleList(list(layers)[:keep]))
    if fam.norm is not None and not use_norm and not isinstance(_get(tower, fam.norm), nn.Identity):
        _set(tower, fam.norm, nn.Identity())
    return tower


def _naflex_patches(pixels: torch.Tensor, patch: int) -> tuple[torch.Tensor, ...]:
    """SigLIP2 inputs: (T, 3, S, S) -> patches (T, N, p*p*3), mask (T, N), spatial shapes (T, 2)."""
    t, c, h, w = pixels.shape
    nh, nw = h // patch, w // patch
    patches = pixels.reshape(t, c, nh, patch, nw, patch).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(t, nh * nw, patch * patch * c)
    mask = torch.ones(t, nh * nw, dtype=torch.long, device=pixels.device)
    shapes = torch.tensor([[nh, nw]] * t, dtype=torch.long, device=pixels.device)
    return patches, mask, shapes


def _qwen_patches(pixels: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL inputs, each frame one image: (T, 3, S, S) -> patches (T*h*w, 3*tp*p*p), grid (T, 3).

    The frame is repeated ``temporal_patch_size`` times (as Qwen2-VL's processor does for a still
    image) and patches are ordered in 2 x 2 merge groups, the layout the merger expects.
    """
    t, c, size, _ = pixels.shape
    p, tp, m = int(config.patch_size), int(config.temporal_patch_size), int(config.spatial_merge_size)
    g = size // p
    x = pixels.unsqueeze(1).expand(t, tp, c, size, size)
    x = x.reshape(t, tp, c, g // m, m, p, g // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = x.reshape(t * g * g, c * tp * p * p)
    grid = torch.tensor([[1, g, g]] * t, dtype=torch.long, device=pixels.device)
    return patches, grid


def run_tower(
    tower: nn.Module, model_type: str, pixels: torch.Tensor, use_norm: bool, drop_cls: bool
) -> torch.Tensor:
    """Tokens (T, P, Dv) of normalised frames (T, 3, S, S) read as the config says."""
    fam = family(model_type)
    if fam.inputs == "qwen":
        patches, grid = _qwen_patches(pixels, tower.config)
        merged = tower(patches, grid_thw=grid).pooler_output  # (T * P, Dv), frames in order
        return merged.reshape(pixels.shape[0], -1, merged.shape[-1])
    if fam.inputs == "naflex":
        patches, mask, shapes = _naflex_patches(pixels, int(tower.config.patch_size))
        tokens = tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
    else:
        tokens = tower(pixel_values=pixels).last_hidden_state
    if model_type == "levit":
        return tokens
    if use_norm and fam.norm is not None and not fam.norm_in_output:
        tokens = _get(tower, fam.norm)(tokens)
    if fam.cls_token and drop_cls:
        tokens = tokens[:, 1:]
    return tokens
