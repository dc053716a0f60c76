"""Best accuracy on ``multi`` count / compare for a model that sees, per shown frame, only which
object it holds (or none) and the frames' order (the reward prompt's ``Frame{i}:`` markers are
positions in the subset, not times).

Frames are the oracle's K (every evidence span first, round robin, then uniform fill, as
``benchmarks/reference_tasks.py``'s ``evidence@K``). Two events of one object whose frames are
adjacent in the subset look like one event, so the count is ambiguous. For each frame pattern
(target / look-alike / none per frame for count; first / second object / none for compare)
the best guess is the answer most often seen with it; the ceiling is that guess's accuracy
over ``--samples`` planned videos (no rendering). Prints one line per category and K.

    PYTHONPATH=src python benchmarks/multi_ceiling.py --samples 6000
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    from refocus.data.synth.common import SynthConfig
    from refocus.data.synth.multi import plan_multi
    from refocus.selectors.oracle import oracle_indices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--frames", default="64,256", help="MIN,MAX video length in frames (at 4 fps)")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.frames.split(","))
    cfg, rng, fps = SynthConfig(), np.random.default_rng(args.seed), 4.0
    tables: dict = defaultdict(lambda: defaultdict(Counter))
    for i in range(args.samples):
        n = int(rng.integers(lo, hi + 1))
        s = plan_multi(rng, n, 1 + i % 2, cfg)  # video index 1 -> count, 2 -> compare
        shown = [None] * n
        for e in s.events:
            shown[e.start:e.stop] = [e.name] * e.length
        if s.category == "count":
            label = {s.meta["target"]: "T"}
            answer = s.meta["count"]
        else:
            (x, nx), (y, ny) = s.meta["counts"].items()
            label = {x: "X", y: "Y"}
            answer = "X" if nx > ny else "Y" if ny > nx else "="
        evidence = [s.events[j].span(fps) for j in s.evidence]
        for k in (4, 8):
            idx = oracle_indices(np.arange(n) / fps, evidence, k)
            pattern = tuple("-" if shown[j] is None else label.get(shown[j], "D") for j in idx)
            tables[(s.category, k)][pattern][answer] += 1
    for (cat, k), patterns in sorted(tables.items()):
        total = sum(sum(c.values()) for c in patterns.values())
        best = sum(max(c.values()) for c in patterns.values())
        print(f"{cat} K={k}: ceiling {best / total:.3f} over {total} videos ({len(patterns)} frame patterns)")


if __name__ == "__main__":
    main()
