"""``refocus demo``: the whole loop on the embedded default (synthetic V-NIAH, CPU)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole ReFoCUS loop on the embedded synthetic benchmark",
        description="Generate synthetic V-NIAH data, build (or reuse) the small reference model, filter, "
        "train the policy with GRPO, evaluate uniform / random / policy / oracle, draw the V-NIAH "
        "heatmap, and write DIR/report.md, DIR/results.json and the figures.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller smoke run (about a third of the time)")
    p.add_argument("--voyager", action="store_true",
                   help="also train the Frame-Voyager baseline with as many reference calls as ReFoCUS used")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.demo import run_demo

    result = run_demo(args.out, quick=args.quick, voyager=args.voyager)
    sel = result.results["selectors"]
    parts = ", ".join(
        f"{name} {r['accuracy']:.2f}/{r['evidence_recall']:.2f}" for name, r in sel.items()
    )
    total = sum(result.timings.values())
    summary(f"demo (accuracy/evidence recall @{result.results['budget']} frames): {parts}; "
            f"{total:.0f} s -> {result.out_dir}/report.md")
    return 0
