"""How well a reference model answers each task from the frames it is shown (held-out videos).

For every question of every given benchmark (``refocus synth ... --seed S`` directories or
qa.jsonl files) the reference scores, in one call:

- ``evidence@K``: the oracle's K frames (every evidence span first, round robin, then uniform;
  K = 4 and 8) -- "from the evidence frames";
- ``no_evidence@K``: K frames drawn at random (seeded) among the frames outside every span;
- ``probe``: the 16 Appendix-A probe subsets (8 windows and their complements, ``--probe-k``
  frames each), split into those holding at least one evidence frame, those holding a frame of
  every span, and those holding none.

A subset is right when the answer's logit is the largest (margin > 0). Prints one JSON object:
per benchmark and category, the share right for each kind of subset and the counts.

    PYTHONPATH=src python benchmarks/reference_tasks.py --reference REF \\
        --data runs/held/query --data runs/held/niah --data runs/held/multi
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def subsets_of(item, timestamps, budgets, probe_k, rng):
    """(kind, subset) pairs of one item; kinds as in the module docstring."""
    from refocus.data.evidence import evidence_frame_mask, evidence_spans_frames
    from refocus.filtering.windows import filter_subsets
    from refocus.selectors.oracle import oracle_indices

    T = len(timestamps)
    mask = evidence_frame_mask(timestamps, item.evidence)
    spans = [s for s in evidence_spans_frames(timestamps, item.evidence) if len(s)]
    out = []
    for k in budgets:
        out.append((f"evidence@{k}", oracle_indices(timestamps, item.evidence, k)))
        outside = np.flatnonzero(~mask)
        if len(outside) >= k:
            out.append((f"no_evidence@{k}", sorted(int(i) for i in rng.choice(outside, k, replace=False))))
    for subset in filter_subsets(T, probe_k):
        chosen = set(subset)
        held = sum(bool(chosen.intersection(s.tolist())) for s in spans)
        if held == 0:
            out.append(("probe_without_evidence", subset))
        else:
            out.append(("probe_with_evidence", subset))
            if held == len(spans):
                out.append(("probe_with_all_evidence", subset))
    return out


def evaluate_reference(reference, items, budgets=(4, 8), probe_k=8, seed=0) -> dict:
    """{category: {kind: {"right", "n"}}} plus "all" over the categories."""
    from refocus.reference import margin_rewards
    from refocus.video.stores import FrameStore

    store = FrameStore(capacity=4)
    rng = np.random.default_rng(seed)
    tally: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for item in items:
        frames = store.get(item, reference.image_size)
        pairs = subsets_of(item, frames.timestamps, budgets, probe_k, rng)
        logits = reference.option_logits(item, frames.frames, [s for _, s in pairs])
        margins = margin_rewards(np.asarray(logits), item.answer_index)
        for (kind, _), m in zip(pairs, margins, strict=True):
            for cat in (item.category or "uncategorized", "all"):
                tally[cat][kind][0] += int(m > 0)
                tally[cat][kind][1] += 1
    return {cat: {kind: {"right": round(r / n, 4), "n": n} for kind, (r, n) in sorted(kinds.items())}
            for cat, kinds in tally.items()}


def main() -> None:
    from refocus.data.questions import load_questions
    from refocus.reference import load_reference

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--probe-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reference = load_reference(args.reference)
    start = time.perf_counter()
    result = {"reference": args.reference, "probe_k": args.probe_k, "benchmarks": {}}
    for data in args.data:
        qa = Path(data) / "qa.jsonl" if Path(data).is_dir() else Path(data)
        result["benchmarks"][str(data)] = evaluate_reference(reference, load_questions(qa), probe_k=args.probe_k,
                                                             seed=args.seed)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
