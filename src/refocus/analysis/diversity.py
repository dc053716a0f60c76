"""Diversity of the policy's selections across questions (paper §4.2, Table 3, Appendix C).

For every item the policy's selection distribution ``p_{v,q}`` over the T decoded frames is
estimated as Appendix C says: N = 64 autoregressive samples of ``budget`` frames, each step's
categorical over the still-available frames averaged over the steps, then over the samples
(``PolicySelector.selection_distribution``). Items are grouped by video length, and within a
group the mean pairwise Jensen–Shannon divergence, symmetric KL divergence and Wasserstein
distance between the items' distributions measure how much the selection depends on the
video and question rather than on a fixed temporal prior.

Uniform sampling is the contrast: its "distribution" is the one-hot average of its
``budget`` bin midpoints (mass ``1 / budget`` on each), the same relative times for every
video, so its pairwise distances are ~0.

Choices (documented here because they change the numbers):

* **Length groups.** Video-MME's own duration classes (``meta["duration"]`` short / medium /
  long, written by ``refocus data convert videomme``) when every item has one: the paper
  groups by them (Appendix C: 200 videos per class). Otherwise equal-count tertiles of the
  decoded frame count T (ties broken by file order); at 4 fps capped at 512 frames every video
  over 128 s has T = 512, so tertiles cannot tell medium from long there. With
  ``thresholds=(A, B)``: short T <= A < medium T <= B < long.
* **Common support.** Videos have different T, so every distribution is resampled onto
  ``bins`` equal bins of relative time (``refocus.analysis.distances.rebin``: exact mass
  transfer). The default is ``3 * budget`` bins, an odd multiple of the budget: the uniform
  midpoints ``(j + 1/2) / budget`` then sit at bin centres, so uniform's one-hot averages land
  in the same bins for every T >= 2 * bins and its distances are exactly ~0 instead of an
  artefact of bin edges (with 64 bins and budget 8 the midpoints fall on bin edges, and a
  one-frame shift between two lengths moves all the mass to the neighbouring bin: a JS of ~1
  for identical selections). Three bins per selected frame is still finer than the spacing
  of a spread-out selection.
* **Units.** JS in bits (0-1), symmetric KL in nats (eps-smoothed), Wasserstein in units of
  the video's length (1 = the whole video). The paper's Wasserstein values (39-59) are in
  frames; multiply by T to compare.

Outputs (``out_dir``): ``diversity.json`` and ``diversity.png`` (bars of the three distances
per length group, policy vs uniform; a few example distributions over relative time with the
evidence spans shaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refocus.analysis.distances import pairwise_mean, rebin
from refocus.data.questions import QAItem
from refocus.errors import RefocusError

JSON_NAME = "diversity.json"
PNG_NAME = "diversity.png"
GROUPS = ("short", "medium", "long")
METRICS = ("js", "symmetric_kl", "wasserstein")
METRIC_LABELS = {
    "js": "Jensen–Shannon div. (bits)",
    "symmetric_kl": "symmetric KL div. (nats)",
    "wasserstein": "Wasserstein dist. (video lengths)",
}


@dataclass
class DiversityConfig:
    """How selection distributions are estimated and compared."""

    budget: int = 8
    """Frames per sampled selection (T')."""
    samples: int = 64
    """Autoregressive samples per item (Appendix C: N = 64)."""
    max_items: int | None = 200
    """Use the first this many items of the question file (None: all)."""
    bins: int | None = None
    """Bins of relative time the distributions are compared on; None: ``3 * budget``."""
    thresholds: tuple[int, int] | None = None
    """Fixed frame-count group edges (short <= A < medium <= B < long); None: tertiles."""
    seed: int = 0
    """Seed of the policy's sampling (mixed with each item id)."""
    examples: int = 3
    """Example distributions drawn under the bars (one per length group when possible)."""

    def __post_init__(self) -> None:
        if self.budget < 1 or self.samples < 1:
            raise RefocusError(f"budget and samples must be >= 1, got {self.budget}, {self.samples}")
        if self.bins is not None and self.bins < 1:
            raise RefocusError(f"bins must be >= 1, got {self.bins}")
        if self.thresholds is not None:
            a, b = self.thresholds
            if not 0 < a < b:
                raise RefocusError(f"length thresholds need 0 < A < B, got {a},{b}")

    @property
    def num_bins(self) -> int:
        return self.bins if self.bins is not None else 3 * self.budget


# ---------------------------------------------------------------------------- pure functions


def uniform_distribution(num_frames: int, budget: int) -> np.ndarray:
    """Uniform sampling's selection as a distribution (T,): ``1 / K`` on each bin midpoint."""
    from refocus.selectors.base import uniform_indices

    picks = uniform_indices(num_frames, budget)
    dist = np.zeros(num_frames, dtype=np.float64)
    dist[picks] = 1.0 / len(picks)
    return dist


def duration_classes(items: Sequence[Any]) -> list[str] | None:
    """Each item's Video-MME duration class, or None unless every item has one of GROUPS."""
    classes = [str((getattr(item, "meta", None) or {}).get("duration") or "").lower() for item in items]
    return classes if classes and all(c in GROUPS for c in classes) else None


def length_groups(
    num_frames: Sequence[int], thresholds: tuple[int, int] | None = None
) -> list[str]:
    """Group name ("short", "medium", "long") of each video by its frame count.

    Tertiles (default): items ranked by T (stable: ties keep their order) and cut into three
    runs of ``round(n/3)``, ``round(2n/3) - round(n/3)`` and the rest. Thresholds ``(A, B)``:
    short T <= A, medium A < T <= B, long T > B.
    """
    counts = np.asarray(num_frames, dtype=np.int64)
    n = counts.size
    if thresholds is not None:
        a, b = thresholds
        return [GROUPS[0] if t <= a else GROUPS[1] if t <= b else GROUPS[2] for t in counts]
    order = np.argsort(counts, kind="stable")
    cuts = (round(n / 3), round(2 * n / 3))
    names = [""] * n
    for rank, i in enumerate(order):
        names[i] = GROUPS[0] if rank < cuts[0] else GROUPS[1] if rank < cuts[1] else GROUPS[2]
    return names


def group_distances(dists: Sequence[np.ndarray], bins: int | None) -> dict[str, float | None]:
    """Mean pairwise JS, symmetric KL and Wasserstein of ``dists``; None with < 2 of them."""
    if len(dists) < 2:
        return dict.fromkeys(METRICS)
    return {m: round(pairwise_mean(dists, m, bins=bins), 6) for m in METRICS}


def distance_table(
    records: Sequence[dict], bins: int | None
) -> dict[str, dict[str, Any]]:
    """Per length group (and ``"all"``): item count, frame range and both selectors' distances.

    ``records``: dicts with ``group``, ``num_frames``, ``policy`` (T,) and ``uniform`` (T,).
    """
    table = {}
    for group in (*GROUPS, "all"):
        mine = [r for r in records if group == "all" or r["group"] == group]
        if not mine:
            continue
        frames = [r["num_frames"] for r in mine]
        table[group] = {
            "n_items": len(mine),
            "frames": [int(min(frames)), int(max(frames))],
            "policy": group_distances([r["policy"] for r in mine], bins),
            "uniform": group_distances([r["uniform"] for r in mine], bins),
        }
    return table


# ---------------------------------------------------------------------------- the analysis


def run_diversity_analysis(
    items: Sequence[QAItem],
    policy: Any,
    out_dir: str | Path | None = None,
    config: DiversityConfig | None = None,
    *,
    store: Any = None,
    progress: bool = True,
) -> dict:
    """Selection distributions of ``policy`` on ``items`` and their pairwise distances.

    policy: a ``PolicySelector`` (anything with ``image_size`` and
    ``selection_distribution(video, item, budget, num_samples)``); it is reseeded with
    ``config.seed``. store: a shared ``FrameStore`` (default: the ``DecodeConfig`` defaults).

    Returns ``{"analysis": "diversity", "policy", "budget", "samples", "bins", "grouping",
    "groups": {group: {"n_items", "frames": [min, max], "policy": {"js", "symmetric_kl",
    "wasserstein"}, "uniform": {...}}}, "items": [{"id", "num_frames", "group",
    "policy_binned"}], "examples": [ids], "skipped": [{"id", "reason"}], "png"}``.
    """
    from tqdm.auto import tqdm

    from refocus.video.stores import FrameStore

    cfg = config or DiversityConfig()
    items = list(items)[: cfg.max_items] if cfg.max_items else list(items)
    store = store if store is not None else FrameStore(capacity=8)
    policy.reseed(cfg.seed)
    records, skipped = [], []
    for item in tqdm(items, desc="diversity", unit="item", disable=not progress):
        try:
            video = store.get(item, policy.image_size)
            dist = policy.selection_distribution(video, item, cfg.budget, num_samples=cfg.samples)
        except RefocusError as exc:
            skipped.append({"id": item.id, "reason": " ".join(str(exc).split())})
            continue
        num_frames = len(video.timestamps)
        records.append({
            "item": item,
            "num_frames": num_frames,
            "timestamps": np.asarray(video.timestamps),
            "policy": np.asarray(dist, dtype=np.float64),
            "uniform": uniform_distribution(num_frames, cfg.budget),
        })
    if len(records) < 2:
        raise RefocusError(f"diversity needs at least 2 usable items, got {len(records)}")
    classes = None if cfg.thresholds else duration_classes([r["item"] for r in records])
    groups = classes or length_groups([r["num_frames"] for r in records], cfg.thresholds)
    for record, group in zip(records, groups, strict=True):
        record["group"] = group

    bins = cfg.num_bins
    examples = _pick_examples(records, cfg.examples)
    out = {
        "analysis": "diversity",
        "policy": getattr(policy, "name", "policy"),
        "budget": cfg.budget,
        "samples": cfg.samples,
        "bins": bins,
        "grouping": ({"thresholds": list(cfg.thresholds)} if cfg.thresholds
                     else "videomme_duration" if classes else "tertiles"),
        "note": (f"uniform's selections coincide on the {bins} bins for videos of >= {2 * bins} "
                 "frames; a shorter video's frame straddles two bins, so its uniform distances "
                 "are not exactly 0"),
        "groups": distance_table(records, bins),
        "items": [
            {"id": r["item"].id, "num_frames": r["num_frames"], "group": r["group"],
             "policy_binned": [round(float(x), 6) for x in rebin(r["policy"], bins)]}
            for r in records
        ],
        "examples": [r["item"].id for r in examples],
        "skipped": skipped,
    }
    if out_dir is not None:
        from refocus.io import write_json

        out_dir = Path(out_dir)
        out["png"] = str(plot_diversity(out, examples, out_dir / PNG_NAME))
        write_json(out_dir / JSON_NAME, out)
    return out


def _pick_examples(records: Sequence[dict], count: int) -> list[dict]:
    """Up to ``count`` records: the first of each length group in turn, then the next ones."""
    by_group = {g: [r for r in records if r["group"] == g] for g in GROUPS}
    picked: list[dict] = []
    depth = 0
    while len(picked) < min(count, len(records)):
        for g in GROUPS:
            if depth < len(by_group[g]) and len(picked) < count:
                picked.append(by_group[g][depth])
        depth += 1
    return picked


def summary_text(result: dict) -> str:
    """``policy JS 0.41 / sKL 2.10 / W 0.12 vs uniform 0.00 / 0.00 / 0.00 (all 200 items)``."""
    row = result["groups"]["all"]

    def fmt(res: dict) -> str:
        return " / ".join("n/a" if res[m] is None else f"{res[m]:.3f}" for m in METRICS)

    return (f"policy JS / sym-KL / W {fmt(row['policy'])} vs uniform {fmt(row['uniform'])} "
            f"({row['n_items']} items, {result['bins']} bins)")


# ---------------------------------------------------------------------------- the figure


def plot_diversity(result: dict, examples: Sequence[dict], path: str | Path) -> Path:
    """Top: one bar panel per distance (groups x {policy, uniform}); bottom: example
    distributions over relative time, evidence shaded, uniform's picks as ticks."""
    from refocus.analysis.plots import COLORS, bar_labels, figure, save

    groups = [g for g in (*GROUPS, "all") if g in result["groups"]]
    ncols = max(len(METRICS), len(examples))
    with figure(2, ncols, figsize=(3.6 * ncols, 6.4), squeeze=False,
                gridspec_kw={"height_ratios": [1.15, 1.0]}, constrained_layout=True) as (fig, axes):
        x = np.arange(len(groups))
        width = 0.38
        for c, metric in enumerate(METRICS):
            ax = axes[0][c]
            for offset, who in ((-width / 2, "policy"), (width / 2, "uniform")):
                values = [result["groups"][g][who][metric] for g in groups]
                heights = [np.nan if v is None else v for v in values]
                bars = ax.bar(x + offset, heights, width, label=who, color=COLORS[who])
                bar_labels(ax, bars, fmt="{:.3g}")
            ax.set_xticks(x, labels=[_group_label(g, result["groups"][g]) for g in groups],
                          fontsize=7.5)
            ax.set_xlabel("length group: items, frames")
            ax.set_title(METRIC_LABELS[metric])
            ax.set_ylabel("mean pairwise distance")
            ax.margins(y=0.15)
        axes[0][len(METRICS) - 1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        for c in range(len(METRICS), ncols):
            axes[0][c].set_visible(False)
        for c in range(ncols):
            ax = axes[1][c]
            if c >= len(examples):
                ax.set_visible(False)
                continue
            _plot_example(ax, examples[c], result["budget"], COLORS)
            if c == len(examples) - 1:
                ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7.5)
            if c == 0:
                ax.set_ylabel("selection probability × T\n(1 = flat)")
        fig.suptitle(
            f"Selection diversity across questions: {result['samples']} samples × "
            f"{result['budget']} frames per item, distances on {result['bins']} bins of relative time",
            fontsize=11,
        )
        return save(fig, path)


def _group_label(group: str, row: dict) -> str:
    lo, hi = row["frames"]
    return f"{group}\nn={row['n_items']}\n{lo}–{hi}"


def _plot_example(ax: Any, record: dict, budget: int, colors: dict) -> None:
    from refocus.data.evidence import evidence_frame_mask
    from refocus.selectors.base import uniform_indices

    item = record["item"]
    num_frames = record["num_frames"]
    edges = np.arange(num_frames + 1) / num_frames  # frame t covers [t/T, (t+1)/T)
    density = record["policy"] * num_frames
    mask = evidence_frame_mask(record["timestamps"], item.evidence)
    if mask is not None:
        for start, stop in _runs(mask):
            ax.axvspan(edges[start], edges[stop], color=colors["evidence"], alpha=0.25, lw=0,
                       label="evidence" if start == _runs(mask)[0][0] else None)
    ax.stairs(density, edges, color=colors["policy"], lw=1.3, label="policy")
    for j, t in enumerate(uniform_indices(num_frames, budget)):
        ax.axvline((t + 0.5) / num_frames, color=colors["uniform"], lw=0.9, ls=":",
                   label="uniform picks" if j == 0 else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("relative time in the video")
    title = item.id if len(item.id) <= 28 else item.id[:27] + "…"
    ax.set_title(f"{title} ({record['group']}, T={num_frames})", fontsize=9)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, stop) runs of True in a boolean vector."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(change[::2].tolist(), change[1::2].tolist(), strict=True))
