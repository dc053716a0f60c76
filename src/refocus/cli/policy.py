"""``refocus policy``: build or import a frame-selection policy directory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="build or import a frame-selection policy",
                       description="Build or import a frame-selection policy directory.")
    actions = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    imp = actions.add_parser(
        "import-official", help="convert a checkpoint of the authors' code (e.g. ReFoCUS-1.3B)",
        description="Convert a checkpoint in the layout of the authors' public code (github "
        "interlive-team/ReFoCUS: RefocusForFrameSelection, mamba_ssm key names) into a refocus "
        "policy that computes the same selection distribution. Every value is read from the "
        "checkpoint's config.json; import_report.json in DIR lists where each tensor went.",
    )
    imp.add_argument("src", metavar="SRC", help="checkpoint directory (config.json + safetensors or .bin)")
    imp.add_argument("--out", required=True, metavar="DIR", help="policy directory to write")
    imp.add_argument("--tokenizer", metavar="DIR",
                     help="tokenizer directory when SRC has none (the authors use EleutherAI/gpt-neox-20b)")
    imp.add_argument("--vision-config", metavar="PATH",
                     help="the SigLIP tower's config.json (or its directory) when mm_vision_tower "
                     "in SRC/config.json names a hub repository that is not on this machine")
    imp.set_defaults(func=run_import_official)


def run_import_official(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.policy.official import import_official

    report = import_official(args.src, args.out, tokenizer=args.tokenizer,
                             vision_config_path=args.vision_config)
    for note in report.notes:
        print(f"note: {note}")
    if report.assumed:
        shown = ", ".join(f"{k}={v}" for k, v in report.assumed.items())
        print(f"note: not in the checkpoint's config, their code's defaults used: {shown}")
    summary(
        f"imported {len(report.consumed)} tensors ({len(report.unused)} unused: "
        f"{', '.join(sorted(report.unused)) or 'none'}) -> {args.out}"
    )
    return 0
