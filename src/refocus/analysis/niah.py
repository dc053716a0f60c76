"""Visual needle-in-a-haystack heatmap (paper §4.2, Fig. 5; project page Fig. 7).

Each selector picks ``budget`` frames from videos of every length on the grid (x: total
frames, 64 to 1,024 by default) with the needle at every relative position (y); the answerer
then answers the needle question from those frames. A cell shows, over its videos (and seeds,
for sampling selectors):

* ``accuracy``: share of questions answered correctly;
* ``evidence_recall``: share of selections holding at least one needle frame (the frames
  whose timestamps fall inside the needle's evidence span).

Uniform sampling misses short needles between its bin midpoints (its recall is a property of
the grid alone); a policy that finds the needle stays near 1 everywhere, including at lengths
longer than it was trained on (``train_max_frames`` draws a dashed line there).

Videos are decoded at their own rate with ``max_frames`` at least the longest length, so a
1,024-frame video yields 1,024 frames (the usual 512-frame cap would halve it). The work per
selector is :func:`refocus.evaluation.evaluate`; this module only lays the grid out, groups
the per-item predictions by cell, and draws the figure.

Outputs (``out_dir``): ``niah.json`` (layout in :func:`run_niah_analysis`) and ``niah.png``
(rows: accuracy, evidence recall; one column per selector; shared 0-1 colour scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refocus.data.questions import QAItem
from refocus.data.synth.grid import DEFAULT_LENGTHS, DEFAULT_POSITIONS
from refocus.errors import RefocusError
from refocus.video.config import DecodeConfig

JSON_NAME = "niah.json"
PNG_NAME = "niah.png"


@dataclass
class NiahConfig:
    """What the heatmap covers and how each cell is measured."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    """Total frames of the grid videos (x-axis); the paper goes from 64 to 1k frames."""
    positions: int = DEFAULT_POSITIONS
    """Number of evenly spaced relative needle positions from start (0) to end (1) (y-axis)."""
    per_cell: int = 2
    """Videos (questions) per cell."""
    budget: int = 8
    """Frames each selector picks (T'); SPEC's NIAH target is stated at T' = 8."""
    seed: int = 0
    """Seed of the grid videos and of the first selection run."""
    seeds: int = 1
    """Selection runs for sampling selectors (seeds ``seed .. seed + seeds - 1``);
    deterministic selectors run once."""
    fps: float = DecodeConfig.fps
    """Rate of the grid videos and of decoding, so a length-T video gives exactly T frames."""
    size: int = 96
    """Frame side of the written grid videos (pixels)."""
    train_max_frames: int | None = None
    """Longest video (in frames) the policy saw in training; lengths beyond it are marked."""
    extra: dict = field(default_factory=dict)
    """Free-form notes copied into the JSON (e.g. the policy's training run)."""

    def __post_init__(self) -> None:
        self.lengths = tuple(sorted(int(n) for n in self.lengths))
        if self.budget < 1:
            raise RefocusError(f"budget must be at least 1, got {self.budget}")
        if self.seeds < 1:
            raise RefocusError(f"seeds must be at least 1, got {self.seeds}")


# ---------------------------------------------------------------------------- pure functions


def cell_key(item: QAItem) -> tuple[int, float]:
    """(total frames, relative needle position) of a grid item."""
    meta = item.meta
    if "grid_length" not in meta or "grid_position" not in meta:
        raise RefocusError(
            f"item {item.id}: not a V-NIAH grid item (meta needs grid_length and grid_position; "
            "write the grid with refocus.data.synth.grid.write_niah_grid)"
        )
    return int(meta["grid_length"]), round(float(meta["grid_position"]), 6)


def aggregate_cells(
    items: Sequence[QAItem], predictions: Sequence[dict]
) -> list[dict[str, Any]]:
    """Per-cell means of ``correct`` and ``hit_evidence`` over prediction rows.

    ``predictions``: rows of :func:`refocus.evaluation.evaluate` (``id``, ``correct`` (None
    without an answerer), ``hit_evidence``); several rows per item (seeds) are all counted.
    Returns one dict per cell that has items, sorted by (length, position):
    ``{"length", "position", "accuracy", "evidence_recall", "n"}`` with ``n`` the number of
    distinct items; a mean over no values is None.
    """
    where = {item.id: cell_key(item) for item in items}
    cells: dict[tuple[int, float], dict[str, list]] = {}
    for row in predictions:
        key = where[row["id"]]
        cell = cells.setdefault(key, {"correct": [], "hit": [], "ids": set()})
        cell["ids"].add(row["id"])
        if row.get("correct") is not None:
            cell["correct"].append(bool(row["correct"]))
        if row.get("hit_evidence") is not None:
            cell["hit"].append(bool(row["hit_evidence"]))

    def mean(values: list) -> float | None:
        return round(float(np.mean(values)), 6) if values else None

    return [
        {"length": length, "position": position, "accuracy": mean(c["correct"]),
         "evidence_recall": mean(c["hit"]), "n": len(c["ids"])}
        for (length, position), c in sorted(cells.items())
    ]


def cell_matrix(
    cells: Sequence[dict], lengths: Sequence[int], positions: Sequence[float], metric: str
) -> list[list[float | None]]:
    """``metric`` of each cell as a (positions, lengths) nested list; None where missing."""
    lookup = {(c["length"], round(c["position"], 6)): c[metric] for c in cells}
    return [[lookup.get((n, round(p, 6))) for n in lengths] for p in positions]


def weighted_mean(cells: Sequence[dict], metric: str) -> float | None:
    """Mean of a cell metric over cells, weighted by their item counts."""
    pairs = [(c[metric], c["n"]) for c in cells if c[metric] is not None]
    if not pairs:
        return None
    total = sum(n for _, n in pairs)
    return round(sum(v * n for v, n in pairs) / total, 6)


# ---------------------------------------------------------------------------- the analysis


def run_niah_analysis(
    answerer: Any,
    selectors: Sequence[Any],
    out_dir: str | Path | None = None,
    config: NiahConfig | None = None,
    *,
    items: Sequence[QAItem] | None = None,
    grid_dir: str | Path | None = None,
    store: Any = None,
    progress: bool = True,
) -> dict:
    """Fill the V-NIAH grid for every selector; write ``niah.json`` and ``niah.png``.

    answerer: a loaded reference model (``load_reference``), or None for evidence recall only.
    selectors: loaded selectors (``get_selector("uniform")``, a ``PolicySelector`` ...).
    items: grid items; when None the grid is written (or reused) under ``grid_dir``
    (default ``out_dir/grid``) from ``config``. store: a shared ``FrameStore``; one with
    ``max_frames`` below the longest grid length would cap long videos, so a dedicated store
    is used instead in that case.

    Returns ``{"analysis": "niah", "budget", "lengths", "positions", "per_cell", "seeds",
    "train_max_frames", "answerer", "grid_dir", "selectors": {name: {"label", "mode",
    "accuracy", "evidence_recall", "cells": [{"length", "position", "accuracy",
    "evidence_recall", "n"}], "accuracy_matrix", "evidence_recall_matrix" ((positions,
    lengths) nested lists), "n_items", "skipped"}}, "png"}``.
    """
    from refocus.evaluation import evaluate
    from refocus.video.stores import FrameStore

    cfg = config or NiahConfig()
    if not selectors:
        raise RefocusError("no selectors to compare")
    if items is None:
        from refocus.data.synth.grid import write_niah_grid

        if grid_dir is None:
            if out_dir is None:
                raise RefocusError("give items, grid_dir or out_dir (the grid is written there)")
            grid_dir = Path(out_dir) / "grid"
        qa = write_niah_grid(grid_dir, cfg.lengths, cfg.positions, cfg.per_cell, cfg.seed,
                             cfg.fps, cfg.size, progress=progress)
        from refocus.data.questions import load_questions

        items = load_questions(qa)
    items = list(items)
    if not items:
        raise RefocusError("the V-NIAH grid has no items")
    keys = [cell_key(item) for item in items]
    lengths = sorted({n for n, _ in keys})
    positions = sorted({p for _, p in keys})
    longest = max(lengths)
    if store is None or store.max_frames < longest:
        store = FrameStore(cfg.fps, max_frames=longest, capacity=8)

    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    names = [s.name for s in selectors]
    per_selector = {}
    for selector in selectors:
        result = evaluate(items, answerer, selector, [cfg.budget], seeds, store=store,
                          progress=progress)
        cells = aggregate_cells(items, result["predictions"])
        per_selector[selector.name] = {
            "label": _label(selector.name, names),
            "mode": result.get("mode"),
            "accuracy": weighted_mean(cells, "accuracy"),
            "evidence_recall": weighted_mean(cells, "evidence_recall"),
            "cells": cells,
            "accuracy_matrix": cell_matrix(cells, lengths, positions, "accuracy"),
            "evidence_recall_matrix": cell_matrix(cells, lengths, positions, "evidence_recall"),
            "n_items": len({r["id"] for r in result["predictions"]}),
            "skipped": result["skipped"],
        }
    out = {
        "analysis": "niah",
        "budget": cfg.budget,
        "lengths": lengths,
        "positions": positions,
        "per_cell": cfg.per_cell,
        "seeds": seeds,
        "train_max_frames": cfg.train_max_frames,
        "answerer": None if answerer is None else getattr(answerer, "name", type(answerer).__name__),
        "grid_dir": None if grid_dir is None else str(grid_dir),
        "selectors": per_selector,
        **({"notes": cfg.extra} if cfg.extra else {}),
    }
    if out_dir is not None:
        from refocus.io import write_json

        out_dir = Path(out_dir)
        out["png"] = str(plot_niah(out, out_dir / PNG_NAME))
        write_json(out_dir / JSON_NAME, out)
    return out


def _label(name: str, names: Sequence[str]) -> str:
    from refocus.analysis.plots import display_name

    return display_name(name, names)


def summary_text(result: dict) -> str:
    """``uniform recall 0.24 acc 0.41 | policy recall 0.99 acc 0.97``."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"

    return " | ".join(
        f"{res['label']} recall {fmt(res['evidence_recall'])} acc {fmt(res['accuracy'])}"
        for res in result["selectors"].values()
    )


# ---------------------------------------------------------------------------- the figure


def plot_niah(result: dict, path: str | Path) -> Path:
    """Heatmaps: rows = accuracy (when an answerer ran) and evidence recall, columns = selectors."""
    from refocus.analysis.plots import figure, heatmap, save

    lengths, positions = result["lengths"], result["positions"]
    selectors = list(result["selectors"].values())
    metrics = [("evidence_recall", "evidence recall")]
    if any(s["accuracy"] is not None for s in selectors):
        metrics.insert(0, ("accuracy", "accuracy"))
    nrows, ncols = len(metrics), len(selectors)
    width = 1.2 + ncols * max(3.2, 0.62 * len(lengths) + 0.9)
    height = 0.6 + nrows * max(2.6, 0.42 * len(positions) + 0.9)
    xlabels = [str(n) for n in lengths]
    ylabels = [f"{p:.2f}" + {0.0: " start", 1.0: " end"}.get(p, "") for p in positions]
    boundary = _training_boundary(lengths, result.get("train_max_frames"))
    with figure(nrows, ncols, figsize=(width, height), squeeze=False, constrained_layout=True) as (fig, axes):
        image = None
        for r, (metric, metric_label) in enumerate(metrics):
            for c, sel in enumerate(selectors):
                ax = axes[r][c]
                matrix = np.array(
                    [[np.nan if v is None else v for v in row] for row in sel[f"{metric}_matrix"]],
                    dtype=np.float64,
                )
                image = heatmap(ax, matrix, xlabels, ylabels)
                mean = sel[metric]
                mean_text = "n/a" if mean is None else f"{mean:.2f}"
                ax.set_title(f"{sel['label']}: {metric_label} (mean {mean_text})")
                ax.set_xlabel("total frames")
                if c == 0:
                    ax.set_ylabel("needle position (relative)")
                if boundary is not None:
                    ax.axvline(boundary, color="black", linestyle="--", linewidth=1.4)
        fig.colorbar(image, ax=axes, shrink=0.85, label="share of questions (0–1)")
        fig.suptitle(
            f"Visual needle in a haystack: {result['budget']} frames selected per video "
            f"({result['per_cell']} video{'s' if result['per_cell'] != 1 else ''} per cell)"
            + ("\nright of the dashed line: videos longer than any seen in training" if boundary is not None else ""),
            fontsize=11,
        )
        return save(fig, path)


def _training_boundary(lengths: Sequence[int], train_max: int | None) -> float | None:
    """x of the line between lengths seen in training and longer ones (None: no line)."""
    if not train_max:
        return None
    longer = [i for i, n in enumerate(lengths) if n > train_max]
    if not longer:
        return None
    return longer[0] - 0.5
