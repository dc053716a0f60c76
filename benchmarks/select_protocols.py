"""`refocus select --protocol greedy` vs `--protocol official` on the demo's setting.

Steps (the demo's pipeline, sizes as flags): a training and a held-out synthetic V-NIAH split
(different seeds, videos of 64-256 frames at 4 fps); the small reference model from the demo's
cache (trained on first use); reward-variance filtering; GRPO with ``configs/tiny.yaml``; then
the held-out split evaluated by the reference model at ``--budget`` frames with uniform, the
policy read greedily (the project's default), the policy read by the authors' export rule
(``official``: a sample at temperature 1, candidate 0, sorted, uniform for videos of <= 128
decoded frames), ``official`` without its fallback (``--uniform-below 0``), and one sample
(``sample``). Stochastic protocols run ``--seeds`` seeds.

Prints a table, then a JSON dict as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-videos", type=int, default=120)
    p.add_argument("--heldout-videos", type=int, default=60)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reference-steps", type=int, nargs=3, default=(1200, 1000, 200),
                   metavar=("ALIGN", "VISION", "JOINT"), help="small reference training steps (the demo's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    import torch

    from refocus.data.questions import load_questions
    from refocus.demo import DemoConfig, _synth, cache_root, get_small_reference
    from refocus.evaluation import evaluate
    from refocus.filtering.filter import FilterConfig, run_filter, write_filter_outputs
    from refocus.reference import load_reference
    from refocus.selectors import get_selector
    from refocus.selectors.policy import PolicySelector
    from refocus.training.config import load_config, packaged_config
    from refocus.training.train import train_policy
    from refocus.video.stores import FrameStore

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="select_protocols-"))
    align, vision, joint = args.reference_steps
    cfg = DemoConfig(train_videos=args.train_videos, heldout_videos=args.heldout_videos,
                     reference={"align_steps": align, "vision_steps": vision, "steps": joint})
    t0 = time.perf_counter()
    root = cache_root() / "demo-data"
    train_qa = _synth("niah", root / f"protocols-train-{cfg.train_videos}", cfg.train_videos, cfg.frames, 0, False)
    heldout_qa = _synth("niah", root / f"protocols-heldout-{cfg.heldout_videos}", cfg.heldout_videos, cfg.frames, 1, False)
    ref_dir, _ = get_small_reference([train_qa], cfg, progress=False)
    reference = load_reference(ref_dir, batch_size=16)
    fcfg = FilterConfig(tau=cfg.tau, frames_per_subset=cfg.filter_frames_per_subset)
    filtered = run_filter(load_questions(train_qa), reference, fcfg, progress=False)
    write_filter_outputs(filtered, out / "train.filtered.jsonl", fcfg)
    train_cfg = load_config(packaged_config("tiny"), seed=0).shortened(args.train_steps)
    run = train_policy(out / "train.filtered.jsonl", ref_dir, out / "train", config=train_cfg, progress=False)
    t_train = time.perf_counter() - t0

    heldout = load_questions(heldout_qa)
    store = FrameStore(4.0, 512)
    frames = [len(store.get(item, 32).timestamps) for item in heldout]
    selectors = {
        "uniform": get_selector("uniform"),
        "greedy": PolicySelector.from_dir(run.policy_dir, name="greedy", mode="greedy"),
        "official": PolicySelector.from_dir(run.policy_dir, name="official", mode="official"),
        "official_no_fallback": PolicySelector.from_dir(run.policy_dir, name="official_no_fallback",
                                                        mode="official", uniform_below=0),
        "sample": PolicySelector.from_dir(run.policy_dir, name="sample", mode="sample"),
        "oracle": get_selector("oracle"),
    }
    table = {}
    for name, selector in selectors.items():
        r = evaluate(heldout, reference, selector, [args.budget], args.seeds, store=store, progress=False)
        r = r["budgets"][args.budget]
        table[name] = {k: r.get(k) for k in ("accuracy", "accuracy_std", "evidence_recall", "seconds_per_item")}
    short = sum(t <= 128 for t in frames)
    print(f"held-out: {len(heldout)} items, {short} with <= 128 decoded frames (official -> uniform); "
          f"budget {args.budget}; GRPO {args.train_steps} steps ({t_train:.0f} s incl. reference/filter)")
    print(f"{'protocol':22s} {'accuracy':>14s} {'evidence recall':>16s}")
    for name, row in table.items():
        std = f" ± {row['accuracy_std']:.3f}" if row["accuracy_std"] else ""
        print(f"{name:22s} {row['accuracy']:.3f}{std:>8s} {row['evidence_recall']:16.3f}")
    print(json.dumps({"benchmark": "select_protocols", "budget": args.budget, "heldout_items": len(heldout),
                      "items_at_most_128_frames": short, "train_steps": args.train_steps, "results": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
