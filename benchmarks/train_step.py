"""Where a GRPO training step spends its time: sampling / reward / update.

Builds a small synthetic V-NIAH set and an untrained small reference model (same architecture
and sizes as the demo's), runs a few steps of ``configs/tiny.yaml`` and prints the mean split.
The first step is dropped (it decodes videos and encodes frames once).

    python benchmarks/train_step.py [--steps 6] [--videos 16]

Last line: JSON {"sample_s", "reward_s", "update_s", "share": {...}, "config": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.reference import load_reference
    from refocus.reference.small_model import save_untrained_small_reference
    from refocus.training.config import load_config, packaged_config
    from refocus.training.trainer import GRPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("REFOCUS_CACHE_DIR", str(tmp / "cache"))
        qa = make_benchmark("niah", tmp / "niah", videos=args.videos, frames=(64, 256), seed=0)
        items = load_questions(qa)
        save_untrained_small_reference(tmp / "ref", items)
        cfg = load_config(packaged_config("tiny")).shortened(args.steps + 1)
        trainer = GRPOTrainer(cfg, items, load_reference(tmp / "ref"), tmp / "run", progress=False)
        rows = []
        for _ in range(args.steps + 1):
            rows.append(trainer.train_step())
            trainer.step += 1
        rows = rows[1:]
        split = {k: float(np.mean([r[f"time/{k}"] for r in rows])) for k in ("sample", "reward", "update")}
        total = sum(split.values())
        for k, v in split.items():
            print(f"{k:>7}: {v:.3f} s/step ({v / total:.0%})")
        print(json.dumps({
            "sample_s": round(split["sample"], 4), "reward_s": round(split["reward"], 4),
            "update_s": round(split["update"], 4),
            "share": {k: round(v / total, 3) for k, v in split.items()},
            "config": {"questions_per_step": cfg.per_device_train_batch_size, "num_generations": cfg.num_generations,
                       "k": [r["select/k"] for r in rows], "threads": args.threads},
        }))


if __name__ == "__main__":
    main()
