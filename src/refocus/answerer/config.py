"""Configuration of answerer-side RL (``refocus answerer train``): GRPO and Video-KTR.

Defaults are the Video-KTR authors' (github zywang0104/Video-KTR, ``grpo_trainer.py`` and its
launch scripts, built on Video-R1); each field says where its default comes from. YAML files
(``--config``) override fields; ``configs/answerer_tiny.yaml`` is a CPU-sized run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from refocus.errors import ConfigError
from refocus.video.config import DecodeConfig

METHODS = ("grpo", "ktr")
SIGNALS = ("visual", "temporal", "entropy")


@dataclass
class AnswererTrainConfig:
    method: str = "ktr"
    """'grpo': policy gradient on every completion token; 'ktr': only on key tokens (the
    union of the masks named in ``signals``)."""

    # ---- rollouts (authors' values) ----------------------------------------------------------
    num_generations: int = 8
    """Rollouts per question (authors: 8)."""
    per_device_train_batch_size: int = 1
    """Questions per step (authors: 1 per GPU)."""
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 768
    frames: int = 16
    """K frames shown to the answerer, chosen by ``--selector`` (Video-R1 / Video-KTR train
    on 16 frames)."""

    # ---- key-token selection (authors' values) ------------------------------------------------
    signals: list[str] = field(default_factory=lambda: list(SIGNALS))
    """Attribution signals OR-ed into the kept-token mask (``ktr`` only)."""
    visual_ratio: float = 0.2
    """Share of the batch's completion tokens kept by visual-aware attribution
    (log p - log p with the visual tokens removed by the attention mask)."""
    temporal_ratio: float = 0.2
    """... by temporal-aware attribution (log p - log p with the frames shuffled by one
    random permutation before the processor). A one-frame input has none (the image rule)."""
    entropy_ratio: float = 0.2
    """... by next-token entropy."""
    normalisation: str = "sequence"
    """'sequence' (authors): each sequence's kept-token sum over its own kept count, mean over
    all sequences (one with no kept token contributes 0, not the authors' NaN);
    'sequence_kept': mean over sequences with kept tokens; 'token': one mean over all kept tokens."""

    # ---- objective ---------------------------------------------------------------------------
    beta: float = 0.04
    """k3 KL weight against the frozen starting answerer (authors: 0.04 against the SFT model)."""
    advantage_epsilon: float = 1e-4
    """(r - mean) / (std + eps) within a question's rollouts (authors: 1e-4)."""
    accuracy_weight: float = 1.0
    """Reward = accuracy_weight * exact match of the <answer> letter + format_weight * format."""
    format_weight: float = 1.0

    # ---- optimisation ------------------------------------------------------------------------
    learning_rate: float | None = None
    """None: the authors' 2e-6 for 'ktr' and 1e-6 for 'grpo' (Video-R1's rate)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    """AdamW settings of the Hugging Face Trainer the authors run (its defaults)."""
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    train_vision: bool = False
    """Also update the vision tower (ours: off, as the small reference model's last stage)."""
    max_steps: int = 1000

    # ---- data and bookkeeping ----------------------------------------------------------------
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How videos are decoded (rate and frame cap; the size is the model's)."""
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 2
    max_consecutive_nonfinite: int = 5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: advantages are relative within a group")
        unknown = sorted(set(self.signals) - set(SIGNALS))
        if unknown or (self.method == "ktr" and not self.signals):
            raise ConfigError(f"signals must be a non-empty subset of {SIGNALS} (got {self.signals})")
        for name in ("visual_ratio", "temporal_ratio", "entropy_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1]")
        from refocus.answerer.ktr_math import NORMALISATIONS

        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation must be one of {NORMALISATIONS}")
        if min(self.per_device_train_batch_size, self.max_steps, self.frames, self.max_new_tokens) < 1:
            raise ConfigError("per_device_train_batch_size, max_steps, frames and max_new_tokens must be >= 1")
        if self.beta < 0:
            raise ConfigError("beta must be >= 0")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-6 if self.method == "ktr" else 1e-6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    RESUME_FREE_FIELDS: ClassVar[tuple[str, ...]] = (
        "logging_steps", "save_steps", "save_total_limit", "max_consecutive_nonfinite", "max_steps",
    )
    """Fields that may differ between a checkpoint and the run resuming it: they change what
    is written, not what is learnt (as in ``refocus train``), and ``max_steps``, because the
    schedule here (a warm-up of ``warmup_steps``, then constant) does not depend on it, so a
    run can be extended."""

    def resume_mismatch(self, saved: dict[str, Any]) -> list[str]:
        """What :class:`refocus.training.core.TrainingLoop` refuses to resume across."""
        from refocus.training.config import config_mismatch

        return config_mismatch(self.to_dict(), saved, self.RESUME_FREE_FIELDS)


def load_answerer_config(path: str | Path | None = None, **overrides: Any) -> AnswererTrainConfig:
    """Defaults, then the YAML file's fields, then ``overrides`` (None values ignored)."""
    from refocus.training.config import load_dataclass_config

    return load_dataclass_config(AnswererTrainConfig, path, **overrides)
