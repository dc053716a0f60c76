"""Stage 1 of the small reference model alone: can its language model answer from word frames?

Trains only the ``align`` stage (frames given as the words of the object they show, no vision
tower) on the ``--train`` benchmarks, then scores held-out questions (``--held``) the same way,
per category, from subsets that cover every evidence span (``positive``, as training draws
them), from the oracle's subsets (``oracle``: evidence frames first, whole appearances one after
another, :func:`refocus.data.indices.oracle_indices`) or from none (``negative``), at K = 4
and 8. Since the end-to-end accuracy is bounded by this stage's, a
task at chance here is a language-model (circuit) problem, not a vision or resolution one.

``--set FIELD=JSON`` / ``--mset FIELD=JSON`` override SmallReferenceTrainConfig /
SmallReferenceConfig fields. ``--isolated-fraction P``: that share of positive subsets is
filled with haystack frames only (no other object), a curriculum experiment.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/reference_stage1.py \\
        --train runs/ref/query --held runs/held/query --steps 400
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


def main() -> None:
    import torch

    from refocus.data.indices import oracle_indices
    from refocus.data.questions import load_questions
    from refocus.reference import small_training as st
    from refocus.reference.small_model import (
        SmallReferenceConfig,
        build_small_reference,
    )
    from refocus.seeding import seed_everything

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", action="append", required=True)
    ap.add_argument("--held", action="append", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--isolated-fraction", type=float, default=0.0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--mset", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    model_over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.mset)}
    cfg = st.SmallReferenceTrainConfig(align_steps=args.steps, lr=args.lr, model=SmallReferenceConfig(**model_over),
                                       **over)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    def load(paths):
        return [it for p in paths for it in load_questions(Path(p) / "qa.jsonl" if Path(p).is_dir() else p)]

    train, held = load(args.train), load(args.held)
    held_ids = {id(it) for it in held}
    videos, usable, _ = st._decode_items(train + held, cfg, False)
    train_u = [it for it in usable if id(it) not in held_ids]
    held_u = [it for it in usable if id(it) in held_ids]
    tok = st.training_tokenizer(train_u)
    model, proc = build_small_reference(tok, cfg.model)
    if cfg.compose_option_embeddings:
        st.compose_option_embeddings(model, tok)
    model.train()
    steps = st._StageSteps(model, proc, tok, cfg, rng, videos, train_u)

    plain = st.sample_subset

    def isolated(rng_, video, k, kind, max_per_span=2):
        if kind == "positive" and video.objects and rng_.random() < args.isolated_fraction:
            chosen = {int(rng_.choice(s)) for s in video.spans if len(s)}
            pool = [i for i, o in enumerate(video.objects) if o is None and i not in chosen]
            chosen |= {int(i) for i in rng_.choice(pool, k - len(chosen), replace=False)}
            return sorted(chosen)
        return plain(rng_, video, k, kind, max_per_span)

    st.sample_subset = isolated
    history: list[dict] = []
    start = time.perf_counter()
    st._run_stage(model, steps.stages()[0], cfg, history, False)
    seconds = time.perf_counter() - start
    st.sample_subset = plain
    model.eval()
    tally: dict = defaultdict(lambda: [0, 0])
    eval_rng = np.random.default_rng(999)
    scale = steps.code_scale()
    with torch.no_grad():
        for k in cfg.frames_per_example:
            for kind in ("positive", "oracle", "negative"):
                for s in range(0, len(held_u), 32):
                    chunk = held_u[s:s + 32]
                    batch, codes = [], []
                    for it in chunk:
                        v = videos[str(it.video)]
                        chosen = oracle_indices(v.timestamps, it.evidence, k) if kind == "oracle" else \
                            st.sample_subset(eval_rng, v, k, kind)
                        batch.append((it, [v.objects[i] for i in chosen]))
                        codes.append(steps.frame_codes(v, chosen, scale))
                    hidden, _ = st._pseudo_forward(model, steps.prompts, steps.word_ids, batch, steps.tokens, codes)
                    logits = st._masked_option_logits(model.lm_head(hidden[:, -1]).float()[:, steps.letter_ids], chunk)
                    for it, p in zip(chunk, logits.argmax(-1).tolist(), strict=True):
                        for cat in (it.category, "all"):
                            tally[(cat, kind, k)][0] += int(p == it.answer_index)
                            tally[(cat, kind, k)][1] += 1
    print(json.dumps({
        "align_seconds": round(seconds, 1),
        "train_acc": [round(h["acc"], 3) for h in history[:: max(1, len(history) // 8)]],
        "held_out": {f"{c}/{kind}@{k}": {"right": round(r / n, 3), "n": n} for (c, kind, k), (r, n) in sorted(tally.items())},
    }, indent=1))


if __name__ == "__main__":
    main()
