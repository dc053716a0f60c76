"""Memory knobs that must not change results: micro-batched sampling and replay (gradient
accumulation), the prefix in checkpointed segments, byte-capped stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from refocus.policy import FramePolicy, FramePolicyConfig
from refocus.training import grpo_math
from refocus.training.replay import accumulate_replay, micro_batches, sample_candidates

P, VOCAB, WIDTH = 4, 64, 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_policy(seed: int = 0) -> FramePolicy:
    torch.manual_seed(seed)
    config = FramePolicyConfig(
        tokens_per_frame=P, head_dim=16,
        backbone_config={"vocab_size": VOCAB, "hidden_size": 32, "head_dim": 8, "num_heads": 8,
                         "num_hidden_layers": 2, "chunk_size": 8},
    )
    return FramePolicy(config).eval()


def inputs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(t, P, WIDTH, generator=g) for t in lengths]
    ids = [torch.randint(0, VOCAB, (3 + i % 3,), generator=g) for i in range(len(lengths))]
    return feats, ids


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_micro_batches_cover_the_batch_in_order():
    assert micro_batches(5, None) == [slice(0, 5)]
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_batches(3, 8) == [slice(0, 3)]
    with pytest.raises(ValueError):
        micro_batches(3, 0)


def test_micro_batched_sampling_is_the_full_batch_sample():
    policy = make_policy()
    feats, ids = inputs([12, 9, 12, 15, 7])
    full = sample_candidates(policy, feats, ids, k=4, num_candidates=3, generator=gen(1))
    parts = sample_candidates(policy, feats, ids, k=4, num_candidates=3, micro_batch_size=2, generator=gen(1))
    direct = policy.select(feats, ids, k=4, num_candidates=3, generator=gen(1))
    for out in (parts, direct):
        assert torch.equal(out.order, full.order) and torch.equal(out.indices, full.indices)
        assert torch.allclose(out.logprobs, full.logprobs, atol=1e-6)
        assert torch.equal(out.frame_mask, full.frame_mask)


def test_segmented_prefix_matches_the_one_pass_prefix():
    policy = make_policy(seed=1)
    feats, ids = inputs([13, 10])
    out = policy.select(feats, ids, k=4, num_candidates=3, generator=gen(2))
    policy.prefix_segment_frames = 3  # 13 frames -> segments of 3, 3, 3, 3, 1 (+ the question)
    seg = policy.select(feats, ids, k=4, num_candidates=3, generator=gen(2))
    assert torch.equal(seg.order, out.order)
    assert torch.allclose(seg.logprobs, out.logprobs, atol=1e-5)


def _loss(policy, feats, ids, order):
    lp, ent = policy.replay_logprobs(feats, ids, order)
    weights = torch.linspace(-1, 1, order.shape[1]).view(1, -1, 1)
    return (weights * lp).sum() + 0.01 * ent.sum()


def test_checkpointed_segments_give_the_one_pass_gradients():
    plain, segmented = make_policy(seed=2).train(), make_policy(seed=2).train()
    segmented.activation_checkpointing_enable()  # per block, and along the sequence below
    segmented.prefix_segment_frames = 4
    feats, ids = inputs([14, 9], seed=3)
    order = plain.select(feats, ids, k=5, num_candidates=3, generator=gen(3)).order
    for model in (plain, segmented):
        _loss(model, feats, ids, order).backward()
    # equal up to float32 error: the chunked scan splits the sequence at other points
    scale = max(float(g.abs().max()) for g in grads(plain).values())
    assert max_diff(grads(plain), grads(segmented)) < 1e-5 * scale


def _grpo_step(micro_batch_size, seed=4):
    policy = make_policy(seed=5).train()
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(policy)
    feats, ids = inputs([11, 8, 11, 6, 9], seed=seed)
    with torch.no_grad():
        out = sample_candidates(policy, feats, ids, k=4, num_candidates=4, generator=gen(seed))
    rewards = torch.randn(5, 4, generator=gen(seed + 1))
    adv, _ = grpo_math.group_advantages(rewards, "group", 1e-4)
    old = out.logprobs.float() - 0.05  # off-policy by a little, so ratios are not all 1

    def loss_fn(logp, ent, part):
        return grpo_math.grpo_loss(logp, old[part], adv[part], ent, level="sequence",
                                   entropy_coef=0.002)

    result = accumulate_replay(accelerator, model, feats, ids, out.order, loss_fn, micro_batch_size)
    assert result.finite and result.logprobs.shape == (5, 4, 4)
    return grads(policy), result


def test_micro_batched_replay_accumulates_the_full_batch_gradient():
    full, full_result = _grpo_step(None)
    for size in (1, 2):
        parts, result = _grpo_step(size)
        assert max_diff(full, parts) < 1e-5, size
        assert abs(result.loss - full_result.loss) < 1e-6
        assert abs(result.stats["ratio_mean"] - full_result.stats["ratio_mean"]) < 1e-6
        assert torch.allclose(result.entropies, full_result.entropies, atol=1e-6)


# ---------------------------------------------------------------------------- stores


def test_feature_store_keeps_features_on_the_cpu_in_the_training_dtype_within_its_byte_cap(tmp_path, monkeypatch):
    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.video.stores import FeatureStore, FrameStore

    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    items = load_questions(make_benchmark("niah", tmp_path / "b", videos=3, frames=(16, 16), seed=0))
    policy = make_policy()
    frames = FrameStore(capacity=None, max_gb=0.5 * 16 * 64 * 64 * 3 * 3 / 2**30, disk_cache=False)
    one = 16 * P * WIDTH * 2  # T x P x Dv bfloat16 bytes of one video
    store = FeatureStore(policy, frames, capacity=None, max_gb=2.5 * one / 2**30, dtype=torch.bfloat16)
    for item in items:
        feats = store.get(item)
        assert feats.device.type == "cpu" and feats.dtype == torch.bfloat16
    assert store.nbytes == 2 * one and len(store._cache) == 2  # the oldest was evicted
    assert store.get(items[-1]) is feats  # the newest is a hit
    assert frames.nbytes <= 0.5 * 16 * 64 * 64 * 3 * 3 and len(frames._cache) == 1
    assert not (tmp_path / "cache" / "frames").exists()  # the disk cache was opted out of
    FrameStore(disk_cache=True).get(items[0], 32)
    assert any((tmp_path / "cache" / "frames").rglob("*.npy"))


def test_training_with_every_memory_option_matches_training_without(tmp_path, monkeypatch):
    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.reference import load_reference
    from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference
    from refocus.training.config import GRPOConfig
    from refocus.training.trainer import GRPOTrainer

    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    items = load_questions(make_benchmark("niah", tmp_path / "b", videos=4, frames=(16, 24), seed=0))
    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1),
                               vision_heads=(2, 2), text_hidden=32, text_layers=1, text_heads=2)
    ref = load_reference(save_untrained_small_reference(tmp_path / "ref", items, cfg))
    policy = {"tokens_per_frame": 1, "head_dim": 8,
              "backbone_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_heads": 4,
                                  "head_dim": 8, "state_size": 8, "chunk_size": 8}}
    base = dict(num_generations=4, per_device_train_batch_size=3, selection_sizes=[3],
                curriculum_starts=[0], max_steps=2, learning_rate=1e-3, learning_rate_reinit=1e-3,
                bf16=False, save_steps=100, policy=policy, seed=3)
    runs = {}
    for name, extra in {"plain": dict(gradient_checkpointing=False),
                        "memory": dict(gradient_checkpointing=True, micro_batch_size=1,
                                       prefix_segment_frames=5, feature_cache_gb=1e-4,
                                       frame_cache_gb=1e-3, frame_disk_cache=False)}.items():
        trainer = GRPOTrainer(GRPOConfig(**base, **extra), items, ref, tmp_path / name, progress=False)
        trainer.train()
        runs[name] = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    diff = max(float((runs["plain"][n] - runs["memory"][n]).abs().max()) for n in runs["plain"])
    assert diff < 1e-5
    assert np.isfinite(diff)
