"""GRPO and Video-KTR training of the answerer on its own reasoned completions.

Per step:
  1. questions of the step (a fresh permutation per epoch, as ``refocus train``);
  2. K frames per question from the selector (``uniform``, ``policy:DIR`` ...);
  3. G sampled completions per question (temperature, top-p, token budget);
  4. rewards: accuracy (exact ``<answer>`` letter) + format (full-match regex);
     advantages (r - mean) / (std + 1e-4) within each question's group;
  5. the current policy's log-probs and entropies (with grad), and for ``ktr`` under no_grad
     the visual-masked and frame-shuffled log-probs; masks by a batch quantile, OR-ed;
  6. one update per rollout batch (no clipping) on kept tokens, with the k3 KL to the frozen
     starting answerer; metrics (``ktr/visual_ratio`` ...), checkpoint.

The loop, question order, non-finite guard, checkpoints, strict config-checked resume and
metrics are ``refocus train``'s (:class:`refocus.training.core.TrainingLoop`):
``DIR/checkpoints/step-N`` (HF model + processor + trainer state + this process's optimiser
state), ``DIR/metrics.jsonl``, the final answerer in ``DIR/answerer``. One process: the
rollouts call the model directly, outside a data-parallel wrapper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refocus.answerer import ktr_math
from refocus.answerer.config import AnswererTrainConfig
from refocus.answerer.generation import Answerer, GenerateConfig, set_train_mode, token_logprobs
from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.training import launch
from refocus.training.core import TrainingLoop


@dataclass
class Rollout:
    """One question's G completions and their per-token tensors (C = that group's length)."""

    item: QAItem
    ids: torch.Tensor  # (G, C)
    valid: torch.Tensor  # (G, C) bool
    rewards: torch.Tensor  # (G,)
    accuracy: torch.Tensor  # (G,)
    formatted: torch.Tensor  # (G,)
    logp: torch.Tensor  # (G, C) with grad
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # signal -> (G, C) no grad
    ref_logp: torch.Tensor | None = None
    single_image: bool = False


def pad_cat(rows: list[torch.Tensor], value: float) -> torch.Tensor:
    """Concatenate (G_i, C_i) tensors along dim 0, right-padding dim 1 with ``value``."""
    c = max(r.shape[1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r, (0, c - r.shape[1]), value=value) for r in rows])


class AnswererTrainer(TrainingLoop):
    """GRPO / Video-KTR on the answerer's own completions (see the module docstring)."""

    export_name = "answerer"

    def __init__(self, cfg: AnswererTrainConfig, items: list[QAItem], answerer_dir: str | Path,
                 selector, out_dir: str | Path, resume: bool = False, progress: bool = True,
                 device: str = "cpu") -> None:
        from refocus.seeding import seed_everything
        from refocus.video.stores import FrameStore

        if not items:
            raise RefocusError("no training questions")
        self.init_loop(cfg, items, out_dir, launch.make_accelerator(), progress)
        if self.world > 1:
            raise RefocusError("refocus answerer train runs in one process (got "
                               f"{self.world} under accelerate launch)")
        self.desc = f"answerer {cfg.method}"
        self.selector = selector
        seed_everything(cfg.seed)
        self.answerer = Answerer.load(answerer_dir, device=device)
        self.model = self.answerer.model
        self.processor = self.answerer.processor
        self.reference = Answerer.load(answerer_dir, device=device) if cfg.beta > 0 else None
        if self.reference is not None:
            self.reference.model.eval().requires_grad_(False)
        for name, p in self.model.named_parameters():
            vision = "vision_tower" in name or "visual" in name.split(".")[:3]
            p.requires_grad_(cfg.train_vision or not vision)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           weight_decay=cfg.weight_decay)
        warm = max(1, cfg.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.size = int(self.answerer.image_size)
        self.frames = FrameStore(cfg.decode.fps, cfg.decode.max_frames, capacity=256)
        self.perm_rng = np.random.default_rng(cfg.seed + 17)
        self.gen_cfg = GenerateConfig(cfg.max_new_tokens, True, cfg.temperature, cfg.top_p)
        self.maybe_resume(resume)

    # ------------------------------------------------------------------ loop hooks
    def postfix(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"acc": f"{metrics.get('reward/accuracy', float('nan')):.2f}",
                "kept": f"{metrics.get('ktr/kept_ratio', 1.0):.2f}"}

    def extra_state(self) -> dict[str, Any]:
        return {"perm_rng": self.perm_rng.bit_generator.state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.perm_rng.bit_generator.state = state["perm_rng"]

    # ------------------------------------------------------------------ data
    def frames_for(self, item: QAItem) -> list[np.ndarray]:
        """The selector's K frames of ``item`` at the answerer's size, in temporal order."""
        frames = self.frames.get(item, self.size)
        select = frames if self.selector.image_size in (None, self.size) else self.frames.get(item, self.selector.image_size)
        if getattr(self.selector, "prepare", None) is not None:
            self.selector.prepare(select, item)
        idx = self.selector.select(select, item, self.cfg.frames)
        return [frames.frames[i] for i in idx]

    # ------------------------------------------------------------------ run
    def train(self) -> dict:
        last = self.fit()
        final = self.export()
        return {"steps": self.step, "answerer_dir": str(final), "last_metrics": last,
                "nonfinite_steps": self.nonfinite_total,
                "skipped": [{"id": k, "reason": v} for k, v in sorted(self.skipped.items())]}

    def rollout(self, item: QAItem) -> Rollout | None:
        """Frames, G completions, rewards and every per-token tensor of one question."""
        cfg, ans = self.cfg, self.answerer
        try:
            frames = self.frames_for(item)
        except RefocusError as exc:
            self.skipped[item.id] = " ".join(str(exc).split())
            return None
        comps = ans.generate(item, frames, self.gen_cfg, num=cfg.num_generations)
        acc = torch.tensor([ktr_math.accuracy_reward(t, item.answer) for t in comps.texts])
        fmt = torch.tensor([ktr_math.format_reward(t) for t in comps.texts])
        enc = ans.encode(item, frames)
        set_train_mode(self.model, cfg.train_vision)
        logits = ans.completion_logits(enc, comps.ids)
        r = Rollout(item, comps.ids, comps.valid, cfg.accuracy_weight * acc + cfg.format_weight * fmt,
                    acc, fmt, token_logprobs(logits, comps.ids), single_image=len(frames) == 1)
        with torch.no_grad():
            if cfg.method == "ktr":
                self._attributions(r, enc, frames, logits.detach())
            if self.reference is not None:
                r.ref_logp = token_logprobs(self.reference.completion_logits(enc, comps.ids), comps.ids)
        return r

    def _attributions(self, r: Rollout, enc, frames, logits) -> None:
        ans, base = self.answerer, r.logp.detach()
        if "entropy" in self.cfg.signals:
            r.scores["entropy"] = ktr_math.token_entropy(logits)
        if "visual" in self.cfg.signals:
            r.scores["visual"] = base - token_logprobs(ans.completion_logits(enc, r.ids, visual_masked=True), r.ids)
        if "temporal" in self.cfg.signals and not r.single_image:
            perm = self.perm_rng.permutation(len(frames))
            shuffled = ans.encode(r.item, [frames[i] for i in perm])
            r.scores["temporal"] = base - token_logprobs(ans.completion_logits(shuffled, r.ids), r.ids)

    def keep_masks(self, rollouts: list[Rollout], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-signal top-ratio masks over the batch's valid tokens, and their union as 'kept'."""
        if self.cfg.method == "grpo":
            return {"kept": valid.clone()}
        ratios = {"visual": self.cfg.visual_ratio, "temporal": self.cfg.temporal_ratio,
                  "entropy": self.cfg.entropy_ratio}
        masks: dict[str, torch.Tensor] = {}
        for name in self.cfg.signals:
            rows = [r.scores.get(name) for r in rollouts]
            if any(x is None for x in rows):  # temporal on one-frame input: the image rule
                continue
            masks[name] = ktr_math.top_ratio_mask(pad_cat(rows, float("nan")), valid, ratios[name])
        masks["kept"] = ktr_math.combine_masks(dict(masks))
        return masks

    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        batch = [self.items[i] for i in self.batch_indices(self.step)]
        rollouts = [r for it in batch if (r := self.rollout(it)) is not None]
        if not rollouts:
            return {"train/skipped_items": len(self.skipped)}
        t1 = time.perf_counter()
        valid = pad_cat([r.valid for r in rollouts], False)
        logp = pad_cat([r.logp for r in rollouts], 0.0)
        ref = pad_cat([r.ref_logp for r in rollouts], 0.0) if self.reference is not None else None
        rewards = torch.stack([r.rewards for r in rollouts])  # (B, G)
        adv = ktr_math.group_advantages(rewards, cfg.advantage_epsilon).flatten()
        masks = self.keep_masks(rollouts, valid)
        loss, stats = ktr_math.ktr_loss(logp, adv.to(logp.device), masks["kept"], ref, cfg.beta, cfg.normalisation)
        grad_norm = float("nan")
        if self.check_finite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
            self.optimizer.step()
        self.scheduler.step()
        t2 = time.perf_counter()
        metrics = {
            "train/loss": float(loss.detach()), "train/kl": stats["kl"], "train/grad_norm": grad_norm,
            "train/lr": self.scheduler.get_last_lr()[0], "train/nonfinite_steps": self.nonfinite_total,
            "train/skipped_items": len(self.skipped),
            "reward/mean": float(rewards.mean()),
            "reward/accuracy": float(torch.stack([r.accuracy for r in rollouts]).mean()),
            "reward/format": float(torch.stack([r.formatted for r in rollouts]).mean()),
            "reward/frac_zero_std": float((rewards.std(dim=1) == 0).float().mean()),
            "completion/length": float(valid.sum(1).float().mean()),  # real length, not kept tokens
            "ktr/kept_ratio": ktr_math.kept_ratio(masks["kept"], valid),
            "ktr/empty_sequences": stats["empty_sequences"],
            "time/rollout": t1 - t0, "time/update": t2 - t1,
        }
        for name in ("visual", "temporal", "entropy"):
            if name in masks:
                metrics[f"ktr/{name}_ratio"] = ktr_math.kept_ratio(masks[name], valid)
        return metrics
