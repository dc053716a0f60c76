"""``refocus filter``: reward-variance filtering of training questions (Appendix A)."""

from __future__ import annotations

import argparse
from pathlib import Path

from refocus.cli._common import add_field_arguments, field_values
from refocus.distributed import add_device_arguments
from refocus.filtering.filter import FilterConfig

FILTER_FLAGS = {"tau": None, "frames_per_subset": None, "window_rule": None}
"""FilterConfig fields settable from ``refocus filter``."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="keep questions whose reward depends on which frames are shown",
                       description="Score 16 window/complement probe subsets per question with the "
                       "reference model and keep questions whose margin variance exceeds tau.")
    p.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or benchmark dir)")
    p.add_argument("--reference", required=True, metavar="REF", help="reference checkpoint directory")
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    add_field_arguments(p, FilterConfig, FILTER_FLAGS)
    p.add_argument("--batch-size", type=int, default=16, help="subsets per reference forward")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.data.questions import load_questions
    from refocus.distributed import is_main_process, processes_note
    from refocus.filtering.filter import run_filter, write_filter_outputs
    from refocus.reference import load_reference

    errors: list = []
    items = load_questions(resolve_question_file(args.data), errors=errors)
    reference = load_reference(args.reference, device=args.device, dtype=args.dtype,
                               batch_size=args.batch_size)
    cfg = FilterConfig(**field_values(args, FILTER_FLAGS))
    result = run_filter(items, reference, cfg)
    result.skipped[:0] = [{"id": None, "reason": str(e)} for e in errors]
    if not is_main_process():  # every process holds the merged result; one writes it
        return 0
    info = write_filter_outputs(result, Path(args.out), cfg, reference)
    q = info["variance_quantiles"]
    qs = " ".join(f"{k}={v:.3f}" for k, v in q.items())
    summary(f"kept {info['kept']}/{info['total']} questions (tau={cfg.tau:g}; variance {qs}); "
            f"skipped {len(info['skipped'])}{processes_note()} -> {args.out}")
    return 0
