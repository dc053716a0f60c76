"""Can the frame-selection policy learn to find `query`'s named object at all? A diagnosis.

GRPO on `query` raises the policy's training reward while held-out recall stays at uniform's
level (benchmarks/RESULTS.md, "Issue 19: the policy on `query`"). This study takes the reward
out of the question: it trains the same policy (``configs/tiny.yaml`` and its ``policy:``
section: the vision tower copied from ``--reference`` and frozen, and since 2026-12-07 its word
embeddings and projector too, ``language_from_reference``; ``--set
language_from_reference=false --set "backbone_config={hidden_size: 64, num_heads: 8}"`` is the
earlier fresh policy) by **behaviour cloning**, the
log-probability of one evidence frame (a random frame of the named object) at the first
selection step, and reports greedy named-object recall at ``--budget`` on training and
held-out questions as it goes.

Beside it, with the same frozen frame features, the same questions and the same number of
steps, a **bilinear matcher**: one learnt vector per named word (colour or shape, read from
the synthetic metadata) dotted with a learnt linear map of each frame's features. It tells
whether the features and the amount of data suffice for the matching the policy must learn.

``--questions-per-video N`` (N > 1) replaces each training video's question by up to N
questions about its objects whose colour or shape is unique in the video (as `refocus synth
query` asks them), so that the video alone no longer says which frame pays.

Prints one line per evaluation, then one JSON line. Example (the demo's splits)::

    python benchmarks/policy_readout.py --train TRAIN/qa.jsonl --heldout HELDOUT/qa.jsonl \\
        --reference REF --videos 400 --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def expand_questions(item, count: int, rng: np.random.Generator) -> list:
    """Up to ``count`` questions about the objects of ``item``'s video whose colour or shape is
    unique there ("What colour is the star?" / "What shape is the red object?"), with three
    distractor options carried by other objects of the video."""
    from refocus.data.synth.query import question_text

    events, fps = item.meta["events"], item.meta["fps"]
    candidates = []
    for event in events:
        for named, asked in (("shape", "color"), ("color", "shape")):
            if sum(other[named] == event[named] for other in events) == 1:
                candidates.append((event, named, asked))
    order = rng.permutation(len(candidates))
    out = []
    for j in order[:count]:
        event, named, asked = candidates[j]
        others = sorted({o[asked] for o in events if o[asked] != event[asked]})
        if len(others) < 3:
            continue
        options = [event[asked], *rng.choice(others, 3, replace=False).tolist()]
        options = [options[i] for i in rng.permutation(4)]
        question = question_text(asked, event["color"], event["shape"])
        first, last = event["frames"]
        out.append(dataclasses.replace(
            item, id=f"{item.id}-{named}-{event[named]}", question=question,
            options=tuple(options), answer="ABCD"[options.index(event[asked])],
            evidence=((first / fps, (last + 1) / fps),),
            meta={**item.meta, "named": named, "asked": asked, "color": event["color"], "shape": event["shape"]},
        ))
    return out


def main() -> None:
    from refocus.data.evidence import evidence_frame_mask
    from refocus.data.questions import load_questions
    from refocus.policy import policy_prompt
    from refocus.reference import load_reference
    from refocus.training.config import load_config, packaged_config
    from refocus.training.core import build_policy
    from refocus.video.stores import FeatureStore, FrameStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="a `refocus synth query` qa.jsonl (training)")
    ap.add_argument("--heldout", required=True, help="a `refocus synth query` qa.jsonl (held out)")
    ap.add_argument("--reference", required=True, help="the small reference checkpoint (its vision tower)")
    ap.add_argument("--videos", type=int, default=400, help="training videos (default 400)")
    ap.add_argument("--questions-per-video", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="the policy's (tiny.yaml's rate; default 1e-3)")
    ap.add_argument("--bilinear-lr", type=float, default=1e-2)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="a policy config field, e.g. --set reinit_norm_weight=1.0")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    overrides = {}
    for entry in args.set:
        key, value = entry.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    # merged into tiny.yaml's policy section (a keyword override would replace the whole section)
    cfg = load_config(packaged_config("tiny"), sets={"policy": overrides} if overrides else None, seed=args.seed)
    policy, tokenizer = build_policy(cfg, load_reference(args.reference, device="cpu", dtype="float32"))
    frames = FrameStore(cfg.decode.fps, cfg.decode.max_frames, capacity=None)
    features = FeatureStore(policy, frames, capacity=None)

    def prepare(items):
        out = []
        for item in items:
            feats = features.get(item)
            stamps = frames.get(item, int(policy.config.image_size)).timestamps
            mask = evidence_frame_mask(stamps, item.evidence)
            word = item.meta[item.meta["named"]]
            out.append((feats, policy_prompt(policy.config, tokenizer, item), mask, word))
        return out

    train_items = load_questions(args.train)[: args.videos]
    if args.questions_per_video > 1:
        train_items = [q for item in train_items for q in expand_questions(item, args.questions_per_video, rng)]
    print(f"policy: vision tower {policy.config.vision_model_type}, backbone width "
          f"{policy.config.backbone_hidden_size}, overrides {overrides}", flush=True)
    start = time.perf_counter()
    train, heldout = prepare(train_items), prepare(load_questions(args.heldout))
    probe = train[:100]
    print(f"{len(train)} training questions on {args.videos} videos, {len(heldout)} held out; "
          f"features {time.perf_counter() - start:.0f} s", flush=True)

    # --- the policy, behaviour cloning --------------------------------------------------
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def policy_recall(data) -> float:
        policy.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(data), 32):
                chunk = data[i : i + 32]
                out = policy.select([c[0] for c in chunk], [c[1] for c in chunk], args.budget, mode="greedy")
                hits += sum(bool(c[2][idx].any()) for c, idx in zip(chunk, out.indices[:, 0].tolist(), strict=True))
        policy.train()
        return hits / len(data)

    curve = []
    for step in range(1, args.steps + 1):
        batch = [train[i] for i in rng.choice(len(train), args.batch_size, replace=False)]
        order = torch.tensor([[[int(rng.choice(np.flatnonzero(c[2])))]] for c in batch])
        logp, _ = policy.replay_logprobs([c[0] for c in batch], [c[1] for c in batch], order)
        loss = -logp.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps:
            point = {"step": step, "loss": round(loss.item(), 3), "train": policy_recall(probe),
                     "heldout": policy_recall(heldout), "seconds": round(time.perf_counter() - start)}
            curve.append(point)
            print(f"policy   {point}", flush=True)

    # --- the bilinear matcher on the same frozen features -----------------------------------
    words = sorted({c[3] for c in train + heldout})
    index = {w: i for i, w in enumerate(words)}
    width = train[0][0].shape[-1]
    embed, proj = torch.nn.Embedding(len(words), 64), torch.nn.Linear(width, 64)
    bopt = torch.optim.Adam([*embed.parameters(), *proj.parameters()], lr=args.bilinear_lr)

    def scores(feats, word):
        return proj(feats[:, -1].float()) @ embed.weight[index[word]]

    def bilinear_recall(data) -> float:
        with torch.no_grad():
            return float(np.mean([bool(c[2][scores(c[0], c[3]).topk(min(args.budget, len(c[2]))).indices].any())
                                  for c in data]))

    bilinear = []
    for step in range(1, args.steps + 1):
        batch = [train[i] for i in rng.choice(len(train), args.batch_size, replace=False)]
        loss = sum(-torch.logsumexp(scores(c[0], c[3]).log_softmax(0)[torch.from_numpy(c[2])], 0)
                   for c in batch) / len(batch)
        bopt.zero_grad()
        loss.backward()
        bopt.step()
        if step % args.every == 0 or step == args.steps:
            point = {"step": step, "train": bilinear_recall(probe), "heldout": bilinear_recall(heldout)}
            bilinear.append(point)
            print(f"bilinear {point}", flush=True)

    print(json.dumps({
        "policy": curve[-1], "bilinear": bilinear[-1], "policy_curve": curve,
        "setting": {"videos": args.videos, "questions": len(train), "heldout": len(heldout),
                    "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                    "budget": args.budget, "policy_overrides": overrides,
                    "questions_per_video": args.questions_per_video},
    }))


if __name__ == "__main__":
    main()
