"""Configuration of GRPO training of the frame-selection policy.

Field names follow TRL's ``GRPOConfig`` where the idea is the same. Defaults are the paper's
(ReFoCUS §3.2, §4, Appendix B.1); ``configs/tiny.yaml`` overrides them for a CPU run and
``configs/paper.yaml`` spells the paper's settings out. YAML files only override fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from refocus.configuration import merge, read_yaml_mapping
from refocus.errors import ConfigError
from refocus.video.config import DecodeConfig

T = TypeVar("T")
IMPORTANCE_LEVELS = ("subset", "sequence", "token")


def config_mismatch(now: dict[str, Any], saved: dict[str, Any], free: tuple[str, ...]) -> list[str]:
    """Fields whose value in ``saved`` (a checkpoint's config) differs from ``now``, other than
    the ``free`` ones, as ``"name: saved -> now"`` lines (what a resume refuses)."""
    keys = sorted((set(now) | set(saved)) - set(free))
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != now.get(k, "<absent>")]


@dataclass
class TrainerConfig:
    """What every trainer of the policy reads (GRPO and Frame-Voyager): batching, the optimiser
    and its schedule, how the policy is built, and the run's bookkeeping.

    Defaults are the paper's (Appendix B.1). :class:`GRPOConfig` adds the GRPO fields and
    ``refocus.voyager.config.VoyagerConfig`` the ranking fields.
    """

    per_device_train_batch_size: int = 24
    """Questions per process per step (paper B.1: global batch 196 over 8 GPUs; 24 x 8 = 192)."""

    # ---- optimisation (Appendix B.1) -----------------------------------------------------
    learning_rate: float = 1e-5
    """LR of pretrained parameters (backbone layers that were not re-initialised); paper B.1."""
    learning_rate_reinit: float = 1e-4
    """LR of re-initialised parameters (heads, projector, last backbone layers, <start_of_frame>); paper B.1."""
    adam_beta1: float = 0.9
    """AdamW beta1 (first-moment decay); paper B.1."""
    adam_beta2: float = 0.99
    """AdamW beta2 (second-moment decay); paper B.1 (0.99, not torch's 0.999)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, applied to every trained parameter; paper B.1."""
    warmup_ratio: float = 0.05
    """Share of ``max_steps`` (0..1) spent in the linear LR warm-up; paper B.1."""
    lr_scheduler_type: str = "linear"
    """'linear' decay to 0 at ``max_steps`` after warm-up (paper), or 'constant'."""
    max_grad_norm: float = 1.0
    """Global L2 norm the gradients are clipped to before each optimiser step; paper B.1."""
    bf16: bool = True
    """bfloat16 autocast for the policy forward (paper B.1). Log-probs stay float32."""
    gradient_checkpointing: bool = True
    """Recompute backbone activations in the backward pass (less memory, ~30% more time)."""
    max_steps: int = 1000
    """Optimiser steps of the run (one batch of questions each); paper: 1,000."""

    # ---- policy architecture (used when a new policy is built) ---------------------------
    policy: dict[str, Any] = field(default_factory=dict)
    """A new policy: ``FramePolicyConfig`` fields, and where its parts come from:
    ``vision_model`` (a vision checkpoint dir), ``backbone_model`` (a Mamba2 checkpoint dir, HF or
    mamba_ssm format), ``tokenizer`` (default: the backbone's), ``vision_from_reference`` (reuse
    the reference model's tower). See ``refocus policy init``. Unknown keys are errors."""
    init_policy: str | None = None
    """Start from this saved policy as it is (``refocus train --policy DIR``: a ``refocus policy
    init`` output or a trained policy; nothing is re-initialised) instead of building one."""

    # ---- bookkeeping ---------------------------------------------------------------------
    seed: int = 0
    """Seed of the policy's initialisation, the question order and the sampler."""
    logging_steps: int = 1
    """Write metrics every this many steps (>= 1)."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many steps (>= 1); the last step always saves."""
    save_total_limit: int = 2
    """Checkpoints kept (oldest removed); the final policy is always written to DIR/policy."""

    RESUME_FREE_FIELDS: ClassVar[tuple[str, ...]] = ("logging_steps", "save_steps", "save_total_limit")
    """Fields that may differ between a checkpoint and the run resuming it (they change what
    is written, not what is learnt)."""

    def __post_init__(self) -> None:
        from refocus.policy.configuration import check_policy_keys

        check_policy_keys(self.policy)
        if self.per_device_train_batch_size < 1 or self.max_steps < 1:
            raise ConfigError(
                "per_device_train_batch_size and max_steps must be >= 1 "
                f"(got {self.per_device_train_batch_size} and {self.max_steps})"
            )
        if self.lr_scheduler_type not in ("linear", "constant"):
            raise ConfigError(f"lr_scheduler_type must be 'linear' or 'constant', got {self.lr_scheduler_type!r}")
        if self.logging_steps < 1 or self.save_steps < 1:
            raise ConfigError(
                f"logging_steps and save_steps are intervals in steps and must be >= 1 (got "
                f"{self.logging_steps} and {self.save_steps}); to save only at the end, set "
                "save_steps to max_steps"
            )
        if self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be >= 1 (checkpoints kept), got {self.save_total_limit}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"warmup_ratio is a share of max_steps in [0, 1], got {self.warmup_ratio}")
        if self.learning_rate < 0 or self.learning_rate_reinit < 0 or self.weight_decay < 0:
            raise ConfigError("learning_rate, learning_rate_reinit and weight_decay must be >= 0")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            raise ConfigError(f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_mismatch(self, saved: dict[str, Any]) -> list[str]:
        """Fields whose value in ``saved`` (a checkpoint's config) differs from this config's,
        other than :attr:`RESUME_FREE_FIELDS`, as ``"name: saved -> now"`` lines."""
        return config_mismatch(self.to_dict(), saved, self.RESUME_FREE_FIELDS)


@dataclass
class GRPOConfig(TrainerConfig):
    """GRPO training of the policy (``refocus train``): the trainer fields plus the group
    sampling, the curriculum, the objective of Eq. 2 and the data settings."""

    # ---- groups and sampling -------------------------------------------------------------
    num_generations: int = 16
    """N: candidate frame subsets sampled per question (paper §4: N = 16)."""
    temperature: float = 1.0
    """Sampling temperature s of Algorithm 2."""
    selection_sizes: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    """T' per curriculum stage (project page: 4 -> 8 -> 16 -> 32; paper final T' = 32)."""
    curriculum_starts: list[int] = field(default_factory=lambda: [0, 250, 500, 750])
    """Step at which each stage of ``selection_sizes`` starts (first must be 0)."""

    # ---- objective (Eq. 2) ---------------------------------------------------------------
    beta: float = 0.0
    """KL weight against a reference policy. 0: the paper uses none (§3.2, no SFT policy exists)."""
    entropy_coef: float = 0.002
    """Weight of the entropy bonus H(pi) of Eq. 2 (paper §4: beta = 0.002)."""
    epsilon: float | None = None
    """Lower ratio clip. None: the paper's unclipped importance-weighted objective (Eq. 2)."""
    epsilon_high: float | None = None
    """Upper ratio clip (DAPO); defaults to ``epsilon``."""
    num_iterations: int = 1
    """K: update passes per sampled batch (Algorithm 1, line 8)."""
    scale_rewards: str = "group"
    """Advantage scaling: 'group' (Algorithm 1: (r - mean) / (std + eps)), 'batch' or 'none'."""
    advantage_epsilon: float = 1e-4
    """eps in (r - mean) / (std + eps)."""
    reward_floor: float | None = None
    """None (the paper, Eq. 1): the margin reward as it is. A number: rewards below it are raised
    to it before the group advantages (ours; 0 keeps what a subset earns when the reference
    answers right and makes every wrong answer equal). Why it exists: on ``query`` a subset that
    shows an object of a wrong option earns -0.2 on average and one that shows nothing -0.07, so
    the margin first teaches a question-blind "show no object", which also removes the hits the
    policy needs to learn the question from. With 0, held-out recall on balanced ``query`` data
    rose from 0.16-0.19 to 0.46-0.50 (benchmarks/RESULTS.md, "a question-blind selector can solve
    ``query``", point 3); on ``niah`` it changed nothing (0.99 / 1.00 both); not measured on
    ``multi``."""
    importance_sampling_level: str = "subset"
    """'subset' (Eq. 2): one ratio per subset, pi(f) / pi_old(f), the product of the T' step
    ratios (§3.2: the subset is one atomic action). 'sequence': the length-normalised ratio
    exp(mean_k log-ratio) (GSPO; the policy-gradient term is T' times smaller against the entropy
    bonus, and the ratio stays near 1 over several passes). 'token': one ratio per selection step."""

    # ---- memory (none of these change the result beyond floating-point error) ------------
    micro_batch_size: int | None = None
    """Questions per sampling / replay micro-batch (gradients are accumulated, see
    ``training/replay.py``); None: the whole per-device batch at once. Bounds the
    recurrent-state copies (micro-batch x G) and the backward's activations."""
    prefix_segment_frames: int | None = None
    """Run each prefix in segments of this many frames, checkpointed along the sequence when
    ``gradient_checkpointing`` is on (``policy/prefix.py``); None: one pass."""
    feature_cache_gb: float = 16.0
    """Host-memory cap of the frozen-encoder features kept between steps (on the CPU, in the
    training dtype: bfloat16 under ``bf16``); moved to the device per micro-batch."""
    frame_cache_gb: float = 4.0
    """Host-memory cap of decoded frames kept between steps (the reference model's size)."""
    frame_disk_cache: bool = True
    """Use the on-disk frame cache of ``refocus.video`` (False: always decode)."""

    # ---- data ----------------------------------------------------------------------------
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How videos are decoded (rate and frame cap; the size is the models')."""
    reference_batch_size: int = 16
    """Subsets per reference-model forward (bounds reward memory)."""

    max_consecutive_nonfinite: int = 5
    """Stop after this many steps in a row with a NaN/inf loss (each one is skipped)."""

    RESUME_FREE_FIELDS: ClassVar[tuple[str, ...]] = (
        *TrainerConfig.RESUME_FREE_FIELDS, "reference_batch_size", "max_consecutive_nonfinite",
        "micro_batch_size", "prefix_segment_frames", "feature_cache_gb", "frame_cache_gb", "frame_disk_cache",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.decode = DecodeConfig.coerce(self.decode)
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: advantages are relative within a group")
        if len(self.selection_sizes) != len(self.curriculum_starts) or not self.selection_sizes:
            raise ConfigError(
                "selection_sizes and curriculum_starts must be non-empty lists of the same length "
                f"(got {self.selection_sizes} and {self.curriculum_starts})"
            )
        if self.curriculum_starts[0] != 0 or sorted(self.curriculum_starts) != list(self.curriculum_starts):
            raise ConfigError("curriculum_starts must start at 0 and increase, e.g. [0, 250, 500, 750]")
        if any(k < 1 for k in self.selection_sizes):
            raise ConfigError("selection_sizes must be positive")
        late = [(i, t) for i, t in enumerate(self.curriculum_starts) if i > 0 and t >= self.max_steps]
        if late:
            i, t = late[0]
            keep = [s for s, start in zip(self.selection_sizes, self.curriculum_starts, strict=True) if start < self.max_steps]
            raise ConfigError(
                f"curriculum stage {i + 1} (T' = {self.selection_sizes[i]}) starts at step {t}, at or past "
                f"max_steps = {self.max_steps}, so it would never run: raise max_steps, or drop the stage "
                f"(selection_sizes: {keep}, curriculum_starts: {self.curriculum_starts[: len(keep)]})"
            )
        if max(self.selection_sizes) > self.decode.max_frames:
            raise ConfigError(
                f"selection size {max(self.selection_sizes)} is above decode.max_frames = "
                f"{self.decode.max_frames}: no video decodes that many frames; lower selection_sizes "
                "or raise decode.max_frames"
            )
        if self.beta != 0.0:
            raise ConfigError(
                f"beta = {self.beta} needs a frozen reference policy for the KL term, and the trainer "
                "has none (the paper trains without one, §3.2: no SFT policy exists); set beta: 0"
            )
        if self.reference_batch_size < 1:
            raise ConfigError(f"reference_batch_size must be >= 1, got {self.reference_batch_size}")
        if self.max_consecutive_nonfinite < 1:
            raise ConfigError(f"max_consecutive_nonfinite must be >= 1, got {self.max_consecutive_nonfinite}")
        if self.reward_floor is not None and not -1.0 <= self.reward_floor < 1.0:
            raise ConfigError("reward_floor must be null or in [-1, 1) (margin rewards lie in [-1, 1])")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError("scale_rewards must be 'group', 'batch' or 'none'")
        if self.importance_sampling_level not in IMPORTANCE_LEVELS:
            raise ConfigError(f"importance_sampling_level must be one of {', '.join(IMPORTANCE_LEVELS)}")
        if self.epsilon_high is not None and self.epsilon is None:
            raise ConfigError("epsilon_high needs epsilon (set epsilon, or leave both unset for Eq. 2)")
        if self.epsilon_high is None and self.epsilon is not None:
            self.epsilon_high = self.epsilon
        if self.num_iterations < 1:
            raise ConfigError("num_iterations must be >= 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError("micro_batch_size must be >= 1 or null")
        if self.prefix_segment_frames is not None and self.prefix_segment_frames < 1:
            raise ConfigError("prefix_segment_frames must be >= 1 or null")
        if self.feature_cache_gb < 0 or self.frame_cache_gb < 0:
            raise ConfigError("feature_cache_gb and frame_cache_gb must be >= 0")

    def shortened(self, max_steps: int) -> GRPOConfig:
        """The same run cut to ``max_steps`` (a smoke run): curriculum stages that would start
        at or after it are dropped, since the config rejects stages that never run."""
        keep = [i for i, start in enumerate(self.curriculum_starts) if i == 0 or start < max_steps]
        return dataclasses.replace(
            self, max_steps=max_steps, selection_sizes=[self.selection_sizes[i] for i in keep],
            curriculum_starts=[self.curriculum_starts[i] for i in keep],
        )

    def selection_size_at(self, step: int) -> int:
        """T' of the curriculum stage that contains ``step``."""
        k = self.selection_sizes[0]
        for start, size in zip(self.curriculum_starts, self.selection_sizes, strict=True):
            if step >= start:
                k = size
        return k


def load_config(path: str | Path | None = None, sets: dict[str, Any] | None = None, **overrides: Any) -> GRPOConfig:
    """Defaults, then the YAML file's fields, then ``sets`` (``--set``), then ``overrides``
    (None values ignored)."""
    return load_dataclass_config(GRPOConfig, path, sets=sets, **overrides)


def resolve_config(
    config: Any, load: Callable[..., T], cls: type[T], sets: dict[str, Any] | None = None, **overrides: Any
) -> T:
    """The run's config from a config object, a YAML path or None (``load(path, sets=...,
    **overrides)``); ``sets`` (``--set``) and ``overrides`` (None values ignored) apply to a
    config object too, re-validated."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(config, cls):
        if sets:
            _check_known(cls, sets, "--set")
            config = cls(**_nested(cls, merge(config.to_dict(), sets)))
        return dataclasses.replace(config, **given) if given else config
    return load(config, sets=sets, **given)


def load_dataclass_config(
    cls: type[T],
    path: str | Path | None = None,
    *,
    base: str | Path | None = None,
    sets: dict[str, Any] | None = None,
    **overrides: Any,
) -> T:
    """Build the config dataclass ``cls`` from its defaults, the YAML file ``base`` (a shipped
    setting), the YAML file ``path``, ``sets`` (``--set key=value`` as a nested mapping; these
    three merge mapping fields key by key), then keyword overrides (None values ignored,
    replacing whole fields); unknown fields are an error naming the file."""
    values: dict[str, Any] = {}
    for source in (base, path):
        if source is not None:
            values = merge(values, _read_yaml_fields(cls, Path(source)))
    if sets:
        _check_known(cls, sets, "--set")
        values = merge(values, _dataclass_defaults_of(cls, sets))
        values = merge(values, sets)
    values.update({k: v for k, v in overrides.items() if v is not None})
    _check_known(cls, values, None)
    from refocus.policy.configuration import raise_if_missing

    # paths a shipped config marks "??? ..." (configs/paper.yaml); a given policy needs no parts
    raise_if_missing(values, str(path or base or "config"), skip=("policy.",) if values.get("init_policy") else ())
    try:
        return cls(**_nested(cls, values))
    except ConfigError as exc:  # a bad value: name the file it came from
        named = path if path is not None else base
        if named is None or str(exc).startswith(str(named)):
            raise
        raise ConfigError(f"{named}: {exc}") from None


def _nested(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Mappings given for nested config fields (``decode:``) built into their dataclass, and
    YAML lists given for tuple fields (``frames_per_example: [4]``) made tuples."""
    out = dict(values)
    for f in fields(cls):
        if isinstance(out.get(f.name), list) and isinstance(f.default, tuple):
            out[f.name] = tuple(out[f.name])
        if isinstance(out.get(f.name), dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                try:
                    out[f.name] = type(default)(**out[f.name])
                except TypeError as exc:
                    raise ConfigError(f"{f.name}: {exc}") from None
    return out


def _dataclass_defaults_of(cls: type, sets: dict[str, Any]) -> dict[str, Any]:
    """For ``--set decode.fps=2``: the defaults of the nested field, so the merge keeps the
    nested fields that were not set."""
    out = {}
    for f in fields(cls):
        if f.name in sets and isinstance(sets[f.name], dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                out[f.name] = asdict(default)
            elif isinstance(default, dict):
                out[f.name] = default
    return out


def _read_yaml_fields(cls: type, path: Path) -> dict[str, Any]:
    loaded = read_yaml_mapping(path)
    _check_known(cls, loaded, path)
    return loaded


def _check_known(cls: type, values: dict[str, Any], path: Path | str | None) -> None:
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        import difflib

        where = f"{path}: " if path else ""
        close = difflib.get_close_matches(unknown[0], sorted(f.name for f in fields(cls)), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}unknown config field(s): {', '.join(unknown)}{hint}")


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (``tiny``, ``paper``)."""
    p = Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(f"no packaged config named {name!r}")
    return p
