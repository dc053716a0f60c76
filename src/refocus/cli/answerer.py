"""``refocus answerer sft`` and ``refocus answerer train``: output-level training of the answerer."""

from __future__ import annotations

import argparse

from refocus.answerer.rationale import TEMPLATES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("answerer", help="train the answerer's reasoning (SFT, GRPO, Video-KTR)")
    asub = p.add_subparsers(dest="answerer_command", metavar="ACTION", required=True)
    s = asub.add_parser(
        "sft", help="teach an answerer templated reasoning on a synthetic benchmark",
        description="Supervised fine-tuning on templated rationales built from the synthetic "
        "metadata ('<think> first red star , then ... </think> <answer> B </answer>'), from "
        "evidence-covering frames; reports held-out generated accuracy beside the starting "
        "model's option-logit accuracy, saves an HF checkpoint.",
    )
    s.add_argument("--data", required=True, metavar="DIR", help="synthetic benchmark dir (qa.jsonl) or a qa.jsonl")
    s.add_argument("--answerer", required=True, metavar="DIR", help="starting answerer (e.g. the small reference model)")
    s.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    s.add_argument("--steps", type=int, default=None, help="optimiser steps (default 2000)")
    s.add_argument("--batch-size", type=int, default=None, help="examples per step (default 16)")
    s.add_argument("--frames", type=int, default=None, help="frames per example (default 8)")
    s.add_argument("--rationale", choices=TEMPLATES, default=None,
                   help="rationale template: 'sequence' (default; 'first X , then Y ...') or 'scan' "
                   "(per event where / what / when, the temporal words carrying the frame order)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sft)

    t = asub.add_parser(
        "train", help="GRPO / Video-KTR on the answerer's own completions",
        description="RL on the answerer's reasoned completions with frames from any selector. "
        "grpo: policy gradient on every token; ktr: only on key tokens (visual-aware, "
        "temporal-aware, high-entropy; Video-KTR). Checkpoints and metrics as `refocus train`.",
    )
    t.add_argument("--method", choices=("grpo", "ktr"), required=True)
    t.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or a benchmark dir)")
    t.add_argument("--answerer", required=True, metavar="DIR", help="starting answerer (e.g. an `answerer sft` output)")
    t.add_argument("--selector", default="uniform", metavar="SPEC",
                   help="frames shown to the answerer: uniform, random, policy:DIR, ... (default uniform)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--config", default=None, metavar="YAML", help="config overrides (e.g. configs/answerer_tiny.yaml)")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints/latest")
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=_train)


def _sft(args: argparse.Namespace) -> int:
    from refocus.answerer.sft import SFTConfig, train_sft
    from refocus.cli._common import summary

    cfg = SFTConfig(seed=args.seed)
    for name in ("steps", "batch_size", "frames", "rationale"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    result = train_sft(args.data, args.answerer, args.out, cfg)
    before, after = result["before"], result["after"]
    summary(
        f"answerer sft: {result['train_questions']} questions, {cfg.steps} steps in {result['seconds']:.0f}s; "
        f"held-out ({after['questions']}, evidence frames): generated accuracy {after['generated_accuracy']:.3f} "
        f"(format {after['format_rate']:.2f}) vs option-logit {before['option_logit_accuracy']:.3f} -> {args.out}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from refocus.answerer.config import load_answerer_config
    from refocus.answerer.data import load_items
    from refocus.answerer.trainer import AnswererTrainer
    from refocus.cli._common import summary
    from refocus.selectors import get_selector

    cfg = load_answerer_config(args.config, method=args.method, max_steps=args.max_steps, seed=args.seed)
    items = load_items(args.data)
    selector = get_selector(args.selector, seed=cfg.seed)
    trainer = AnswererTrainer(cfg, items, args.answerer, selector, args.out, resume=args.resume, device=args.device)
    result = trainer.train()
    m = result["last_metrics"]
    summary(
        f"answerer {cfg.method}: {result['steps']} steps; last reward accuracy {m.get('reward/accuracy', float('nan')):.3f}, "
        f"kept tokens {m.get('ktr/kept_ratio', float('nan')):.2f} -> {result['answerer_dir']}"
    )
    return 0
