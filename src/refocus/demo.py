"""``refocus demo``: the whole ReFoCUS loop on the embedded default, on a CPU.

Stages (each timed and reported):
  1. synthetic V-NIAH benchmarks: a training split and a held-out split (different seeds);
  2. the small reference model: built on first use from the training split, then cached;
  3. reward-variance filtering of the training split (Appendix A);
  4. GRPO training of the policy with ``configs/tiny.yaml``;
  5. evaluation of uniform / random / policy / oracle on the held-out split;
  6. the V-NIAH heatmap (lengths 64 to 1,024 frames) for uniform and the policy;
  7. ``report.md``, ``results.json`` and the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refocus.io import write_json

SELECTORS = ("uniform", "random", "policy", "oracle")


@dataclass
class DemoConfig:
    """Sizes of the demo. ``quick`` shrinks every stage for a smoke run."""

    train_videos: int = 240
    heldout_videos: int = 100
    frames: tuple[int, int] = (64, 256)
    """Video lengths (frames at the decode rate) of both splits."""
    budget: int = 8
    """Frames every selector may pick at evaluation (T')."""
    seeds: int = 3
    """Evaluation seeds for the stochastic selectors (random)."""
    reference: dict = field(default_factory=lambda: {"align_steps": 1200, "vision_steps": 1000, "steps": 200})
    """Overrides of SmallReferenceTrainConfig. Fewer steps than its defaults (2,000 / 2,500 /
    300) keep the cold-start demo under 10 minutes on 2 cores: with 1,300 / 1,000 / 300 and 80
    GRPO steps it took 10:02 (reference 339 s), and that model answered 0.84 / 0.79 of its
    validation questions from the evidence frames (K = 4 / 8)."""
    filter_frames_per_subset: int = 8
    """k frames per probe subset; the paper uses 32 with 512-frame videos, 8 matches the budget here."""
    tau: float = 0.1
    """Variance threshold. The paper's 0.21 was set on InternVL3's margin distribution; the small
    reference model's margins are less extreme, and 0.21 keeps only ~1/4 of the demo's questions."""
    min_train_items: int = 16
    """If fewer questions pass tau, train on this many of the highest-variance ones (and say so)."""
    train_steps: int | None = 60
    """GRPO steps (None: max_steps of configs/tiny.yaml, 120). The curriculum moves from 4 to 8
    frames at step 40; with the demo's reference model the mean reward levels off within ~10
    steps of each phase (0.96 by step 13, 0.94 by step 49 of 80), so 60 suffice."""
    niah_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    niah_positions: int = 8
    niah_per_cell: int = 1
    seed: int = 0

    @classmethod
    def quick_config(cls) -> DemoConfig:
        return cls(train_videos=48, heldout_videos=24, frames=(48, 128), seeds=1,
                   reference={"align_steps": 150, "vision_steps": 40, "steps": 40},
                   train_steps=12, niah_lengths=(64, 256, 1024), niah_positions=3)


@dataclass
class DemoResult:
    out_dir: Path
    results: dict
    timings: dict[str, float] = field(default_factory=dict)


def cache_root() -> Path:
    return Path(os.environ.get("REFOCUS_CACHE_DIR", Path.home() / ".cache" / "refocus"))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _synth(kind: str, out: Path, videos: int, frames: tuple[int, int], seed: int, progress: bool) -> Path:
    """Generate a synthetic split once; a stamp file makes reruns reuse it."""
    from refocus.data.synth import make_benchmark

    stamp = out / ".complete"
    params = {"kind": kind, "videos": videos, "frames": list(frames), "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return out / "qa.jsonl"
    if out.exists():
        shutil.rmtree(out)
    qa = make_benchmark(kind, out, videos=videos, frames=frames, seed=seed, progress=progress,
                        workers=max(1, min(8, os.cpu_count() or 1)))
    stamp.write_text(json.dumps(params))
    return qa


def get_small_reference(train_qa: Path, cfg: DemoConfig, progress: bool) -> tuple[Path, bool]:
    """The cached small reference model for these training data, trained if missing.

    Returns (checkpoint dir, whether it was trained now).
    """
    from refocus import __version__
    from refocus.data.questions import load_questions
    from refocus.reference.small_training import SmallReferenceTrainConfig, train_small_reference

    train_cfg = SmallReferenceTrainConfig(seed=cfg.seed, **cfg.reference)
    key = _key(__version__, asdict(train_cfg), cfg.train_videos, cfg.frames, cfg.seed)
    ref_dir = cache_root() / "reference" / f"small-{key}"
    if (ref_dir / "reference_train.json").is_file():
        return ref_dir, False
    tmp = ref_dir.with_name(ref_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    import torch

    # Batches of 32 prompts: here two threads are ~1.5x faster than one (225 s vs 341 s for the
    # whole training on the 2-core machine), unlike the other stages' tiny per-question calls.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        train_small_reference(load_questions(train_qa), tmp, train_cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)
    if ref_dir.exists():
        shutil.rmtree(ref_dir)
    tmp.replace(ref_dir)
    return ref_dir, True


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, progress: bool = True,
             voyager: bool = False) -> DemoResult:
    """Run every stage; ``voyager`` adds the Frame-Voyager baseline trained with as many
    reference-model calls as ReFoCUS used (filter + GRPO)."""
    import torch

    from refocus.analysis.niah import NiahConfig, run_niah_analysis
    from refocus.data.questions import load_questions
    from refocus.evaluation import evaluate, write_evaluation
    from refocus.filtering.filter import FilterConfig, run_filter, write_filter_outputs
    from refocus.reference import load_reference
    from refocus.selectors import get_selector
    from refocus.selectors.policy import PolicySelector
    from refocus.training.config import load_config, packaged_config
    from refocus.training.train import train_policy
    from refocus.video.stores import FrameStore

    cfg = DemoConfig.quick_config() if quick else DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    # Tiny models: one thread avoids oversubscription and is as fast as two here.
    torch.set_num_threads(1)
    data_root = cache_root() / "demo-data"
    train_qa = _synth("niah", data_root / f"train-{_key(cfg.train_videos, cfg.frames, cfg.seed)}",
                      cfg.train_videos, cfg.frames, cfg.seed, progress)
    heldout_qa = _synth("niah", data_root / f"heldout-{_key(cfg.heldout_videos, cfg.frames, cfg.seed + 1)}",
                        cfg.heldout_videos, cfg.frames, cfg.seed + 1, progress)
    _link(out / "data" / "train", train_qa.parent)
    _link(out / "data" / "heldout", heldout_qa.parent)
    lap("synth")

    ref_dir, trained_now = get_small_reference(train_qa, cfg, progress)
    _link(out / "reference", ref_dir)
    reference = load_reference(ref_dir, batch_size=16)
    lap("reference")

    filter_cfg = FilterConfig(tau=cfg.tau, frames_per_subset=cfg.filter_frames_per_subset)
    filtered = run_filter(load_questions(train_qa), reference, filter_cfg, progress=progress)
    filter_info = write_filter_outputs(filtered, out / "filter" / "train.filtered.jsonl", filter_cfg)
    train_qa = out / "filter" / "train.filtered.jsonl"
    if filter_info["kept"] < cfg.min_train_items:
        # A weak reference (e.g. --quick) gives flat margins: train on the most variable items.
        from refocus.data.questions import write_questions

        ranked = sorted(filtered.scored, key=lambda pair: -pair[1]["variance"])[: cfg.min_train_items]
        train_qa = out / "filter" / "train.top_variance.jsonl"
        write_questions(train_qa, [it for it, _ in ranked], extra=[r for _, r in ranked])
        filter_info["fallback"] = f"only {filter_info['kept']} items passed tau; trained on the {len(ranked)} most variable"
    lap("filter")

    train_cfg = load_config(packaged_config("tiny"), seed=cfg.seed)
    if cfg.train_steps is not None:
        train_cfg = train_cfg.shortened(cfg.train_steps)
    run = train_policy(train_qa, ref_dir, out / "train",
                       config=train_cfg, progress=progress)
    if (out / "policy").exists() or (out / "policy").is_symlink():
        _remove(out / "policy")
    shutil.copytree(run.policy_dir, out / "policy")
    lap("train")

    calls = {"policy": 16 * len(filtered.scored) + run.reference_calls}  # filter probes + GRPO rewards
    voyager_run = None
    if voyager:
        from refocus.voyager.train import run_voyager

        voyager_run = run_voyager(train_qa, ref_dir, out / "voyager", reference=reference,
                                  max_reference_calls=calls["policy"], progress=progress)
        calls["voyager"] = voyager_run["reference_calls"]
        lap("voyager")

    heldout = load_questions(heldout_qa)
    store = FrameStore()
    selectors = {
        "uniform": get_selector("uniform", seed=cfg.seed),
        "random": get_selector("random", seed=cfg.seed),
        "policy": PolicySelector.from_dir(out / "policy", name="policy", seed=cfg.seed),
        "oracle": get_selector("oracle", seed=cfg.seed),
    }
    if voyager_run is not None:
        from refocus.selectors.voyager import VoyagerSelector

        selectors["voyager"] = VoyagerSelector.from_dir(voyager_run["policy_dir"], name="voyager", seed=cfg.seed)
    table = {}
    for name, selector in selectors.items():
        result = evaluate(heldout, reference, selector, [cfg.budget], cfg.seeds, store=store, progress=progress)
        write_evaluation(result, out / "eval" / name)
        r = result["budgets"][cfg.budget]
        table[name] = {
            "accuracy": r["accuracy"],
            "accuracy_std": r["accuracy_std"],
            "evidence_recall": r["evidence_recall"],
            "seconds_per_item": r["seconds_per_item"],
            "training_reference_calls": calls.get(name),
        }
    lap("eval")

    niah = run_niah_analysis(
        reference, [selectors["uniform"], selectors["policy"]], out / "niah",
        NiahConfig(lengths=cfg.niah_lengths, positions=cfg.niah_positions, per_cell=cfg.niah_per_cell,
                   budget=cfg.budget, seed=cfg.seed, train_max_frames=cfg.frames[1]),
        grid_dir=cache_root() / "demo-data" / f"niah-grid-{_key(cfg.niah_lengths, cfg.niah_positions, cfg.niah_per_cell, cfg.seed)}",
        progress=progress,
    )
    lap("niah")

    curves = plot_training_curves(out / "train" / "metrics.jsonl", out / "training_curves.png")
    results = {
        "budget": cfg.budget,
        "selectors": table,
        "heldout_items": len(heldout),
        "reference": {"path": str(ref_dir), "trained_now": trained_now,
                      **_reference_summary(ref_dir)},
        "filter": {k: filter_info[k] for k in ("kept", "total", "tau", "variance_quantiles", "fallback")
                   if k in filter_info},
        "train": {"steps": run.steps, "reference_calls": run.reference_calls,
                  "last_metrics": run.last_metrics},
        "niah": {name: {"accuracy": s["accuracy"], "evidence_recall": s["evidence_recall"]}
                 for name, s in niah["selectors"].items()},
        "timings_s": timings,
        "config": asdict(cfg) | {"quick": quick},
    }
    write_json(out / "results.json", results)
    write_report(out, results, figures={
        "niah": "niah/niah.png",
        "training": curves.name if curves else None,
        "filter": "filter/train.filtered.variance.png",
    })
    lap("report")
    results["timings_s"] = timings
    write_json(out / "results.json", results)
    return DemoResult(out, results, timings)


def _reference_summary(ref_dir: Path) -> dict:
    info = json.loads((ref_dir / "reference_train.json").read_text())
    return {k: v for k, v in info.items() if k.startswith("val_acc_")}


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _link(link: Path, target: Path) -> None:
    """A relative-free symlink to a cached artefact (copy where symlinks are unavailable)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    _remove(link)
    try:
        link.symlink_to(target.resolve(), target_is_directory=True)
    except OSError:
        shutil.copytree(target, link)


def plot_training_curves(metrics_path: Path, png: Path) -> Path | None:
    """reward/mean, reward/accuracy and select/entropy over GRPO steps."""
    if not metrics_path.is_file():
        return None
    import numpy as np

    from refocus.analysis.plots import figure, save

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    def smooth(y: np.ndarray, w: int = 5) -> np.ndarray:
        out = np.copy(y)
        for i in range(len(y)):
            out[i] = np.nanmean(y[max(0, i - w + 1): i + 1])
        return out

    with figure(1, 3, figsize=(11, 3.2)) as (fig, axes):
        for ax, key, label in zip(axes, ("reward/mean", "reward/accuracy", "select/entropy"),
                                  ("margin reward (mean over subsets)", "reference accuracy on sampled subsets",
                                   "policy entropy per step (nats)"), strict=True):
            y = series(key)
            ax.plot(steps, y, color="#d95f02", alpha=0.3, linewidth=1)
            ax.plot(steps, smooth(y), color="#d95f02", linewidth=2)
            ax.set_xlabel("GRPO step")
            ax.set_title(label)
        k = series("select/k")
        for ax in axes:
            for s in steps[1:][np.diff(k) != 0]:
                ax.axvline(s, color="#999999", linestyle=":", linewidth=1)
        fig.suptitle("GRPO training of the frame-selection policy (dotted: curriculum step in T')")
        fig.tight_layout()
        save(fig, png)
    return png


def write_report(out: Path, results: dict, figures: dict[str, str | None]) -> Path:
    """``report.md``: readable on its own (a table, the figures, what was run)."""
    budget = results["budget"]
    lines = [
        "# refocus demo report",
        "",
        f"The whole ReFoCUS loop on the synthetic V-NIAH benchmark: {results['heldout_items']} held-out "
        f"questions, each answered by the small reference model from **{budget} frames** chosen by a selector.",
        "",
        "| selector | accuracy | evidence recall | selection s / item |",
        "|---|---|---|---|",
    ]
    for name, r in results["selectors"].items():
        acc = "—" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        if r.get("accuracy_std"):
            acc += f" ± {r['accuracy_std']:.3f}"
        rec = "—" if r["evidence_recall"] is None else f"{r['evidence_recall']:.3f}"
        lines.append(f"| {name} | {acc} | {rec} | {r['seconds_per_item']:.4f} |")
    ref = results["reference"]
    filt = results["filter"]
    train = results["train"]
    trained = {n: r["training_reference_calls"] for n, r in results["selectors"].items()
               if r.get("training_reference_calls")}
    lines += [
        "",
        "*Evidence recall*: share of questions where at least one selected frame shows the needle. "
        "*oracle* sees the evidence spans (an upper bound); *uniform* takes bin midpoints; *random* is seeded.",
    ]
    if trained:
        lines += ["", "Reference-model calls spent on training (subsets scored): "
                  + ", ".join(f"{n} {c:,}" for n, c in trained.items())
                  + (" (policy = filter probes + GRPO rewards; voyager = ranked combinations, capped at the policy's count)."
                     if "voyager" in trained else ".")]
    lines += [
        "",
        "## V-NIAH: where the needle is found",
        "",
        f"![V-NIAH heatmap]({figures['niah']})",
        "",
        "Rows: relative needle position; columns: video length in frames (4 fps). The dashed line marks "
        "lengths longer than any training video.",
        "",
        "| selector | accuracy | evidence recall |",
        "|---|---|---|",
    ]
    for name, r in results["niah"].items():
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['evidence_recall']:.3f} |")
    lines += [
        "",
        "## Training",
        "",
        "- Reference model (tiny LLaVA, trained on the training split): held-out accuracy "
        + ", ".join(f"{k.removeprefix('val_acc_')} = {v:.3f}" for k, v in ref.items() if k.startswith("val_acc_"))
        + (" (trained in this run)" if ref["trained_now"] else " (cached)") + ".",
        f"- Reward-variance filtering kept {filt['kept']} of {filt['total']} training questions "
        f"(tau = {filt['tau']})" + (f"; {filt['fallback']}." if filt.get("fallback") else "."),
        f"- GRPO: {train['steps']} steps, {train['reference_calls']} reference-model calls (subsets scored).",
        "",
    ]
    if figures.get("training"):
        lines += [f"![training curves]({figures['training']})", ""]
    if figures.get("filter"):
        lines += [f"![reward variance]({figures['filter']})", ""]
    lines += [
        "## Time per stage (seconds)",
        "",
        "| " + " | ".join(results["timings_s"]) + " |",
        "|" + "---|" * len(results["timings_s"]),
        "| " + " | ".join(str(v) for v in results["timings_s"].values()) + " |",
        "",
        "Reproduce: `refocus demo" + (" --quick" if results["config"]["quick"] else "") + "`; "
        "every number above is in `results.json`.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
