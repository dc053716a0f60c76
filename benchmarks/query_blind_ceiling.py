"""How much of ``query`` a selector that never reads the question can solve.

A selector that sees only the video can find its objects and tell which of them the question
could name (those whose colour or shape is unique in the video: the named attribute must be).
Per budget K, over ``--samples`` planned videos (no rendering), the share of questions whose
named object gets a frame from:

- ``uniform``: K evenly spaced frames;
- ``object frames``: K frames drawn among all object frames (knows where objects are);
- ``unique-attribute objects``: one frame of each object with a unique colour or shape, drawn
  among them when there are more than K (knows where objects are and which could be named;
  the expectation, ``refocus.data.synth.query.blind_ceiling``).

Since ``SYNTH_VERSION`` 2 every object of a video has its own colour and shape, so every
object could be named and the last column is K / 10. With the first generator (12 objects over
6 colours and 5 shapes, ~2.8 of them nameable) it was 0.99 at K = 4 (benchmarks/RESULTS.md).

Prints one line per K, then JSON as the last line.

    PYTHONPATH=src python benchmarks/query_blind_ceiling.py --samples 2000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    from refocus.data.synth import plan_video
    from refocus.data.synth.common import SynthConfig
    from refocus.data.synth.query import NUM_OBJECTS, blind_ceiling, nameable_objects

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--frames", default="64,256", help="MIN,MAX video length in frames (the demo's)")
    ap.add_argument("--budgets", default="1,2,4,8")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.frames.split(","))
    budgets = [int(k) for k in args.budgets.split(",")]
    rng, cfg = np.random.default_rng(args.seed), SynthConfig()
    hits = {k: Counter() for k in budgets}
    candidates = []
    for index in range(args.samples):
        sample = plan_video("query", args.seed, index, (lo, hi), cfg)
        events, named = sample.events, sample.evidence[0]
        objects = [(e.color, e.shape) for e in events]
        unique = nameable_objects(objects)
        assert named in unique  # the generator's own rule: the named attribute is unique
        candidates.append(len(unique))
        object_frames = [(i, f) for i, e in enumerate(events) for f in range(e.start, e.stop)]
        for k in budgets:
            grid = np.linspace(0, sample.num_frames - 1, k).round().astype(int)
            ev = events[named]
            hits[k]["uniform"] += bool(((grid >= ev.start) & (grid < ev.stop)).any())
            drawn = rng.choice(len(object_frames), size=min(k, len(object_frames)), replace=False)
            hits[k]["object frames"] += any(object_frames[j][0] == named for j in drawn)
            hits[k]["unique-attribute objects"] += blind_ceiling(objects, k)  # its expectation
    n = args.samples
    print(f"objects with a unique colour or shape per video: mean {np.mean(candidates):.2f}, "
          f"range {min(candidates)}-{max(candidates)} (of {NUM_OBJECTS})")
    result = {"samples": n, "unique_attribute_objects_mean": round(float(np.mean(candidates)), 3),
              "recall": {}}
    for k in budgets:
        row = {name: round(count / n, 4) for name, count in hits[k].items()}
        result["recall"][k] = row
        print(f"K={k}: " + ", ".join(f"{name} {value:.2f}" for name, value in row.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
