"""``refocus train``: GRPO training of a frame-selection policy."""

from __future__ import annotations

import argparse
from pathlib import Path

from refocus.cli._common import add_config_arguments
from refocus.distributed import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="GRPO training of a frame-selection policy",
        description="Train a frame-selection policy with group-relative policy optimisation against "
        "a frozen reference model (ReFoCUS Algorithm 1). Runs data-parallel under `accelerate launch`.",
    )
    p.add_argument("--data", required=True, metavar="QA.jsonl", help="(filtered) question file or benchmark dir")
    p.add_argument("--reference", required=True, metavar="REF", help="reference checkpoint directory")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, metrics, policy/)")
    add_config_arguments(p, "GRPOConfig (e.g. configs/tiny.yaml; default: the paper's settings)")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--policy", metavar="DIR",
                   help="start from this saved policy as it is (a `refocus policy init` output or a trained "
                   "policy; nothing is re-initialised) instead of building one from the config's policy: section")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in DIR")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.configuration import parse_overrides
    from refocus.training.train import train_policy

    result = train_policy(
        data=resolve_question_file(args.data), reference=args.reference, out_dir=Path(args.out),
        config=args.config, max_steps=args.max_steps, seed=args.seed, resume=args.resume,
        device=args.device, dtype=args.dtype, sets=parse_overrides(args.sets), init_policy=args.policy,
    )
    m = result.last_metrics
    summary(
        f"trained {result.steps} steps: reward/mean {m.get('reward/mean', float('nan')):.3f}, "
        f"reward/accuracy {m.get('reward/accuracy', float('nan')):.3f}; skipped {len(result.skipped)} items, "
        f"{result.nonfinite_steps} non-finite steps -> {result.policy_dir}"
    )
    return 0
