"""``refocus demo [--task {query,niah,multi}]``: the whole loop on a synthetic benchmark, on a CPU."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole ReFoCUS loop on the embedded synthetic benchmark",
        description="Generate synthetic data (a reference split of every task, then the task's training "
        "and held-out splits), build (or reuse) the small reference model, filter, train the policy with "
        "GRPO (and a question-blind one for query), evaluate uniform / random / policy / oracle, draw the "
        "V-NIAH heatmap (niah), and write DIR/report.md, DIR/results.json and the figures.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller smoke run (about a third of the time)")
    p.add_argument("--task", choices=["query", "niah", "multi"], default="query",
                   help="benchmark the policy learns: query (10 objects, the question names one; budget 4; "
                   "adds a question-blind policy), niah (one needle; budget 8; V-NIAH heatmap) or multi "
                   "(order / count / compare; budget 8; per-category table). Default query")
    p.add_argument("--voyager", action="store_true",
                   help="also train the Frame-Voyager baseline with as many reference calls as ReFoCUS used")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.demo import run_demo

    result = run_demo(args.out, quick=args.quick, voyager=args.voyager, task=args.task)
    sel = result.results["selectors"]
    parts = ", ".join(
        f"{name} {r['accuracy']:.2f}/{r['evidence_recall']:.2f}" for name, r in sel.items()
    )
    total = sum(result.timings.values())
    summary(f"demo (accuracy/evidence recall @{result.results['budget']} frames): {parts}; "
            f"{total:.0f} s -> {result.out_dir}/report.md")
    return 0
