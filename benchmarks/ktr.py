"""Input-level vs output-level optimisation, and both: SFT, GRPO and Video-KTR answerers on
``multi``, with uniform frames and with a ReFoCUS policy's frames.

Steps (each cached under ``--out``, so a rerun resumes where it stopped; ``--seeds 0`` and
``--seeds 1`` may run as two processes on one ``--out``, then ``--seeds 0,1`` aggregates):

1. a training and a held-out ``multi`` split (different seeds, 32-64 frames);
2. the small reference model (or ``--reference DIR``): :data:`MULTI_REFERENCE_RECIPE` on its own
   ``query`` / ``niah`` / ``multi`` splits, disjoint from the answerers';
3. a ReFoCUS frame-selection policy trained with that reference (``configs/multi.yaml``);
4. per seed: ``answerer sft`` from the reference model, then ``answerer train`` with
   ``--method grpo`` and ``--method ktr`` from that SFT checkpoint, at equal steps, with
   uniform frames (``configs/answerer_tiny.yaml``);
5. held-out generated accuracy (greedy, parsed ``<answer>``) of every answerer with uniform
   frames, and with the ReFoCUS policy's frames (greedy selection);
6. attribution precision of the masks against the template's word tags
   (:mod:`refocus.answerer.attribution`), for the SFT and the KTR answerers.

Prints a table, then JSON as the last line:
``{"accuracy": {"sft", "grpo", "ktr", "ktr_refocus", ...}, "attribution": {...}, "setting": {...}}``
(accuracies are means over the seeds; per-seed values under ``"per_seed"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _cached(path: Path, build):
    if path.is_file():
        return json.loads(path.read_text())
    out = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


MULTI_REFERENCE_RECIPE = {"fresh_plan_fraction": 0.9, "multi_option_targets": True, "align_steps": 6000,
                          "frame_ordinal_weight": 1.0, "oracle_subset_fraction": 0.3, "appearance_codes": True}
"""The README's `multi` reference recipe (benchmarks/RESULTS.md, "`multi` on the oracle's frames"):
the only small-reference setting measured well above chance on `multi` (0.62 / 0.68 from the
oracle's frames at K = 8, two seeds). The default stage sizes stay at chance there."""


def _data(args, root: Path) -> tuple[Path, Path]:
    """multi train / held-out splits for the answerers (different seeds)."""
    from refocus.demo import _synth

    frames = tuple(int(x) for x in args.frames.split(","))
    return (_synth("multi", root / "multi-train", args.train_videos, frames, args.seed, False),
            _synth("multi", root / "multi-heldout", args.heldout_videos, frames, args.seed + 1, False))


def _reference(args, root: Path) -> Path:
    """The small reference model (the starting answerer and the policy's reward model), unless
    ``--reference`` names one: trained with :data:`MULTI_REFERENCE_RECIPE` on its own
    ``query`` / ``niah`` / ``multi`` splits (160 videos each at the demo's reference-split
    lengths, seed + 2), disjoint from the answerers' splits. About 15 minutes on 2 cores."""
    from refocus.data.questions import load_questions
    from refocus.demo import DemoConfig, _synth
    from refocus.reference.small_training import SmallReferenceTrainConfig, train_small_reference

    if args.reference is not None:
        return args.reference
    ref = root / "reference"
    if not (ref / "reference_train.json").is_file():
        items = [it for kind in ("query", "niah", "multi")
                 for it in load_questions(_synth(kind, root / f"reference-data-{kind}", args.reference_videos,
                                                 DemoConfig().frames, args.seed + 2, False))]
        train_small_reference(items, ref, SmallReferenceTrainConfig(seed=args.seed, **MULTI_REFERENCE_RECIPE),
                              progress=True)
    return ref


def _policy(args, root: Path, train_qa: Path, ref: Path) -> Path:
    from refocus.training.config import load_config, packaged_config
    from refocus.training.train import train_policy

    out = root / "policy"
    while (out / "train_config.yaml").is_file() and not (out / "train_summary.json").is_file():
        time.sleep(20)  # another process of this benchmark (a --seeds split) is training it
    if not (out / "policy" / "config.json").is_file():
        cfg = load_config(packaged_config("multi"), seed=args.seed, max_steps=args.policy_steps)
        train_policy(train_qa, ref, out, cfg, progress=True)
    return out / "policy"


def _sft_steps(args) -> int:
    """``--sft-steps``, else 5,000 for a scan rationale (twice as long as a sequence one: 3,000
    steps left SFT at 0.38 generated accuracy, RESULTS "a rationale whose temporal words carry
    the frame order"), else SFTConfig's default."""
    from refocus.answerer.sft import SFTConfig

    if args.sft_steps is not None:
        return args.sft_steps
    return 5000 if args.rationale == "scan" else SFTConfig().steps


def _run_name(args, method: str) -> str:
    """The run folder of an RL method: ``grpo`` / ``ktr`` on uniform frames, ``grpo-on-refocus`` ..."""
    return method if args.rl_frames == "uniform" else f"{method}-on-{args.rl_frames}"


def _rl_selector(args, policy: Path | None) -> str:
    return f"policy:{policy}" if args.rl_frames == "refocus" else args.rl_frames


def _answerers(args, root: Path, train_qa: Path, ref: Path, seed: int, policy: Path | None) -> dict[str, Path]:
    from refocus.answerer.config import load_answerer_config
    from refocus.answerer.data import load_items
    from refocus.answerer.sft import SFTConfig, train_sft
    from refocus.answerer.trainer import AnswererTrainer
    from refocus.selectors import get_selector

    sft = root / f"seed{seed}" / "sft"
    if not (sft / "sft.json").is_file():
        cfg = SFTConfig(seed=seed, rationale=args.rationale, steps=_sft_steps(args))
        train_sft(train_qa, ref, sft, cfg, progress=True)
    done = json.loads((sft / "sft.json").read_text())["config"].get("rationale", "sequence")
    if done != args.rationale:
        sys.exit(f"error: {sft} was taught the {done!r} rationale, not --rationale {args.rationale}: "
                 "use another --out for another template")
    out = {"sft": sft}
    for method in ("grpo", "ktr"):
        run = root / f"seed{seed}" / _run_name(args, method)
        if not (run / "answerer" / "config.json").is_file():
            cfg = load_answerer_config(args.config, method=method, max_steps=args.steps, seed=seed)
            if args.lr is not None:
                cfg.learning_rate = args.lr
            if args.questions_per_step is not None:
                cfg.per_device_train_batch_size = args.questions_per_step
            trainer = AnswererTrainer(cfg, load_items(train_qa), sft, get_selector(_rl_selector(args, policy), seed=seed), run,
                                      resume=(run / "checkpoints" / "latest").is_file())
            trainer.train()
        out[method] = run / "answerer"
    return out


def _evaluate(answerer_dir: Path, heldout_qa: Path, selector_spec: str, budget: int, max_new_tokens: int,
              max_items: int | None = None) -> dict:
    from refocus.answerer.data import load_items
    from refocus.answerer.generation import GenerateConfig
    from refocus.evaluation import evaluate
    from refocus.reference import load_reference
    from refocus.selectors import get_selector

    ref = load_reference(answerer_dir)
    res = evaluate(load_items(heldout_qa)[:max_items], ref, get_selector(selector_spec, seed=0), budget, 1, progress=False,
                   generate=GenerateConfig(max_new_tokens=max_new_tokens, do_sample=False))
    r = res["budgets"][budget]
    per_cat = {}
    for cat in sorted({row["category"] for row in res["predictions"]}):
        mine = [row["generated_correct"] for row in res["predictions"] if row["category"] == cat]
        per_cat[cat] = float(np.mean(mine))
    # option_logit_accuracy: the letter read-out right after the prompt; an answerer after SFT
    # writes "<think>" there, so for it this is one fixed letter's share, not an answer
    return {"generated_accuracy": r["generated_accuracy"], "format_rate": r["format_rate"],
            "option_logit_accuracy": r["accuracy"], "evidence_recall": r["evidence_recall"],
            "evidence_recall_all": r.get("evidence_recall_all"),
            "per_category": per_cat, "n": r["n_items"]}


def _attribution(answerer_dir: Path, heldout_qa: Path, budget: int, max_items: int | None = None) -> dict:
    from refocus.answerer.attribution import attribution_precision
    from refocus.answerer.data import EvidenceVideos, load_items
    from refocus.answerer.generation import Answerer

    a = Answerer.load(answerer_dir)
    items = [it for it in load_items(heldout_qa)[:max_items] if it.evidence]
    return attribution_precision(a, items, EvidenceVideos(a.image_size), k=budget)


def _curves(args, root: Path, seeds: list[int]) -> dict:
    curves = {}
    for method in ("grpo", "ktr"):
        per_seed = []
        for seed in seeds:
            path = root / f"seed{seed}" / _run_name(args, method) / "metrics.jsonl"
            rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
            per_seed.append([r.get("reward/accuracy") for r in rows])
        curves[method] = per_seed
    return curves


def _training_summary(args, root: Path, seeds: list[int]) -> dict:
    """Per method, means over seeds of: rollout accuracy in the first / last 10 steps, grad
    norm, share of groups with zero reward spread (no gradient in either method), kept share."""
    out = {}
    for method in ("grpo", "ktr"):
        rows_by_seed = []
        for seed in seeds:
            path = root / f"seed{seed}" / _run_name(args, method) / "metrics.jsonl"
            if path.is_file():
                rows_by_seed.append([json.loads(x) for x in path.read_text().splitlines()])

        def avg(key: str, part=slice(None), rows_by_seed=rows_by_seed) -> float | None:
            vals = [r[key] for rows in rows_by_seed for r in rows[part] if r.get(key) is not None]
            return round(float(np.mean(vals)), 4) if vals else None

        out[method] = {"accuracy_first10": avg("reward/accuracy", slice(0, 10)),
                       "accuracy_last10": avg("reward/accuracy", slice(-10, None)),
                       "format_last10": avg("reward/format", slice(-10, None)),
                       "grad_norm": avg("train/grad_norm"), "frac_zero_std": avg("reward/frac_zero_std"),
                       "kept_ratio": avg("ktr/kept_ratio"), "kl_last10": avg("train/kl", slice(-10, None)),
                       "completion_length": avg("completion/length")}
    return out


def _plot(result: dict, curves: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["sft", "grpo", "ktr"]
    acc = result["accuracy"]
    x = np.arange(len(names))
    ax1.bar(x - 0.2, [acc[n] for n in names], 0.4, label="uniform frames")
    ax1.bar(x + 0.2, [acc[f"{n}_refocus"] for n in names], 0.4, label="ReFoCUS frames")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("held-out accuracy (generated)")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="lower right")
    for method, per_seed in curves.items():
        for i, ys in enumerate(per_seed):
            ys = np.array([np.nan if y is None else y for y in ys], dtype=float)
            if len(ys):
                w = min(10, len(ys))
                smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
                ax2.plot(np.arange(len(smooth)) + w, smooth, color="C0" if method == "grpo" else "C1",
                         alpha=0.9 if i == 0 else 0.5, label=method if i == 0 else None)
    ax2.set_xlabel("step")
    ax2.set_ylabel("rollout accuracy (10-step mean)")
    ax2.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-ktr"))
    p.add_argument("--train-videos", type=int, default=1000,
                   help="multi training videos (SFT at 240 memorised its rationales: 0.39 generated vs 0.64 option-logit)")
    p.add_argument("--heldout-videos", type=int, default=90)
    p.add_argument("--frames", default="32,64", help="MIN,MAX video length of the multi splits (frames at 4 fps)")
    p.add_argument("--reference", type=Path, default=None,
                   help="a trained small reference model instead of training one with the multi recipe")
    p.add_argument("--reference-videos", type=int, default=160, help="videos per task of the reference's training splits")
    p.add_argument("--policy-steps", type=int, default=200, help="ReFoCUS policy steps (configs/multi.yaml)")
    p.add_argument("--sft-steps", type=int, default=None,
                   help="answerer SFT steps (default 5,000 with --rationale scan, else SFTConfig's 2,000)")
    p.add_argument("--rationale", choices=["sequence", "scan"], default="scan",
                   help="the answerers' rationale template (refocus.answerer.rationale): 'scan' (default) "
                        "lists each event's place and object, then the shown frames each is in, so the temporal "
                        "words carry the frame order the temporal-aware mask tests; 'sequence' is 'first X , then "
                        "Y ...', whose temporal words sit at fixed places (RESULTS, 'a rationale whose temporal "
                        "words carry the frame order')")
    p.add_argument("--steps", type=int, default=200, help="GRPO and KTR steps (equal)")
    p.add_argument("--rl-frames", choices=["uniform", "refocus", "oracle"], default="uniform",
                   help="frames the answerers see in GRPO / KTR: uniform (the Video-KTR authors' protocol), the "
                        "ReFoCUS policy's, or the synthetic oracle's (a diagnosis: the evidence always in view)")
    p.add_argument("--config", default=None, help="answerer RL config (default configs/answerer_tiny.yaml)")
    p.add_argument("--lr", type=float, default=None, help="override the config's learning rate (both methods)")
    p.add_argument("--questions-per-step", type=int, default=None, help="override the config's questions per RL step")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--max-heldout", type=int, default=None, help="evaluate on the first N held-out questions")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="data splits, reference model and policy")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default OUT/ktr.png)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from refocus.training.config import packaged_config

    torch.set_num_threads(args.threads)
    args.config = args.config or str(packaged_config("answerer_tiny"))
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_qa, heldout_qa = _data(args, root)
    ref = _reference(args, root)
    # the policy is needed first only when the answerers train on its frames
    policy = _policy(args, root, train_qa, ref) if args.rl_frames == "refocus" else None
    all_dirs = {seed: _answerers(args, root, train_qa, ref, seed, policy) for seed in seeds}
    policy = _policy(args, root, train_qa, ref)
    evals: dict = {}
    attribution: dict = {}
    for seed, dirs in all_dirs.items():
        tags = {name: name if name == "sft" else _run_name(args, name) for name in dirs}
        for name, d in dirs.items():
            for sel, spec in (("uniform", "uniform"), ("refocus", f"policy:{policy}")):
                key = f"{name}_{sel}_seed{seed}"
                evals[key] = _cached(root / "eval" / f"{tags[name]}_{sel}_seed{seed}.json",
                                     lambda d=d, spec=spec: _evaluate(d, heldout_qa, spec, args.budget,
                                                                      args.max_new_tokens, args.max_heldout))
        for name in ("sft", "ktr"):
            attribution[f"{name}_seed{seed}"] = _cached(root / "eval" / f"attribution_{tags[name]}_seed{seed}.json",
                                                        lambda d=dirs[name]: _attribution(d, heldout_qa, args.budget, args.max_heldout))
    ref_eval = _cached(root / "eval" / "reference_option_logits.json", lambda: {
        sel: _evaluate_logits(ref, heldout_qa, spec, args.budget, args.max_heldout)
        for sel, spec in (("uniform", "uniform"), ("refocus", f"policy:{policy}"), ("oracle", "oracle"))})

    def mean(name: str, sel: str) -> float:
        return round(float(np.mean([evals[f"{name}_{sel}_seed{s}"]["generated_accuracy"] for s in seeds])), 4)

    accuracy = {}
    for name in ("sft", "grpo", "ktr"):
        accuracy[name] = mean(name, "uniform")
        accuracy[f"{name}_refocus"] = mean(name, "refocus")

    def attr(name: str, key: str) -> float:
        return round(float(np.mean([attribution[f"{name}_seed{s}"][key] for s in seeds])), 4)

    result = {
        "accuracy": accuracy,
        "attribution": {
            "visual_precision": attr("ktr", "visual_precision"),
            "temporal_precision": attr("ktr", "temporal_precision"),
            "visual_base_rate": attr("ktr", "visual_base_rate"),
            "temporal_base_rate": attr("ktr", "temporal_base_rate"),
            "sft_visual_precision": attr("sft", "visual_precision"),
            "sft_temporal_precision": attr("sft", "temporal_precision"),
            "temporal_mask_visual_precision": attr("ktr", "temporal_mask_visual_precision"),
            "temporal_mask_order_bearing_precision": attr("ktr", "temporal_mask_order_bearing_precision"),
            "order_bearing_base_rate": attr("ktr", "order_bearing_base_rate"),
            "entropy_mask_visual_precision": attr("ktr", "entropy_mask_visual_precision"),
            "temporal_mask_answer_share": attr("ktr", "temporal_mask_answer_share"),
            "visual_mask_answer_share": attr("ktr", "visual_mask_answer_share"),
        },
        "reference_option_logits": {k: v["accuracy"] for k, v in ref_eval.items()},
        "training": _training_summary(args, root, seeds),
        "sft_heldout": {f"seed{s}": json.loads((root / f"seed{s}" / "sft" / "sft.json").read_text())["after"]
                        | {"option_logit_accuracy_before": json.loads(
                            (root / f"seed{s}" / "sft" / "sft.json").read_text())["before"]["option_logit_accuracy"]}
                        for s in seeds},
        "per_seed": {k: {"generated_accuracy": v["generated_accuracy"], "format_rate": v["format_rate"],
                         "per_category": v["per_category"]} for k, v in evals.items()},
        "setting": {"benchmark": "multi", "train_videos": args.train_videos, "heldout_videos": args.heldout_videos,
                    "heldout_evaluated": args.max_heldout or args.heldout_videos,
                    "frames": args.frames, "budget": args.budget, "seeds": seeds, "rl_steps": args.steps, "rl_frames": args.rl_frames,
                    "sft_steps": _sft_steps(args), "rationale": args.rationale, "policy_steps": args.policy_steps, "config": args.config,
                    "reference": str(args.reference) if args.reference else None,
                    "reference_recipe": None if args.reference else MULTI_REFERENCE_RECIPE,
                    "lr": args.lr, "questions_per_step": args.questions_per_step, "seconds": round(time.time() - t0, 1)},
    }
    png = args.plot or root / ("ktr.png" if args.rl_frames == "uniform" else f"ktr-on-{args.rl_frames}.png")
    _plot(result, _curves(args, root, seeds), png)
    print(f"{'answerer':10s} {'uniform':>8s} {'ReFoCUS':>8s}")
    for name in ("sft", "grpo", "ktr"):
        print(f"{name:10s} {accuracy[name]:8.3f} {accuracy[name + '_refocus']:8.3f}")
    print(f"attribution: {result['attribution']}")
    print(f"plot: {png}")
    print(json.dumps(result))
    return result


def _evaluate_logits(ref_dir: Path, heldout_qa: Path, spec: str, budget: int, max_items: int | None = None) -> dict:
    from refocus.answerer.data import load_items
    from refocus.evaluation import evaluate
    from refocus.reference import load_reference
    from refocus.selectors import get_selector

    res = evaluate(load_items(heldout_qa)[:max_items], load_reference(ref_dir), get_selector(spec, seed=0), budget, 1,
                   progress=False)
    return {"accuracy": res["budgets"][budget]["accuracy"]}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
