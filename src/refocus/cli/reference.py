"""``refocus reference train``: train the project's own small reference model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reference", help="the project's own small reference model")
    rsub = p.add_subparsers(dest="reference_command", metavar="ACTION", required=True)
    t = rsub.add_parser(
        "train",
        help="train the small reference VLM on synthetic benchmarks",
        description="Train the small reference VLM (tiny LLaVA) on one or more synthetic "
        "benchmarks, report held-out accuracy with and without evidence frames, save an HF checkpoint.",
    )
    t.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="synthetic benchmark dir (with qa.jsonl) or a qa.jsonl; repeatable")
    t.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    t.add_argument("--steps", type=int, default=None,
                   help="joint-stage optimiser steps (default 300); the align and vision stages keep "
                        "their defaults")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field of the training config (SmallReferenceTrainConfig), e.g. "
                        "--set distractor_fraction=0.5 --set vision_steps=1500 (value read as YAML; repeatable)")
    t.set_defaults(func=_train)


def resolve_question_file(path: str | Path) -> Path:
    """A benchmark directory means its ``qa.jsonl``."""
    from refocus.errors import RefocusError

    p = Path(path)
    if p.is_dir():
        p = p / "qa.jsonl"
    if not p.is_file():
        raise RefocusError(f"{p}: question file not found")
    return p


def train_config(args: argparse.Namespace):
    """The SmallReferenceTrainConfig of ``refocus reference train``: its defaults, ``--seed``, then
    ``--set`` (the loader every config command shares: unknown keys named with a did-you-mean,
    nested keys as ``decode.fps``), then ``--steps`` / ``--batch-size`` when given."""
    from refocus.configuration import parse_overrides
    from refocus.reference.small_training import SmallReferenceTrainConfig
    from refocus.training.config import load_dataclass_config

    sets = {"seed": args.seed, **parse_overrides(args.sets)}
    return load_dataclass_config(SmallReferenceTrainConfig, sets=sets, steps=args.steps,
                                 batch_size=args.batch_size)


def _train(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.data.questions import load_questions
    from refocus.reference.small_training import train_small_reference

    cfg = train_config(args)
    items = []
    for d in args.data:
        items.extend(load_questions(resolve_question_file(d)))
    result = train_small_reference(items, args.out, cfg)
    accs = ", ".join(
        f"{k.removeprefix('val_acc_')}={v:.3f}" for k, v in result.items() if k.startswith("val_acc_")
    )
    summary(
        f"trained small reference on {result['train_questions']} questions in {result['seconds']:.0f}s; "
        f"held-out ({result['val_questions']}): {accs} -> {args.out}"
    )
    return 0
