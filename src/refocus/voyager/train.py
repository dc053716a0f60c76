"""Frame-Voyager ranker training: the ReFoCUS policy trained on loss-ranked combinations.

The loop, per step:
  1. take B questions (a fresh permutation per epoch from (seed, epoch), as the GRPO trainer);
  2. draw G of each question's labelled combinations;
  3. score them with the policy (``refocus.voyager.model.combination_scores``);
  4. RankNet loss over every pair whose reference losses differ by more than ``min_loss_gap``;
  5. AdamW step (two learning rates, as GRPO), metrics, checkpoint.

No reference-model call happens here: all reference calls were spent in collection and are
reported from its summary. Checkpoints, metrics and the final policy use the GRPO trainer's
formats (``refocus.training.checkpoint``, ``refocus.training.metrics``), so ``--resume``,
``refocus analyze entropy`` and the ``policy:DIR`` loader read them alike.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.io import write_json
from refocus.training.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from refocus.training.metrics import MetricsWriter
from refocus.video.stores import FeatureStore, FrameStore
from refocus.voyager.config import VOYAGER_FILE, CollectConfig, VoyagerConfig, load_voyager_config
from refocus.voyager.model import combination_scores
from refocus.voyager.ranking import pairwise_ranking_loss


@dataclass
class VoyagerTrainResult:
    steps: int
    policy_dir: Path
    reference_calls: int
    """Subsets the reference model scored to build the training data (collection)."""
    scoring: str
    skipped: list[dict] = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)


class VoyagerTrainer:
    """Pairwise ranking training of a :class:`refocus.policy.FramePolicy`.

    items / rankings: parallel lists from :func:`refocus.voyager.collect.load_rankings`.
    collect_summary: that collection's summary (decoding settings, reference calls).
    reference: the loaded reference model whose vision tower and tokenizer the new policy uses
    (``refocus.training.trainer.build_policy``); may be None when ``cfg.init_policy`` is set.
    """

    def __init__(
        self,
        cfg: VoyagerConfig,
        items: list[QAItem],
        rankings: list[dict],
        collect_summary: dict,
        reference: Any,
        out_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        from refocus.seeding import seed_everything
        from refocus.training.trainer import build_policy, make_optimizer

        if not items or len(items) != len(rankings):
            raise RefocusError("voyager training needs at least one ranked question")
        if reference is None and not cfg.init_policy:
            raise RefocusError("voyager training needs the reference model (or init_policy) to build the policy")
        self.cfg = cfg
        self.items = items
        self.combos = [torch.tensor([c["indices"] for c in r["combinations"]], dtype=torch.long) for r in rankings]
        self.losses = [torch.tensor([c["loss"] for c in r["combinations"]], dtype=torch.float32) for r in rankings]
        self.num_frames = [int(r["num_frames"]) for r in rankings]
        self.collect_summary = collect_summary
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        seed_everything(cfg.seed)
        self.policy, self.tokenizer = build_policy(cfg, reference)
        self.policy.to(self.device)
        if cfg.gradient_checkpointing:
            self.policy.activation_checkpointing_enable()
        self.optimizer, self.scheduler = make_optimizer(self.policy, cfg)
        collect_cfg = CollectConfig(**collect_summary.get("config", {}))
        self.features = FeatureStore(self.policy, FrameStore(collect_cfg.fps, collect_cfg.max_frames))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.metrics = MetricsWriter(self.out_dir)
        self.step = 0
        self.skipped: dict[str, str] = {}
        if resume:
            self._resume()

    @property
    def reference_calls(self) -> int:
        return int(self.collect_summary.get("reference_calls", 0))

    # ------------------------------------------------------------------ data
    def _batch_indices(self, step: int) -> list[int]:
        """Question indices of ``step``: a fresh permutation per epoch from (seed, epoch)."""
        b = self.cfg.per_device_train_batch_size
        picked = []
        for pos in range(step * b, (step + 1) * b):
            epoch, offset = divmod(pos, len(self.items))
            perm = np.random.default_rng((self.cfg.seed, epoch)).permutation(len(self.items))
            picked.append(int(perm[offset]))
        return picked

    def _draw(self, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """G combinations (G, K), their losses (G,) and a validity mask (G,) for question q.

        Without replacement; a question with fewer than G combinations is padded by repeating
        its first one, masked out of the pairs.
        """
        g = self.cfg.combinations_per_question
        n = len(self.losses[q])
        pick = torch.randperm(n, generator=self.generator)[:g]
        valid = torch.ones(g, dtype=torch.bool)
        if n < g:
            pick = torch.cat([pick, pick.new_zeros(g - n)])
            valid[n:] = False
        return self.combos[q][pick], self.losses[q][pick], valid

    def _features(self, q: int) -> torch.Tensor | None:
        item = self.items[q]
        if item.id in self.skipped:
            return None
        try:
            feats = self.features.get(item)  # (T, P, Dv)
        except RefocusError as exc:
            self.skipped[item.id] = str(exc)
            return None
        if feats.shape[0] != self.num_frames[q]:
            self.skipped[item.id] = (
                f"decoded {feats.shape[0]} frames, the collection had {self.num_frames[q]}; "
                "the video changed or the decoding differs"
            )
            return None
        return feats

    # ------------------------------------------------------------------ loop
    def train(self) -> VoyagerTrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="voyager", disable=not self.progress)
        last: dict = {}
        while self.step < cfg.max_steps:
            last = self.train_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last.get('train/loss', float('nan')):.3f}",
                            pair_acc=f"{last.get('train/pair_accuracy', float('nan')):.2f}")
            if self.step % cfg.logging_steps == 0:
                self.metrics.log(self.step, last)
            if self.step % cfg.save_steps == 0 or self.step == cfg.max_steps:
                self._save()
        bar.close()
        policy_dir = self.out_dir / "policy"
        save_policy(self.policy, self.tokenizer, policy_dir, cfg, self.collect_summary)
        self.metrics.close()
        return VoyagerTrainResult(
            steps=self.step,
            policy_dir=policy_dir,
            reference_calls=self.reference_calls,
            scoring=cfg.scoring,
            skipped=[{"id": k, "reason": v} for k, v in sorted(self.skipped.items())],
            last_metrics=last,
        )

    def train_step(self) -> dict:
        from refocus.policy import policy_prompt

        cfg = self.cfg
        t0 = time.perf_counter()
        feats, qids, combos, losses, valid = [], [], [], [], []
        for q in self._batch_indices(self.step):
            f = self._features(q)
            if f is None:
                continue
            c, lo, v = self._draw(q)
            feats.append(f)
            qids.append(policy_prompt(self.policy.config, self.tokenizer, self.items[q]))
            combos.append(c)
            losses.append(lo)
            valid.append(v)
        metrics: dict = {"train/skipped_items": len(self.skipped)}
        if not feats:
            return metrics
        self.policy.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            scores = combination_scores(self.policy, feats, qids, torch.stack(combos), cfg.scoring)  # (B, G)
        loss, stats = pairwise_ranking_loss(
            scores.float(), torch.stack(losses), cfg.min_loss_gap, cfg.margin, torch.stack(valid)
        )
        grad_norm = float("nan")
        if stats["pairs"] > 0 and torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
            self.optimizer.step()
        with warnings.catch_warnings():  # a step without pairs skips the optimizer, not the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        metrics |= {
            "train/loss": float(loss.detach()),
            "train/pair_accuracy": stats["pair_accuracy"],
            "train/pairs": stats["pairs"],
            "train/score_gap": stats["score_gap"],
            "train/grad_norm": grad_norm,
            "train/lr": self.scheduler.get_last_lr()[-1],
            "time/step": time.perf_counter() - t0,
        }
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "skipped": self.skipped,
        }
        ckpt = save_checkpoint(
            self.out_dir, self.step, self.policy, self.tokenizer, state,
            yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), keep=self.cfg.save_total_limit,
        )
        _write_voyager_file(ckpt, self.cfg, self.collect_summary)

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            raise RefocusError(f"{self.out_dir}: --resume given but no checkpoint found")
        from safetensors.torch import load_file

        self.policy.load_state_dict(load_file(ckpt / "model.safetensors", device=str(self.device)), strict=False)
        state = load_trainer_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.generator)
        self.step = state["step"]
        self.skipped = dict(state["skipped"])
        self.metrics.truncate_after(self.step)


def _write_voyager_file(policy_dir: Path, cfg: VoyagerConfig, collect_summary: dict) -> None:
    info = {
        "scoring": cfg.scoring,
        "combination_size": collect_summary.get("config", {}).get("combination_size"),
        "reference_calls": int(collect_summary.get("reference_calls", 0)),
    }
    write_json(policy_dir / VOYAGER_FILE, info)


def save_policy(policy, tokenizer, policy_dir: str | Path, cfg: VoyagerConfig, collect_summary: dict) -> Path:
    """The policy as ``refocus train`` saves it, plus ``voyager.json`` (scoring, reference calls)."""
    policy_dir = Path(policy_dir)
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    (policy_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _write_voyager_file(policy_dir, cfg, collect_summary)
    return policy_dir


def _finite_or_none(metrics: dict) -> dict:
    """JSON has no NaN: a metric without a value (no pair in the step) becomes null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def train_voyager(
    data_dir: str | Path,
    out_dir: str | Path,
    config: str | Path | VoyagerConfig | None = None,
    *,
    reference: str | Path | Any | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> VoyagerTrainResult:
    """Train a ranker on the collection in ``data_dir``; write ``out_dir`` (as ``refocus train``).

    config: a VoyagerConfig, a YAML of overrides, or None (defaults). reference: a loaded
    reference model or its directory; None reads the path recorded by the collection.
    Writes ``out_dir/train_summary.json`` with ``reference_calls`` (the collection's) like
    the GRPO trainer's summary.
    """
    from refocus.reference import load_reference
    from refocus.voyager.collect import load_rankings

    cfg = config if isinstance(config, VoyagerConfig) else load_voyager_config(config, max_steps=max_steps, seed=seed)
    items, rankings, summary = load_rankings(data_dir)
    if not items:
        raise RefocusError(f"{data_dir}: the collection has no ranked question")
    ref = reference
    if ref is None and not cfg.init_policy:
        ref = summary.get("reference")
        if not ref:
            raise RefocusError(f"{data_dir}: the collection does not name its reference model; pass --reference")
    if isinstance(ref, str | Path):
        if not Path(ref).is_dir():
            raise RefocusError(f"{ref}: reference model directory not found; pass --reference")
        ref = load_reference(ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = VoyagerTrainer(cfg, items, rankings, summary, ref, out_dir, resume=resume, progress=progress)
    result = trainer.train()
    write_json(out_dir / "train_summary.json", {
        "method": "frame-voyager", "scoring": result.scoring, "steps": result.steps,
        "policy": str(result.policy_dir), "reference_calls": result.reference_calls,
        "collection": str(Path(data_dir).resolve()), "questions": len(items),
        "skipped": result.skipped, "last_metrics": _finite_or_none(result.last_metrics),
    })
    return result


def run_voyager(
    train_qa: str | Path,
    reference_dir: str | Path,
    out_dir: str | Path,
    *,
    collect: CollectConfig | None = None,
    config: str | Path | VoyagerConfig | None = None,
    max_reference_calls: int | None = None,
    reference: Any = None,
    progress: bool = True,
) -> dict:
    """Collect rankings on ``train_qa`` and train the ranker: the whole baseline in one call.

    Writes ``out_dir/collect/`` (rankings) and ``out_dir/train/`` (run directory, final policy
    in ``out_dir/train/policy``). ``max_reference_calls`` caps the subsets the reference model
    scores (use the GRPO run's ``reference_calls`` for a comparison at equal calls).
    ``reference``: the already loaded reference model of ``reference_dir``, to avoid loading
    it again. Returns ``{"policy_dir", "reference_calls", "questions", "steps", "scoring",
    "collect_seconds", "train_seconds", "last_metrics", "skipped"}``.
    """
    from refocus.data.questions import load_questions
    from refocus.reference import load_reference
    from refocus.voyager.collect import collect_rankings

    collect = collect or CollectConfig()
    out = Path(out_dir)
    ref = reference if reference is not None else load_reference(reference_dir, batch_size=collect.reference_batch_size)
    items = load_questions(train_qa)
    t0 = time.perf_counter()
    collected = collect_rankings(items, ref, out / "collect", collect, max_reference_calls=max_reference_calls,
                                 reference_path=reference_dir, progress=progress)
    if collected.questions == 0:
        raise RefocusError(f"{train_qa}: no question could be ranked ({len(collected.skipped)} skipped)")
    t1 = time.perf_counter()
    trained = train_voyager(out / "collect", out / "train", config, reference=ref, progress=progress)
    t2 = time.perf_counter()
    return {
        "policy_dir": str(trained.policy_dir),
        "reference_calls": collected.reference_calls,
        "questions": collected.questions,
        "steps": trained.steps,
        "scoring": trained.scoring,
        "collect_seconds": round(t1 - t0, 2),
        "train_seconds": round(t2 - t1, 2),
        "last_metrics": _finite_or_none(trained.last_metrics),
        "skipped": collected.skipped + trained.skipped,
    }
