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
* cost in T: the fast sampler at ``--long-frames`` over ``--frames``; and the peak memory
  added by a replay forward + backward at both lengths (each in a fresh process).

Times are medians of ``--repeats`` runs after a warm-up; the T and long-T runs alternate and
the cost ratio is the median of per-pair ratios, so a burst of load from other jobs on a
shared machine hits both sides (the literal sampler runs once; with
``--literal-candidates`` below N it runs that many candidates and is scaled linearly to N,
which the output says). Prints one line per measurement, then a JSON dict as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def _peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from
    the parent across fork + exec, so a child would report the benchmark's own peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _replay_peak_mb(num_frames: int, args: argparse.Namespace) -> float:
    """Peak resident memory added by one replay forward + backward (run in a fresh process)."""
    from refocus.policy import FramePolicy, FramePolicyConfig

    torch.manual_seed(args.seed)
    policy = FramePolicy(FramePolicyConfig(tokens_per_frame=args.tokens_per_frame)).train()
    width = int(policy.config.vision_config["hidden_size"])
    features, question = _inputs(
        num_frames, args, width, policy.config.backbone_config["vocab_size"]
    )
    order = torch.stack([torch.randperm(num_frames)[: args.budget] for _ in range(args.candidates)])
    before = _peak_rss_kb()
    logprobs, entropies = policy.replay_logprobs(features, question, order[None])
    (logprobs.sum() + entropies.sum()).backward()
    return (_peak_rss_kb() - before) / 1024


def _probe_memory(num_frames: int, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--probe-memory", str(num_frames)]
    command += ["--tokens-per-frame", str(args.tokens_per_frame), "--budget", str(args.budget)]
    command += ["--candidates", str(args.candidates), "--seed", str(args.seed)]
    command += ["--question-tokens", str(args.question_tokens)]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    return json.loads(lines[-1])["peak_mb"]


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe_memory is not None:
        print(json.dumps({"peak_mb": _replay_peak_mb(args.probe_memory, args)}))
        return {}

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

    long_features, _ = _inputs(args.long_frames, args, width, vocab)
    fast(), fast(long_features)  # warm-up
    # Short and long runs alternate, so both see the same load on a shared machine; the cost
    # ratio is the median of the per-pair ratios.
    short_times, long_times = [], []
    for _ in range(args.repeats):
        short_s, sampled = _median_time(fast, 1)
        long_s, _ = _median_time(lambda: fast(long_features), 1)
        short_times.append(short_s)
        long_times.append(long_s)
    fast_s = statistics.median(short_times)
    ratio = statistics.median(lt / st for lt, st in zip(long_times, short_times, strict=True))
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

    print(
        f"fast at T={args.long_frames}: {statistics.median(long_times):.3f} s, "
        f"{ratio:.2f}x the time at T={args.frames} "
        f"({args.long_frames / args.frames:g}x the frames)"
    )

    mem_short, mem_long = _probe_memory(args.frames, args), _probe_memory(args.long_frames, args)
    mem_ratio = mem_long / mem_short
    print(
        f"replay forward + backward peak memory: {mem_short:.0f} MB at T={args.frames}, "
        f"{mem_long:.0f} MB at T={args.long_frames} ({mem_ratio:.2f}x)"
    )

    result = {
        "speedup_vs_recompute": round(speedup, 2),
        "replay_max_abs_diff": replay_diff,
        "cost_ratio_2048_vs_512": round(ratio, 3),
        "fast_s": round(fast_s, 4),
        "literal_s": round(literal_s, 3),
        "literal_same_selections": same,
        "replay_fwd_bwd_s": round(replay_s, 4),
        "replay_memory_ratio_2048_vs_512": round(mem_ratio, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
