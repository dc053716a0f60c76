"""How far apart does the margin reward put `query` subsets that show the named object and
subsets that do not? (held-out videos, the reference as GRPO uses it)

Per question, 16 random subsets of ``--k`` frames and ``--hits`` subsets made of one frame of
the named object and ``k - 1`` random others are scored by the reference in one call
(``option_logits``, the margin reward of ``refocus.reference.reward``). Subsets are split by
whether they hold a frame of the named object ("hit") and whether they hold a frame of another
object whose asked attribute is one of the options (an "option object", which points to a
wrong answer). Prints one line per group, then one JSON line.

    python benchmarks/query_reward_gap.py --reference REF --data HELDOUT/qa.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    from refocus.data.evidence import evidence_frame_mask
    from refocus.data.questions import load_questions
    from refocus.reference import load_reference
    from refocus.reference.reward import margin_rewards
    from refocus.reference.small_training import frame_objects, option_object_frames
    from refocus.video.stores import FrameStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("--data", required=True, help="a `refocus synth query` qa.jsonl")
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--hits", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reference = load_reference(args.reference, device="cpu", dtype="float32", batch_size=16)
    frames = FrameStore(capacity=None)
    rng = np.random.default_rng(args.seed)
    rows = []
    for item in load_questions(args.data)[: args.questions]:
        decoded = frames.get(item, reference.image_size)
        t = len(decoded.timestamps)
        evidence = evidence_frame_mask(decoded.timestamps, item.evidence)
        option_objects = np.zeros(t, dtype=bool)
        option_objects[option_object_frames(item, frame_objects(item, decoded.timestamps))] = True
        subsets = [sorted(rng.choice(t, args.k, replace=False).tolist()) for _ in range(16)]
        for _ in range(args.hits):
            hit = int(rng.choice(np.flatnonzero(evidence)))
            rest = rng.choice(np.setdiff1d(np.arange(t), [hit]), args.k - 1, replace=False)
            subsets.append(sorted([hit, *rest.tolist()]))
        logits = reference.option_logits(item, decoded.frames, subsets)
        rewards = margin_rewards(logits, item.answer_index)
        right = logits.argmax(-1) == item.answer_index
        for subset, reward, ok in zip(subsets, rewards, right, strict=True):
            rows.append((bool(evidence[subset].any()), bool(option_objects[subset].any()), float(reward), bool(ok)))
    table = np.array(rows, dtype=float)
    hit, option = table[:, 0] > 0, table[:, 1] > 0
    groups = {
        "hit": hit, "hit_no_option_object": hit & ~option, "hit_and_option_object": hit & option,
        "miss": ~hit, "miss_no_option_object": ~hit & ~option, "miss_option_object": ~hit & option,
    }
    out = {}
    for name, mask in groups.items():
        out[name] = {"subsets": int(mask.sum()), "reward_mean": round(float(table[mask, 2].mean()), 3),
                     "reward_std": round(float(table[mask, 2].std()), 3),
                     "accuracy": round(float(table[mask, 3].mean()), 3)}
        print(f"{name:24s} {out[name]}")
    print(json.dumps({"groups": out, "setting": vars(args)}))


if __name__ == "__main__":
    main()
