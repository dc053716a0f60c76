"""Policy sampling: batched cached stepping vs the literal Algorithm 2, replay, cost in T.

A small policy (the default ``FramePolicyConfig`` backbone: width 64, 4 Mamba2 layers; the
question is ``--question-tokens`` random ids) selects ``--budget`` (T') frames ``--candidates``
(N) times from T random frame features of ``--tokens-per-frame`` (P) tokens each. The frame
features are random, i.e. the frozen vision tower is skipped: callers cache its output per
video, so it is not part of sampling.

* fast: ``FramePolicy.select`` -- the prefix [frames, question] once, its Mamba2 state copied
  to the N candidates, then T' batched single-token steps (batch N).
* literal: ``FramePolicy.select_recompute`` -- Algorithm 2 as printed: for every candidate
  and step the whole backbone re-runs over [frames, question, start, chosen values...].
  Both draw the same random numbers, so they select the same frames (checked and reported).
* replay: ``FramePolicy.replay_logprobs`` on the fast sampler's orders; max abs difference
  to the sampled log-probs. Also timed with a backward pass (the training step's cost).
* cost in T: the fast sampler at ``--long-frames`` over ``--frames``.

Times are medians of ``--repeats`` runs after a warm-up (the literal sampler runs once; with
``--literal-candidates`` below N it runs that many candidates and is scaled linearly to N,
which the output says). Prints one line per measurement, then a JSON dict as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _inputs(num_frames: int, args: argparse.Namespace, width: int, vocab: int):
    g = torch.Generator().manual_seed(args.seed)
    features = torch.randn(1, num_frames, args.tokens_per_frame, width, generator=g)
    question = torch.randint(0, vocab, (1, args.question_tokens), generator=g)
    return features, question


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=512, help="T")
    parser.add_argument("--long-frames", type=int, default=2048, help="T for the cost-in-T ratio")
    parser.add_argument("--candidates", type=int, default=16, help="N")
    parser.add_argument("--budget", type=int, default=32, help="T'")
    parser.add_argument("--tokens-per-frame", type=int, default=4, help="P")
    parser.add_argument("--question-tokens", type=int, default=32, help="L")
    parser.add_argument(
        "--literal-candidates", type=int, default=None, help="N for the literal run"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from refocus.policy import FramePolicy, FramePolicyConfig

    torch.manual_seed(args.seed)
    policy = FramePolicy(FramePolicyConfig(tokens_per_frame=args.tokens_per_frame)).eval()
    width = int(policy.config.vision_config["hidden_size"])
    vocab = int(policy.config.backbone_config["vocab_size"])
    n, k = args.candidates, args.budget
    features, question = _inputs(args.frames, args, width, vocab)
    prefix_tokens = args.frames * args.tokens_per_frame + args.question_tokens
    print(
        f"policy: {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M params; "
        f"T={args.frames}, P={args.tokens_per_frame}, L={args.question_tokens} "
        f"(prefix {prefix_tokens} tokens), N={n}, T'={k}; random frame features "
        f"(vision tower skipped); {args.threads} thread(s)"
    )

    def fast(feats=features):
        return policy.select(
            feats, question, k=k, num_candidates=n, generator=torch.Generator().manual_seed(1)
        )

    fast()  # warm-up
    fast_s, sampled = _median_time(fast, args.repeats)
    print(f"fast (prefix once + {k} batched steps): {fast_s:.3f} s")

    with torch.no_grad():
        prefix_s, _ = _median_time(
            lambda: policy.run_backbone(policy.embed_prefix(features, question)), args.repeats
        )
    print(f"  of which the prefix pass: {prefix_s:.3f} s")

    lit_n = args.literal_candidates or n
    start = time.perf_counter()
    literal = policy.select_recompute(
        features, question, k=k, num_candidates=lit_n, generator=torch.Generator().manual_seed(1)
    )
    literal_s = (time.perf_counter() - start) * n / lit_n
    scaled = f" (timed on {lit_n} candidates, scaled x{n / lit_n:g})" if lit_n != n else ""
    same = torch.equal(literal.order, sampled.order[:, :lit_n])
    lit_diff = (literal.logprobs - sampled.logprobs[:, :lit_n]).abs().max().item()
    print(
        f"literal Algorithm 2 ({n * k} full backbone passes): {literal_s:.2f} s{scaled}; "
        f"same selections as fast: {same}; log-prob max abs diff {lit_diff:.2e}"
    )
    speedup = literal_s / fast_s
    print(f"speed-up of cached batched stepping: {speedup:.1f}x")

    with torch.no_grad():
        replayed, _ = policy.replay_logprobs(features, question, sampled.order)
    replay_diff = (replayed - sampled.logprobs).abs().max().item()
    print(f"replay vs sampled log-probs: max abs diff {replay_diff:.2e}")

    policy.train()

    def replay_step():
        logprobs, entropies = policy.replay_logprobs(features, question, sampled.order)
        (logprobs.sum() + entropies.sum()).backward()

    replay_s, _ = _median_time(replay_step, args.repeats)
    policy.eval()
    print(f"replay forward + backward (N={n}, T'={k}): {replay_s:.3f} s")

    long_features, _ = _inputs(args.long_frames, args, width, vocab)
    fast(long_features)
    long_s, _ = _median_time(lambda: fast(long_features), args.repeats)
    ratio = long_s / fast_s
    print(
        f"fast at T={args.long_frames}: {long_s:.3f} s, {ratio:.2f}x the time at T={args.frames} "
        f"({args.long_frames / args.frames:g}x the frames)"
    )

    result = {
        "speedup_vs_recompute": round(speedup, 2),
        "replay_max_abs_diff": replay_diff,
        "cost_ratio_2048_vs_512": round(ratio, 3),
        "fast_s": round(fast_s, 4),
        "literal_s": round(literal_s, 3),
        "literal_same_selections": same,
        "replay_fwd_bwd_s": round(replay_s, 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
