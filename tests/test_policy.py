"""The frame-selection policy: init (B.2), fast sampler vs Algorithm 2, replay, save/load, grads."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from transformers import AutoConfig, AutoModel, AutoTokenizer, Mamba2Model
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from refocus.errors import ConfigError, RefocusError
from refocus.policy import (
    FramePolicy,
    FramePolicyConfig,
    build_question_text,
    pool_frame_tokens,
    tokenize_question,
)
from refocus.policy.sampling import (
    available_frames,
    masked_entropy,
    masked_log_softmax,
    sample_inverse_cdf,
)

P = 4  # tokens per frame after pooling the tiny tower's 4 x 4 grid
VOCAB = 64


def make_policy(seed: int = 0, **overrides) -> FramePolicy:
    torch.manual_seed(seed)
    config = FramePolicyConfig(
        tokens_per_frame=P,
        backbone_config={"vocab_size": VOCAB, "hidden_size": 32, "head_dim": 8, "num_heads": 8},
        head_dim=16,
        **overrides,
    )
    return FramePolicy(config).eval()


@pytest.fixture(scope="module")
def policy() -> FramePolicy:
    return make_policy()


def random_inputs(lengths, seed=0, text_lengths=None, width=32):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(t, P, width, generator=g) for t in lengths]
    text_lengths = text_lengths or [5] * len(lengths)
    ids = [torch.randint(0, VOCAB, (n,), generator=g) for n in text_lengths]
    return feats, ids


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- prompt and preprocessing


def test_question_text_follows_policy_prompt():
    item = SimpleNamespace(
        question="  Where is the cat? ", options=("on the mat", "in the box", "outside")
    )
    assert (
        build_question_text(item) == "Where is the cat?\nA. on the mat\nB. in the box\nC. outside"
    )


def test_encode_frames_resizes_pools_and_has_no_grad(policy):
    frames = np.random.default_rng(0).integers(0, 256, (7, 50, 38, 3), dtype=np.uint8)
    feats = policy.encode_frames(frames, batch_size=3)
    assert feats.shape == (7, P, 32)
    assert not feats.requires_grad
    # pooling a 4 x 4 grid to 2 x 2 averages neighbouring patches
    grid = torch.arange(16.0).view(1, 16, 1)
    assert pool_frame_tokens(grid, 4).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


# ---------------------------------------------------------------- initialisation (B.2)


def test_init_follows_appendix_b2(policy):
    layers = policy.backbone.layers
    for block in layers[:-2]:
        assert torch.all(block.norm.weight == 1.0)
        assert torch.all(block.mixer.norm.weight == 1.0)
    for block in layers[-2:]:
        # gamma = 0.1 on the residual branch's gated RMSNorm (mixer.norm), not the pre-norm
        assert torch.all(block.norm.weight == 1.0)
        assert torch.allclose(block.mixer.norm.weight, torch.full_like(block.mixer.norm.weight, 0.1))
    assert torch.all(policy.backbone.norm_f.weight == 1.0)
    eye = torch.eye(16)
    for head in (policy.query_head, policy.key_head):
        assert head.bias is None
        assert torch.allclose(head.weight @ head.weight.T, eye, atol=1e-5)  # orthogonal, gain 1
    v = policy.value_head.weight
    assert torch.allclose(v @ v.T, 0.01 * torch.eye(v.shape[0]), atol=1e-6)  # orthogonal, gain 0.1
    assert torch.all(policy.value_head.bias == 0)
    assert policy.logit_scale.item() == 1.0
    assert 0.01 < policy.start_embedding.std().item() < 0.03


def test_init_from_pretrained_backbone_reinitialises_last_layers():
    policy = make_policy(seed=1)
    torch.manual_seed(5)
    source = Mamba2Model(policy.backbone.config)
    with torch.no_grad():
        for block in source.layers:
            block.norm.weight.fill_(0.7)
        source.norm_f.weight.fill_(0.5)
    policy.init_from_pretrained_backbone(source)
    mine, theirs = policy.backbone.state_dict(), source.state_dict()
    for name in (
        "embeddings.weight",
        "layers.0.mixer.in_proj.weight",
        "layers.1.mixer.A_log",
        "layers.1.norm.weight",
    ):
        assert torch.equal(mine[name], theirs[name]), name
    for i in (2, 3):
        assert not torch.equal(
            mine[f"layers.{i}.mixer.in_proj.weight"], theirs[f"layers.{i}.mixer.in_proj.weight"]
        )
        assert torch.allclose(mine[f"layers.{i}.mixer.norm.weight"], torch.tensor(0.1))
        assert torch.allclose(mine[f"layers.{i}.norm.weight"], torch.tensor(1.0))
    assert torch.all(mine["norm_f.weight"] == 1.0)


def test_parameter_groups_split_fresh_and_pretrained(policy):
    groups = policy.parameter_groups()
    fresh, pre = set(groups["reinitialised"]), set(groups["pretrained"])
    assert not fresh & pre
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert fresh | pre == trainable
    assert not any(n.startswith("vision_tower.") for n in trainable)
    assert {"start_embedding", "logit_scale", "key_head.weight", "value_head.bias"} <= fresh
    assert any(n.startswith("backbone.layers.3.") for n in fresh)
    assert any(n.startswith("projector.") for n in fresh)
    assert "backbone.embeddings.weight" in pre
    assert any(n.startswith("backbone.layers.1.") for n in pre)
    assert not any(n.startswith("backbone.layers.2.") for n in pre)


# ---------------------------------------------------------------- backbone driver


def test_backbone_driver_matches_mamba2_forward_stepwise_and_chunked(policy):
    x = torch.randn(2, 300, 32)
    with torch.no_grad():
        full = policy.backbone(inputs_embeds=x).last_hidden_state
        prefix, state = policy.run_backbone(x[:, :290])
        assert torch.allclose(prefix, full[:, :290], atol=1e-5)
        chunk, _ = policy.run_backbone(x[:, 290:], state)
        assert torch.allclose(chunk, full[:, 290:], atol=1e-5)
        steps = []
        for i in range(290, 300):
            out, state = policy.run_backbone(x[:, i : i + 1], state)
            steps.append(out)
        assert torch.allclose(torch.cat(steps, 1), full[:, 290:], atol=1e-5)


# ---------------------------------------------------------------- sampler


def test_candidates_have_no_duplicates_and_sorted_indices(policy):
    feats, ids = random_inputs([30, 24])
    out = policy.select(feats, ids, k=12, num_candidates=8, generator=gen(0))
    assert out.indices.shape == out.order.shape == out.logprobs.shape == (2, 8, 12)
    assert torch.equal(out.indices, out.order.sort(-1).values)
    for b, t in enumerate((30, 24)):
        for row in out.indices[b]:
            assert len(set(row.tolist())) == 12
            assert 0 <= row.min() and row.max() < t
    assert torch.all(out.logprobs <= 0)


def test_masked_frames_get_zero_probability(policy):
    feats, ids = random_inputs([20])
    features = torch.stack(feats)
    mask = torch.ones(1, 20, dtype=torch.bool)
    blocked = [0, 3, 4, 11, 19]
    mask[0, blocked] = False
    out = policy.select(
        features,
        ids,
        k=10,
        num_candidates=16,
        mode="distribution",
        generator=gen(1),
        frame_mask=mask,
    )
    assert not set(blocked) & set(out.indices.flatten().tolist())
    assert torch.all(out.distribution[0, blocked] == 0)
    assert out.distribution[0].sum().item() == pytest.approx(1.0, abs=1e-5)
    # greedy with k = the number of allowed frames must take exactly the allowed ones
    greedy = policy.select(features, ids, k=15, mode="greedy", frame_mask=mask)
    assert sorted(greedy.indices[0, 0].tolist()) == [t for t in range(20) if t not in blocked]


def test_seed_fixes_the_output(policy):
    feats, ids = random_inputs([25])
    a = policy.select(feats, ids, k=6, num_candidates=4, generator=gen(7))
    b = policy.select(feats, ids, k=6, num_candidates=4, generator=gen(7))
    c = policy.select(feats, ids, k=6, num_candidates=4, generator=gen(8))
    assert torch.equal(a.order, b.order) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.order, c.order)


def test_greedy_is_deterministic_and_uses_no_randomness(policy):
    feats, ids = random_inputs([25])
    a = policy.select(feats, ids, k=6, num_candidates=3, mode="greedy", generator=gen(1))
    b = policy.select(feats, ids, k=6, num_candidates=3, mode="greedy", generator=gen(2))
    assert torch.equal(a.order, b.order)
    assert torch.equal(a.order[0, 0], a.order[0, 2])
    # greedy picks the most likely frame at every step
    lp, _ = policy.replay_logprobs(feats, ids, a.order)
    sampled = policy.select(feats, ids, k=6, num_candidates=32, generator=gen(3))
    assert lp[0, 0, 0] >= sampled.logprobs[0, :, 0].max() - 1e-6


def test_replayed_logprobs_equal_sampled(policy):
    feats, ids = random_inputs([33, 17, 40], text_lengths=[4, 9, 6])
    for k, temperature in ((8, 1.0), (5, 0.7), (1, 1.0)):
        out = policy.select(
            feats, ids, k=k, num_candidates=6, temperature=temperature, generator=gen(k)
        )
        with torch.no_grad():
            lp, ent = policy.replay_logprobs(feats, ids, out.order, temperature=temperature)
        assert lp.shape == ent.shape == (3, 6, k)
        assert (lp - out.logprobs).abs().max().item() < 1e-4


def test_fast_sampler_equals_literal_algorithm2(policy):
    feats, ids = random_inputs([18, 26], text_lengths=[3, 7])
    fast = policy.select(feats, ids, k=5, num_candidates=3, generator=gen(11))
    literal = policy.select_recompute(feats, ids, k=5, num_candidates=3, generator=gen(11))
    assert torch.equal(fast.order, literal.order)
    assert (fast.logprobs - literal.logprobs).abs().max().item() < 1e-4
    fast_d = policy.select(feats, ids, k=4, num_candidates=2, mode="distribution", generator=gen(2))
    literal_d = policy.select_recompute(
        feats, ids, k=4, num_candidates=2, mode="distribution", generator=gen(2)
    )
    assert torch.allclose(fast_d.distribution, literal_d.distribution, atol=1e-5)


def test_variable_length_batch_equals_per_question(policy):
    feats, ids = random_inputs([16, 40, 23, 16], text_lengths=[5, 8, 2, 5])
    batched = policy.select(feats, ids, k=6, num_candidates=2, mode="greedy")
    lp, ent = policy.replay_logprobs(feats, ids, batched.order)
    for b in range(4):
        single = policy.select([feats[b]], [ids[b]], k=6, num_candidates=2, mode="greedy")
        assert torch.equal(single.order[0], batched.order[b])
        lp1, ent1 = policy.replay_logprobs([feats[b]], [ids[b]], batched.order[b : b + 1])
        assert torch.allclose(lp1[0], lp[b], atol=1e-5) and torch.allclose(
            ent1[0], ent[b], atol=1e-5
        )
    # padded tensor + frame mask is the same as the list form (same random numbers)
    padded = torch.zeros(4, 40, P, 32)
    mask = torch.zeros(4, 40, dtype=torch.bool)
    for b, f in enumerate(feats):
        padded[b, : len(f)], mask[b, : len(f)] = f, True
    a = policy.select(feats, ids, k=6, num_candidates=3, generator=gen(4))
    c = policy.select(padded, ids, k=6, num_candidates=3, generator=gen(4), frame_mask=mask)
    assert torch.equal(a.order, c.order) and torch.allclose(a.logprobs, c.logprobs, atol=1e-5)


def test_entropies_are_bounded_by_log_available(policy):
    feats, ids = random_inputs([12, 30])
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :12], mask[1, :30] = True, True
    mask[1, 5:9] = False
    out = policy.select(feats, ids, k=9, num_candidates=4, generator=gen(5), frame_mask=mask)
    with torch.no_grad():
        _, ent = policy.replay_logprobs(feats, ids, out.order, frame_mask=mask)
    steps = torch.arange(9)
    for b, n in enumerate((12, 26)):
        bound = torch.log((n - steps).float())
        assert torch.all(ent[b] >= -1e-6)
        assert torch.all(ent[b] <= bound + 1e-5)


def test_bad_requests_fail_clearly(policy):
    feats, ids = random_inputs([6])
    with pytest.raises(RefocusError, match="cannot select 7 frames from 6"):
        policy.select(feats, ids, k=7)
    with pytest.raises(ValueError, match="same frame twice"):
        policy.replay_logprobs(feats, ids, torch.tensor([[[1, 2, 1]]]))
    with pytest.raises(ValueError, match="vocabulary"):
        policy.select(feats, [torch.tensor([VOCAB])], k=2)
    with pytest.raises(ValueError, match="mode"):
        policy.select(feats, ids, k=2, mode="beam")


# ---------------------------------------------------------------- save / load


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["Where is the red ball?", "A. left B. right C. up D. down", "What happens first?"]
    tok.train_from_iterator(
        corpus, trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=["[UNK]", "[PAD]"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def test_save_and_load_give_identical_selections(tmp_path):
    policy = make_policy(seed=3)
    with torch.no_grad():  # trained values must survive loading (no re-init on load)
        policy.backbone.layers[-1].norm.weight.fill_(0.37)
        policy.logit_scale.fill_(2.5)
    tokenizer = _tiny_tokenizer()
    item = SimpleNamespace(question="Where is the red ball?", options=("left", "right", "up"))
    ids = tokenize_question(tokenizer, item)
    feats, _ = random_inputs([21])
    policy.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, FramePolicy)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), FramePolicyConfig)
    assert loaded.logit_scale.item() == 2.5
    assert torch.allclose(loaded.backbone.layers[-1].norm.weight, torch.tensor(0.37))
    assert not any(p.requires_grad for p in loaded.vision_tower.parameters())
    reloaded_ids = tokenize_question(AutoTokenizer.from_pretrained(tmp_path), item)
    assert torch.equal(ids.before, reloaded_ids.before) and torch.equal(ids.after, reloaded_ids.after)
    assert len(ids.before) > 0  # the B.6.2 system line comes before the frames
    a = policy.select(feats, [ids], k=7, num_candidates=5, generator=gen(9))
    b = loaded.select(feats, [reloaded_ids], k=7, num_candidates=5, generator=gen(9))
    assert torch.equal(a.order, b.order) and torch.equal(a.logprobs, b.logprobs)
    frames = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert torch.equal(
        policy.encode_frames(frames), FramePolicy.from_pretrained(tmp_path).encode_frames(frames)
    )


def test_load_vision_tower_copies_an_existing_tower():
    policy = make_policy(seed=4)
    torch.manual_seed(123)
    tower = AutoModel.from_config(policy.config.make_vision_config()).eval()
    policy.load_vision_tower(tower)
    frames = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    pixels = (torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = pool_frame_tokens(tower(pixel_values=pixels).last_hidden_state, P)
    assert torch.allclose(policy.encode_frames(frames), expected, atol=1e-6)
    assert not any(p.requires_grad for p in policy.vision_tower.parameters())


# ---------------------------------------------------------------- gradients


def _replay_loss(policy, feats, ids, order):
    lp, ent = policy.replay_logprobs(feats, ids, order)
    weights = torch.linspace(-1, 1, order.shape[1]).view(1, -1, 1)
    return (weights * lp).sum() + 0.01 * ent.sum()


def test_gradients_reach_trainable_parts_but_not_the_vision_tower():
    policy = make_policy(seed=5).train()
    frames = np.random.default_rng(3).integers(0, 256, (14, 64, 64, 3), dtype=np.uint8)
    feats = [policy.encode_frames(frames)]
    ids = [torch.arange(6)]
    out = policy.select(feats, ids, k=4, num_candidates=5, generator=gen(0))
    _replay_loss(policy, feats, ids, out.order).backward()
    names = [
        "projector.0.weight", "projector.2.weight", "backbone.embeddings.weight",
        "backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.A_log",
        "backbone.layers.3.mixer.out_proj.weight", "backbone.norm_f.weight",
        "key_head.weight", "query_head.weight", "value_head.weight", "value_head.bias",
        "start_embedding", "logit_scale",
    ]  # fmt: skip
    params = dict(policy.named_parameters())
    for name in names:
        grad = params[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    for name, param in policy.vision_tower.named_parameters():
        assert not param.requires_grad and param.grad is None, name


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    feats, ids = random_inputs([20, 20], text_lengths=[4, 4])
    plain, checkpointed = make_policy(seed=6).train(), make_policy(seed=6).train()
    with pytest.raises(ConfigError, match="non-reentrant"):
        checkpointed.activation_checkpointing_enable({"use_reentrant": True})
    checkpointed.activation_checkpointing_enable()  # transformers 5.x name of gradient_checkpointing_enable
    order = plain.select(feats, ids, k=5, num_candidates=3, generator=gen(0)).order
    calls = {id(plain): 0, id(checkpointed): 0}
    mixer_forward = Mamba2Mixer.forward
    owner = {id(m.backbone.layers[0].mixer): id(m) for m in (plain, checkpointed)}

    def counting_forward(self, *args, **kwargs):  # forward hooks do not fire on recompute
        if id(self) in owner:
            calls[owner[id(self)]] += 1
        return mixer_forward(self, *args, **kwargs)

    monkeypatch.setattr(Mamba2Mixer, "forward", counting_forward)
    for model in (plain, checkpointed):
        _replay_loss(model, feats, ids, order).backward()
    # prefix and chunk run layer 0 once each; checkpointing re-runs both during backward
    assert calls == {id(plain): 2, id(checkpointed): 4}
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_replay_stays_close_to_fp32(policy):
    feats, ids = random_inputs([24])
    out = policy.select(feats, ids, k=6, num_candidates=4, generator=gen(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp16, ent16 = policy.replay_logprobs(feats, ids, out.order)
        sampled16 = policy.select(feats, ids, k=6, num_candidates=4, generator=gen(2))
    assert lp16.dtype == torch.float32 and torch.isfinite(lp16).all()
    assert (lp16 - out.logprobs).abs().max().item() < 0.3
    assert sampled16.indices.shape == (1, 4, 6)


# ---------------------------------------------------------------- pure functions


def test_inverse_cdf_sampling_follows_the_distribution():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    u = torch.rand(20000, generator=gen(0), dtype=torch.float64)
    draws = sample_inverse_cdf(probs.expand(20000, 6), u)
    freq = torch.bincount(draws, minlength=6).double() / 20000
    assert torch.all(freq[[0, 2, 5]] == 0)
    assert torch.allclose(freq, probs.double(), atol=0.015)
    edge = sample_inverse_cdf(probs.view(1, 6), torch.tensor([1.0 - 1e-17], dtype=torch.float64))
    assert edge.item() == 4  # never past the last frame with probability > 0


def test_available_frames_and_masked_entropy_by_hand():
    order = torch.tensor([[[2, 0, 3]]])
    mask = torch.tensor([[True, True, True, True, False]])
    avail = available_frames(order, mask)[0, 0].int().tolist()
    assert avail == [[1, 1, 1, 1, 0], [1, 1, 0, 1, 0], [0, 1, 0, 1, 0]]
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, 9.0]])
    available = torch.tensor([[True, True, False, True, False]])
    logp = masked_log_softmax(logits, ~available)
    probs = torch.softmax(logits[0, [0, 1, 3]], 0).numpy()
    assert masked_entropy(logp, available).item() == pytest.approx(scipy_entropy(probs), abs=1e-6)
    assert math.isinf(logp[0, 2].item()) and logp[0, 2] < 0


def test_policy_reuses_the_small_reference_models_vision_tower():
    small = pytest.importorskip("refocus.reference.small_model")
    tokenizer = small.train_tokenizer(["where is the red ball ?"])
    reference, _ = small.build_small_reference(tokenizer)
    reference.eval()  # a frozen tower: LeViT's batch norms use their running statistics
    config = FramePolicyConfig(
        vision_config=reference.config.vision_config.to_dict(),
        backbone_config={"vocab_size": len(tokenizer)},
        tokens_per_frame=P,
    )
    policy = FramePolicy(config).eval()
    policy.load_vision_tower(reference.model.vision_tower)
    frames = np.random.default_rng(4).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    pixels = (torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        tokens = reference.model.vision_tower(pixel_values=pixels).last_hidden_state
    feats = policy.encode_frames(frames)
    # relative: an untrained tower in eval mode gives features in the hundreds
    torch.testing.assert_close(feats, pool_frame_tokens(tokens, P), rtol=1e-5, atol=1e-6 * tokens.abs().max().item())
    item = SimpleNamespace(question="where is the red ball?", options=("left", "right"))
    out = policy.select([feats], [tokenize_question(tokenizer, item)], k=3, num_candidates=2)
    assert out.indices.shape == (1, 2, 3)
