"""``refocus analyze {niah,diversity,entropy,bins}``: the paper's analyses, PNG + JSON each.

* ``niah``: V-NIAH heatmap, total frames x needle position, accuracy and evidence recall per
  selector (paper Fig. 5) -> ``OUT/niah.{json,png}`` (grid videos in ``OUT/grid`` unless
  ``--grid-dir``).
* ``diversity``: mean pairwise JS / symmetric KL / Wasserstein between the policy's
  selection distributions per length group, uniform as contrast (Table 3, Appendix C)
  -> ``OUT/diversity.{json,png}``.
* ``entropy``: Kozachenko–Leonenko temporal entropy of sampled selections per training
  checkpoint and T' (Fig. 6) -> ``OUT/entropy.{json,png}``.
* ``bins``: accuracy from the policy's over-/under-k% likelihood bins vs uniform (Fig. 4)
  -> ``OUT/bins.{json,png}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from refocus.cli._common import summary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="the paper's analyses (niah heatmap, diversity, entropy, likelihood bins): PNG + JSON",
        description="Reproduce the paper's analyses of a trained frame-selection policy. Each "
        "writes a JSON file and a PNG figure into --out.",
    )
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    p = sub.add_parser("niah", help="V-NIAH heatmap: total frames x needle position (paper Fig. 5)",
                       description="Write needle-in-a-haystack videos on a grid of lengths and "
                       "needle positions, select frames with each selector, answer with the "
                       "answerer, and draw accuracy and evidence-recall heatmaps side by side.")
    p.add_argument("--policy", help="trained policy directory (adds selector policy:DIR)")
    p.add_argument("--selectors", help="comma-separated selector specs (default: uniform, plus "
                   "policy:DIR when --policy is given), e.g. uniform,random,policy:runs/x/policy")
    p.add_argument("--answerer", help="reference model directory that answers; without it only "
                   "evidence recall is measured")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--lengths", default="64,128,256,512,1024",
                   help="total frames of the grid videos (default 64,128,256,512,1024)")
    p.add_argument("--positions", type=int, default=8,
                   help="evenly spaced needle positions from start to end (default 8; 5 would "
                   "put every needle on uniform sampling's bin edges)")
    p.add_argument("--per-cell", type=int, default=2, help="videos per cell (default 2)")
    p.add_argument("--budget", type=int, default=8, help="frames each selector picks (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the grid and the selectors (default 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="selection runs for sampling selectors (default 1)")
    p.add_argument("--policy-mode", choices=["greedy", "sample", "distribution"],
                   help="mode of policy selectors (default: the selector's own, greedy)")
    p.add_argument("--grid-dir", help="where the grid videos are written or reused "
                   "(default OUT/grid); reused when its grid.json matches")
    p.add_argument("--size", type=int, default=96, help="frame side of the grid videos (default 96)")
    p.add_argument("--train-max-frames", type=int,
                   help="longest video the policy was trained on; longer lengths are marked")
    _device_option(p)
    p.set_defaults(func=run_niah)

    p = sub.add_parser("diversity", help="pairwise distances between selection distributions "
                       "per length group (paper Table 3)")
    p.add_argument("--policy", required=True, help="trained policy directory")
    p.add_argument("--data", required=True, help="question file (JSONL)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--samples", type=int, default=64, help="samples per item (default 64)")
    p.add_argument("--budget", type=int, default=8, help="frames per sampled selection (default 8)")
    p.add_argument("--max-items", type=int, default=200, help="first N items (default 200; 0 = all)")
    p.add_argument("--bins", type=int, help="bins of relative time compared (default 3 x budget)")
    p.add_argument("--thresholds", help="A,B: fixed frame-count groups short <= A < medium <= B "
                   "< long (default: tertiles)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    _device_option(p)
    p.set_defaults(func=run_diversity)

    p = sub.add_parser("entropy", help="temporal entropy of selections over training checkpoints "
                       "(paper Fig. 6)")
    p.add_argument("--run", required=True, help="training run directory (checkpoints/step-*, policy/)")
    p.add_argument("--data", required=True, help="question file (JSONL)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ks", default="4,8,16,32", help="selection sizes T' (default 4,8,16,32)")
    p.add_argument("--samples", type=int, default=16, help="samples per item and checkpoint (default 16)")
    p.add_argument("--max-items", type=int, default=100, help="first N items (default 100; 0 = all)")
    p.add_argument("--knn", type=int, default=1, help="k of the k-NN entropy estimator (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    _device_option(p)
    p.set_defaults(func=run_entropy)

    p = sub.add_parser("bins", help="accuracy from over-/under-k%% likelihood bins (paper Fig. 4)")
    p.add_argument("--policy", required=True, help="trained policy directory")
    p.add_argument("--answerer", required=True, help="reference model directory that answers")
    p.add_argument("--data", required=True, help="question file (JSONL)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--budget", type=int, default=8, help="frames from each bin (default 8)")
    p.add_argument("--percents", default="10,25,50", help="bin sizes k in %% (default 10,25,50)")
    p.add_argument("--samples", type=int, default=64, help="samples per item (default 64)")
    p.add_argument("--max-items", type=int, default=0, help="first N items (default 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    _device_option(p)
    p.set_defaults(func=run_bins)


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


# ---------------------------------------------------------------------------- helpers


def _numbers(text: str, name: str, cast=int) -> list:
    from refocus.errors import RefocusError

    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RefocusError(f"{name} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise RefocusError(f"{name} is empty")
    return values


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _questions(path: str) -> list:
    import sys

    from refocus.data.questions import load_questions
    from refocus.errors import RefocusError

    errors: list = []
    items = load_questions(path, errors=errors)
    for err in errors[:5]:
        print(f"warning: skipped {err}", file=sys.stderr)
    if not items:
        raise RefocusError(f"{path}: no valid questions")
    return items


def _policy(path: str, device: str, seed: int, mode: str | None = None):
    from refocus.selectors.policy import PolicySelector

    return PolicySelector.from_dir(path, device=device, seed=seed, mode=mode)


def _answerer(path: str, device: str):
    from refocus.reference import load_reference

    return load_reference(path, device=device)


def _max_items(n: int) -> int | None:
    return n if n and n > 0 else None


# ---------------------------------------------------------------------------- commands


def run_niah(args: argparse.Namespace) -> int:
    from refocus.analysis.niah import NiahConfig, run_niah_analysis, summary_text
    from refocus.errors import RefocusError
    from refocus.selectors import get_selector

    start = time.perf_counter()
    specs = _numbers(args.selectors, "--selectors", str) if args.selectors else ["uniform"]
    if args.policy:
        specs.append(f"policy:{args.policy}")
    specs = list(dict.fromkeys(s.strip() for s in specs))
    config = NiahConfig(
        lengths=tuple(_numbers(args.lengths, "--lengths")), positions=args.positions,
        per_cell=args.per_cell, budget=args.budget, seed=args.seed, seeds=args.seeds,
        size=args.size, train_max_frames=args.train_max_frames,
    )
    device = _device(args)
    selectors = []
    for spec in specs:
        if spec.partition(":")[0] == "policy":
            _, _, path = spec.partition(":")
            if not path:
                raise RefocusError("the policy selector needs a directory: policy:DIR")
            selectors.append(_policy(path, device, args.seed, args.policy_mode))
        else:
            selectors.append(get_selector(spec, seed=args.seed))
    answerer = _answerer(args.answerer, device) if args.answerer else None
    result = run_niah_analysis(answerer, selectors, args.out, config, grid_dir=args.grid_dir)
    cells = len(result["lengths"]) * len(result["positions"])
    summary(f"analyze niah: {summary_text(result)} ({cells} cells x {config.per_cell}, budget "
            f"{config.budget}) -> {Path(args.out) / 'niah.png'} ({time.perf_counter() - start:.0f} s)")
    return 0


def run_diversity(args: argparse.Namespace) -> int:
    from refocus.analysis.diversity import DiversityConfig, run_diversity_analysis, summary_text
    from refocus.cli._common import parse_int_pair

    start = time.perf_counter()
    config = DiversityConfig(
        budget=args.budget, samples=args.samples, max_items=_max_items(args.max_items),
        bins=args.bins, seed=args.seed,
        thresholds=parse_int_pair(args.thresholds, "--thresholds") if args.thresholds else None,
    )
    items = _questions(args.data)
    policy = _policy(args.policy, _device(args), args.seed)
    result = run_diversity_analysis(items, policy, args.out, config)
    summary(f"analyze diversity: {summary_text(result)} -> {Path(args.out) / 'diversity.png'} "
            f"({time.perf_counter() - start:.0f} s)")
    return 0


def run_entropy(args: argparse.Namespace) -> int:
    from refocus.analysis.entropy import EntropyConfig, run_entropy_analysis, summary_text

    start = time.perf_counter()
    config = EntropyConfig(ks=tuple(_numbers(args.ks, "--ks")), samples=args.samples,
                           max_items=_max_items(args.max_items), knn=args.knn, seed=args.seed)
    items = _questions(args.data)
    result = run_entropy_analysis(args.run, items, args.out, config, device=_device(args))
    summary(f"analyze entropy: {summary_text(result)}, {len(result['checkpoints'])} checkpoints "
            f"-> {Path(args.out) / 'entropy.png'} ({time.perf_counter() - start:.0f} s)")
    return 0


def run_bins(args: argparse.Namespace) -> int:
    from refocus.analysis.bins import BinsConfig, run_bins_analysis, summary_text

    start = time.perf_counter()
    config = BinsConfig(budget=args.budget, percents=tuple(_numbers(args.percents, "--percents", float)),
                        samples=args.samples, max_items=_max_items(args.max_items), seed=args.seed)
    items = _questions(args.data)
    device = _device(args)
    policy = _policy(args.policy, device, args.seed)
    answerer = _answerer(args.answerer, device)
    result = run_bins_analysis(items, answerer, policy, args.out, config)
    summary(f"analyze bins: {summary_text(result)} -> {Path(args.out) / 'bins.png'} "
            f"({time.perf_counter() - start:.0f} s)")
    return 0
