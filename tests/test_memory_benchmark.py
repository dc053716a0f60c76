"""benchmarks/memory.py: its memory tracker, structural counts, fit and projection, and the
property it demonstrates (replay memory flat in the batch at a fixed micro-batch size)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"


@pytest.fixture(scope="module")
def memory():
    spec = importlib.util.spec_from_file_location("memory_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_tracker_counts_live_storages_and_their_peak(memory):
    x = torch.randn(100, 100)
    with memory.PeakTracker() as t:
        y = x * 2  # 40,000 bytes
        z = y.view(-1)  # a view: nothing new
        w = torch.empty(50, 100)  # 20,000 bytes
        del y, z, w
        assert t.current == 0
    assert t.peak == 60_000


def test_state_elements_and_terms(memory):
    # Mamba2-1.3B: E*D = 4096, n = 128 -> 4096 * 128 ssm + (4096 + 256) * 4 conv values per layer
    assert memory.state_elems(2048, 128) == 4096 * 128 + 4352 * 4
    c = dict(memory.BASE)
    t = memory.terms(c, d=64, layers=4, state=100)
    assert t["replay"]["boundaries"] == 1 * 4 * (c["T"] // c["s"]) * 100
    bigger = memory.terms(dict(c, G=2 * c["G"]), d=64, layers=4, state=100)
    assert bigger["replay"]["copies"] == 2 * t["replay"]["copies"]
    assert bigger["replay"]["segment_layers"] == t["replay"]["segment_layers"]


def test_fit_recovers_known_costs(memory):
    rng = np.random.default_rng(0)
    truth = {"replay": None, "sample": None}
    rows = []
    for c in memory.configurations(quick=False):
        t = memory.terms(c, d=64, layers=c["L"], state=memory.state_elems(64, 16))
        rows.append({"config": c, "terms": t})
    for name in truth:
        keys = list(rows[0]["terms"][name])
        truth[name] = {k: (1e5 if k == "const" else float(rng.uniform(1, 50))) for k in keys}
    for r in rows:
        r["peaks"] = {name: sum(truth[name][k] * v for k, v in r["terms"][name].items()) for name in truth}
    fit = memory.fit(rows)
    for name in truth:
        assert fit[name]["max_rel_error"] < 1e-6
        predicted = [sum(fit[name]["bytes_per_element"][k] * v for k, v in r["terms"][name].items()) for r in rows]
        assert np.allclose(predicted, [r["peaks"][name] for r in rows], rtol=1e-6)


def test_paper_policy_parameters_and_reference_estimate(memory):
    trainable, frozen = memory.policy_parameters()
    assert 1.2e9 < trainable < 1.5e9  # Mamba2-1.3B backbone + projector and heads
    assert 0.38e9 < frozen < 0.45e9  # SigLIP-so400m vision tower
    assert 15 < memory.reference_gb(1) < memory.reference_gb(4) < memory.reference_gb(16)


def test_replay_memory_is_flat_in_the_batch_at_a_fixed_micro_batch(memory):
    sys.path.insert(0, str(Path(__file__).parent))
    from accelerate import Accelerator
    from test_replay import gen, inputs, make_policy

    from refocus.training import grpo_math
    from refocus.training.replay import accumulate_replay, sample_candidates

    torch.set_num_threads(1)
    peaks = {}
    for micro in (1, None):
        for b in (2, 4):
            policy = make_policy(seed=5).train()
            policy.activation_checkpointing_enable()
            policy.prefix_segment_frames = 4
            accelerator = Accelerator(cpu=True)
            model = accelerator.prepare(policy)
            feats, ids = inputs([12] * b, seed=1)
            with torch.no_grad():
                out = sample_candidates(policy, feats, ids, k=4, num_candidates=4, generator=gen(1))
            adv, old = torch.randn(b, 4, generator=gen(2)), out.logprobs.float()

            def loss_fn(lp, ent, part, adv=adv, old=old):
                return grpo_math.grpo_loss(lp, old[part], adv[part], ent)

            with memory.PeakTracker() as tracker:
                accumulate_replay(accelerator, model, feats, ids, out.order, loss_fn, micro)
            peaks[(micro, b)] = tracker.peak
    assert peaks[(1, 4)] < 1.05 * peaks[(1, 2)]  # flat: one question's activations at a time
    assert peaks[(None, 4)] > 1.6 * peaks[(None, 2)]  # the whole batch at once grows with it


def test_sequence_checkpointing_keeps_replay_memory_nearly_flat_in_the_frames(memory):
    """Multi-axis checkpointing: with the prefix in checkpointed segments, what a replay
    backward keeps per frame is the segment-boundary state and one output, not a block input
    per layer; so its peak grows far slower with T than per-block checkpointing alone.
    (A boundary state that is a view of its segment's convolution input kept every segment's
    activations alive: 0.24 of the per-block growth here instead of 0.08.)"""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_replay import _loss, gen, inputs, make_policy

    torch.set_num_threads(1)
    peaks = {}
    for segment in (None, 4):
        for frames in (32, 128):
            policy = make_policy(seed=2).train()
            policy.activation_checkpointing_enable()
            policy.prefix_segment_frames = segment
            feats, ids = inputs([frames], seed=3)
            with torch.no_grad():
                order = policy.select(feats, ids, k=4, num_candidates=4, generator=gen(3)).order
            with memory.PeakTracker() as tracker:
                _loss(policy, feats, ids, order).backward()
            peaks[(segment, frames)] = tracker.peak
    per_block = peaks[(None, 128)] - peaks[(None, 32)]
    segmented = peaks[(4, 128)] - peaks[(4, 32)]
    assert per_block > 0
    assert segmented < 0.15 * per_block


def test_recurrent_states_own_their_storage():
    """The states a block records are copies: a view would keep the whole chunk's
    convolution input (every token) alive for as long as the state is kept."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_replay import inputs, make_policy

    from refocus.policy.prefix import run_prefix

    policy = make_policy(seed=1)
    feats, ids = inputs([20], seed=2)
    _, state = run_prefix(policy, feats[0][None], ids[0][None], segment_frames=6)
    for tensor in state.conv + state.ssm:
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_measure_runs_one_real_training_step_per_phase(memory, tmp_path, monkeypatch):
    """The benchmark's own measurement path (the trainer it drives must keep accepting its
    config) at a toy size: every phase is measured and the replay peak is positive."""
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    c = dict(memory.BASE, B=1, G=2, T=16, K=2, s=8, L=2)
    peaks = memory.measure(c, tmp_path, threads=1)
    assert set(peaks) >= {"sample", "reward", "replay"}
    assert all(v > 0 for v in peaks.values())
