"""The trainer core shared by every trainer in refocus: one loop, one checkpoint format.

:class:`TrainingLoop` is what every trainer needs, whatever it trains: the per-rank
question order, the loop with its progress bar and metrics, the guard against non-finite
losses, strict config-checked checkpoints (every process's own state) and resume, and the
final export. :class:`PolicyTrainer` adds what training the frame policy needs: the
accelerate process group (data-parallel under ``accelerate launch``), the policy and its
tokenizer (:func:`build_policy`), AdamW with the two learning rates and the schedule
(:func:`make_optimizer`), decoded frames and frozen features; GRPO
(``training/trainer.py``) and Frame-Voyager (``voyager/train.py``) derive from it, the
answerer's GRPO / Video-KTR trainer (``answerer/trainer.py``) from :class:`TrainingLoop`.

A subclass supplies :meth:`TrainingLoop.train_step` (one optimiser step, returning its
metrics) and, when it keeps more state, the hooks :meth:`extra_state` /
:meth:`load_extra_state` and :meth:`write_extra_files`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.training import launch
from refocus.training.checkpoint import (
    commit_checkpoint,
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    set_rng_state,
    stage_checkpoint,
    staging_dir,
)
from refocus.training.config import TrainerConfig
from refocus.training.metrics import MetricsWriter
from refocus.video.stores import FeatureStore, FrameStore


def build_policy(cfg: TrainerConfig, reference):
    """The policy to train and its tokenizer. Returns (policy, tokenizer).

    ``cfg.init_policy`` (``refocus train --policy DIR``): that saved policy as it is (an
    ``refocus policy init`` output or a trained policy; nothing is re-initialised, B.2's
    re-initialisation happened once, when it was built from a pretrained language model).
    Otherwise a new one from the parts named in ``cfg.policy`` (``vision_model``,
    ``backbone_model``, ``tokenizer``; see :func:`refocus.policy.build.init_policy`): the
    encoder comes from the reference model only with ``vision_from_reference: true``, the input
    embeddings and projector only with ``language_from_reference: true``, the tokenizer from the
    backbone (else ``tokenizer``, else the reference's).
    """
    from transformers import AutoTokenizer

    from refocus.policy import FramePolicy
    from refocus.policy.build import init_policy

    if cfg.init_policy:
        policy = FramePolicy.from_pretrained(cfg.init_policy)
        return policy, AutoTokenizer.from_pretrained(cfg.init_policy)
    overrides = dict(cfg.policy)
    parts = {key: overrides.pop(key, None) for key in ("vision_model", "backbone_model", "tokenizer")}
    from_reference = bool(overrides.pop("vision_from_reference", False))
    language = bool(overrides.pop("language_from_reference", False))
    policy, tokenizer, _ = init_policy(
        vision=parts["vision_model"], backbone=parts["backbone_model"], tokenizer=parts["tokenizer"],
        overrides=overrides, reference=reference, vision_from_reference=from_reference,
        language_from_reference=language,
    )
    return policy, tokenizer


def optimizer_groups(policy, cfg: TrainerConfig) -> list[dict]:
    """AdamW parameter groups: (pretrained, re-initialised) learning rates x (decay, no decay).

    No weight decay on the logit scale, norms, biases and Mamba2's A_log / D
    (:meth:`FramePolicy.no_decay_parameter_names`; the authors mark the logit scale
    ``_no_weight_decay``, mamba_ssm the SSM parameters); ``cfg.weight_decay`` (B.1: 0.01) on the
    rest. Empty groups are left out; each group has a ``name``.
    """
    no_decay = policy.no_decay_parameter_names()
    lrs = {"pretrained": cfg.learning_rate, "reinitialised": cfg.learning_rate_reinit}
    groups = []
    for kind, params in policy.parameter_groups().items():
        for decays in (True, False):
            chosen = [p for name, p in params.items() if (name not in no_decay) == decays]
            if chosen:
                group = {"params": chosen, "lr": lrs[kind], "name": f"{kind}/{'decay' if decays else 'no_decay'}"}
                groups.append(group if decays else group | {"weight_decay": 0.0})
    return groups


def make_optimizer(policy, cfg: TrainerConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`optimizer_groups` (pretrained / re-initialised learning rates, Appendix
    B.1; no decay on scales, norms and biases) and a linear warm-up then linear (or constant)
    schedule."""
    optimizer = torch.optim.AdamW(
        optimizer_groups(policy, cfg), betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    warmup = max(1, math.ceil(cfg.warmup_ratio * cfg.max_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class TrainingDiverged(RefocusError):
    """Too many consecutive steps with a non-finite loss."""


class TrainingLoop:
    """The loop, question order, logging, non-finite guard, checkpoints, resume and export.

    A subclass's ``__init__`` calls :meth:`init_loop`, then sets ``self.model`` (the model to
    step, possibly wrapped by accelerate), ``self.optimizer``, ``self.scheduler`` and
    ``self.processor`` (the tokenizer or processor saved beside the model), then calls
    :meth:`maybe_resume`. ``cfg`` needs the bookkeeping fields of :class:`TrainerConfig`
    (``per_device_train_batch_size``, ``max_steps``, ``seed``, ``logging_steps``,
    ``save_steps``, ``save_total_limit``), ``to_dict()`` and ``resume_mismatch(saved)``.
    """

    desc = "train"
    """Progress-bar label."""
    export_name = "policy"
    """The final model is written to ``DIR/<export_name>``."""
    diverged_hint = ""
    """Advice appended to the error raised after too many non-finite steps."""

    def init_loop(self, cfg, items: list[QAItem], out_dir: str | Path, accelerator, progress: bool) -> None:
        self.cfg = cfg
        self.items = items
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.generator = torch.Generator().manual_seed(self.generator_seed())
        self.metrics = MetricsWriter(self.out_dir, enabled=accelerator.is_main_process)
        self.step = 0
        self.skipped: dict[str, str] = {}
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.phase: Callable[[str], contextlib.AbstractContextManager] = lambda name: contextlib.nullcontext()
        """Context around each phase of a step (GRPO: "sample", "reward" per question,
        "replay"); a hook for profilers (benchmarks/memory.py measures peak memory per phase)."""

    def maybe_resume(self, resume: bool) -> None:
        if resume:
            self._resume()

    # ------------------------------------------------------------------ subclass hooks
    def generator_seed(self) -> int:
        """Seed of this rank's sampling generator."""
        return self.cfg.seed * 1000 + self.rank

    def train_step(self) -> dict[str, Any]:
        """One optimiser step on :meth:`batch_indices` of ``self.step``; returns its metrics."""
        raise NotImplementedError

    def postfix(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """What the progress bar shows of a step's metrics."""
        return {"loss": f"{metrics.get('train/loss', float('nan')):.3f}"}

    def extra_state(self) -> dict[str, Any]:
        """State of the subclass saved in every checkpoint (plain Python values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def write_extra_files(self, model_dir: Path) -> None:
        """Files written beside a saved model (each checkpoint and the final one)."""

    # ------------------------------------------------------------------ data
    def batch_indices(self, step: int) -> list[int]:
        """This rank's question indices for ``step``: a fresh permutation per epoch from
        (seed, epoch), the global batch split into consecutive per-rank shards."""
        b = self.cfg.per_device_train_batch_size
        start = step * b * self.world + self.rank * b
        picked = []
        for pos in range(start, start + b):
            epoch, offset = divmod(pos, len(self.items))
            perm = np.random.default_rng((self.cfg.seed, epoch)).permutation(len(self.items))
            picked.append(int(perm[offset]))
        return picked

    @property
    def unwrapped(self):
        """The model without its data-parallel wrapper."""
        return self.accelerator.unwrap_model(self.model)

    def check_finite(self, loss: torch.Tensor) -> bool:
        """True for a finite loss. A non-finite one is counted and its step skipped (the
        gradients are dropped); ``cfg.max_consecutive_nonfinite`` in a row raise
        :class:`TrainingDiverged`."""
        if torch.isfinite(loss).all():
            self.nonfinite_run = 0
            return True
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite_run >= self.cfg.max_consecutive_nonfinite:
            raise TrainingDiverged(
                f"loss was NaN/inf for {self.nonfinite_run} steps in a row (step {self.step}); "
                f"stopping. {self.diverged_hint}The last good checkpoint is in "
                + str(self.out_dir / "checkpoints")
            )
        return False

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Run the steps left until ``max_steps``, log and checkpoint; returns the last step's
        metrics."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.desc,
                   disable=not (self.progress and self.accelerator.is_main_process))
        last: dict[str, Any] = {}
        while self.step < cfg.max_steps:
            last = self.train_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(self.postfix(last))
            if self.step % cfg.logging_steps == 0:
                self.metrics.log(self.step, last)
            if self.step % cfg.save_steps == 0 or self.step == cfg.max_steps:
                self.save()
        bar.close()
        return last

    def export(self) -> Path:
        """Write the final model, its tokenizer / processor and config to ``DIR/<export_name>``."""
        final = self.out_dir / self.export_name
        if self.accelerator.is_main_process:
            save_policy_dir(self.unwrapped, self.processor, final, self.cfg)
            self.write_extra_files(final)
        self.accelerator.wait_for_everyone()
        self.metrics.close()
        return final

    # ------------------------------------------------------------------ checkpoints
    def _process_extra(self) -> dict[str, Any]:
        return {"nonfinite_total": self.nonfinite_total, "nonfinite_run": self.nonfinite_run,
                **self.extra_state()}

    def save(self) -> None:
        """Shared state from the main process, then every process's own (sampling RNG, the
        non-finite counters and the subclass's state, optimiser state or ZeRO shard;
        ``training/launch.py``) into the staging directory, then the commit."""
        state = {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "skipped": self.skipped,
            **self._process_extra(),
        }
        staging = staging_dir(self.out_dir, self.step)
        if self.accelerator.is_main_process:
            stage_checkpoint(self.out_dir, self.step, self.unwrapped, self.processor, state,
                             _config_yaml(self.cfg))
            self.write_extra_files(staging)
        self.accelerator.wait_for_everyone()
        launch.save_process_state(self.accelerator, self.model, self.optimizer, staging,
                                  {"rng": rng_state(self.generator), "extra": self._process_extra()})
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            commit_checkpoint(self.out_dir, self.step, keep=self.cfg.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _resume(self) -> None:
        """Continue from the latest checkpoint: refuses one written with a config that changes
        the run, and loads every weight (a missing or unexpected tensor is an error)."""
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            raise RefocusError(f"{self.out_dir}: --resume given but no checkpoint found")
        saved = yaml.safe_load((ckpt / "train_config.yaml").read_text()) or {}
        mismatch = self.cfg.resume_mismatch(saved)
        if mismatch:
            raise RefocusError(
                f"{ckpt}: cannot resume, the checkpoint was written with another config ("
                + "; ".join(mismatch) + "). Resume with the checkpoint's config "
                f"({ckpt / 'train_config.yaml'}), or start a new run in another --out directory"
            )
        from safetensors.torch import load_file

        device = self.accelerator.device  # "cpu:0" under a CPU launch, which safetensors refuses
        weights = load_file(ckpt / "model.safetensors", device="cpu" if device.type == "cpu" else str(device))
        model = self.unwrapped
        if set(weights) != set(model.state_dict()):
            # Saved under the class's checkpoint names (transformers renames some models' keys
            # on save and back on load): let the class read its own checkpoint.
            loaded, info = type(model).from_pretrained(ckpt, output_loading_info=True)
            unfit = {k: sorted(info.get(k) or [])[:5] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
                     if info.get(k)}
            if unfit:
                raise RefocusError(f"{ckpt}: the checkpoint's weights do not fit this model ({unfit})")
            weights = loaded.state_dict()
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise RefocusError(f"{ckpt}: the checkpoint's weights do not fit this model ({exc})") from None
        state = load_trainer_state(ckpt)
        own = launch.load_process_state(self.accelerator, self.model, self.optimizer, ckpt)
        if own is None:  # a checkpoint from before per-process state: rank 0's for everyone
            self.optimizer.load_state_dict(state["optimizer"])
            own = {"rng": state["rng"], "extra": state}
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(own["rng"], self.generator)
        self.step = state["step"]
        self.skipped = dict(state["skipped"])
        extra = {**state, **own["extra"]}
        self.nonfinite_total = extra.get("nonfinite_total", 0)
        self.nonfinite_run = extra.get("nonfinite_run", 0)
        self.load_extra_state(extra)
        self.metrics.truncate_after(self.step)


class PolicyTrainer(TrainingLoop):
    """:class:`TrainingLoop` for the frame policy: the accelerate process group, the policy
    and its optimiser, frames and frozen features; subclasses supply the step.

    items: the training questions. reference: the loaded reference model whose vision tower
    and tokenizer a new policy uses (may be None with ``cfg.init_policy``). frames: the
    decoding store.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        items: list[QAItem],
        reference: Any,
        out_dir: str | Path,
        *,
        frames: FrameStore,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        from refocus.seeding import seed_everything

        self.init_loop(cfg, items, out_dir, launch.make_accelerator(), progress)
        self.reference = reference
        seed_everything(cfg.seed)  # same init on every rank; DDP also broadcasts at prepare
        self.policy, self.tokenizer = build_policy(cfg, reference)
        self.processor = self.tokenizer
        if cfg.gradient_checkpointing:
            self.policy.activation_checkpointing_enable()
        self.optimizer, self.scheduler = make_optimizer(self.policy, cfg)
        self.model, self.optimizer = launch.prepare(self.accelerator, self.policy, self.optimizer, cfg)
        self.frames = frames
        self.features = self.feature_store(frames)
        self.maybe_resume(resume)

    def feature_store(self, frames: FrameStore) -> FeatureStore:
        """Where the frozen features of the videos are kept between steps."""
        return FeatureStore(self.policy, frames)

    def item_features(self, item: QAItem) -> torch.Tensor | None:
        """Frozen features (T, P, Dv) of ``item``'s video, or None (skipped and recorded)."""
        if item.id in self.skipped:
            return None
        try:
            return self.features.get(item)
        except RefocusError as exc:
            self.skipped[item.id] = str(exc)
            return None

    def autocast(self):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.cfg.bf16)


def _config_yaml(cfg: TrainerConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_policy_dir(policy, tokenizer, policy_dir: str | Path, cfg: TrainerConfig) -> Path:
    """A policy as ``refocus train`` leaves it: weights, tokenizer and ``train_config.yaml``."""
    policy_dir = Path(policy_dir)
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    (policy_dir / "train_config.yaml").write_text(_config_yaml(cfg))
    return policy_dir
