"""``refocus eval``: accuracy and evidence recall of a frame selector with an answering model."""

from __future__ import annotations

import argparse

from refocus.cli._common import add_decode_arguments
from refocus.distributed import add_device_arguments

EPILOG = """\
output layout:
  DIR/results.json           one budget: that budget's results object; several budgets:
                             {"selector", "mode", "answerer", "budgets": {"K": results, ...}}
  DIR/budget-K/results.json  each budget's results object
  DIR/predictions.jsonl      one row per (item, budget, seed): id, category, seed, budget,
                             indices, timestamps, prediction, answer, correct, margin,
                             logits, hit_evidence, hit_all_evidence; with --generate also
                             generated, generated_answer, generated_correct, generated_format
results object: selector, mode, answerer, budget, accuracy, accuracy_std (over seeds),
  evidence_recall (any span holds a selected frame; null without spans), evidence_recall_std,
  evidence_recall_all (every span holds one), evidence_recall_all_std, per_category {cat:
  {accuracy, evidence_recall, evidence_recall_all, n}}, seconds_per_item (selection only), n_items, skipped [{id, reason}],
  seeds, deterministic; with --generate also generated_accuracy(_std), format_rate.
Deterministic selectors (uniform, oracle, policy in greedy mode) run once, with the first
seed, whatever --seeds says. Each video is decoded once per frame size and reused across
budgets and seeds; all subsets of an item are scored in one answerer call.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a frame selector with an answering model (accuracy, evidence recall, time)",
        description="For every question the selector picks --budget frames (per budget and "
        "seed) and the answerer (any reference checkpoint) answers with the option whose letter "
        "logit is highest given those frames.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or benchmark dir)")
    p.add_argument("--answerer", required=True, metavar="REF",
                   help="reference checkpoint that answers; 'none' for selection-only metrics")
    p.add_argument("--selector", required=True, metavar="NAME[:ARG]",
                   help="uniform, random, oracle (needs evidence spans), policy:DIR, ...")
    p.add_argument("--budget", required=True, metavar="K[,K2,...]",
                   help="frames per question; several comma-separated budgets share one decode")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seeds", type=int, default=3,
                   help="runs with seeds S..S+N-1 for random/sampling selectors (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed S (default 0)")
    p.add_argument("--mode", choices=["greedy", "sample", "distribution"], default=None,
                   help="policy selection mode (default greedy)")
    add_decode_arguments(p)
    p.add_argument("--batch-size", type=int, default=16, help="subsets per answerer forward (default 16)")
    p.add_argument("--generate", action="store_true",
                   help="also let the answerer write a reasoned answer (<think>...</think><answer>X</answer>, "
                        "greedy) and score the parsed letter beside the option-logit answer")
    p.add_argument("--max-new-tokens", type=int, default=768,
                   help="token budget of a generated answer (default 768, Video-KTR's)")
    add_device_arguments(p, "the answerer and a policy selector")
    p.set_defaults(func=run)


def parse_budgets(text: str) -> list[int]:
    """``"4,8,16"`` -> [4, 8, 16], with a RefocusError naming --budget on bad input."""
    from refocus.errors import RefocusError

    try:
        budgets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RefocusError(f"--budget expects K or K1,K2,... (integers), got {text!r}") from None
    if not budgets or min(budgets) < 1 or len(set(budgets)) != len(budgets):
        raise RefocusError(f"--budget expects distinct positive integers, got {text!r}")
    return budgets


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.data.questions import load_questions
    from refocus.distributed import is_main_process, processes_note
    from refocus.errors import RefocusError
    from refocus.evaluation import evaluate, summary_line, write_evaluation
    from refocus.selectors import get_selector
    from refocus.video.stores import FrameStore

    budgets = parse_budgets(args.budget)
    if args.seeds < 1:
        raise RefocusError(f"--seeds must be >= 1, got {args.seeds}")
    errors: list = []
    items = load_questions(resolve_question_file(args.data), errors=errors)
    selector = get_selector(args.selector, seed=args.seed, mode=args.mode, device=args.device,
                            dtype=args.dtype)
    answerer = None
    if args.answerer.lower() != "none":
        from refocus.reference import load_reference

        answerer = load_reference(args.answerer, device=args.device, dtype=args.dtype,
                                  batch_size=args.batch_size)
    store = FrameStore(args.fps, args.max_frames, capacity=8)
    seeds = list(range(args.seed, args.seed + args.seeds))
    generate = None
    if args.generate:
        if answerer is None:
            raise RefocusError("--generate needs an answerer (not 'none')")
        from refocus.answerer.generation import GenerateConfig

        generate = GenerateConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    result = evaluate(items, answerer, selector, budgets, seeds, store=store, generate=generate)
    invalid = [{"id": None, "reason": " ".join(str(e).split())} for e in errors]
    result["skipped"][:0] = invalid
    for res in result["budgets"].values():
        res["skipped"] = list(result["skipped"])
    if not is_main_process():  # every process holds the merged result; one writes it
        return 0
    write_evaluation(result, args.out)
    if not result["predictions"]:
        first = result["skipped"][0]["reason"] if result["skipped"] else "no items"
        raise RefocusError(f"no item could be evaluated (first reason: {first}); see {args.out}/results.json")
    summary(summary_line(result) + f"{processes_note()} -> {args.out}")
    return 0
