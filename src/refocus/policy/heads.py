"""Projector and score conventions of the policy, with the authors' variants as options.

- Projector (``projector_type``): ``"linear"``, or ``"mlpNx_gelu"`` = Linear, then (GELU,
  Linear) N - 1 times, as LLaVA's ``build_vision_projector`` (the authors' code uses the same
  builder); ``"mlp"`` is ``"mlp2x_gelu"``. Module indices follow ``nn.Sequential`` as theirs do,
  so their ``mm_projector.{0,2,...}`` weights load unchanged.
- Logit scale (``logit_scale_fn``): the learned scalar s enters the scores as ``fn(s)``:
  ``"identity"`` (Algorithm 2's s, this project's default), ``"softplus"`` (the authors'
  ``RefocusConfig.logit_scale_fn`` default: always positive), or ``"exp"`` (CLIP's). The
  parameter is initialised so that ``fn(s) = logit_scale_init``, as their ``reinit_for_finetune``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from refocus.errors import ConfigError

LOGIT_SCALE_FNS = ("identity", "softplus", "exp")


def projector_depth(kind: str) -> int | None:
    """Number of Linear layers of an MLP projector type (None for "linear"); raises if unknown."""
    if kind == "linear":
        return None
    if kind == "mlp":
        return 2
    match = re.fullmatch(r"mlp([1-9]\d*)x_gelu", kind)
    if match is None:
        raise ConfigError(
            f"projector_type must be 'linear', 'mlp' or 'mlpNx_gelu' (N >= 1), got {kind!r}"
        )
    return int(match.group(1))


def build_projector(kind: str, in_width: int, width: int) -> nn.Module:
    depth = projector_depth(kind)
    if depth is None:
        return nn.Linear(in_width, width)
    layers: list[nn.Module] = [nn.Linear(in_width, width)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(width, width)]
    return nn.Sequential(*layers)


def check_logit_scale_fn(name: str) -> None:
    if name not in LOGIT_SCALE_FNS:
        raise ConfigError(f"logit_scale_fn must be one of {LOGIT_SCALE_FNS}, got {name!r}")


def apply_logit_scale(param: torch.Tensor, name: str) -> torch.Tensor:
    """The multiplier of the scores, ``fn(s)``."""
    if name == "softplus":
        return F.softplus(param)
    if name == "exp":
        return torch.exp(param)
    return param


def inverse_logit_scale(value: float, name: str) -> float:
    """The parameter s with ``fn(s) = value`` (value > 0 for softplus and exp)."""
    if name == "identity":
        return float(value)
    if value <= 0:
        raise ConfigError(f"logit_scale_init must be > 0 with logit_scale_fn={name!r}, got {value}")
    return math.log(math.expm1(value)) if name == "softplus" else math.log(value)
