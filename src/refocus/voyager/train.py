"""Frame-Voyager ranker training: the ReFoCUS policy trained on loss-ranked combinations.

The loop, per step:
  1. take B questions (a fresh permutation per epoch from (seed, epoch), as the GRPO trainer);
  2. draw G of each question's labelled combinations;
  3. score them with the policy (``refocus.voyager.model.combination_scores``);
  4. RankNet loss over every pair whose reference losses differ by more than ``min_loss_gap``;
  5. AdamW step (two learning rates, as GRPO), metrics, checkpoint.

No reference-model call happens here: all reference calls were spent in collection and are
reported from its summary. The loop, batching, checkpoints, resume, metrics and the final
export are the GRPO trainer's own (:class:`refocus.training.core.PolicyTrainer`), so
``--resume``, ``refocus analyze entropy`` and the ``policy:DIR`` loader read them alike.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.io import write_json
from refocus.training.config import resolve_config
from refocus.training.core import PolicyTrainer, save_policy_dir
from refocus.video.stores import FrameStore
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


class VoyagerTrainer(PolicyTrainer):
    """Pairwise ranking training of a :class:`refocus.policy.FramePolicy` on the shared
    trainer core (:class:`refocus.training.core.PolicyTrainer`).

    items / rankings: parallel lists from :func:`refocus.voyager.collect.load_rankings`.
    collect_summary: that collection's summary (decoding settings, reference calls).
    reference: the loaded reference model whose vision tower and tokenizer the new policy uses
    (``refocus.training.core.build_policy``); may be None when ``cfg.init_policy`` is set.
    """

    desc = "voyager"

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
        if not items or len(items) != len(rankings):
            raise RefocusError("voyager training needs at least one ranked question")
        if reference is None and not cfg.init_policy:
            raise RefocusError("voyager training needs the reference model (or init_policy) to build the policy")
        self.combos = [torch.tensor([c["indices"] for c in r["combinations"]], dtype=torch.long) for r in rankings]
        self.losses = [torch.tensor([c["loss"] for c in r["combinations"]], dtype=torch.float32) for r in rankings]
        self.num_frames = [int(r["num_frames"]) for r in rankings]
        self.collect_summary = collect_summary
        collect_cfg = CollectConfig(**collect_summary.get("config", {}))
        super().__init__(cfg, items, reference, out_dir, frames=FrameStore(collect_cfg.decode.fps, collect_cfg.decode.max_frames),
                         resume=resume, progress=progress)
        if self.world > 1:  # the ranking scores call the policy's methods, outside DDP's forward
            raise RefocusError("Frame-Voyager training runs in one process; launch it without accelerate")

    @property
    def reference_calls(self) -> int:
        return int(self.collect_summary.get("reference_calls", 0))

    def generator_seed(self) -> int:
        return self.cfg.seed + 1000 * self.rank

    def postfix(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"loss": f"{metrics.get('train/loss', float('nan')):.3f}",
                "pair_acc": f"{metrics.get('train/pair_accuracy', float('nan')):.2f}"}

    def write_extra_files(self, policy_dir: Path) -> None:
        _write_voyager_file(policy_dir, self.cfg, self.collect_summary)

    def train(self) -> VoyagerTrainResult:
        last = self.fit()
        policy_dir = self.export()
        return VoyagerTrainResult(
            steps=self.step,
            policy_dir=policy_dir,
            reference_calls=self.reference_calls,
            scoring=self.cfg.scoring,
            skipped=[{"id": k, "reason": v} for k, v in sorted(self.skipped.items())],
            last_metrics=last,
        )

    # ------------------------------------------------------------------ data
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
        feats = self.item_features(item)  # (T, P, Dv)
        if feats is not None and feats.shape[0] != self.num_frames[q]:
            self.skipped[item.id] = (
                f"decoded {feats.shape[0]} frames, the collection had {self.num_frames[q]}; "
                "the video changed or the decoding differs"
            )
            return None
        return feats

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        from refocus.policy import policy_prompt

        cfg = self.cfg
        t0 = time.perf_counter()
        feats, qids, combos, losses, valid = [], [], [], [], []
        for q in self.batch_indices(self.step):
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
        self.unwrapped.train()
        with self.autocast():
            scores = combination_scores(self.unwrapped, feats, qids, torch.stack(combos), cfg.scoring)  # (B, G)
        loss, stats = pairwise_ranking_loss(
            scores.float(), torch.stack(losses), cfg.min_loss_gap, cfg.margin, torch.stack(valid)
        )
        grad_norm = float("nan")
        if stats["pairs"] > 0 and torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
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


def _write_voyager_file(policy_dir: Path, cfg: VoyagerConfig, collect_summary: dict) -> None:
    info = {
        "scoring": cfg.scoring,
        "combination_size": collect_summary.get("config", {}).get("combination_size"),
        "reference_calls": int(collect_summary.get("reference_calls", 0)),
    }
    write_json(policy_dir / VOYAGER_FILE, info)


def save_policy(policy, tokenizer, policy_dir: str | Path, cfg: VoyagerConfig, collect_summary: dict) -> Path:
    """The policy as ``refocus train`` saves it, plus ``voyager.json`` (scoring, reference calls)."""
    save_policy_dir(policy, tokenizer, policy_dir, cfg)
    _write_voyager_file(Path(policy_dir), cfg, collect_summary)
    return Path(policy_dir)


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
    sets: dict | None = None,
) -> VoyagerTrainResult:
    """Train a ranker on the collection in ``data_dir``; write ``out_dir`` (as ``refocus train``).

    config: a VoyagerConfig, a YAML of overrides, or None (defaults). reference: a loaded
    reference model or its directory; None reads the path recorded by the collection.
    Writes ``out_dir/train_summary.json`` with ``reference_calls`` (the collection's) like
    the GRPO trainer's summary.
    """
    from refocus.reference import load_reference
    from refocus.voyager.collect import load_rankings

    cfg = resolve_config(config, load_voyager_config, VoyagerConfig, sets, max_steps=max_steps, seed=seed)
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
