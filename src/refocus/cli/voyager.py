"""``refocus voyager {collect,train}``: the Frame-Voyager baseline (ranking supervision)."""

from __future__ import annotations

import argparse
from pathlib import Path

from refocus.cli._common import add_config_arguments, add_field_arguments, field_values
from refocus.voyager.config import CollectConfig

COLLECT_FLAGS = {"combination_size": None, "max_combinations": None, "clip_length": None,
                 "reference_batch_size": "--batch-size", "seed": None}
"""CollectConfig fields settable from ``refocus voyager collect`` (field -> flag)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "voyager", help="Frame-Voyager baseline: rank frame combinations by reference loss, train a ranker",
        description="Frame-Voyager (Yu et al. 2025) with the ReFoCUS policy as the ranker: `collect` labels "
        "T-frame combinations of each video with the reference model's loss on the answer, `train` fits "
        "the policy to that ranking with a pairwise loss. Evaluate with `refocus eval --selector voyager:DIR`.",
    )
    groups = p.add_subparsers(dest="voyager_command", required=True, metavar="{collect,train}")

    c = groups.add_parser("collect", help="label frame combinations with the reference model's loss",
                          description="For each question, draw combinations of T frames inside clips of the "
                          "decoded video, score them all in one reference call (frame reuse) and store them "
                          "ranked by the cross-entropy of the correct letter: DIR/rankings.jsonl, DIR/qa.jsonl, "
                          "DIR/collect_summary.json (with the number of reference calls).")
    c.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or benchmark dir)")
    c.add_argument("--reference", required=True, metavar="REF", help="reference checkpoint directory")
    c.add_argument("--out", required=True, metavar="DIR", help="collection directory")
    add_field_arguments(c, CollectConfig, COLLECT_FLAGS)
    c.add_argument("--max-reference-calls", type=int, metavar="N",
                   help="cap on subsets scored in all, shared evenly over the questions")
    c.set_defaults(func=run_collect)

    t = groups.add_parser("train", help="train the ranker (the ReFoCUS policy) on a collection",
                          description="Pairwise (RankNet) training of the frame-selection policy so that "
                          "combinations with lower reference loss score higher. DIR gets the GRPO trainer's "
                          "layout: metrics.jsonl, checkpoints/ (atomic, --resume), policy/, train_summary.json.")
    t.add_argument("--data", required=True, metavar="DIR", help="directory written by `refocus voyager collect`")
    t.add_argument("--out", required=True, metavar="DIR", help="run directory")
    add_config_arguments(t, "VoyagerConfig (on top of configs/voyager.yaml)")
    t.add_argument("--reference", metavar="REF",
                   help="reference checkpoint (default: the one recorded by the collection)")
    t.add_argument("--max-steps", type=int, help="override max_steps")
    t.add_argument("--seed", type=int, help="override seed")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in DIR")
    t.set_defaults(func=run_train)


def run_collect(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.voyager.collect import run_collect as collect

    cfg = CollectConfig(**field_values(args, COLLECT_FLAGS))
    result = collect(resolve_question_file(args.data), args.reference, Path(args.out), cfg,
                     max_reference_calls=args.max_reference_calls)
    summary(f"ranked {result.combinations} combinations of {cfg.combination_size} frames for "
            f"{result.questions} questions ({result.reference_calls} reference calls); "
            f"skipped {len(result.skipped)} -> {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.configuration import parse_overrides
    from refocus.voyager.train import train_voyager

    result = train_voyager(args.data, Path(args.out), args.config, reference=args.reference,
                           max_steps=args.max_steps, seed=args.seed, resume=args.resume,
                           sets=parse_overrides(args.sets))
    m = result.last_metrics
    summary(f"trained {result.steps} steps ({result.scoring} scoring): train/loss "
            f"{m.get('train/loss', float('nan')):.3f}, pair accuracy {m.get('train/pair_accuracy', float('nan')):.3f}; "
            f"{result.reference_calls} reference calls in collection; skipped {len(result.skipped)} -> "
            f"{result.policy_dir}")
    return 0
