"""Accuracy from the policy's most and least likely frames (paper §4.2, Fig. 4).

Are the frames the policy likes the informative ones? For every item the policy's selection
distribution (Appendix C: ``samples`` autoregressive runs of ``budget`` steps, step
distributions averaged) ranks the T frames by likelihood. For each ``k`` in ``percents``:

* **over-k%**: the ``n`` most likely frames, **under-k%**: the ``n`` least likely, with
  ``n = min(ceil(k T / 100), floor(T / 2))`` (at least 1), so the two bins never share a
  frame (k <= 50). Ties rank the earlier frame as more likely (a stable sort).
* From each bin, ``budget`` frames are taken uniformly over the bin's frames in temporal
  order (the bin midpoints rule of the uniform selector, applied to the bin's sorted
  members; the whole bin when it has no more than ``budget`` frames).
* The answerer answers from those frames; accuracy per bin is compared with uniform sampling
  of ``budget`` frames from the whole video (the paper's baseline; ``ratio`` = bin accuracy /
  uniform accuracy, the y-axis of the paper's Fig. 4). Evidence recall per bin is reported
  when the items have evidence spans.

Outputs (``out_dir``): ``bins.json`` and ``bins.png`` (grouped bars, over vs under per k, the
uniform accuracy as a line; a second panel with evidence recall when known).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refocus.data.questions import QAItem
from refocus.errors import RefocusError

JSON_NAME = "bins.json"
PNG_NAME = "bins.png"


@dataclass
class BinsConfig:
    """Which likelihood bins are evaluated and how frames are drawn from them."""

    budget: int = 8
    """Frames shown to the answerer from each bin (and the T' of the policy's sampling)."""
    percents: tuple[float, ...] = (10, 25, 50)
    """Bin sizes k (% of the video's frames), each in (0, 50]."""
    samples: int = 64
    """Autoregressive samples behind each selection distribution (Appendix C: 64)."""
    max_items: int | None = None
    """Use the first this many items (None: all)."""
    seed: int = 0
    """Seed of the policy's sampling (mixed with each item id)."""

    def __post_init__(self) -> None:
        self.percents = tuple(float(k) for k in self.percents)
        if not self.percents or any(not 0 < k <= 50 for k in self.percents):
            raise RefocusError(f"percents must lie in (0, 50], got {list(self.percents)}")
        if self.budget < 1 or self.samples < 1:
            raise RefocusError(f"budget and samples must be >= 1, got {self.budget}, {self.samples}")


# ---------------------------------------------------------------------------- pure functions


def bin_size(num_frames: int, percent: float) -> int:
    """Frames in a k% bin: ``min(ceil(k T / 100), floor(T / 2))``, at least 1."""
    return max(1, min(math.ceil(percent * num_frames / 100 - 1e-9), num_frames // 2))


def likelihood_rank(dist: np.ndarray) -> np.ndarray:
    """Frame indices from most to least likely (ties: the earlier frame first), (T,)."""
    return np.argsort(-np.asarray(dist, dtype=np.float64), kind="stable")


def likelihood_bins(dist: np.ndarray, percent: float) -> tuple[np.ndarray, np.ndarray]:
    """(over, under): the top and bottom ``bin_size`` frames by likelihood, each sorted in time."""
    rank = likelihood_rank(dist)
    n = bin_size(len(rank), percent)
    return np.sort(rank[:n]), np.sort(rank[-n:])


def pick_from_bin(members: np.ndarray | Sequence[int], budget: int) -> list[int]:
    """``budget`` frames spread uniformly over a bin's members (sorted in time)."""
    from refocus.selectors.base import uniform_indices

    members = np.sort(np.asarray(members, dtype=np.int64))
    return [int(members[j]) for j in uniform_indices(len(members), budget)]


def bin_selections(dist: np.ndarray, percents: Sequence[float], budget: int) -> dict[str, list[int]]:
    """Selections ``{"over-<k>": [...], "under-<k>": [...]}`` per k, plus ``"uniform"``."""
    from refocus.selectors.base import uniform_indices

    out = {"uniform": uniform_indices(len(dist), budget)}
    for k in percents:
        over, under = likelihood_bins(dist, k)
        out[f"over-{_fmt(k)}"] = pick_from_bin(over, budget)
        out[f"under-{_fmt(k)}"] = pick_from_bin(under, budget)
    return out


def _fmt(percent: float) -> str:
    return f"{percent:g}"


# ---------------------------------------------------------------------------- the analysis


def run_bins_analysis(
    items: Sequence[QAItem],
    answerer: Any,
    policy: Any,
    out_dir: str | Path | None = None,
    config: BinsConfig | None = None,
    *,
    store: Any = None,
    progress: bool = True,
) -> dict:
    """Accuracy of the answerer on frames from the policy's over-/under-k% likelihood bins.

    answerer: a loaded reference model. policy: a ``PolicySelector`` (anything with
    ``image_size`` and ``selection_distribution(video, item, budget, num_samples)``); it is
    reseeded with ``config.seed``. store: a shared ``FrameStore`` (default: the ``DecodeConfig`` defaults).

    Returns ``{"analysis": "bins", "policy", "answerer", "budget", "samples", "percents",
    "n_items", "uniform": {"accuracy", "evidence_recall"}, "bins": [{"percent", "over":
    {"accuracy", "evidence_recall", "ratio"}, "under": {...}}], "items": [{"id",
    "num_frames", "selections": {name: indices}, "correct": {name: bool}}], "skipped",
    "png"}``.
    """
    from tqdm.auto import tqdm

    from refocus.data.evidence import evidence_frame_mask, hits_evidence
    from refocus.video.stores import FrameStore

    cfg = config or BinsConfig()
    items = list(items)[: cfg.max_items] if cfg.max_items else list(items)
    store = store if store is not None else FrameStore(capacity=8)
    policy.reseed(cfg.seed)
    answer_size = int(answerer.image_size)
    records, skipped = [], []
    bar = tqdm(items, desc="bins", unit="item", disable=not progress)
    for item in bar:
        try:
            video = store.get(item, policy.image_size)
            frames = video if answer_size == policy.image_size else store.get(item, answer_size)
            if len(frames.timestamps) != len(video.timestamps):
                raise RefocusError(f"{item.video}: decodes at two sizes differ in length")
            dist = policy.selection_distribution(video, item, cfg.budget, num_samples=cfg.samples)
            selections = bin_selections(dist, cfg.percents, cfg.budget)
            names = list(selections)
            unique = list(dict.fromkeys(tuple(selections[n]) for n in names))
            logits = answerer.option_logits(item, frames.frames, [list(u) for u in unique])  # (G, O)
        except RefocusError as exc:
            skipped.append({"id": item.id, "reason": " ".join(str(exc).split())})
            continue
        predicted = {u: int(np.argmax(logits[g])) for g, u in enumerate(unique)}
        mask = evidence_frame_mask(video.timestamps, item.evidence)
        records.append({
            "id": item.id,
            "num_frames": len(video.timestamps),
            "selections": selections,
            "correct": {n: predicted[tuple(selections[n])] == item.answer_index for n in names},
            "hit_evidence": {n: hits_evidence(selections[n], mask) for n in names},
        })
    bar.close()
    if not records:
        raise RefocusError("no item could be evaluated: " + "; ".join(s["reason"] for s in skipped[:3]))

    def score(name: str) -> dict:
        acc = float(np.mean([r["correct"][name] for r in records]))
        hits = [r["hit_evidence"][name] for r in records if r["hit_evidence"][name] is not None]
        return {"accuracy": round(acc, 6),
                "evidence_recall": round(float(np.mean(hits)), 6) if hits else None}

    uniform = score("uniform")
    rows = []
    for k in cfg.percents:
        row = {"percent": k}
        for side in ("over", "under"):
            res = score(f"{side}-{_fmt(k)}")
            res["ratio"] = round(res["accuracy"] / uniform["accuracy"], 6) if uniform["accuracy"] else None
            row[side] = res
        rows.append(row)
    out = {
        "analysis": "bins",
        "policy": getattr(policy, "name", "policy"),
        "answerer": getattr(answerer, "name", type(answerer).__name__),
        "budget": cfg.budget,
        "samples": cfg.samples,
        "percents": list(cfg.percents),
        "n_items": len(records),
        "uniform": uniform,
        "bins": rows,
        "items": [{k: r[k] for k in ("id", "num_frames", "selections", "correct")} for r in records],
        "skipped": skipped,
    }
    if out_dir is not None:
        from refocus.io import write_json

        out_dir = Path(out_dir)
        out["png"] = str(plot_bins(out, out_dir / PNG_NAME))
        write_json(out_dir / JSON_NAME, out)
    return out


def summary_text(result: dict) -> str:
    """``over/under accuracy 10%: 0.62/0.21, 25%: ... vs uniform 0.40 (100 items)``."""
    parts = [f"{_fmt(r['percent'])}%: {r['over']['accuracy']:.2f}/{r['under']['accuracy']:.2f}"
             for r in result["bins"]]
    return (f"over/under accuracy {', '.join(parts)} vs uniform {result['uniform']['accuracy']:.2f} "
            f"({result['n_items']} items, budget {result['budget']})")


# ---------------------------------------------------------------------------- the figure


def plot_bins(result: dict, path: str | Path) -> Path:
    """Grouped bars per k (over, under) with uniform's value as a dashed line; accuracy, and
    evidence recall when the items had spans."""
    from refocus.analysis.plots import COLORS, bar_labels, figure, save

    panels = [("accuracy", "accuracy")]
    if result["uniform"]["evidence_recall"] is not None:
        panels.append(("evidence_recall", "evidence recall"))
    labels = [f"{_fmt(r['percent'])}%" for r in result["bins"]]
    x = np.arange(len(labels))
    width = 0.36
    with figure(1, len(panels), figsize=(4.6 * len(panels) + 1.4, 3.8), squeeze=False,
                constrained_layout=True) as (fig, axes):
        for c, (metric, metric_label) in enumerate(panels):
            ax = axes[0][c]
            for offset, side, text in ((-width / 2, "over", "over-k% (most likely frames)"),
                                       (width / 2, "under", "under-k% (least likely frames)")):
                heights = [r[side][metric] for r in result["bins"]]
                bars = ax.bar(x + offset, [np.nan if h is None else h for h in heights], width,
                              color=COLORS[side], label=text)
                bar_labels(ax, bars)
            reference = result["uniform"][metric]
            ax.axhline(reference, color=COLORS["uniform"], ls="--", lw=1.3,
                       label="uniform over the whole video")
            ax.set_xticks(x, labels=labels)
            ax.set_xlabel("bin size k (% of frames, ranked by policy likelihood)")
            ax.set_ylabel(metric_label)
            ax.set_ylim(0, 1.12)
            ax.set_title(f"{metric_label}, {result['budget']} frames per bin (uniform: {reference:.2f})")
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(f"Likelihood bins of the policy's selection distribution "
                     f"({result['n_items']} items, {result['samples']} samples each)", fontsize=11)
        return save(fig, path)
