"""Does Video-KTR find the key tokens? Mask precision against the template's word tags.

For each question, the answerer reads its templated rationale (teacher-forced, so the tokens
and their tags are known: :mod:`refocus.answerer.rationale`) after evidence-covering frames.
The three attribution scores are computed exactly as in training (visual tokens removed by
the attention mask, frames shuffled before the processor, entropy), each mask keeps the top
``ratio`` of all rationale tokens of the set by the batch quantile rule, and its precision is
the share of kept tokens carrying the matching tag (visual: colour / shape words; temporal:
first / then / last and counts). The base rate (share of tagged tokens) is what a random
mask would score. Also reported: precision against "order-bearing" tokens (temporal words,
plus the object words of an order rationale, whose place in the list follows the video's order).
"""

from __future__ import annotations

import numpy as np

from refocus.answerer import ktr_math
from refocus.answerer.data import EvidenceVideos, evidence_frames
from refocus.answerer.generation import token_logprobs
from refocus.answerer.rationale import build_rationale
from refocus.answerer.sft import rationale_ids, rationale_template, shown_events
from refocus.errors import RefocusError


def rationale_scores(answerer, item, frames, rng: np.random.Generator, shown=None) -> dict:
    """Per-token visual / temporal / entropy scores of ``item``'s rationale, and its tags
    (``shown``: which event each frame shows, for templates that name frames)."""
    import torch

    rat = build_rationale(item, rationale_template(answerer), shown)
    ids = rationale_ids(answerer, rat)
    if len(ids) != len(rat.words) + 1:
        raise RefocusError(f"{answerer.name}: the tokenizer splits rationale words ({len(ids) - 1} tokens for "
                           f"{len(rat.words)} words); attribution precision needs a word-level tokenizer")
    comp = torch.tensor([ids], device=answerer.device)
    enc = answerer.encode(item, frames)
    with torch.no_grad():
        logits = answerer.completion_logits(enc, comp)
        logp = token_logprobs(logits, comp)
        masked = token_logprobs(answerer.completion_logits(enc, comp, visual_masked=True), comp)
        perm = rng.permutation(len(frames))
        shuffled = answerer.encode(item, [frames[i] for i in perm])
        shuf = token_logprobs(answerer.completion_logits(shuffled, comp), comp)
    tags = list(rat.tags) + [None]
    order = list(rat.order_bearing) + [False]
    return {"visual": (logp - masked)[0], "temporal": (logp - shuf)[0],
            "entropy": ktr_math.token_entropy(logits)[0], "tags": tags, "order_bearing": order}


def attribution_precision(answerer, items, videos: EvidenceVideos, k: int = 8, ratio: float = 0.2,
                          seed: int = 0) -> dict:
    """Precision (and base rate, recall) of each mask against the template tags over ``items``."""
    import torch

    rng = np.random.default_rng(seed)
    rows = []
    for item in items:
        v = videos.get(item)
        subset = evidence_frames(v, k, rng)
        rows.append(rationale_scores(answerer, item, [v.frames[i] for i in subset], rng, shown_events(v, subset)))
    if not rows:
        raise RefocusError("no questions for attribution")
    c = max(len(r["tags"]) for r in rows)
    valid = torch.zeros(len(rows), c, dtype=torch.bool)
    tags = {"visual": torch.zeros_like(valid), "temporal": torch.zeros_like(valid),
            "order_bearing": torch.zeros_like(valid)}
    scores = {name: torch.full((len(rows), c), float("nan")) for name in ("visual", "temporal", "entropy")}
    for i, r in enumerate(rows):
        n = len(r["tags"])
        valid[i, :n] = True
        for name in scores:
            scores[name][i, :n] = r[name].float().cpu()
        for name in ("visual", "temporal"):
            tags[name][i, :n] = torch.tensor([t == name for t in r["tags"]])
        tags["order_bearing"][i, :n] = torch.tensor(r["order_bearing"])
    out: dict = {"questions": len(rows), "tokens": int(valid.sum()), "ratio": ratio}
    for name in ("visual", "temporal", "entropy"):
        mask = ktr_math.top_ratio_mask(scores[name], valid, ratio)
        kept = max(1, int(mask.sum()))
        for tag in ("visual", "temporal", "order_bearing"):
            hit = int((mask & tags[tag]).sum())
            out[f"{name}_mask_{tag}_precision"] = hit / kept
            out[f"{name}_mask_{tag}_recall"] = hit / max(1, int(tags[tag].sum()))
        out[f"{name}_mask_answer_share"] = sum(
            bool(mask[i, j]) and r["tags"][j] == "answer" for i, r in enumerate(rows) for j in range(len(r["tags"]))
        ) / kept
    for tag in ("visual", "temporal", "order_bearing"):
        out[f"{tag}_base_rate"] = int(tags[tag].sum()) / int(valid.sum())
    out["visual_precision"] = out["visual_mask_visual_precision"]
    out["temporal_precision"] = out["temporal_mask_temporal_precision"]
    return out
