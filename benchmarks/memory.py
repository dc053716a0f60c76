"""Peak memory of one GRPO training step, measured at reduced width, projected to the paper.

What runs: the real trainer (``GRPOTrainer.train_step``: sampling, reward scoring by an
untrained small reference model, replay backward, optimiser step) on synthetic V-NIAH
videos of a fixed length, with the memory options of ``training/replay.py`` and
``policy/prefix.py`` (micro-batches of questions, the prefix in checkpointed segments,
per-block checkpointing). After one warm-up step (decoding, feature encoding, optimiser
state), the next step is measured phase by phase: the peak bytes
of tensor storages allocated inside each phase (activations, temporaries, gradients; a
torch dispatch mode sees every op's outputs), CPU, float32.

What varies: candidates G, frames T, tokens per frame P, frames per candidate K, backbone
layers L, questions per micro-batch m and per step B. Each phase's peak is fitted
(non-negative least squares) as bytes per element of the structures that hold memory,
counted exactly for each configuration (width D, per-layer recurrent state S = E*D*n +
conv_dim*k, s frames per prefix segment):

    replay:  m*L*s*P*D  every layer's block input while one segment is recomputed
             m*s*P*D    one block's internals over that segment
             m*L*(T/s)*S  the segment-boundary states       m*G*S  one layer's candidate copies
             m*G*K*L*D  the candidates' chunk, every layer  m*G*K*(D+T)  one block, the scores
             + const
    sample:  m*s*P*D (one segment, one block at a time)   m*G*L*S (the candidates' states)
             m*G*T (scores)   + const

and evaluated at the paper's setting (Mamba2-1.3B policy: D 2048, 48 layers, n 128; 512
frames x 729 SigLIP-so400m tokens at 384 px; G 16, K 32; 24 questions per device; one
question per micro-batch; the segment length that minimises the peak). Assumptions, on the
conservative side: the per-element costs measured in float32 on CPU (transformers' torch
Mamba2 path, whose chunked scan materialises chunk x heads values per token; the ratio to D
is the same at both sizes) also hold on a GPU in bf16 with the mamba-ssm kernels, which
materialise less. The static part is counted, not fitted: policy weights, gradients and
AdamW states under DeepSpeed ZeRO-1 bf16 over 8 GPUs (bf16 weights and gradients, fp32
master weights, fp32 gradient partition and two moments sharded 8 ways; parameters counted
on a meta-device build of the paper's policy), the frozen SigLIP tower in bf16, the
reference model (InternVL3-8B) in bf16 scoring 4 subsets per forward (see
:func:`reference_gb`), one segment's features moved to the GPU, and 10 % allocator headroom.

    python benchmarks/memory.py [--quick] [--threads 1]

Last line: JSON {"projected_peak_gb", "fits_80gb", "setting": {...}, "fit": {...},
"measured": [...], "flat_in_batch": {...}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import weakref
from pathlib import Path

BASE = dict(B=4, G=8, T=64, P=4, K=8, m=1, s=16, L=4)
D, STATE, HEAD, EXPAND, CONV = 64, 16, 16, 2, 4  # reduced policy backbone (L layers varies)

PAPER = dict(frames=512, tokens_per_frame=729, candidates=16, selection_size=32, d_model=2048,
             n_layers=48, state_size=128, head_dim=64, expand=2, conv_kernel=4,
             questions_per_device=24, micro_batch_size=1, num_processes=8, reference_batch_size=4)


def state_elems(d: int, n: int, expand: int = 2, conv: int = 4, groups: int = 1) -> int:
    """Recurrent-state elements of one Mamba2 layer for one sequence: ssm (E*D*n, heads x
    head_dim x n) + conv ((E*D + 2*groups*n) x kernel)."""
    inner = expand * d
    return inner * n + (inner + 2 * groups * n) * conv


def terms(c: dict, d: int, layers: int, state: int) -> dict[str, dict[str, float]]:
    """Structural element counts of one configuration (see the module docstring)."""
    m, s = c["m"], min(c["s"], c["T"])
    seg_tokens = s * c["P"]
    return {
        "replay": {
            "segment_layers": m * layers * seg_tokens * d,
            "segment_block": m * seg_tokens * d,
            "boundaries": m * layers * math.ceil(c["T"] / s) * state,
            "copies": m * c["G"] * state,
            "candidates_layers": m * c["G"] * c["K"] * layers * d,
            "candidates_block": m * c["G"] * c["K"] * (d + c["T"]),
            "const": 1.0,
        },
        "sample": {
            "segment_block": m * seg_tokens * d,
            "copies": m * c["G"] * layers * state,
            "candidates": m * c["G"] * c["T"],
            "const": 1.0,
        },
    }


def configurations(quick: bool) -> list[dict]:
    vary = {"G": [4, 16], "T": [32, 128], "P": [1, 16], "K": [16], "m": [4], "B": [8], "L": [2, 8]}
    if quick:
        vary = {"G": [16], "T": [128], "P": [16], "K": [16], "m": [4], "B": [8], "L": [8]}
    out = [dict(BASE)]
    for key, values in vary.items():
        out += [dict(BASE, **{key: v}) for v in values]
    out += [dict(BASE, B=b, m=b) for b in (2, 8)]  # no micro-batching: grows with B
    return out


class PeakTracker:
    """Peak bytes of the tensor storages allocated while active (a torch dispatch mode: every
    op's outputs are seen, each new storage is counted until it is freed)."""

    def __init__(self) -> None:
        self.current = self.peak = 0
        self.live: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __enter__(self):
        import torch
        from torch.utils import _pytree as pytree
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                          if isinstance(t, torch.Tensor)}
                out = func(*args, **kwargs)
                for t in pytree.tree_leaves(out):
                    if not isinstance(t, torch.Tensor):
                        continue
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key in inputs or key in tracker.live or storage.nbytes() == 0:
                        continue  # a view or in-place result, or already counted
                    tracker.live[key] = storage.nbytes()
                    tracker.current += storage.nbytes()
                    tracker.peak = max(tracker.peak, tracker.current)
                    weakref.finalize(storage, tracker._free, key)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def measure(c: dict, workdir: Path, threads: int) -> dict:
    """Peak bytes per phase of one training step (the second) in configuration ``c``."""
    import torch

    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.reference import load_reference
    from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference
    from refocus.training.config import GRPOConfig
    from refocus.training.trainer import GRPOTrainer
    from refocus.video.config import DecodeConfig

    torch.set_num_threads(threads)
    bench = workdir / f"niah-{c['T']}"
    if not (bench / "qa.jsonl").is_file():
        make_benchmark("niah", bench, videos=8, frames=(c["T"], c["T"]), seed=0)
    items = load_questions(bench / "qa.jsonl")
    ref_dir = workdir / "ref"
    if not (ref_dir / "config.json").is_file():
        # 128 px frames: 4 x 4 = 16 tokens per frame, so P can go up to 16
        save_untrained_small_reference(ref_dir, items, SmallReferenceConfig(image_size=128))
    policy = {"tokens_per_frame": c["P"], "head_dim": 16,
              "backbone_config": {"hidden_size": D, "num_hidden_layers": c["L"], "state_size": STATE,
                                  "head_dim": HEAD, "num_heads": EXPAND * D // HEAD, "expand": EXPAND}}
    cfg = GRPOConfig(num_generations=c["G"], per_device_train_batch_size=c["B"], selection_sizes=[c["K"]],
                     curriculum_starts=[0], max_steps=2, bf16=False, gradient_checkpointing=True,
                     micro_batch_size=c["m"], prefix_segment_frames=c["s"], save_steps=100, policy=policy,
                     decode=DecodeConfig(max_frames=c["T"]))
    trainer = GRPOTrainer(cfg, items, load_reference(ref_dir), workdir / "run", progress=False)
    trainer.train_step()  # warm-up: decode, encode features, allocate optimiser state
    trainer.step += 1
    peaks: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(name: str):
        with PeakTracker() as tracker:
            yield
        peaks[name] = max(peaks.get(name, 0), tracker.peak)

    trainer.phase = phase
    trainer.train_step()
    return peaks


def fit(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Bytes per element of each term, per phase (non-negative least squares)."""
    import numpy as np
    from scipy.optimize import nnls

    out = {}
    for name in ("replay", "sample"):
        keys = list(rows[0]["terms"][name])
        a = np.array([[r["terms"][name][k] for k in keys] for r in rows], dtype=np.float64)
        b = np.array([r["peaks"][name] for r in rows], dtype=np.float64)
        scale = a.max(axis=0)
        coef, _ = nnls(a / scale, b)
        coef = coef / scale
        pred = a @ coef
        out[name] = {"bytes_per_element": dict(zip(keys, coef.tolist(), strict=True)),
                     "max_rel_error": float(np.max(np.abs(pred - b) / b))}
    return out


def policy_parameters() -> tuple[int, int]:
    """(trainable, frozen) parameter counts of the paper's policy, built on the meta device."""
    import torch

    from refocus.policy import FramePolicy, FramePolicyConfig

    siglip = {"model_type": "siglip_vision_model", "image_size": 378, "patch_size": 14, "hidden_size": 1152,
              "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
              "vision_use_head": False}
    mamba = {"hidden_size": 2048, "num_hidden_layers": 48, "state_size": 128, "head_dim": 64,
             "num_heads": 64, "expand": 2, "n_groups": 1, "vocab_size": 50288, "chunk_size": 256}
    with torch.device("meta"):
        policy = FramePolicy(FramePolicyConfig(vision_config=siglip, backbone_config=mamba, head_dim=256))
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    return trainable, frozen


def reference_gb(batch: int, frames: int = 32) -> float:
    """InternVL3-8B (Qwen2.5-7B text model: width 3584, MLP 18944; InternViT-300M at 448 px:
    1,025 patch tokens of width 1024, 256 tokens per frame after pixel shuffle) in bf16,
    scoring ``batch`` subsets of ``frames`` frames per forward (frame reuse: the union of a
    question's 16 x 32 frames encoded once, ``batch`` x ``frames`` frames per vision
    forward). Weights + the union's features + the larger of the vision forward and the
    language forward, each counted as the widest tensors one layer holds at once (hidden x 4
    + MLP x 3; no KV cache, last-position logits only)."""
    params = 7.6e9 + 0.3e9
    hidden, inter, seq = 3584, 18944, frames * 256 + 128
    language = batch * seq * (4 * hidden + 3 * inter) * 2
    vision = batch * frames * 1025 * (4 * 1024 + 3 * 4096) * 2
    union = 16 * frames * 256 * hidden * 2
    return (params * 2 + union + max(language, vision)) / 2**30


def project(coef: dict, segment_frames: int) -> dict[str, float]:
    p = PAPER
    c = dict(B=p["questions_per_device"], G=p["candidates"], T=p["frames"], P=p["tokens_per_frame"],
             K=p["selection_size"], m=p["micro_batch_size"], s=segment_frames, L=p["n_layers"])
    state = state_elems(p["d_model"], p["state_size"], p["expand"], p["conv_kernel"])
    t = terms(c, p["d_model"], p["n_layers"], state)
    phases = {name: sum(coef[name]["bytes_per_element"][k] * v for k, v in t[name].items()) / 2**30
              for name in ("replay", "sample")}
    trainable, frozen = policy_parameters()
    n = p["num_processes"]
    static = (trainable * (2 + 2 + (4 + 4 + 8) / n) + frozen * 2) / 2**30
    features = c["m"] * segment_frames * p["tokens_per_frame"] * 1152 * 2 / 2**30  # bf16, per segment
    reference = reference_gb(p["reference_batch_size"])
    peak = 1.10 * (static + reference + features + max(phases.values()))
    return {"peak_gb": peak, "static_gb": static, "reference_gb": reference, "features_gb": features,
            "replay_gb": phases["replay"], "sample_gb": phases["sample"],
            "policy_trainable_params": trainable, "policy_frozen_params": frozen}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    rows = []
    state = state_elems(D, STATE, EXPAND, CONV)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("REFOCUS_CACHE_DIR", str(tmp / "cache"))
        for c in configurations(args.quick):
            peaks = measure(c, tmp, args.threads)
            rows.append({"config": c, "peaks": peaks, "terms": terms(c, D, c["L"], state)})
            mb = {k: round(v / 2**20, 2) for k, v in peaks.items()}
            print(f"B={c['B']:>2} G={c['G']:>2} T={c['T']:>3} P={c['P']:>2} K={c['K']:>2} L={c['L']} m={c['m']} "
                  f"s={c['s']}: sample {mb['sample']:7.2f} MB  reward {mb['reward']:7.2f} MB  "
                  f"replay {mb['replay']:7.2f} MB", flush=True)
    coef = fit(rows)
    for name, f in coef.items():
        per = ", ".join(f"{k} {v:.3g}" for k, v in f["bytes_per_element"].items())
        print(f"fit {name}: bytes per element: {per}; max relative error {f['max_rel_error']:.1%}")
    flat = {}
    for label, pick in (("micro_batch_1", lambda c: c["m"] == 1 and c == dict(BASE, B=c["B"])),
                        ("whole_batch", lambda c: c["m"] == c["B"] and c == dict(BASE, B=c["B"], m=c["B"]))):
        chosen = sorted((r for r in rows if pick(r["config"])), key=lambda r: r["config"]["B"])
        flat[label] = {str(r["config"]["B"]): round(r["peaks"]["replay"] / 2**20, 3) for r in chosen}
    print(f"replay peak (MB) by questions per step B: {flat}")
    best = min((project(coef, s) | {"segment_frames": s} for s in (1, 2, 4, 8, 16, 32, 64)),
               key=lambda r: r["peak_gb"])
    print(f"paper setting, one 80 GB GPU: {best['peak_gb']:.1f} GB = 1.1 x (policy static "
          f"{best['static_gb']:.1f} + reference {best['reference_gb']:.1f} + features {best['features_gb']:.2f} "
          f"+ max(replay {best['replay_gb']:.1f}, sample {best['sample_gb']:.1f})) with "
          f"prefix_segment_frames={best['segment_frames']}")
    setting = dict(PAPER, prefix_segment_frames=best["segment_frames"], reference="InternVL3-8B bf16",
                   optimizer="AdamW, DeepSpeed ZeRO-1 bf16 over 8 GPUs")
    print(json.dumps({
        "projected_peak_gb": round(best["peak_gb"], 2),
        "fits_80gb": bool(best["peak_gb"] < 80.0),
        "setting": setting,
        "breakdown_gb": {k: round(v, 3) for k, v in best.items() if k.endswith("_gb")},
        "fit": coef,
        "flat_in_batch": flat,
        "measured": [{"config": r["config"], "peak_mb": {k: round(v / 2**20, 3) for k, v in r["peaks"].items()}}
                     for r in rows],
    }))


if __name__ == "__main__":
    main()
