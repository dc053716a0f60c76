"""GRPO training of the frame-selection policy (paper Algorithm 1, Eq. 2).

The loop, per step:
  1. take this process's shard of a batch of questions;
  2. sample N frame subsets per question with the current (= old) policy;
  3. reward each subset with the frozen reference model (margin reward, frame reuse);
  4. group-normalised advantages; groups with zero spread contribute nothing and are counted;
  5. K passes of the importance-weighted objective (optionally clipped) plus the entropy bonus;
  6. metrics, checkpoint.
Runs data-parallel under ``accelerate launch`` (DDP, or DeepSpeed ZeRO-1 on GPUs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.reference.reward import margin_rewards
from refocus.training import grpo_math
from refocus.training import replay as replay_lib
from refocus.training.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from refocus.training.config import GRPOConfig
from refocus.training.metrics import MetricsWriter
from refocus.video.stores import FeatureStore, FrameStore


class TrainingDiverged(RefocusError):
    """Too many consecutive steps with a non-finite loss."""


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


def build_policy(cfg: GRPOConfig, reference):
    """The policy to train and its tokenizer. Returns (policy, tokenizer).

    ``cfg.init_policy`` (``refocus train --policy DIR``): that saved policy as it is (an
    ``refocus policy init`` output or a trained policy; nothing is re-initialised). Otherwise a
    new one from the parts named in ``cfg.policy`` (``vision_model``, ``backbone_model``,
    ``tokenizer``; see :func:`refocus.policy.build.init_policy`): the encoder comes from the
    reference model only with ``vision_from_reference: true``.
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
    policy, tokenizer, _ = init_policy(
        vision=parts["vision_model"], backbone=parts["backbone_model"], tokenizer=parts["tokenizer"],
        overrides=overrides, reference=reference, vision_from_reference=from_reference,
    )
    return policy, tokenizer


def optimizer_groups(policy, cfg) -> list[dict]:
    """AdamW parameter groups: (pretrained, re-initialised) learning rates x (decay, no decay).

    No weight decay on the logit scale, norms, biases and Mamba2's A_log / D
    (:meth:`FramePolicy.no_decay_parameter_names`; the authors exclude the logit scale, and
    mamba_ssm the SSM parameters); ``cfg.weight_decay`` (B.1: 0.01) on the rest. Empty groups
    are left out.
    """
    no_decay = policy.no_decay_parameter_names()
    lrs = {"pretrained": cfg.learning_rate, "reinitialised": cfg.learning_rate_reinit}
    groups = []
    for kind, params in policy.parameter_groups().items():
        for decays in (True, False):
            chosen = [p for name, p in params.items() if (name not in no_decay) == decays]
            if chosen:
                groups.append({"params": chosen, "lr": lrs[kind], "name": f"{kind}/{'decay' if decays else 'no_decay'}",
                               **({} if decays else {"weight_decay": 0.0})})
    return groups


def make_optimizer(policy, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the policy's two parameter groups (pretrained / re-initialised learning
    rates, Appendix B.1) and a linear warm-up then linear (or constant) schedule.

    ``cfg`` is any config with the GRPOConfig optimiser fields (the Frame-Voyager one has them too).
    """
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


class GRPOTrainer:
    def __init__(
        self,
        cfg: GRPOConfig,
        items: list[QAItem],
        reference,
        out_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        from accelerate import Accelerator

        from refocus.seeding import seed_everything

        self.cfg = cfg
        self.items = items
        self.reference = reference
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        seed_everything(cfg.seed)  # same init on every rank; DDP also broadcasts at prepare
        self.policy, self.tokenizer = build_policy(cfg, reference)
        if cfg.gradient_checkpointing:
            self.policy.activation_checkpointing_enable()
        self.optimizer, self.scheduler = make_optimizer(self.policy, cfg)
        self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.sampler_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        self.frames = FrameStore(cfg.fps, cfg.max_frames, capacity=None, max_gb=cfg.frame_cache_gb,
                                 disk_cache=cfg.frame_disk_cache)
        self.features = FeatureStore(self.policy, self.frames, capacity=None, max_gb=cfg.feature_cache_gb,
                                     device="cpu", dtype=torch.bfloat16 if cfg.bf16 else None)
        self.policy.prefix_segment_frames = cfg.prefix_segment_frames
        self.metrics = MetricsWriter(self.out_dir, enabled=self.accelerator.is_main_process)
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.reference_calls = 0
        self.skipped: dict[str, str] = {}
        if resume:
            self._resume()

    # ------------------------------------------------------------------ data
    def _batch_items(self, step: int) -> list[QAItem]:
        """This rank's questions for ``step``: a fresh permutation per epoch from (seed, epoch)."""
        per_step = self.cfg.per_device_train_batch_size * self.world
        start = step * per_step
        picked = []
        for pos in range(start + self.rank * self.cfg.per_device_train_batch_size,
                         start + (self.rank + 1) * self.cfg.per_device_train_batch_size):
            epoch, offset = divmod(pos, len(self.items))
            perm = np.random.default_rng((self.cfg.seed, epoch)).permutation(len(self.items))
            picked.append(self.items[int(perm[offset])])
        return picked

    def _prepare(self, item: QAItem):
        """(features (T, P, Dv), question ids (L,), frames for the reference, timestamps) or None."""
        from refocus.policy import policy_prompt

        if item.id in self.skipped:
            return None
        try:
            feats = self.features.get(item)
            ref_frames = self.frames.get(item, self.reference.image_size)
        except RefocusError as exc:
            self.skipped[item.id] = str(exc)
            return None
        return feats, policy_prompt(self.policy.config, self.tokenizer, item), ref_frames

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="grpo",
                   disable=not (self.progress and self.accelerator.is_main_process))
        last: dict = {}
        while self.step < cfg.max_steps:
            last = self.train_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(reward=f"{last.get('reward/mean', float('nan')):.3f}",
                            acc=f"{last.get('reward/accuracy', float('nan')):.2f}",
                            k=last.get("select/k"))
            if self.step % cfg.logging_steps == 0:
                self.metrics.log(self.step, last)
            if self.step % cfg.save_steps == 0 or self.step == cfg.max_steps:
                self._save()
        bar.close()
        replica_diff, calls, skipped = self._gather_run_state()
        policy_dir = self.out_dir / "policy"
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(policy_dir)
            self.tokenizer.save_pretrained(policy_dir)
            (policy_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.accelerator.wait_for_everyone()
        self.metrics.close()
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

        params = [p.detach() for p in self.accelerator.unwrap_model(self.model).parameters()]
        device = params[0].device
        sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params])
        gathered = self.accelerator.gather(sums.reshape(1, -1).to(device))  # (world, 2 * n_params)
        diff = float((gathered - gathered[0]).abs().max())
        calls = int(self.accelerator.reduce(torch.tensor([self.reference_calls], device=device), "sum").item())
        skipped: dict[str, str] = {}
        for part in gather_object([self.skipped]):
            skipped.update(part)
        return diff, calls, skipped

    def train_step(self) -> dict:
        cfg = self.cfg
        policy = self.accelerator.unwrap_model(self.model)
        k = cfg.selection_size_at(self.step)
        G = cfg.num_generations
        t0 = time.perf_counter()

        # 1-2. sample N subsets per question with the old policy (no grad)
        batch = []
        for item in self._batch_items(self.step):
            prepared = self._prepare(item)
            if prepared is not None:
                batch.append((item, *prepared))
        if not batch:
            return {"select/k": k, "train/skipped_items": len(self.skipped)}
        feats = [f for _, f, _, _ in batch]  # B x (T_b, P, Dv)
        qids = [q for _, _, q, _ in batch]  # B x (L_b,)
        k = min(k, min(f.shape[0] for f in feats))
        policy.eval()
        with torch.no_grad(), self._autocast():
            out = replay_lib.sample_candidates(policy, feats, qids, k, G, cfg.micro_batch_size,
                                               cfg.temperature, self.sampler_rng)
        t1 = time.perf_counter()

        # 3. rewards from the frozen reference model (frame reuse inside the adapter)
        rewards, correct, temporal = [], [], []
        for b, (item, _, _, ref) in enumerate(batch):
            subsets = out.indices[b].tolist()  # (G, K) sorted
            logits = self.reference.option_logits(item, ref.frames, subsets)  # (G, O)
            self.reference_calls += len(subsets)
            rewards.append(torch.from_numpy(margin_rewards(logits, item.answer_index)))
            correct.append(torch.from_numpy(logits.argmax(-1) == item.answer_index))
            temporal.append(grpo_math.mean_temporal_entropy(ref.timestamps, subsets))
        R = torch.stack(rewards).float()  # (B, G)
        adv, zero_std = grpo_math.group_advantages(R, cfg.scale_rewards, cfg.advantage_epsilon)
        t2 = time.perf_counter()

        # 4-5. K update passes of Eq. 2 with the entropy bonus
        policy.train()
        old_logp = out.logprobs.float()  # (B, G, K)
        stats: dict = {}

        def loss_fn(logp, ent, part):  # the GRPO loss of one micro-batch of questions
            return grpo_math.grpo_loss(
                logp, old_logp[part].to(logp.device), adv[part].to(logp.device), ent,
                level=cfg.importance_sampling_level, epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high, entropy_coef=cfg.entropy_coef, beta=cfg.beta,
            )

        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            replayed = replay_lib.accumulate_replay(
                self.accelerator, self.model, feats, qids, out.order, loss_fn,
                cfg.micro_batch_size, cfg.temperature, self._autocast,
            )
            loss, stats, ent = torch.tensor(replayed.loss), dict(replayed.stats), replayed.entropies
            if not self._finite(loss):
                break
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            stats["train/grad_norm"] = float(grad_norm)
        self.scheduler.step()
        t3 = time.perf_counter()

        metrics = {"select/k": k, "train/skipped_items": len(self.skipped)}
        metrics |= {
            "train/loss": float(loss.detach()),
            "train/clip_ratio": float(stats.get("clip_ratio", 0.0)),
            "train/grad_norm": stats.get("train/grad_norm", float("nan")),
            "train/lr": self.scheduler.get_last_lr()[-1],
            "train/nonfinite_steps": self.nonfinite_total,
            "reward/mean": float(R.mean()),
            "reward/std": float(R.std(dim=1, unbiased=False).mean()),
            "reward/frac_zero_std": float(zero_std.float().mean()),
            "reward/accuracy": float(torch.stack(correct).float().mean()),
            "select/entropy": float(ent.detach().mean()),
            "select/temporal_entropy": float(np.nanmean(temporal)) if temporal else float("nan"),
            "time/sample": t1 - t0,
            "time/reward": t2 - t1,
            "time/update": t3 - t2,
        }
        return metrics

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _finite(self, loss: torch.Tensor) -> bool:
        if torch.isfinite(loss).all():
            self.nonfinite_run = 0
            return True
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite_run >= self.cfg.max_consecutive_nonfinite:
            raise TrainingDiverged(
                f"loss was NaN/inf for {self.nonfinite_run} steps in a row (step {self.step}); "
                "stopping. Check the reference model's logits and lower the learning rate; "
                "the last good checkpoint is in " + str(self.out_dir / "checkpoints")
            )
        return False

    def _save(self) -> None:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.sampler_rng),
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_run": self.nonfinite_run,
            "reference_calls": self.reference_calls,
            "skipped": self.skipped,
        }
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.out_dir, self.step, self.accelerator.unwrap_model(self.model), self.tokenizer,
                state, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), keep=self.cfg.save_total_limit,
            )
        self.accelerator.wait_for_everyone()

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            raise RefocusError(f"{self.out_dir}: --resume given but no checkpoint found")
        from safetensors.torch import load_file

        weights = load_file(ckpt / "model.safetensors")
        self.accelerator.unwrap_model(self.model).load_state_dict(weights, strict=False)
        state = load_trainer_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.sampler_rng)
        self.step = state["step"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_run = state["nonfinite_run"]
        self.reference_calls = state["reference_calls"]
        self.skipped = dict(state["skipped"])
        self.metrics.truncate_after(self.step)
