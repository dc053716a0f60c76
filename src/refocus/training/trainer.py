"""GRPO training of the frame-selection policy (paper Algorithm 1, Eq. 2).

The step, per batch (:meth:`GRPOTrainer.train_step`):
  1. take this process's shard of a batch of questions;
  2. sample N frame subsets per question with the current (= old) policy (:meth:`~GRPOTrainer.sample`);
  3. reward each subset with the frozen reference model (margin reward, frame reuse; :meth:`~GRPOTrainer.rewards`);
  4. group-normalised advantages; groups with zero spread contribute nothing and are counted;
  5. K passes of the importance-weighted objective (optionally clipped) plus the entropy bonus
     (:meth:`~GRPOTrainer.update`);
  6. metrics. The loop, sharding, checkpoints and export are the shared
     :class:`refocus.training.core.PolicyTrainer`.
Runs data-parallel under ``accelerate launch`` (DDP, or DeepSpeed ZeRO-1 on GPUs).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refocus.data.evidence import evidence_frame_mask, hits_evidence
from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.reference.reward import margin_rewards
from refocus.training import grpo_math
from refocus.training import replay as replay_lib
from refocus.training.config import GRPOConfig
from refocus.training.core import PolicyTrainer, TrainingDiverged  # noqa: F401  (re-exported from its old home)
from refocus.video.stores import FeatureStore, FrameStore


@dataclass
class TrainResult:
    steps: int
    policy_dir: Path
    skipped: list[dict] = field(default_factory=list)
    nonfinite_steps: int = 0
    reference_calls: int = 0
    """Subsets scored by the reference model, summed over processes."""
    last_metrics: dict = field(default_factory=dict)
    num_processes: int = 1
    replica_max_abs_diff: float = 0.0
    """Largest difference between processes of per-tensor weight checksums (0: identical replicas)."""


@dataclass
class _Batch:
    """The questions of one step that could be prepared, with their inputs."""

    items: list[QAItem]
    features: list[torch.Tensor]  # B x (T_b, P, Dv)
    question_ids: list[torch.Tensor]  # B x (L_b,)
    reference_frames: list[Any]  # B x DecodedFrames at the reference model's size


class GRPOTrainer(PolicyTrainer):
    desc = "grpo"
    diverged_hint = "Check the reference model's logits and lower the learning rate; "

    def __init__(
        self,
        cfg: GRPOConfig,
        items: list[QAItem],
        reference,
        out_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.reference_calls = 0
        frames = FrameStore(cfg.decode.fps, cfg.decode.max_frames, capacity=None, max_gb=cfg.frame_cache_gb,
                            disk_cache=cfg.frame_disk_cache)
        super().__init__(cfg, items, reference, out_dir, frames=frames, resume=resume, progress=progress)
        self.policy.prefix_segment_frames = cfg.prefix_segment_frames

    def feature_store(self, frames: FrameStore) -> FeatureStore:
        cfg = self.cfg
        return FeatureStore(self.policy, frames, capacity=None, max_gb=cfg.feature_cache_gb,
                            device="cpu", dtype=torch.bfloat16 if cfg.bf16 else None)

    @property
    def sampler_rng(self) -> torch.Generator:
        return self.generator

    def extra_state(self) -> dict[str, Any]:
        return {"reference_calls": self.reference_calls}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.reference_calls = state["reference_calls"]

    def postfix(self, metrics: dict[str, Any]) -> dict[str, Any]:
        shown = {"reward": f"{metrics.get('reward/mean', float('nan')):.3f}",
                 "acc": f"{metrics.get('reward/accuracy', float('nan')):.2f}", "k": metrics.get("select/k")}
        recall = metrics.get("reward/evidence_recall", float("nan"))
        if np.isfinite(recall):  # only on data with evidence spans
            shown["ev"] = f"{recall:.2f}"
        return shown

    # ------------------------------------------------------------------ run
    def train(self) -> TrainResult:
        last = self.fit()
        replica_diff, calls, skipped = self._gather_run_state()
        policy_dir = self.export()
        return TrainResult(
            steps=self.step,
            policy_dir=policy_dir,
            skipped=[{"id": k, "reason": v} for k, v in sorted(skipped.items())],
            nonfinite_steps=self.nonfinite_total,
            reference_calls=calls,
            last_metrics=last,
            num_processes=self.world,
            replica_max_abs_diff=replica_diff,
        )

    def _gather_run_state(self) -> tuple[float, int, dict[str, str]]:
        """Check the replicas agree (per-tensor checksums) and sum per-process counters."""
        if self.world == 1:
            return 0.0, self.reference_calls, dict(self.skipped)
        from accelerate.utils import gather_object

        params = [p.detach() for p in self.unwrapped.parameters()]
        device = params[0].device
        sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params])
        gathered = self.accelerator.gather(sums.reshape(1, -1).to(device))  # (world, 2 * n_params)
        diff = float((gathered - gathered[0]).abs().max())
        calls = int(self.accelerator.reduce(torch.tensor([self.reference_calls], device=device), "sum").item())
        skipped: dict[str, str] = {}
        for part in gather_object([self.skipped]):
            skipped.update(part)
        return diff, calls, skipped

    # ------------------------------------------------------------------ one step
    def _batch(self) -> _Batch:
        from refocus.policy import policy_prompt

        batch = _Batch([], [], [], [])
        for q in self.batch_indices(self.step):
            item = self.items[q]
            feats = self.item_features(item)
            if feats is None:
                continue
            try:
                ref_frames = self.frames.get(item, self.reference.image_size)
            except RefocusError as exc:
                self.skipped[item.id] = str(exc)
                continue
            batch.items.append(item)
            batch.features.append(feats)
            batch.question_ids.append(policy_prompt(self.policy.config, self.tokenizer, item))
            batch.reference_frames.append(ref_frames)
        return batch

    def effective_k(self, batch: _Batch) -> int:
        """T' of this step: the curriculum's, lowered to the shortest video of the batch (every
        candidate of a batch selects the same number of frames); a lowered T' is warned about
        and logged as ``select/k_effective``."""
        k = self.cfg.selection_size_at(self.step)
        shortest = min(f.shape[0] for f in batch.features)
        if shortest < k:
            warnings.warn(
                f"step {self.step + 1}: the shortest video of the batch has {shortest} frames, fewer "
                f"than T' = {k}; this step selects {shortest} frames per candidate "
                "(select/k_effective in the metrics)", stacklevel=2,
            )
        return min(k, shortest)

    def sample(self, batch: _Batch, k: int):
        """Steps 1-2: G candidate subsets of k frames per question from the old policy (no grad)."""
        policy = self.unwrapped
        policy.eval()
        with self.phase("sample"), torch.no_grad(), self.autocast():
            return replay_lib.sample_candidates(policy, batch.features, batch.question_ids, k,
                                                self.cfg.num_generations, self.cfg.micro_batch_size,
                                                self.cfg.temperature, self.generator)

    def rewards(self, batch: _Batch, out) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """Step 3: margin rewards (B, G; raised to ``reward_floor`` when one is set), correctness
        (B, G) and the mean temporal entropy per question."""
        rewards, correct, temporal = [], [], []
        for b, (item, ref) in enumerate(zip(batch.items, batch.reference_frames, strict=True)):
            subsets = out.indices[b].tolist()  # (G, K) sorted
            with self.phase("reward"):
                logits = self.reference.option_logits(item, ref.frames, subsets)  # (G, O)
            self.reference_calls += len(subsets)
            margins = torch.from_numpy(margin_rewards(logits, item.answer_index))
            if self.cfg.reward_floor is not None:
                margins = margins.clamp(min=self.cfg.reward_floor)
            rewards.append(margins)
            correct.append(torch.from_numpy(logits.argmax(-1) == item.answer_index))
            temporal.append(grpo_math.mean_temporal_entropy(ref.timestamps, subsets))
        return torch.stack(rewards).float(), torch.stack(correct), temporal

    @staticmethod
    def evidence_recall(batch: _Batch, out) -> float:
        """Share of the sampled candidates that hold a frame of an evidence span, over the
        questions of the batch that have spans (NaN when none has). A diagnostic for data with
        annotated evidence (the synthetic tasks): it is logged, never used in the reward."""
        hits: list[bool] = []
        for b, (item, ref) in enumerate(zip(batch.items, batch.reference_frames, strict=True)):
            mask = evidence_frame_mask(ref.timestamps, item.evidence)
            if mask is not None:
                hits += [hits_evidence(subset, mask) for subset in out.indices[b].tolist()]
        return float(np.mean(hits)) if hits else float("nan")

    def update(self, batch: _Batch, out, advantages: torch.Tensor) -> dict[str, float]:
        """Steps 4-5: ``num_iterations`` passes of Eq. 2 with the entropy bonus over the sampled
        orders; returns the last pass's statistics (``grpo_loss``'s, ``approx_kl``, ``grad_norm``)."""
        cfg = self.cfg
        self.unwrapped.train()
        old_logp = out.logprobs.float()  # (B, G, K)
        stats: dict[str, float] = {}

        def loss_fn(logp, ent, part):  # the GRPO loss of one micro-batch of questions
            return grpo_math.grpo_loss(
                logp, old_logp[part].to(logp.device), advantages[part].to(logp.device), ent,
                level=cfg.importance_sampling_level, epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high, entropy_coef=cfg.entropy_coef, beta=cfg.beta,
            )

        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            with self.phase("replay"):
                replayed = replay_lib.accumulate_replay(
                    self.accelerator, self.model, batch.features, batch.question_ids, out.order, loss_fn,
                    cfg.micro_batch_size, cfg.temperature, self.autocast,
                )
            stats = dict(replayed.stats)
            stats["loss"] = replayed.loss
            stats["select_entropy"] = float(replayed.entropies.mean())
            if replayed.finite:
                stats["approx_kl"] = grpo_math.approx_kl(replayed.logprobs, old_logp.to(replayed.logprobs.device))
            if not self.check_finite(torch.tensor(replayed.loss)):
                break
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            stats["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # None: DeepSpeed
        self.scheduler.step()
        return stats

    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        batch = self._batch()
        if not batch.items:
            return {"select/k": cfg.selection_size_at(self.step), "train/skipped_items": len(self.skipped)}
        k = self.effective_k(batch)
        out = self.sample(batch, k)
        t1 = time.perf_counter()
        R, correct, temporal = self.rewards(batch, out)
        adv, zero_std = grpo_math.group_advantages(R, cfg.scale_rewards, cfg.advantage_epsilon)
        t2 = time.perf_counter()
        stats = self.update(batch, out, adv)
        t3 = time.perf_counter()
        metrics = {"select/k": k, "select/k_effective": k, "train/skipped_items": len(self.skipped)}
        metrics |= {f"loss/{name}": value for name, value in stats.items()
                    if name not in ("grad_norm", "select_entropy")}
        metrics |= {
            "train/loss": stats.get("loss", float("nan")),
            "train/clip_ratio": float(stats.get("clip_ratio", 0.0)),
            "train/grad_norm": stats.get("grad_norm", float("nan")),
            "train/lr": self.scheduler.get_last_lr()[-1],
            "train/nonfinite_steps": self.nonfinite_total,
            "reward/mean": float(R.mean()),
            # The spread the advantages divide by: Bessel-corrected std within each group, averaged.
            "reward/std": float(R.std(dim=1, unbiased=True).mean()),
            "reward/frac_zero_std": float(zero_std.float().mean()),
            "reward/accuracy": float(correct.float().mean()),
            "reward/evidence_recall": self.evidence_recall(batch, out),
            "select/entropy": stats.get("select_entropy", float("nan")),
            "select/temporal_entropy": float(np.nanmean(temporal)) if temporal else float("nan"),
            "time/sample": t1 - t0,
            "time/reward": t2 - t1,
            "time/update": t3 - t2,
        }
        return metrics
