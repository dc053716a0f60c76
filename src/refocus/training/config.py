"""Configuration of GRPO training of the frame-selection policy.

Field names follow TRL's ``GRPOConfig`` where the idea is the same. Defaults are the paper's
(ReFoCUS §3.2, §4, Appendix B.1); ``configs/tiny.yaml`` overrides them for a CPU run and
``configs/paper.yaml`` spells the paper's settings out. YAML files only override fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from refocus.errors import ConfigError

T = TypeVar("T")
IMPORTANCE_LEVELS = ("subset", "sequence", "token")


@dataclass
class GRPOConfig:
    # ---- groups and sampling -------------------------------------------------------------
    num_generations: int = 16
    """N: candidate frame subsets sampled per question (paper §4: N = 16)."""
    per_device_train_batch_size: int = 24
    """Questions per process per step (paper B.1: global batch 196 over 8 GPUs; 24 x 8 = 192)."""
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
    importance_sampling_level: str = "sequence"
    """'sequence': one length-normalised ratio per subset (the subset is one atomic action, §3.2);
    'token': one ratio per selection step."""

    # ---- optimisation (Appendix B.1) -----------------------------------------------------
    learning_rate: float = 1e-5
    """LR of pretrained parameters (backbone layers that were not re-initialised)."""
    learning_rate_reinit: float = 1e-4
    """LR of re-initialised parameters (heads, projector, last backbone layers, <start_of_frame>)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "linear"
    """'linear' (paper) or 'constant' (after warm-up)."""
    max_grad_norm: float = 1.0
    bf16: bool = True
    """bfloat16 autocast for the policy forward (paper B.1). Log-probs stay float32."""
    gradient_checkpointing: bool = True
    max_steps: int = 1000

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
    fps: float = 4.0
    """Decoding rate (paper B.1: min(4 fps, 512 frames))."""
    max_frames: int = 512
    reference_batch_size: int = 16
    """Subsets per reference-model forward (bounds reward memory)."""

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
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 2
    """Checkpoints kept (oldest removed); the final policy is always written to DIR/policy."""
    max_consecutive_nonfinite: int = 5
    """Stop after this many steps in a row with a NaN/inf loss (each one is skipped)."""

    def __post_init__(self) -> None:
        from refocus.policy.configuration import check_policy_keys

        check_policy_keys(self.policy)
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
        if self.lr_scheduler_type not in ("linear", "constant"):
            raise ConfigError("lr_scheduler_type must be 'linear' or 'constant'")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError("micro_batch_size must be >= 1 or null")
        if self.prefix_segment_frames is not None and self.prefix_segment_frames < 1:
            raise ConfigError("prefix_segment_frames must be >= 1 or null")
        if self.feature_cache_gb < 0 or self.frame_cache_gb < 0:
            raise ConfigError("feature_cache_gb and frame_cache_gb must be >= 0")
        if self.per_device_train_batch_size < 1 or self.max_steps < 1:
            raise ConfigError("per_device_train_batch_size and max_steps must be >= 1")

    def selection_size_at(self, step: int) -> int:
        """T' of the curriculum stage that contains ``step``."""
        k = self.selection_sizes[0]
        for start, size in zip(self.curriculum_starts, self.selection_sizes, strict=True):
            if step >= start:
                k = size
        return k

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> GRPOConfig:
    """Defaults, then the YAML file's fields, then ``overrides`` (None values ignored)."""
    return load_dataclass_config(GRPOConfig, path, **overrides)


def load_dataclass_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Build the config dataclass ``cls`` from its defaults, a YAML file of overrides, then
    keyword overrides (None values ignored); unknown fields are an error naming the file."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        where = f"{path}: " if path else ""
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}unknown config field(s): {', '.join(unknown)}{hint}")
    try:
        return cls(**values)
    except ConfigError as exc:
        if path is None or str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (``tiny``, ``paper``)."""
    p = Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(f"no packaged config named {name!r}")
    return p
