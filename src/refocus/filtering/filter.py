"""Reward-variance filtering of training questions (paper §3.1, Appendix A).

For each question: decode (``FilterConfig.decode``, the paper's rate and frame cap), build the 16 probe subsets (8
overlapping windows and their complements, k frames uniformly from each), score them with the
reference model, and keep the question if the population variance of the 16 margins exceeds
tau. Questions whose answer does not depend on which frames are shown have flat margins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refocus.data.questions import QAItem, write_questions
from refocus.errors import RefocusError
from refocus.filtering.windows import filter_subsets, reward_variance
from refocus.video.config import DecodeConfig


@dataclass
class FilterConfig:
    tau: float = 0.21
    """Keep items with Var(m) > tau, the variance of the 16 probe margins (Appendix A: 0.21)."""
    frames_per_subset: int = 32
    """k frames uniformly sampled from each window / complement (Appendix A: 32)."""
    window_rule: str = "quarter"
    """'quarter' (w = ceil(T/4), consistent with W8) or 'paper_printed' (w = ceil(T/8))."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How videos are decoded (rate and frame cap; the size is the model's)."""

    def __post_init__(self) -> None:
        self.decode = DecodeConfig.coerce(self.decode)
        if self.frames_per_subset < 1:
            raise RefocusError(f"frames_per_subset must be >= 1, got {self.frames_per_subset}")
        if self.window_rule not in ("quarter", "paper_printed"):
            raise RefocusError(f"window_rule must be 'quarter' or 'paper_printed', got {self.window_rule!r}")
        if self.tau < 0:
            raise RefocusError(f"tau is a variance threshold and must be >= 0, got {self.tau}")


@dataclass
class FilterResult:
    kept: list[QAItem] = field(default_factory=list)
    scored: list[tuple[QAItem, dict]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def variances(self) -> np.ndarray:
        return np.array([r["variance"] for _, r in self.scored])


def score_item(reference, item: QAItem, frames: np.ndarray, cfg: FilterConfig) -> dict:
    """The 16 probe subsets of one item, their margins and the margin variance."""
    from refocus.reference.reward import margin_rewards

    subsets = filter_subsets(len(frames), cfg.frames_per_subset, window_rule=cfg.window_rule)
    logits = reference.option_logits(item, frames, subsets)  # (16, O)
    margins = margin_rewards(logits, item.answer_index)  # (16,)
    return {
        "subsets": subsets,
        "margins": [round(float(m), 6) for m in margins],
        "variance": round(reward_variance(margins), 6),
    }


def run_filter(items: list[QAItem], reference, cfg: FilterConfig, progress: bool = True) -> FilterResult:
    """Score every item (under ``accelerate launch``: this process's shard, then every
    process's results merged back into input order, on every process)."""
    from tqdm.auto import tqdm

    from refocus.distributed import gather_in_order, is_main_process, shard
    from refocus.video import load_video

    records: list[tuple[int, tuple[QAItem, dict | None, str | None]]] = []
    for index, item in tqdm(shard(items), desc="filter", disable=not (progress and is_main_process())):
        try:
            video = load_video(item.video, fps=cfg.decode.fps, max_frames=cfg.decode.max_frames, size=reference.image_size)
        except RefocusError as exc:
            records.append((index, (item, None, str(exc))))
            continue
        records.append((index, (item, score_item(reference, item, video.frames, cfg), None)))
    result = FilterResult()
    for item, scored, error in gather_in_order(records):
        if scored is None:
            result.skipped.append({"id": item.id, "reason": error})
            continue
        result.scored.append((item, scored))
        if scored["variance"] > cfg.tau:
            result.kept.append(item)
    return result


def write_filter_outputs(result: FilterResult, out: Path, cfg: FilterConfig, reference=None) -> dict:
    """OUT.jsonl (kept items + subsets/margins/variance), OUT.all.jsonl, a histogram PNG, a
    summary (with where the reference model ran, when ``reference`` is given)."""
    kept_ids = {it.id for it in result.kept}
    kept = [(it, r) for it, r in result.scored if it.id in kept_ids]
    write_questions(out, [it for it, _ in kept], extra=[r for _, r in kept])
    all_path = out.with_name(out.stem + ".all.jsonl")
    write_questions(all_path, [it for it, _ in result.scored],
                    extra=[r | {"kept": it.id in kept_ids} for it, r in result.scored])
    var = result.variances
    quantiles = {f"q{int(q * 100)}": float(np.quantile(var, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if var.size else {}
    summary = {
        "kept": len(result.kept),
        "total": len(result.scored) + len(result.skipped),
        "scored": len(result.scored),
        "tau": cfg.tau,
        "variance_quantiles": quantiles,
        "skipped": result.skipped,
        "outputs": {"kept": str(out), "all": str(all_path), "histogram": str(out.with_suffix(".variance.png"))},
    }
    if reference is not None:
        from refocus.distributed import placement

        summary["reference"] = placement(reference)
    plot_variance_histogram(var, cfg.tau, out.with_suffix(".variance.png"))
    (out.with_suffix(".summary.json")).write_text(__import__("json").dumps(summary, indent=2) + "\n")
    return summary


def plot_variance_histogram(variances: np.ndarray, tau: float, path: Path) -> None:
    """The paper's Figure 2: distribution of reward variance with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    bins = np.linspace(0, max(1.0, float(variances.max()) if variances.size else 1.0), 41)
    ax.hist(variances[variances <= tau], bins=bins, color="#9aa5b1", label="filtered out")
    ax.hist(variances[variances > tau], bins=bins, color="#2f6fb0", label="kept")
    ax.axvline(tau, color="#c0392b", linestyle="--", linewidth=1.5, label=f"tau = {tau:g}")
    kept = int((variances > tau).sum())
    ax.set_title(f"Reward variance over 16 probe subsets ({kept}/{variances.size} kept)")
    ax.set_xlabel("variance of margin rewards Var(m)")
    ax.set_ylabel("questions")
    ax.legend(frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
