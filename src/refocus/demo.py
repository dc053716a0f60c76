"""``refocus demo``: the whole ReFoCUS loop on the embedded default, on a CPU.

``--task`` picks the synthetic benchmark the policy is trained and evaluated on:

- ``query`` (default): 10 objects per video, each its own colour and shape; the question
  names one (``refocus synth query``); budget 4. A question-blind policy (``question_blind: true``, the same training) runs
  beside the normal one, so the report shows what reading the question is worth.
- ``niah``: one needle per video; budget 8; adds the V-NIAH heatmap (64 to 1,024 frames).
- ``multi``: order / count / compare over several events; budget 8; adds a per-category
  table and the share of questions whose every evidence span got a selected frame.

Three splits, each its own seed: the small reference model is trained on a *reference* split
of all three tasks (seed + 2; it never sees the videos the policy trains on, like the paper's
InternVL3), the policy on the task's *training* split (seed), and everything is evaluated on
a *held-out* split (seed + 1). Stages (each timed and reported):
  1. synthetic splits (cached);
  2. the small reference model: trained on first use, then cached (one for ``query`` and
     ``niah``; ``multi`` trains its own with the switches that make `multi` learnable,
     :data:`TASK_REFERENCE`);
  3. reward-variance filtering of the training split (Appendix A);
  4. GRPO training of the policy (and, for ``query``, the question-blind policy, in a second
     process beside it when two cores are free) with ``configs/tiny.yaml``
     (``configs/multi.yaml`` for ``multi``);
  5. evaluation of uniform / random / question-blind policy / policy / oracle (Frame-Voyager
     with ``voyager=True``) on the held-out split;
  6. ``niah`` only: the V-NIAH heatmap for uniform and the policy;
  7. ``report.md``, ``results.json`` and the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refocus.errors import RefocusError
from refocus.io import write_json

TASKS = ("query", "niah", "multi")
TASK_BUDGET = {"query": 4, "niah": 8, "multi": 8}
"""Frames every selector may pick at evaluation (T') per task: 4 for ``query`` (the budget at
which a question-blind selector, one frame of each of 4 of the 10 objects, holds the named one
at most 0.40 of the time: ``benchmarks/query_blind_ceiling.py``), 8 otherwise."""
TASK_POLICY_CONFIG = {"query": "tiny", "niah": "tiny", "multi": "multi"}
"""Packaged GRPO config per task. ``multi`` needs its own: with ``tiny.yaml`` part of the
evidence earns a lower margin than none and the policy collapses to haystack frames
(benchmarks/RESULTS.md, "a policy that learns `multi`")."""
MULTI_REFERENCE = {
    "fresh_plan_fraction": 0.9, "multi_option_targets": True, "frame_ordinal_weight": 1.0,
    "oracle_subset_fraction": 0.3, "appearance_codes": True, "multi_share": 0.8, "align_steps": 5000,
}
"""SmallReferenceTrainConfig overrides of the ``multi`` demo's reference: the README's `multi`
recipe (the switches that make `multi` learnable) with 5,000 stage-1 steps, four in five of them
on `multi`, where the recipe takes 12,000 at 0.75 (about 35 minutes). With the defaults the
reference answers `multi` at chance, even from the oracle's frames (0.31), and the demo would
show nothing (benchmarks/RESULTS.md, "the demo's `multi` reference")."""
TASK_REFERENCE = {"query": {}, "niah": {}, "multi": MULTI_REFERENCE}
"""Reference overrides per task (``DemoConfig.reference`` is applied over them)."""
REFERENCE_SEED_OFFSET = 2
HELDOUT_SEED_OFFSET = 1


@dataclass
class DemoConfig:
    """Sizes of the demo. ``quick`` shrinks every stage for a smoke run."""

    task: str = "query"
    """Benchmark the policy is trained and evaluated on: one of ``TASKS``."""
    reference_videos: int = 160
    """Videos per task in the reference split (the small reference model's training data)."""
    train_videos: int = 240
    heldout_videos: int = 100
    frames: tuple[int, int] = (64, 256)
    """Video lengths (frames at the decode rate) of every split."""
    budget: int | None = None
    """Frames every selector may pick at evaluation (T'); None: ``TASK_BUDGET[task]``."""
    seeds: int = 3
    """Evaluation seeds for the stochastic selectors (random)."""
    reference: dict = field(default_factory=dict)
    """Overrides of SmallReferenceTrainConfig, over the task's (:data:`TASK_REFERENCE`; none for
    ``query`` and ``niah``: its defaults, 2,000 / 3,500 / 300 steps, 6-8 minutes on 2 cores).
    With 1,500 vision steps held-out shape questions were answered 0.73-0.83 from the evidence
    against 0.93-1.00 with 2,500 (benchmarks/RESULTS.md)."""
    filter_frames_per_subset: int = 8
    """k frames per probe subset; the paper uses 32 with 512-frame videos, 8 matches the budget here."""
    tau: float = 0.1
    """Variance threshold. The paper's 0.21 was set on InternVL3's margin distribution; the small
    reference model's margins are less extreme, and 0.21 keeps only ~1/4 of the demo's questions."""
    min_train_items: int = 16
    """If fewer questions pass tau, train on this many of the highest-variance ones (and say so)."""
    train_steps: int | None = 60
    """GRPO steps (None: the task config's max_steps, 120 for tiny.yaml). tiny.yaml's curriculum
    moves from 4 to 8 frames at step 40, and the mean reward levels off within ~10 steps of each
    phase, so 60 suffice (benchmarks/RESULTS.md); on ``multi``, configs/multi.yaml's policy at
    step 60 already hits every span 0.77 of the time (0.83 at 200)."""
    parallel_training: bool = True
    """Train the question-blind policy in a second process beside the policy when two cores are
    free (about half the training stage's time; each run the same as alone)."""
    niah_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    niah_positions: int = 8
    niah_per_cell: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise RefocusError(f"unknown demo task {self.task!r}; choose from {', '.join(TASKS)}")

    @property
    def eval_budget(self) -> int:
        return self.budget or TASK_BUDGET[self.task]

    @property
    def reference_overrides(self) -> dict:
        """SmallReferenceTrainConfig fields of this demo's reference: the task's, then ``reference``."""
        return {**TASK_REFERENCE[self.task], **self.reference}

    @classmethod
    def quick_config(cls, task: str = "query") -> DemoConfig:
        return cls(task=task, reference_videos=32, train_videos=48, heldout_videos=24, frames=(48, 128), seeds=1,
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


def _split_key(*parts) -> str:
    """Cache key of a generated split: its arguments and the generators' version (a new version
    gets new directories, so the reference model keyed on their paths is retrained too)."""
    from refocus.data.synth import SYNTH_VERSION

    return _key(*parts, SYNTH_VERSION)


def _synth(kind: str, out: Path, videos: int, frames: tuple[int, int], seed: int, progress: bool) -> Path:
    """Generate a synthetic split once; a stamp file makes reruns reuse it."""
    from refocus.data.synth import SYNTH_VERSION, make_benchmark

    stamp = out / ".complete"
    params = {"kind": kind, "videos": videos, "frames": list(frames), "seed": seed, "version": SYNTH_VERSION}
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return out / "qa.jsonl"
    if out.exists():
        shutil.rmtree(out)
    qa = make_benchmark(kind, out, videos=videos, frames=frames, seed=seed, progress=progress,
                        workers=max(1, min(8, os.cpu_count() or 1)))
    stamp.write_text(json.dumps(params))
    return qa


def reference_splits(cfg: DemoConfig, progress: bool) -> list[Path]:
    """The question files of the reference split, one per task (seed + 2, generated once)."""
    root = cache_root() / "demo-data"
    seed = cfg.seed + REFERENCE_SEED_OFFSET
    return [_synth(kind, root / f"reference-{kind}-{_split_key(cfg.reference_videos, cfg.frames, seed)}",
                   cfg.reference_videos, cfg.frames, seed, progress) for kind in TASKS]


def synth_splits(cfg: DemoConfig, progress: bool) -> dict[str, Path]:
    """The question files of the three splits: ``reference-{task}`` for every task, ``train`` and
    ``heldout`` for ``cfg.task`` (each generated once and cached)."""
    root = cache_root() / "demo-data"
    splits = {f"reference-{kind}": qa for kind, qa in zip(TASKS, reference_splits(cfg, progress), strict=True)}
    held_seed = cfg.seed + HELDOUT_SEED_OFFSET
    splits["train"] = _synth(cfg.task, root / f"train-{cfg.task}-{_split_key(cfg.train_videos, cfg.frames, cfg.seed)}",
                             cfg.train_videos, cfg.frames, cfg.seed, progress)
    splits["heldout"] = _synth(cfg.task, root / f"heldout-{cfg.task}-{_split_key(cfg.heldout_videos, cfg.frames, held_seed)}",
                               cfg.heldout_videos, cfg.frames, held_seed, progress)
    return splits


def get_small_reference(train_qas: list[Path], cfg: DemoConfig, progress: bool) -> tuple[Path, bool]:
    """The cached small reference model for these training data, trained if missing.

    Returns (checkpoint dir, whether it was trained now).
    """
    from refocus import __version__
    from refocus.data.questions import load_questions
    from refocus.reference.small_training import SmallReferenceTrainConfig, train_small_reference

    train_cfg = SmallReferenceTrainConfig(seed=cfg.seed, **cfg.reference_overrides)
    key = _key(__version__, asdict(train_cfg), [str(p) for p in train_qas])
    ref_dir = cache_root() / "reference" / f"small-{key}"
    if (ref_dir / "reference_train.json").is_file():
        return ref_dir, False
    tmp = ref_dir.with_name(ref_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    import torch

    # Batches of 32 prompts: here two threads are ~1.5x faster than one (225 s vs 341 s for the
    # whole training on the 2-core machine), unlike the other stages' tiny per-question calls.
    # An explicit OMP_NUM_THREADS wins (a machine shared with other jobs: oversubscribed
    # threads spin and can make each step several times slower).
    threads = torch.get_num_threads()
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(wanted) if wanted.isdigit() and int(wanted) > 0
                          else max(1, min(4, os.cpu_count() or 1)))
    try:
        items = [it for qa in train_qas for it in load_questions(qa)]
        train_small_reference(items, tmp, train_cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)
    if ref_dir.exists():
        shutil.rmtree(ref_dir)
    tmp.replace(ref_dir)
    return ref_dir, True


def filter_training_split(train_qa: Path, reference, cfg: DemoConfig, out: Path, progress: bool):
    """Appendix-A filtering of the training split; returns (question file to train on, info, scored)."""
    from refocus.filtering.filter import FilterConfig
    from refocus.pipeline import filter_split

    filter_cfg = FilterConfig(tau=cfg.tau, frames_per_subset=cfg.filter_frames_per_subset)
    return filter_split(train_qa, reference, filter_cfg, out, min_train_items=cfg.min_train_items, progress=progress)


def train_policies(train_qa: Path, ref_dir: Path, cfg: DemoConfig, out: Path, progress: bool) -> dict:
    """GRPO with the task's config (:data:`TASK_POLICY_CONFIG`): ``policy/``, and for ``query``
    also ``policy-blind/`` (the same run with the question withheld). Returns {name: TrainResult}.

    With two or more cores the question-blind policy trains in a second process beside the
    policy (one thread each, the demo's setting, so each run is the one it would be alone)."""
    from refocus.training.config import load_config, packaged_config

    config_path = packaged_config(TASK_POLICY_CONFIG[cfg.task])
    base = load_config(config_path, seed=cfg.seed)
    variants = {"policy": base.policy}
    if cfg.task == "query":
        variants["policy-blind"] = {**base.policy, "question_blind": True}
    jobs = {}
    for name, policy_overrides in variants.items():
        train_cfg = load_config(config_path, seed=cfg.seed, policy=policy_overrides)
        if cfg.train_steps is not None:
            train_cfg = train_cfg.shortened(cfg.train_steps)
        jobs[name] = (train_qa, ref_dir, out / ("train" if name == "policy" else f"train-{name}"), train_cfg)
    runs = train_side_by_side(jobs, progress=progress, parallel=cfg.parallel_training and usable_cores() > 1)
    for name, run in runs.items():
        _remove(out / name)
        shutil.copytree(run.policy_dir, out / name)
    return runs


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _train_one(train_qa: Path, ref_dir: Path, out: Path, train_cfg, progress: bool):
    """One GRPO run on one torch thread (the demo's setting): the worker of :func:`train_side_by_side`."""
    import torch

    from refocus.training.train import train_policy

    torch.set_num_threads(1)
    return train_policy(train_qa, ref_dir, out, config=train_cfg, progress=progress)


def train_side_by_side(jobs: dict, progress: bool, parallel: bool) -> dict:
    """Run ``{name: (train_qa, ref_dir, out_dir, GRPOConfig)}``: the first job here (with its
    progress bar), with ``parallel`` the others at the same time in spawned processes (no bars:
    two would garble each other), else one after another. Returns {name: TrainResult} in the
    jobs' order; a failed job raises its error after the others finish."""
    names = list(jobs)
    if not parallel or len(names) == 1:
        return {name: _train_one(*jobs[name], progress=progress) for name in names}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if progress:
        print(f"training {', '.join(names[1:])} in a second process beside {names[0]} (progress shown for {names[0]})")
    # spawn, not fork: this process holds torch's thread pools, which do not survive a fork.
    with ProcessPoolExecutor(len(names) - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_one, *jobs[name], progress=False) for name in names[1:]}
        first = _train_one(*jobs[names[0]], progress=progress)
        return {names[0]: first} | {name: futures[name].result() for name in names[1:]}


def evaluate_selectors(heldout, reference, cfg: DemoConfig, out: Path, calls: dict, voyager_dir, progress: bool):
    """Every selector on the held-out split at the task's budget; returns (table, selectors)."""
    from refocus.pipeline import evaluate_selectors as evaluate_budget
    from refocus.selectors import get_selector
    from refocus.selectors.policy import PolicySelector

    selectors = {"uniform": get_selector("uniform", seed=cfg.seed), "random": get_selector("random", seed=cfg.seed)}
    if (out / "policy-blind").is_dir() and cfg.task == "query":
        selectors["policy-blind"] = PolicySelector.from_dir(out / "policy-blind", name="policy-blind", seed=cfg.seed)
    selectors["policy"] = PolicySelector.from_dir(out / "policy", name="policy", seed=cfg.seed)
    selectors["oracle"] = get_selector("oracle", seed=cfg.seed)
    if voyager_dir is not None:
        from refocus.selectors.voyager import VoyagerSelector

        selectors["voyager"] = VoyagerSelector.from_dir(voyager_dir, name="voyager", seed=cfg.seed)
    results = evaluate_budget(heldout, reference, selectors, cfg.eval_budget, cfg.seeds, out=out / "eval",
                              progress=progress)
    table = {}
    for name, r in results.items():
        table[name] = {key: r[key] for key in ("accuracy", "accuracy_std", "evidence_recall", "evidence_recall_all",
                                               "per_category", "seconds_per_item")}
        table[name]["training_reference_calls"] = calls.get(name)
    return table, selectors


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, progress: bool = True,
             voyager: bool = False, task: str = "query") -> DemoResult:
    """Run every stage for ``task``; ``voyager`` adds the Frame-Voyager baseline trained with as
    many reference-model calls as ReFoCUS used (filter + GRPO)."""
    import torch

    from refocus.data.questions import load_questions
    from refocus.pipeline import Laps
    from refocus.reference import load_reference

    cfg = DemoConfig.quick_config(task) if quick else DemoConfig(task=task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lap = Laps()
    # Tiny models: one thread avoids oversubscription and is as fast as two here.
    torch.set_num_threads(1)
    splits = synth_splits(cfg, progress)
    for name, qa in splits.items():
        _link(out / "data" / name, qa.parent)
    lap("synth")

    ref_dir, trained_now = get_small_reference([splits[f"reference-{kind}"] for kind in TASKS], cfg, progress)
    _link(out / "reference", ref_dir)
    reference = load_reference(ref_dir, batch_size=16)
    lap("reference")

    train_qa, filter_info, scored = filter_training_split(splits["train"], reference, cfg, out, progress)
    lap("filter")

    runs = train_policies(train_qa, ref_dir, cfg, out, progress)
    lap("train")

    # filter probes (16 per scored question) + GRPO rewards; both policies pay the same filter
    calls = {name: 16 * scored + run.reference_calls for name, run in runs.items()}
    voyager_dir = None
    if voyager:
        from refocus.voyager.train import run_voyager

        voyager_run = run_voyager(train_qa, ref_dir, out / "voyager", reference=reference,
                                  max_reference_calls=calls["policy"], progress=progress)
        calls["voyager"] = voyager_run["reference_calls"]
        voyager_dir = voyager_run["policy_dir"]
        lap("voyager")

    heldout = load_questions(splits["heldout"])
    table, selectors = evaluate_selectors(heldout, reference, cfg, out, calls, voyager_dir, progress)
    lap("eval")

    niah = _niah_heatmap(reference, selectors, cfg, out, progress) if cfg.task == "niah" else None
    if niah is not None:
        lap("niah")

    results = {
        "task": cfg.task,
        "budget": cfg.eval_budget,
        "selectors": table,
        "heldout_items": len(heldout),
        "splits": {name: str(qa) for name, qa in splits.items()},
        "reference": {"path": str(ref_dir), "trained_now": trained_now, **_reference_summary(ref_dir)},
        "filter": {k: filter_info[k] for k in ("kept", "total", "tau", "variance_quantiles", "fallback")
                   if k in filter_info},
        "train": {name: {"steps": r.steps, "reference_calls": r.reference_calls, "last_metrics": r.last_metrics}
                  for name, r in runs.items()},
        "niah": niah,
        "query_blind_ceiling": _query_blind_ceiling(heldout, cfg.eval_budget) if cfg.task == "query" else None,
        "timings_s": lap.seconds,
        "config": asdict(cfg) | {"quick": quick},
    }
    curves = plot_training_curves(out / "train" / "metrics.jsonl", out / "training_curves.png")
    write_json(out / "results.json", results)
    write_report(out, results, figures={
        "niah": "niah/niah.png" if niah is not None else None,
        "training": curves.name if curves else None,
        "filter": "filter/train.filtered.variance.png",
    })
    lap("report")
    results["timings_s"] = lap.seconds
    write_json(out / "results.json", results)
    return DemoResult(out, results, lap.seconds)


def _niah_heatmap(reference, selectors, cfg: DemoConfig, out: Path, progress: bool) -> dict:
    from refocus.analysis.niah import NiahConfig, run_niah_analysis

    niah = run_niah_analysis(
        reference, [selectors["uniform"], selectors["policy"]], out / "niah",
        NiahConfig(lengths=cfg.niah_lengths, positions=cfg.niah_positions, per_cell=cfg.niah_per_cell,
                   budget=cfg.eval_budget, seed=cfg.seed, train_max_frames=cfg.frames[1]),
        grid_dir=cache_root() / "demo-data" / f"niah-grid-{_split_key(cfg.niah_lengths, cfg.niah_positions, cfg.niah_per_cell, cfg.seed)}",
        progress=progress,
    )
    return {name: {"accuracy": s["accuracy"], "evidence_recall": s["evidence_recall"]}
            for name, s in niah["selectors"].items()}


def _query_blind_ceiling(items, budget: int) -> float | None:
    """Mean over held-out ``query`` items of the named-object recall a question-blind selector
    can reach by showing one frame of each of ``budget`` objects that the question could name
    (None without event metadata)."""
    from refocus.data.synth.query import blind_ceiling

    values = [blind_ceiling([(e["color"], e["shape"]) for e in it.meta["events"]], budget)
              for it in items if it.meta.get("events")]
    return round(sum(values) / len(values), 4) if values else None


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
    """reward/mean, reward/accuracy, reward/evidence_recall (when logged) and select/entropy over
    GRPO steps."""
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

    panels = [("reward/mean", "margin reward (mean over subsets)"),
              ("reward/accuracy", "reference accuracy on sampled subsets"),
              ("select/entropy", "policy entropy per step (nats)")]
    if np.isfinite(series("reward/evidence_recall")).any():  # data with evidence spans
        panels.insert(2, ("reward/evidence_recall", "sampled subsets holding evidence"))
    with figure(1, len(panels), figsize=(3.7 * len(panels), 3.2)) as (fig, axes):
        for ax, (key, label) in zip(axes, panels, strict=True):
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


TASK_TEXT = {
    "query": "the query benchmark (10 objects per video, each its own colour and shape; the question names one by its colour or shape)",
    "niah": "the synthetic V-NIAH benchmark (one needle per video)",
    "multi": "the multi-evidence benchmark (order / count / compare over several events)",
}
SELECTOR_TEXT = {
    "uniform": "bin midpoints", "random": "seeded random frames",
    "policy-blind": "the same policy and GRPO training with the question withheld (`question_blind: true`)",
    "policy": "the ReFoCUS policy", "oracle": "evidence frames first (an upper bound)",
    "voyager": "Frame-Voyager trained with as many reference calls as the policy",
}


def _fmt(x, std=None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" + (f" ± {std:.3f}" if std else "")


def _headline(results: dict) -> list[str]:
    multi = results["task"] == "multi"
    head = "| selector | accuracy | evidence recall |" + (" all evidence spans hit |" if multi else "")
    lines = [head + " selection s / item |", "|---|---|---|" + ("---|" if multi else "") + "---|"]
    for name, r in results["selectors"].items():
        row = f"| {name} | {_fmt(r['accuracy'], r.get('accuracy_std'))} | {_fmt(r['evidence_recall'])} |"
        if multi:
            row += f" {_fmt(r['evidence_recall_all'])} |"
        lines.append(row + f" {r['seconds_per_item']:.4f} |")
    lines += ["", "; ".join(f"*{n}*: {SELECTOR_TEXT.get(n, n)}" for n in results["selectors"]) + ". "
              "*Evidence recall*: share of questions where at least one selected frame lies in an evidence span"
              + (" (all spans hit: every span holds one)." if multi else ".")]
    return lines


def _per_category(results: dict) -> list[str]:
    sel = results["selectors"]
    cats = sorted({c for r in sel.values() for c in r["per_category"]})
    lines = ["## Per category (accuracy / evidence recall / all spans hit)", "",
             "| selector | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for name, r in sel.items():
        cells = [r["per_category"].get(c) for c in cats]
        lines.append(f"| {name} | " + " | ".join(
            "—" if c is None else f"{_fmt(c['accuracy'])} / {_fmt(c['evidence_recall'])} / {_fmt(c['evidence_recall_all'])}"
            for c in cells) + " |")
    return lines


def write_report(out: Path, results: dict, figures: dict[str, str | None]) -> Path:
    """``report.md``: readable on its own (the tables, the figures, what was run)."""
    lines = [
        f"# refocus demo report: task `{results['task']}`", "",
        f"The whole ReFoCUS loop on {TASK_TEXT[results['task']]}: {results['heldout_items']} held-out "
        f"questions, each answered by the small reference model from **{results['budget']} frames** chosen by a selector.",
        "", *_headline(results),
    ]
    trained = {n: r["training_reference_calls"] for n, r in results["selectors"].items()
               if r.get("training_reference_calls")}
    if trained:
        lines += ["", "Reference-model calls spent on training (subsets scored): "
                  + ", ".join(f"{n} {c:,}" for n, c in trained.items())
                  + " (a policy: filter probes + GRPO rewards; voyager: ranked combinations, capped at the policy's count)."]
    if results.get("query_blind_ceiling") is not None:
        lines += ["", f"A selector that never reads the question holds the named object at most "
                  f"{results['query_blind_ceiling']:.2f} of the time at this budget (one frame of each of K of the "
                  "video's objects, any of which the question could name): the question-blind policy's recall "
                  "should stay near it, the policy's should not."]
    if results["task"] == "multi":
        lines += ["", *_per_category(results)]
    if figures.get("niah"):
        lines += ["", "## V-NIAH: where the needle is found", "", f"![V-NIAH heatmap]({figures['niah']})", "",
                  "Rows: relative needle position; columns: video length in frames (4 fps). The dashed line marks "
                  "lengths longer than any training video.", "", "| selector | accuracy | evidence recall |", "|---|---|---|"]
        lines += [f"| {n} | {r['accuracy']:.3f} | {r['evidence_recall']:.3f} |" for n, r in results["niah"].items()]
    ref, filt = results["reference"], results["filter"]
    lines += [
        "", "## Training", "",
        "- Three splits: the reference model trains on " + ", ".join(
            f"`{k}`" for k in results["splits"] if k.startswith("reference-"))
        + ", the policy on `train`, every number above is on `heldout` (each its own seed; see `data/`).",
        "- Reference model (tiny LLaVA): " + (", ".join(
            f"{k.removeprefix('val_acc_')} = {v:.3f}" for k, v in ref.items()
            if k.startswith("val_acc_") and isinstance(v, float) and v == v) or "no internal validation split")
        + (" (trained in this run)" if ref["trained_now"] else " (cached)") + ".",
        f"- Reward-variance filtering kept {filt['kept']} of {filt['total']} training questions "
        f"(tau = {filt['tau']})" + (f"; {filt['fallback']}." if filt.get("fallback") else "."),
    ]
    lines += [f"- GRPO `{n}`: {t['steps']} steps, {t['reference_calls']} reference-model calls (subsets scored)."
              for n, t in results["train"].items()]
    lines.append("")
    for key, alt in (("training", "training curves"), ("filter", "reward variance")):
        if figures.get(key):
            lines += [f"![{alt}]({figures[key]})", ""]
    lines += [
        "## Time per stage (seconds)", "",
        "| " + " | ".join(results["timings_s"]) + " |",
        "|" + "---|" * len(results["timings_s"]),
        "| " + " | ".join(str(v) for v in results["timings_s"].values()) + " |", "",
        f"Reproduce: `refocus demo --task {results['task']}" + (" --quick" if results["config"]["quick"] else "")
        + "`; every number above is in `results.json`.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
