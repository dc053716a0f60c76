"""Hand-computed checks of the paper-exact defaults: Eq. 2's product ratio, d_model-wide Q/K with
sqrt(d_model) scaling (B.2, B.4), B.6.2's prompt, the weight-decay groups and the authors'
export rule (incl. its uniform fallback)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from refocus.policy import (
    PAPER_PROMPT,
    QUESTION_FIRST_PROMPT,
    FramePolicy,
    FramePolicyConfig,
    policy_prompt,
    tokenize_question,
)
from refocus.policy.processing import split_prompt
from refocus.selectors.policy import PolicySelector, official_export
from refocus.training import grpo_math
from refocus.training.config import GRPOConfig
from refocus.training.core import optimizer_groups

BACKBONE = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3, "head_dim": 8, "num_heads": 8}


def tiny_policy(**kw) -> FramePolicy:
    torch.manual_seed(0)
    return FramePolicy(FramePolicyConfig(tokens_per_frame=4, backbone_config=BACKBONE, **kw)).eval()


# ------------------------------------------------------------------ Eq. 2: product ratio


def test_subset_ratio_is_the_product_of_step_ratios():
    new = torch.log(torch.tensor([[[0.5, 0.2, 0.4]]]))  # (B=1, G=1, K=3)
    old = torch.log(torch.tensor([[[0.25, 0.4, 0.1]]]))
    # step ratios 2, 0.5, 4 -> subset ratio 4; sequence: (2 * 0.5 * 4) ** (1/3)
    assert math.isclose(grpo_math.sequence_log_ratio(new, old, "subset").exp().item(), 4.0, rel_tol=1e-6)
    assert math.isclose(grpo_math.sequence_log_ratio(new, old, "sequence").exp().item(), 4 ** (1 / 3), rel_tol=1e-6)
    assert torch.allclose(grpo_math.sequence_log_ratio(new, old, "token").exp(), torch.tensor([[[2.0, 0.5, 4.0]]]))
    adv = torch.tensor([[1.5]])
    loss, stats = grpo_math.policy_loss(new, old, adv)  # the default level is Eq. 2's
    assert math.isclose(loss.item(), -4.0 * 1.5, rel_tol=1e-6) and math.isclose(stats["ratio_mean"], 4.0, rel_tol=1e-6)
    assert GRPOConfig().importance_sampling_level == "subset"


def test_subset_gradient_is_k_times_the_sequence_gradient_at_the_sampling_policy():
    k = 4
    logits = torch.randn(2, 3, k, generator=torch.Generator().manual_seed(1), requires_grad=True)
    old = torch.nn.functional.logsigmoid(logits).detach()
    adv = torch.tensor([[1.0, -0.5, 0.25], [0.3, 0.0, -1.0]])
    grads = {}
    for level in ("subset", "sequence"):
        loss, _ = grpo_math.policy_loss(torch.nn.functional.logsigmoid(logits), old, adv, level)
        grads[level], = torch.autograd.grad(loss, logits)
    # ratio 1 at new == old: d/dtheta of -mean_g A_g * sum_k logp (subset) vs. mean_k (sequence)
    assert torch.allclose(grads["subset"], k * grads["sequence"], atol=1e-7)
    expected = -(adv[..., None] * torch.sigmoid(-logits.detach())) / adv.numel()
    assert torch.allclose(grads["subset"], expected, atol=1e-7)


# ------------------------------------------------------------------ B.2 / B.4: Q/K heads


def test_query_key_heads_are_d_model_wide_and_scores_divide_by_sqrt_d_model():
    policy = tiny_policy()
    assert policy.key_head.weight.shape == policy.query_head.weight.shape == (32, 32)
    assert policy.config.qk_dim == 32 and policy.config.head_dim is None
    with torch.no_grad():
        policy.logit_scale.fill_(3.0)
    keys = torch.zeros(1, 2, 32)
    keys[0, 0, :4] = 1.0  # K_0 . q = 4 * 2 = 8
    keys[0, 1, 0] = -1.0  # K_1 . q = -2
    q = torch.full((1, 32), 2.0)
    logits = policy.frame_logits(keys, q)
    assert torch.allclose(logits, torch.tensor([[3 * 8 / math.sqrt(32), 3 * -2 / math.sqrt(32)]]))
    narrow = tiny_policy(head_dim=8)  # the option: narrower heads, scores / sqrt(8)
    assert narrow.key_head.weight.shape == (8, 32)
    with torch.no_grad():
        narrow.logit_scale.fill_(1.0)
    assert torch.allclose(narrow.frame_logits(torch.ones(1, 1, 8), torch.ones(1, 8)), torch.tensor([[8 / math.sqrt(8)]]))


# ------------------------------------------------------------------ B.6.2: the prompt


class _Chars:
    """A tokenizer that maps each character to its code point (so ids spell the text)."""

    def __call__(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) % 64 for c in text]}


def test_the_policy_reads_the_b62_prompt_through_its_tokenizer():
    item = SimpleNamespace(question="Where is the ball?", options=("left", "right"))
    before, after = split_prompt(PAPER_PROMPT, "Where is the ball?\nA. left\nB. right")
    assert before == "<|system|>You are a helpful AI assistant.<|endoftext|>\n<|user|>\n"
    assert after == "\nWhere is the ball?\nA. left\nB. right\n<|endoftext|>"
    ids = tokenize_question(_Chars(), item)
    assert ids.before.tolist() == [ord(c) % 64 for c in before]
    assert ids.after.tolist() == [ord(c) % 64 for c in after]
    policy = tiny_policy()
    assert policy_prompt(policy.config, _Chars(), item).after.tolist() == ids.after.tolist()
    bare = policy_prompt(SimpleNamespace(prompt_template="{frames}{question}", question_blind=False), _Chars(), item)
    assert bare.before.numel() == 0 and bare.after.tolist() == [ord(c) % 64 for c in "Where is the ball?\nA. left\nB. right"]
    # the frames sit between the two parts: [before, frames, after] is what the backbone reads
    feats = torch.randn(1, 3, 4, 32)
    embeds = policy.embed_prefix(feats, ids.after[None], ids.before[None])
    l0 = len(ids.before)
    assert embeds.shape[1] == l0 + 3 * 4 + len(ids.after)
    assert torch.allclose(embeds[0, :l0], policy.backbone.embeddings(ids.before))
    assert torch.allclose(embeds[0, l0 : l0 + 12], policy.projector(feats).reshape(12, 32))
    with pytest.raises(Exception, match="frames"):
        FramePolicyConfig(prompt_template="{question} only")
    # the question may also come before the frames, but the selection must start after it
    first = policy_prompt(SimpleNamespace(prompt_template=QUESTION_FIRST_PROMPT, question_blind=False), _Chars(), item)
    text = [ord(c) % 64 for c in "Where is the ball?\nA. left\nB. right"]
    assert first.before.tolist() == text and first.after.tolist() == text
    FramePolicyConfig(prompt_template=QUESTION_FIRST_PROMPT)
    with pytest.raises(Exception, match="after"):
        FramePolicyConfig(prompt_template="{question}{frames}")


# ------------------------------------------------------------------ weight decay


def test_no_weight_decay_on_the_logit_scale_norms_and_biases():
    policy = tiny_policy()
    groups = optimizer_groups(policy, GRPOConfig(weight_decay=0.01, learning_rate=1e-5, learning_rate_reinit=1e-4))
    names = {id(p): n for n, p in policy.named_parameters()}
    by_group = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    no_decay = by_group["reinitialised/no_decay"] | by_group["pretrained/no_decay"]
    decay = by_group["reinitialised/decay"] | by_group["pretrained/decay"]
    for name in ("logit_scale", "backbone.norm_f.weight", "backbone.layers.0.norm.weight",
                 "backbone.layers.2.mixer.norm.weight", "value_head.bias", "projector.0.bias",
                 "backbone.layers.1.mixer.conv1d.bias", "backbone.layers.1.mixer.dt_bias",
                 "backbone.layers.1.mixer.A_log", "backbone.layers.1.mixer.D"):
        assert name in no_decay and name not in decay, name
    for name in ("key_head.weight", "query_head.weight", "value_head.weight", "projector.0.weight",
                 "backbone.layers.0.mixer.in_proj.weight", "backbone.embeddings.weight", "start_embedding"):
        assert name in decay, name
    assert not any(n.startswith("vision_tower.") for n in decay | no_decay)  # frozen
    for g in groups:
        assert g.get("weight_decay", 0.01) == (0.01 if g["name"].endswith("/decay") else 0.0)
        assert g["lr"] == (1e-4 if g["name"].startswith("reinitialised") else 1e-5)
    assert "backbone.layers.0.mixer.in_proj.weight" in by_group["pretrained/decay"]
    assert "backbone.layers.2.mixer.in_proj.weight" in by_group["reinitialised/decay"]


# ------------------------------------------------------------------ the authors' export rule


def test_official_export_rule_by_hand():
    cands = np.array([[30, 2, 17, 9, 40], [1, 2, 3, 4, 5]])
    assert official_export(cands, 200, 3) == [2, 17, 30]  # first 3 picks of candidate 0, sorted
    assert official_export(cands, 200, 3, candidate=1) == [1, 2, 3]
    assert official_export(cands, 128, 4) == [0, 42, 84, 127]  # <= 128 frames: linspace, truncated
    assert official_export(cands, 129, 4) == [2, 9, 17, 30]
    assert official_export(None, 300, 3) == [0, 149, 299]  # no candidates: uniform too
    assert official_export(cands, 100, 4, uniform_below=50) == [2, 9, 17, 30]


def test_official_protocol_selects_candidate_zero_of_the_sampled_candidates():
    policy = tiny_policy()

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 64 for c in text]}

    item = SimpleNamespace(id="q1", question="Which?", options=("a", "b"))
    rng = np.random.default_rng(0)
    video = SimpleNamespace(frames=rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8),
                            timestamps=np.arange(40) / 4.0)
    sel = PolicySelector(policy, Tok(), mode="official", seed=5, uniform_below=16)
    picked = sel.select(video, item, 6)
    feats = sel.prepare(video, item)
    out = policy.select([feats], [policy_prompt(policy.config, Tok(), item)], k=6, num_candidates=64,
                        mode="sample", generator=sel._generator(item))
    assert picked == sorted(out.order[0, 0].tolist())  # candidate 0 of 64, sorted
    assert sel.select(video, item, 6) == picked and not sel.deterministic
    short = PolicySelector(policy, Tok(), mode="official", uniform_below=40)  # 40 <= 40 frames: uniform
    assert short.select(video, item, 6) == np.linspace(0, 39, 6, dtype=int).tolist()


def test_diversity_groups_by_videomme_duration_classes_when_every_item_has_one():
    from refocus.analysis.diversity import duration_classes

    items = [SimpleNamespace(meta={"duration": d}) for d in ("short", "Long", "medium")]
    assert duration_classes(items) == ["short", "long", "medium"]
    assert duration_classes([*items, SimpleNamespace(meta={})]) is None  # else: frame-count tertiles
    assert duration_classes([SimpleNamespace(meta={"duration": "42s"})]) is None
