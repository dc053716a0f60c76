"""GRPO (ReFoCUS) vs ranking supervision (Frame-Voyager) at equal reference-model calls.

Same synthetic splits of ``--task`` (niah, query or multi), same small reference model
(reward / ranking labels and answerer), same policy architecture (``configs/tiny.yaml``; GRPO's
optimisation settings from ``--config``, e.g. ``query`` for ``configs/query.yaml``). Steps:

1. a training and a held-out split of the task (seeds S and S + 1), or ``--train-qa`` /
   ``--heldout-qa``;
2. the small reference model: the demo's, trained once on the demo's reference split of all
   three tasks (seed S + 2, disjoint from both), or ``--reference``;
3. ReFoCUS: reward-variance filtering (16 subsets per question) + GRPO with ``--config``;
   its reference calls = filter calls + training calls. ``--grpo-run DIR`` takes the policy of
   a finished ``refocus train`` run on the filtered questions instead of training one (its
   calls from its ``train_summary.json``), so a long GRPO run is not repeated;
4. Frame-Voyager: ``run_voyager`` on the UNFILTERED training split with
   ``max_reference_calls`` = ReFoCUS's total (``--voyager-budget grpo`` counts GRPO's
   training calls only), for each scoring in ``--scorings``;
5. uniform, each Frame-Voyager ranker, the ReFoCUS policy (greedy) and the oracle evaluated by
   the reference model on the held-out split at ``--budget`` frames: accuracy, evidence recall
   (any span hit) and ``evidence_recall_all`` (every span hit).

Prints a table, then a JSON dict as the last line of stdout. Everything is written under
``--out`` (default: a temporary directory); the small reference model comes from the demo's
cache (``$REFOCUS_CACHE_DIR/reference``), trained there on first use.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--task", choices=["niah", "query", "multi"], default="niah")
    p.add_argument("--train-videos", type=int, default=160)
    p.add_argument("--heldout-videos", type=int, default=80)
    p.add_argument("--frames", default="48,160", help="MIN,MAX video length (frames at 4 fps)")
    p.add_argument("--reference", type=Path, default=None, help="a trained small reference (default: train one)")
    p.add_argument("--train-qa", type=Path, default=None, help="an existing training split (default: generate one)")
    p.add_argument("--heldout-qa", type=Path, default=None, help="an existing held-out split (default: generate one)")
    p.add_argument("--tau", type=float, default=0.21, help="reward-variance filter threshold")
    p.add_argument("--filter-frames", type=int, default=None, help="frames per filter subset (default: --budget)")
    p.add_argument("--config", default="tiny", help="GRPO config: a packaged name (tiny, query) or a YAML path")
    p.add_argument("--grpo-steps", type=int, default=80, help="GRPO steps (0: the config's max_steps)")
    p.add_argument("--grpo-run", type=Path, default=None,
                   help="a finished `refocus train` run on the filtered split: use its policy, do not train")
    p.add_argument("--voyager-steps", type=int, default=200)
    p.add_argument("--voyager-budget", choices=["total", "grpo"], default="total",
                   help="Frame-Voyager's call budget: ReFoCUS's filter + GRPO calls (total) or GRPO's only")
    p.add_argument("--scorings", default="set,sequence")
    p.add_argument("--combination-size", type=int, default=4)
    p.add_argument("--clip-length", type=int, default=32)
    p.add_argument("--max-combinations", type=int, default=64)
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="data splits and the reference model")
    p.add_argument("--run-seed", type=int, default=0, help="GRPO, combination sampling and ranker training")
    args = p.parse_args(argv)

    import torch

    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.filtering.filter import FilterConfig
    from refocus.pipeline import Laps, evaluate_selectors, filter_split
    from refocus.reference import load_reference
    from refocus.selectors import get_selector
    from refocus.selectors.policy import PolicySelector
    from refocus.selectors.voyager import VoyagerSelector
    from refocus.training.config import load_config, packaged_config
    from refocus.training.train import train_policy
    from refocus.voyager.config import CollectConfig, load_voyager_config
    from refocus.voyager.train import run_voyager

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="grpo_vs_voyager-"))
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = (int(x) for x in args.frames.split(","))
    lap = Laps()

    def split(name: str, videos: int, seed: int) -> Path:
        qa = out / name / "qa.jsonl"
        if not qa.is_file():
            make_benchmark(args.task, out / name, videos=videos, frames=(lo, hi), seed=seed)
        return qa

    train_qa = args.train_qa or split("train", args.train_videos, args.seed)
    heldout_qa = args.heldout_qa or split("heldout", args.heldout_videos, args.seed + 1)
    lap("synth")

    ref_dir = args.reference
    if ref_dir is None:  # the demo's small reference model for these data (shared cache)
        from refocus.demo import DemoConfig, get_small_reference, reference_splits

        demo_cfg = DemoConfig(task=args.task, seed=args.seed)
        ref_dir, _ = get_small_reference(reference_splits(demo_cfg, progress=False), demo_cfg, progress=False)
    reference = load_reference(ref_dir, batch_size=16)
    lap("reference")

    filter_cfg = FilterConfig(tau=args.tau, frames_per_subset=args.filter_frames or args.budget)
    kept_qa, info, scored = filter_split(train_qa, reference, filter_cfg, out, progress=False)
    filter_calls = 16 * scored
    if args.grpo_run is not None:
        summary = json.loads((args.grpo_run / "train_summary.json").read_text())
        grpo_policy, grpo_calls, grpo_steps = Path(summary["policy"]), summary["reference_calls"], summary["steps"]
    else:
        config = Path(args.config) if args.config.endswith((".yaml", ".yml")) else packaged_config(args.config)
        grpo_cfg = load_config(config, seed=args.run_seed)
        if args.grpo_steps:
            grpo_cfg = grpo_cfg.shortened(args.grpo_steps)
        grpo = train_policy(kept_qa, ref_dir, out / f"grpo-{args.run_seed}", config=grpo_cfg)
        grpo_policy, grpo_calls, grpo_steps = grpo.policy_dir, grpo.reference_calls, grpo.steps
    lap("grpo")

    calls = {"refocus": {"filter": filter_calls, "train": grpo_calls, "total": filter_calls + grpo_calls}}
    budget = calls["refocus"]["total" if args.voyager_budget == "total" else "train"]
    collect = CollectConfig(combination_size=args.combination_size, clip_length=args.clip_length,
                            max_combinations=args.max_combinations, seed=args.run_seed)
    voyagers = {}
    for scoring in args.scorings.split(","):
        cfg = load_voyager_config(scoring=scoring, max_steps=args.voyager_steps, seed=args.run_seed)
        run = run_voyager(train_qa, ref_dir, out / f"voyager-{scoring}-{args.run_seed}", collect=collect, config=cfg,
                          max_reference_calls=budget, reference=reference)
        voyagers[scoring] = run
        calls[f"voyager-{scoring}"] = {"total": run["reference_calls"], "questions": run["questions"]}
        lap(f"voyager-{scoring}")

    heldout = load_questions(heldout_qa)
    selectors = {"uniform": get_selector("uniform")}
    for scoring, run in voyagers.items():
        selectors[f"voyager-{scoring}"] = VoyagerSelector.from_dir(run["policy_dir"], name=f"voyager-{scoring}")
    selectors["refocus"] = PolicySelector.from_dir(grpo_policy, name="refocus")
    selectors["oracle"] = get_selector("oracle")
    table = {}
    for name, r in evaluate_selectors(heldout, reference, selectors, args.budget, 1, progress=False).items():
        table[name] = {"accuracy": r["accuracy"], "evidence_recall": r["evidence_recall"],
                       "evidence_recall_all": r["evidence_recall_all"], "per_category": r["per_category"],
                       "reference_calls": calls.get(name, {}).get("total", 0)}
    lap("eval")

    print(f"held-out {args.task}: {len(heldout)} questions, budget {args.budget} frames; "
          f"ReFoCUS filter kept {info['kept']}/{info['total']}")
    print(f"{'selector':<18} {'accuracy':>8} {'recall':>8} {'all':>8} {'ref. calls':>10}")
    for name, r in table.items():
        print(f"{name:<18} {r['accuracy']:>8.3f} {r['evidence_recall']:>8.3f} {r['evidence_recall_all']:>8.3f} "
              f"{r['reference_calls']:>10}")
    result = {
        "task": args.task, "budget": args.budget, "heldout_items": len(heldout), "selectors": table, "reference_calls": calls,
        "voyager_budget": args.voyager_budget,
        "voyager_train": {s: {"steps": r["steps"], "questions": r["questions"],
                              "pair_accuracy": r["last_metrics"].get("train/pair_accuracy")}
                          for s, r in voyagers.items()},
        "grpo": {"steps": grpo_steps, "kept": info["kept"], "total": info["total"],
                 "run": str(args.grpo_run) if args.grpo_run else None},
        "timings_s": lap.seconds, "args": {k: str(v) for k, v in vars(args).items()}, "out": str(out),
    }
    (out / f"results-{args.run_seed}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
