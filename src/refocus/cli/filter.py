"""``refocus filter``: reward-variance filtering of training questions (Appendix A)."""

from __future__ import annotations

import argparse
from pathlib import Path

from refocus.distributed import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="keep questions whose reward depends on which frames are shown",
                       description="Score 16 window/complement probe subsets per question with the "
                       "reference model and keep questions whose margin variance exceeds tau.")
    p.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or benchmark dir)")
    p.add_argument("--reference", required=True, metavar="REF", help="reference checkpoint directory")
    p.add_argument("--out", required=True, metavar="OUT.jsonl")
    p.add_argument("--tau", type=float, default=0.21, help="variance threshold (default 0.21)")
    p.add_argument("--frames-per-subset", type=int, default=32, help="k frames per subset (default 32)")
    p.add_argument("--window-rule", choices=["quarter", "paper_printed"], default="quarter",
                   help="window size ceil(T/4) (default; consistent with W8) or ceil(T/8) as printed")
    p.add_argument("--batch-size", type=int, default=16, help="subsets per reference forward")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.data.questions import load_questions
    from refocus.distributed import is_main_process, processes_note
    from refocus.errors import RefocusError
    from refocus.filtering.filter import FilterConfig, run_filter, write_filter_outputs
    from refocus.reference import load_reference

    if args.frames_per_subset < 1:
        raise RefocusError("--frames-per-subset must be >= 1")
    errors: list = []
    items = load_questions(resolve_question_file(args.data), errors=errors)
    reference = load_reference(args.reference, device=args.device, dtype=args.dtype,
                               batch_size=args.batch_size)
    cfg = FilterConfig(tau=args.tau, frames_per_subset=args.frames_per_subset, window_rule=args.window_rule)
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
