"""``refocus policy``: build or import a frame-selection policy directory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="build or import a frame-selection policy",
                       description="Build or import a frame-selection policy directory.")
    actions = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="a new policy from a vision model and a Mamba2 language model",
        description="Build a new policy (paper §3.2, Appendix B.2) from a Hugging Face vision model "
        "(SigLIP/SigLIP2/CLIP, or the tower inside an InternVL3-hf, Qwen2.5-VL, LLaVA-OneVision or "
        "LLaVA checkpoint) and a Mamba2 language model (Hugging Face or mamba_ssm format): the tower "
        "and the backbone's weights are copied, the LM head dropped, the last num_reinit_layers "
        "blocks re-initialised (gamma 0.1 on their mixer norm), the projector and heads initialised "
        "as B.2. The output loads with `refocus train --policy DIR` and `refocus select policy:DIR`.",
    )
    init.add_argument("--vision", metavar="DIR", help="vision checkpoint directory (policy.vision_model)")
    init.add_argument("--backbone", metavar="DIR", help="Mamba2 checkpoint directory (policy.backbone_model)")
    init.add_argument("--tokenizer", metavar="DIR",
                      help="tokenizer directory when the backbone has none (policy.tokenizer; Mamba2 "
                      "checkpoints use EleutherAI/gpt-neox-20b's)")
    init.add_argument("--config", metavar="YAML",
                      help="a training config whose policy: section (or a file of policy fields) sets "
                      "FramePolicyConfig fields, e.g. configs/paper.yaml")
    init.add_argument("--out", required=True, metavar="DIR", help="policy directory to write")
    init.add_argument("--seed", type=int, default=0, help="seed of the fresh weights (default 0)")
    init.set_defaults(func=run_init)
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


def run_init(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.policy.build import init_from_config

    policy, provenance = init_from_config(
        args.out, config=args.config, vision=args.vision, backbone=args.backbone,
        tokenizer=args.tokenizer, seed=args.seed,
    )
    cfg = policy.config
    fresh = provenance["reinitialised_blocks"]
    summary(
        f"policy: {cfg.vision_model_type} tower (layer {cfg.vision_feature_layer}, {cfg.image_size} px) "
        f"from {provenance['vision'] or 'random init'}, Mamba2 backbone ({cfg.backbone_config['num_hidden_layers']} "
        f"blocks, d_model {cfg.backbone_hidden_size}) from {provenance['backbone'] or 'random init'}"
        + (f", blocks {fresh} re-initialised" if fresh else "") + f" -> {args.out}"
    )
    return 0


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
