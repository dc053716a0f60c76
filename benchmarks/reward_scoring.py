"""Reward scoring: frame reuse vs naive per-subset scoring, for every reference family.

For each architecture (tiny random checkpoints from ``tests/tiny_models.py`` at
``size="bench"``: 64 px frames, patch 8, a 4-layer vision tower against a 2-layer language
model of the same width), N subsets of K frames are drawn from a T-frame video and scored
three ways through the same adapter:

* naive (``frame_reuse=False``, batch size 1): naive per-subset scoring, processor + full
  model forward for one subset at a time, the reference the margins must equal;
* naive batched (``frame_reuse=False``, ``--batch-size`` subsets per forward): every subset's
  frames still go through the vision tower again;
* reuse (``frame_reuse=True``, ``--batch-size`` subsets per forward): each distinct frame
  through the vision tower once, subsets assembled from the cached features.

``speedup`` = naive / reuse, what the scorer gains over per-subset scoring (frame reuse and
batching together); ``speedup_reuse_only`` = naive batched / reuse, frame reuse alone. All
paths keep only the last position's logits. Times are medians of ``--repeats`` calls after
one warm-up call each, the three calls interleaved; ``speedup_best_of`` is the ratio of the
fastest calls, less sensitive to other jobs on a shared machine. Scenarios: ``filter`` (the
16 probe subsets of Appendix A for the same T and K: what ``refocus filter`` scores, the
N = 16 workload of the SPEC target, and the headline ``speedup`` when N = 16) and ``random``
(N random overlapping subsets, seeded; ``speedup_random``). ``bound`` is N*K frame slots / distinct frames: the
speedup frame reuse would reach if the vision tower were the whole cost (with random subsets
of K = 8 from T = 64 about 128 / 56 = 2.3x, whatever the implementation); ``vision_share`` is
the measured time of encoding all N*K slots (processor + vision tower + projector) divided by
the naive batched time, so the expected reuse-only speedup is about
1 / (1 - share + share / bound).

Prints one line per architecture and scenario, then a JSON dict as the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _subsets_random(num_frames: int, n: int, k: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(num_frames, size=k, replace=False).tolist()) for _ in range(n)]


def _subsets_filter(num_frames: int, k: int) -> list[list[int]] | None:
    try:
        from refocus.filtering.windows import filter_subsets
    except ImportError:
        return None
    return filter_subsets(num_frames, k=k)


def _geomean(values) -> float:
    return round(math.exp(statistics.fmean(math.log(v) for v in values)), 3)


def _timed(fn) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(family: str, path: Path, subsets: list[list[int]], args: argparse.Namespace) -> dict:
    import torch

    from refocus.data.questions import QAItem
    from refocus.reference import load_reference, margin_rewards

    reuse = load_reference(path, batch_size=args.batch_size, frame_reuse=True)
    naive = load_reference(path, batch_size=1, frame_reuse=False)
    batched = load_reference(path, batch_size=args.batch_size, frame_reuse=False)
    size = reuse.image_size
    frames = np.random.default_rng(args.seed + 1).integers(
        0, 256, (args.frames, size, size, 3), dtype=np.uint8
    )
    item = QAItem(
        id="bench",
        video=Path("bench.mp4"),
        question="What color is the square in the video?",
        options=("red", "blue", "green", "yellow"),
        answer="B",
    )
    fast = reuse.option_logits(item, frames, subsets)  # warm-up, and the values compared
    slow = naive.option_logits(item, frames, subsets)
    slow_batched = batched.option_logits(item, frames, subsets)
    reuse_times, naive_times, batched_times, vision_times = [], [], [], []
    slots = [i for s in subsets for i in s]
    for _ in range(args.repeats):  # interleaved, so changes in machine load hit all alike
        reuse_times.append(_timed(lambda: reuse.option_logits(item, frames, subsets)))
        naive_times.append(_timed(lambda: naive.option_logits(item, frames, subsets)))
        batched_times.append(_timed(lambda: batched.option_logits(item, frames, subsets)))
        with torch.inference_mode():
            vision_times.append(_timed(lambda: reuse._encode_union(frames, slots, len(subsets[0]))))
    t_reuse, t_naive = statistics.median(reuse_times), statistics.median(naive_times)
    t_batched, t_vision = statistics.median(batched_times), statistics.median(vision_times)
    best_speedup = min(naive_times) / min(reuse_times)
    margins_diff = max(
        float(np.abs(margin_rewards(fast, item.answer_index) - margin_rewards(other, item.answer_index)).max())
        for other in (slow, slow_batched)
    )
    distinct = len(set(slots))
    share = min(t_vision / t_batched, 1.0)
    return {
        "naive_ms": round(1000 * t_naive, 2),
        "naive_batched_ms": round(1000 * t_batched, 2),
        "reuse_ms": round(1000 * t_reuse, 2),
        "speedup": round(t_naive / t_reuse, 3),
        "speedup_reuse_only": round(t_batched / t_reuse, 3),
        "speedup_best_of": round(best_speedup, 3),
        "max_abs_diff": margins_diff,
        "max_abs_logit_diff": max(float(np.abs(fast - o).max()) for o in (slow, slow_batched)),
        "frame_slots": len(slots),
        "distinct_frames": distinct,
        "vision_share": round(share, 3),
        "bound": round(len(slots) / distinct, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--frames", type=int, default=64, help="T, frames in the video")
    parser.add_argument("--subsets", type=int, default=16, help="N, subsets per question")
    parser.add_argument("--k", type=int, default=8, help="K, frames per subset")
    parser.add_argument("--batch-size", type=int, default=16, help="subsets per forward")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-filter-scenario", action="store_true")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
    from tests.tiny_models import FAMILIES, build_tiny

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    families = list(FAMILIES) if args.families == "all" else args.families.split(",")
    scenarios = {"random": _subsets_random(args.frames, args.subsets, args.k, args.seed)}
    if not args.no_filter_scenario:
        probe = _subsets_filter(args.frames, args.k)
        if probe is not None:
            scenarios["filter"] = probe

    results: dict[str, dict[str, dict]] = {name: {} for name in scenarios}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            path = build_tiny(family, Path(tmp) / family, size="bench")
            for name, subsets in scenarios.items():
                r = _measure(family, path, subsets, args)
                results[name][family] = r
                print(
                    f"{family:16s} {name:7s} naive {r['naive_ms']:8.1f} ms  batched {r['naive_batched_ms']:8.1f} ms  "
                    f"reuse {r['reuse_ms']:8.1f} ms  speedup {r['speedup']:5.2f}x (best-of {r['speedup_best_of']:4.2f}x, "
                    f"reuse only {r['speedup_reuse_only']:4.2f}x)  distinct {r['distinct_frames']}/{r['frame_slots']}  "
                    f"vision share {r['vision_share']:.2f}  bound {r['bound']:.2f}x  "
                    f"max|d margin| {r['max_abs_diff']:.2e}",
                    flush=True,
                )
    # Headline: the workload N = 16 names (the filter's 16 probe subsets), random subsets beside it.
    headline = "filter" if "filter" in results and args.subsets == 16 else "random"
    main_results = results[headline]
    speedups = [r["speedup"] for r in main_results.values()]
    summary = {
        "speedup": _geomean(speedups),
        "speedup_kind": "naive per-subset scoring / frame-reuse scorer; geometric mean over architectures "
                        f"of median-time ratios, {headline} scenario",
        "speedup_min": min(speedups),
        "speedup_reuse_only": _geomean(r["speedup_reuse_only"] for r in main_results.values()),
        "speedup_random": _geomean(r["speedup"] for r in results["random"].values()),
        "speedup_random_bound": min(r["bound"] for r in results["random"].values()),
        "max_abs_diff": max(r["max_abs_diff"] for s in results.values() for r in s.values()),
        "architectures": families,
        "scenario": headline,
        "per_architecture": main_results,
        "setting": {
            "T": args.frames,
            "N": args.subsets,
            "K": args.k,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "threads": args.threads,
            "seed": args.seed,
        },
    }
    for name, per_arch in results.items():
        if name != headline:
            summary[f"{name}_scenario"] = {
                "speedup": _geomean(r["speedup"] for r in per_arch.values()),
                "speedup_reuse_only": _geomean(r["speedup_reuse_only"] for r in per_arch.values()),
                "per_architecture": per_arch,
            }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
