"""Configuration of the Frame-Voyager baseline: ranking-data collection and ranker training.

Frame-Voyager (Yu et al., ICLR 2025) labels T-frame combinations of a video with a frozen
Video-LLM's loss on the answer and trains a model to query the low-loss combinations. Its code
was never released; defaults here are sized for the synthetic CPU setting of this project.
YAML files only override fields of :class:`VoyagerConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refocus.errors import ConfigError
from refocus.training.config import TrainerConfig, load_dataclass_config, packaged_config
from refocus.video.config import DecodeConfig

SCORINGS = ("set", "sequence")
VOYAGER_FILE = "voyager.json"
"""Written into every saved ranker directory: tells the ``voyager`` selector how to score."""


@dataclass
class CollectConfig:
    """How combinations are drawn and labelled (``refocus voyager collect``)."""

    combination_size: int = 4
    """T: frames per combination (Frame-Voyager labels T = 2 and 4 combinations)."""
    clip_length: int = 32
    """Consecutive decoded frames per clip; combinations are drawn inside one clip, as
    Frame-Voyager traverses the combinations of short clips (the number of combinations of a
    whole video is out of reach). A last clip shorter than T joins the one before it."""
    max_combinations: int = 32
    """Cap on combinations labelled per question (= reference-model calls per question).
    When a question's clips hold fewer combinations, all of them are labelled."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How videos are decoded (same rule as training; the size is the reference model's)."""
    reference_batch_size: int = 16
    """Subsets per reference-model forward (bounds memory; frame reuse spans the whole call)."""
    seed: int = 0
    """Mixed with each question id, so a question's combinations do not depend on the others."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", DecodeConfig.coerce(self.decode))
        if self.combination_size < 1:
            raise ConfigError(f"combination_size must be >= 1, got {self.combination_size}")
        if self.clip_length < self.combination_size:
            raise ConfigError(
                f"clip_length ({self.clip_length}) must be >= combination_size ({self.combination_size})"
            )
        if self.max_combinations < 2:
            raise ConfigError(f"max_combinations must be >= 2 (a ranking needs pairs), got {self.max_combinations}")
        if self.reference_batch_size < 1:
            raise ConfigError(f"reference_batch_size must be >= 1, got {self.reference_batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VoyagerConfig(TrainerConfig):
    """Training of the ranker (``refocus voyager train``): the shared trainer fields
    (:class:`refocus.training.config.TrainerConfig`) plus the ranking fields below.

    The ranker is the ReFoCUS policy itself (same vision tower, projector, Mamba2 backbone and
    K/Q/V heads, built the same way), so the comparison with GRPO differs only in the
    supervision. A combination's score ``s`` is read from the policy (see ``scoring``) and the
    RankNet loss ``-log sigmoid(s_i - s_j - margin)`` is applied to every pair of a question's
    combinations whose reference losses satisfy ``loss_i + min_loss_gap < loss_j``.
    The project's CPU setting of the trainer fields (the policy and optimiser of
    ``configs/tiny.yaml``) is ``configs/voyager.yaml``, which :func:`load_voyager_config`
    starts from.
    """

    scoring: str = "sequence"
    """How the policy scores a combination c (K frames), and how the selector picks frames:
    'sequence' (default): the sum over the K steps of the log-probability of selecting c's
    frames in temporal order (``replay_logprobs``); selection is greedy decoding with the
    ReFoCUS sampler, so both methods select frames the same way. Greedy only approximates the
    best-scoring combination (it searches every order, the score fixes one), but each step
    conditions on the frames already chosen, so it can spread the budget over the video.
    'set': the mean over f in c of the log-probability of f at the policy's FIRST step
    (the <start_of_frame> query against all frame keys): Frame-Voyager's own form (a
    query-frame score per frame, averaged over the combination), order-free, and its best
    K-combination is exactly the top-K frames, which bunch up (evidence recall measured in
    benchmarks/RESULTS.md)."""
    combinations_per_question: int = 8
    """G: combinations drawn per question per step (without replacement when the question has
    that many); all their ordered pairs with a loss gap enter the loss."""
    min_loss_gap: float = 0.05
    """Pairs whose reference losses differ by at most this (nats) are ties and are skipped:
    the reference model's loss is noisy at this scale and a tie carries no ranking."""
    margin: float = 0.0
    """Score margin of the logistic loss, -log sigmoid(s_i - s_j - margin) (0: RankNet)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scoring not in SCORINGS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.combinations_per_question < 2:
            raise ConfigError("combinations_per_question must be >= 2: the loss compares pairs")
        if self.min_loss_gap < 0:
            raise ConfigError(f"min_loss_gap must be >= 0, got {self.min_loss_gap}")


def load_voyager_config(path: str | Path | None = None, sets: dict[str, Any] | None = None,
                        **overrides: Any) -> VoyagerConfig:
    """``configs/voyager.yaml`` (the CPU setting), then the YAML file's fields, then
    ``overrides`` (None values ignored)."""
    return load_dataclass_config(VoyagerConfig, path, base=packaged_config("voyager"), sets=sets, **overrides)
