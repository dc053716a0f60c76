"""GRPO math checked against hand computations (numpy) and autograd."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from refocus.reference.reward import margin_rewards
from refocus.training.grpo_math import (
    entropy_bonus,
    group_advantages,
    grpo_loss,
    kl_k3,
    mean_temporal_entropy,
    policy_loss,
    sequence_log_ratio,
)


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --- rewards and selection statistics -------------------------------------------------------


def test_margin_rewards_match_eq4_and_hand_values():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [5.0, 5.0, -1.0]])
    m = margin_rewards(logits, 0, dtype=np.float64)
    np.testing.assert_allclose(m, [math.tanh(0.5), math.tanh(-1.5), 0.0])
    e = np.exp(logits)
    best_wrong = e[:, 1:].max(axis=1)
    np.testing.assert_allclose(m, (e[:, 0] - best_wrong) / (e[:, 0] + best_wrong))  # Eq. 4
    with pytest.raises(ValueError):
        margin_rewards(logits, 3)
    with pytest.raises(ValueError):
        margin_rewards(logits[:, :1], 0)


def test_mean_temporal_entropy_over_candidates():
    ts = np.arange(10) * 0.5  # 2 fps
    subsets = [[0, 2, 6], [1, 2, 3, 9], [4]]
    # first candidate: times 0, 1, 3 -> the hand example 1.5 + (4/3) log 2
    first = 1.5 + 4 / 3 * math.log(2)
    # second: times 0.5, 1, 1.5, 4.5 -> 1-NN distances 0.5, 0.5, 0.5, 3; psi(4) - psi(1) = 11/6
    second = 11 / 6 + math.log(2) + (3 * math.log(0.5) + math.log(3)) / 4
    assert mean_temporal_entropy(ts, subsets) == pytest.approx((first + second) / 2)
    assert math.isnan(mean_temporal_entropy(ts, [[3], [4]]))


# --- advantages ---------------------------------------------------------------------------


def test_group_advantages_hand_values_and_zero_spread():
    rewards = _t([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
    adv, zero = group_advantages(rewards)
    std = math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3)  # sample std, as torch.std / TRL
    expected = (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / (std + 1e-4)
    np.testing.assert_allclose(adv[0].numpy(), expected, rtol=1e-12)
    assert torch.equal(adv[1], torch.zeros(4, dtype=torch.float64))
    assert zero.tolist() == [False, True]
    assert zero.dtype == torch.bool


def test_group_advantages_batch_and_none():
    rewards = _t([[0.0, 1.0, 0.0, 1.0], [-1.0, 1.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    r = rewards.numpy()
    centred = r - r.mean(axis=1, keepdims=True)
    batch_std = np.std(r, ddof=1)
    adv, zero = group_advantages(rewards, scale="batch")
    expected = centred / (batch_std + 1e-4)
    expected[2] = 0.0
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12, atol=1e-15)
    adv_none, zero_none = group_advantages(rewards, scale="none")
    np.testing.assert_allclose(adv_none.numpy(), centred, atol=1e-15)
    assert zero.tolist() == zero_none.tolist() == [False, False, True]


def test_float32_identical_rewards_are_exactly_zero():
    rewards = torch.full((2, 16), 0.1, dtype=torch.float32)
    rewards[1, 3] = 0.7
    adv, zero = group_advantages(rewards)
    assert zero.tolist() == [True, False]
    assert torch.count_nonzero(adv[0]) == 0
    assert adv[1, 3] > 3.0  # one winner out of 16: (0.6 * 15/16) / (0.6 / 4) = 3.75


def test_single_candidate_groups_give_zero_without_nan_or_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scale in ("group", "batch", "none"):
            adv, zero = group_advantages(_t([[0.3]]), scale=scale)
            assert adv.tolist() == [[0.0]] and zero.tolist() == [True]


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError):
        group_advantages(_t([1.0, 2.0]))
    with pytest.raises(ValueError):
        group_advantages(_t([[1.0, 2.0]]), scale="global")


# --- ratios -------------------------------------------------------------------------------


def test_sequence_log_ratio_levels_and_mask():
    new = _t([[[-1.0, -2.0, -3.0]]])  # (B=1, G=1, K=3)
    old = _t([[[-1.5, -2.0, -2.0]]])
    token = sequence_log_ratio(new, old, "token")
    assert token.shape == (1, 1, 3)
    np.testing.assert_allclose(token.numpy().ravel(), [0.5, 0.0, -1.0])
    seq = sequence_log_ratio(new, old, "sequence")
    assert seq.shape == (1, 1, 1)
    assert seq.item() == pytest.approx((0.5 + 0.0 - 1.0) / 3)
    mask = torch.tensor([[[True, True, False]]])
    assert sequence_log_ratio(new, old, "sequence", mask).item() == pytest.approx(0.25)
    np.testing.assert_allclose(
        sequence_log_ratio(new, old, "token", mask).numpy().ravel(), [0.5, 0.0, 0.0]
    )
    with pytest.raises(ValueError):
        sequence_log_ratio(new, old[..., :2])
    with pytest.raises(ValueError):
        sequence_log_ratio(new, old, "step")


# --- policy loss --------------------------------------------------------------------------


def test_unclipped_loss_is_minus_mean_ratio_times_advantage():
    rng = np.random.default_rng(0)
    new = rng.normal(-2.0, 0.3, size=(2, 3, 4))
    old = rng.normal(-2.0, 0.3, size=(2, 3, 4))
    A = rng.normal(size=(2, 3))
    loss, stats = policy_loss(_t(new), _t(old), _t(A), level="sequence")
    ratio = np.exp((new - old).mean(axis=-1))
    assert loss.item() == pytest.approx(-(ratio * A).mean(), rel=1e-12)
    assert stats["clip_ratio"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(ratio.mean())
    loss_tok, _ = policy_loss(_t(new), _t(old), _t(A), level="token")
    token_ratio = np.exp(new - old)
    assert loss_tok.item() == pytest.approx(-(token_ratio * A[..., None]).mean(), rel=1e-12)


def test_clipping_active_and_inactive_cases():
    # K = 1, so the sequence ratio is exp(new - old) exactly.
    ratios = np.array([1.5, 0.5, 0.5, 1.5])
    A = np.array([1.0, 1.0, -1.0, -1.0])
    old = np.full((1, 4, 1), -1.0)
    new = torch.tensor(old + np.log(ratios)[None, :, None], requires_grad=True)
    loss, stats = policy_loss(new, _t(old), _t(A[None]), level="sequence", epsilon=0.2)
    # terms: A>0 r=1.5 -> clipped 1.2; A>0 r=0.5 -> 0.5; A<0 r=0.5 -> clipped -0.8;
    # A<0 r=1.5 -> -1.5 (the pessimistic unclipped branch).
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 0.8 - 1.5) / 4)
    assert stats["clip_ratio"] == pytest.approx(0.5)
    assert stats["clip_ratio_high"] == pytest.approx(0.25)
    assert stats["clip_ratio_low"] == pytest.approx(0.25)
    loss.backward()
    # d(-r A / 4) / d log r = -r A / 4 where unclipped; 0 where the clipped branch is active.
    np.testing.assert_allclose(new.grad.numpy().ravel(), [0.0, -0.125, 0.0, 0.375], atol=1e-12)


def test_epsilon_high_widens_the_upper_clip_only():
    old = np.zeros((1, 2, 1))
    new = _t(old + np.log([[[1.25], [0.75]]]))
    A = _t([[1.0, -1.0]])
    _, sym = policy_loss(new, _t(old), A, epsilon=0.2)
    assert sym["clip_ratio_high"] == pytest.approx(0.5) and sym["clip_ratio_low"] == 0.5
    loss, asym = policy_loss(new, _t(old), A, epsilon=0.2, epsilon_high=0.28)
    assert asym["clip_ratio_high"] == 0.0 and asym["clip_ratio_low"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-(1.25 - 0.8) / 2)
    with pytest.raises(ValueError):
        policy_loss(new, _t(old), A, epsilon=None, epsilon_high=0.28)


@pytest.mark.parametrize("level", ["sequence", "token"])
@pytest.mark.parametrize("epsilon", [None, 0.2])
def test_on_policy_gradient_is_minus_advantage_over_group(level, epsilon):
    B, G, K = 2, 4, 3
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(B, G, K, generator=gen, dtype=torch.float64) * 3
    A = torch.randn(B, G, generator=gen, dtype=torch.float64)
    new = old.clone().requires_grad_(True)
    loss, stats = policy_loss(new, old, A, level=level, epsilon=epsilon)
    loss.backward()
    assert stats["clip_ratio"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)
    # Per step -A / (B G K); per subset (summed over its K steps) -A / (B G), i.e. -A/G for B=1.
    expected = (-A / (B * G * K))[..., None].expand(B, G, K)
    torch.testing.assert_close(new.grad, expected)
    torch.testing.assert_close(new.grad.sum(-1), -A / (B * G))


def test_zero_spread_group_contributes_no_gradient():
    rewards = _t([[0.1, 0.9, -0.5], [0.4, 0.4, 0.4]])
    A, zero = group_advantages(rewards)
    old = torch.full((2, 3, 2), -1.0, dtype=torch.float64)
    new = (old + 0.1).requires_grad_(True)
    loss, _ = policy_loss(new, old, A, epsilon=0.2)
    loss.backward()
    assert zero.tolist() == [False, True]
    assert torch.count_nonzero(new.grad[1]) == 0
    assert torch.count_nonzero(new.grad[0]) > 0


def test_step_mask_equals_truncation():
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(1, 3, 5, generator=gen, dtype=torch.float64)
    new = old + 0.2 * torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
    A = _t([[1.0, -0.5, 0.25]])
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[..., :3] = True
    for level in ("sequence", "token"):
        masked, _ = policy_loss(new, old, A, level=level, epsilon=0.1, step_mask=mask)
        cut, _ = policy_loss(new[..., :3], old[..., :3], A, level=level, epsilon=0.1)
        assert masked.item() == pytest.approx(cut.item(), rel=1e-12)
    # A candidate with no valid step is left out of the mean.
    mask[0, 2] = False
    masked, _ = policy_loss(new, old, A, step_mask=mask)
    cut, _ = policy_loss(new[:, :2, :3], old[:, :2, :3], A[:, :2])
    assert masked.item() == pytest.approx(cut.item(), rel=1e-12)


# --- entropy, KL, total -------------------------------------------------------------------


def test_entropy_bonus_mean_and_mask():
    ent = _t([[[1.0, 2.0], [3.0, 4.0]]])
    assert entropy_bonus(ent).item() == pytest.approx(2.5)
    mask = torch.tensor([[[True, False], [True, True]]])
    assert entropy_bonus(ent, mask).item() == pytest.approx((1.0 + 3.0 + 4.0) / 3)


def test_entropy_bonus_sign_in_total_loss():
    old = torch.full((1, 2, 2), -1.0, dtype=torch.float64)
    A = _t([[1.0, -1.0]])
    ent = _t([[[0.5, 0.7], [0.6, 0.8]]]).requires_grad_(True)
    loss, stats = grpo_loss(old.clone(), old, A, ent, entropy_coef=0.002)
    loss.backward()
    # More entropy must lower the loss: d loss / d H_step = -coef / (number of steps).
    torch.testing.assert_close(ent.grad, torch.full_like(ent, -0.002 / 4))
    assert stats["entropy"] == pytest.approx(0.65)
    assert stats["loss"] == pytest.approx(stats["policy_loss"] - 0.002 * 0.65)
    assert "kl" not in stats


def test_kl_k3_hand_values():
    new = _t([[[-1.0, -2.0]]])
    ref = _t([[[-1.0, -1.5]]])
    np.testing.assert_allclose(kl_k3(new, ref).numpy().ravel(), [0.0, math.exp(0.5) - 1.5])
    assert torch.all(kl_k3(new, new - 3.0) > 0)


def test_grpo_loss_beta_adds_k3_term():
    old = torch.full((1, 2, 2), -1.0, dtype=torch.float64)
    new = old + _t([[[0.1, -0.1], [0.0, 0.2]]])
    ref = old - 0.5
    A = _t([[0.5, -0.5]])
    base, _ = grpo_loss(new, old, A)
    total, stats = grpo_loss(new, old, A, beta=0.04, ref_logp=ref)
    delta = (ref - new).numpy()
    kl = (np.exp(delta) - delta - 1).mean()
    assert stats["kl"] == pytest.approx(kl)
    assert total.item() == pytest.approx(base.item() + 0.04 * kl)
    with pytest.raises(ValueError):
        grpo_loss(new, old, A, beta=0.04)
    with pytest.raises(ValueError):
        grpo_loss(new, old, A, entropy_coef=0.002)


def test_approx_kl_is_k3_of_the_step_ratios():
    from refocus.training.grpo_math import approx_kl

    old = torch.log(torch.tensor([[[0.5, 0.25]]]))
    new = torch.log(torch.tensor([[[0.25, 0.25]]]))
    r = 0.5  # first step's ratio; the second step is unchanged
    assert approx_kl(new, new.clone()) == 0.0
    assert approx_kl(new, old) == pytest.approx(((r - 1) - math.log(r)) / 2)
    with pytest.raises(ValueError):
        approx_kl(new[0], old[0])
