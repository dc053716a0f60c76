"""CUDA: the sampler and replay on the GPU agree with the CPU, the reference runs in bf16 by
default, and one training step runs on the device. Skipped without CUDA (``-m gpu``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def make_policy(seed: int = 0):
    from refocus.policy import FramePolicy, FramePolicyConfig

    torch.manual_seed(seed)
    config = FramePolicyConfig(
        tokens_per_frame=4, head_dim=16,
        backbone_config={"vocab_size": 64, "hidden_size": 64, "head_dim": 16, "num_heads": 8,
                         "num_hidden_layers": 2},
    )
    return FramePolicy(config).eval()


def inputs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(t, 4, 32, generator=g) for t in lengths]
    ids = [torch.randint(0, 64, (5,), generator=g) for _ in lengths]
    return feats, ids


def test_sampler_and_replay_on_cuda_match_the_cpu():
    cpu = make_policy()
    gpu = make_policy().cuda()
    feats, ids = inputs([40, 33])
    a = cpu.select(feats, ids, k=6, num_candidates=4, generator=torch.Generator().manual_seed(1))
    b = gpu.select(feats, ids, k=6, num_candidates=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.order, b.order.cpu())
    assert torch.allclose(a.logprobs, b.logprobs.cpu(), atol=1e-4)
    cpu.train()
    gpu.train()
    lp_a, ent_a = cpu.replay_logprobs(feats, ids, a.order)
    lp_b, ent_b = gpu.replay_logprobs(feats, ids, a.order)
    assert torch.allclose(lp_a, lp_b.cpu(), atol=1e-4) and torch.allclose(ent_a, ent_b.cpu(), atol=1e-4)
    (lp_a.sum() + ent_a.sum()).backward()
    (lp_b.sum() + ent_b.sum()).backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        if p.grad is not None:
            scale = max(1.0, float(p.grad.abs().max()))
            assert float((p.grad - q.grad.cpu()).abs().max()) < 1e-3 * scale, name


def test_micro_batched_replay_on_cuda_accumulates_the_full_batch_gradient():
    from accelerate import Accelerator

    from refocus.training import grpo_math
    from refocus.training.replay import accumulate_replay, sample_candidates

    results = []
    for micro in (None, 1):
        policy = make_policy(seed=2).cuda().train()
        policy.activation_checkpointing_enable()
        policy.prefix_segment_frames = 8
        accelerator = Accelerator()
        model = accelerator.prepare(policy)
        feats, ids = inputs([30, 24, 30], seed=3)
        with torch.no_grad():
            out = sample_candidates(policy, feats, ids, k=4, num_candidates=4,
                                    generator=torch.Generator().manual_seed(4))
        adv = torch.randn(3, 4, generator=torch.Generator().manual_seed(5)).cuda()
        old = out.logprobs.float() - 0.05

        def loss_fn(logp, ent, part, old=old, adv=adv):
            return grpo_math.grpo_loss(logp, old[part], adv[part], ent, entropy_coef=0.002)

        accumulate_replay(accelerator, model, feats, ids, out.order, loss_fn, micro)
        results.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    full, parts = results
    assert max(float((full[k] - parts[k]).abs().max()) for k in full) < 1e-5


def test_reference_defaults_to_bf16_on_cuda_and_one_training_step_runs(tmp_path, monkeypatch):
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
    ref_dir = save_untrained_small_reference(tmp_path / "ref", items, cfg)
    ref = load_reference(ref_dir)
    param = next(ref.model.parameters())
    assert param.device.type == "cuda" and param.dtype == torch.bfloat16
    fp32 = load_reference(ref_dir, device="cpu")
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    a = fp32.option_logits(items[0], frames, [[0, 2, 4]])
    b = ref.option_logits(items[0], frames, [[0, 2, 4]])
    assert np.abs(a - b).max() < 0.1

    policy = {"tokens_per_frame": 1, "head_dim": 8,
              "backbone_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_heads": 4,
                                  "head_dim": 8, "state_size": 8}}
    train_cfg = GRPOConfig(num_generations=4, per_device_train_batch_size=2, selection_sizes=[3],
                           curriculum_starts=[0], max_steps=1, bf16=True, gradient_checkpointing=True,
                           micro_batch_size=1, prefix_segment_frames=8, save_steps=100, policy=policy)
    trainer = GRPOTrainer(train_cfg, items, ref, Path(tmp_path / "run"), progress=False)
    assert next(trainer.policy.parameters()).device.type == "cuda"
    metrics = trainer.train_step()
    assert np.isfinite(metrics["train/loss"]) and metrics["train/grad_norm"] > 0
