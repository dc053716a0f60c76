"""Hand-computed checks of the answerer-side GRPO / Video-KTR math."""

import math

import pytest
import torch

from refocus.answerer import ktr_math as km


def test_top_ratio_mask_quantile_over_batch_with_ties_kept():
    # valid scores: 1, 2, 3, 4 | 5, 5 (padding 100 is ignored). 0.8 quantile of
    # [1, 2, 3, 4, 5, 5] with linear interpolation: position 0.8 * 5 = 4 -> 5.0.
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 100.0, 100.0]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    mask = km.top_ratio_mask(scores, valid, 0.2)
    assert mask.tolist() == [[False] * 4, [True, True, False, False]]  # >=: both tied 5s kept
    # ratio 0.5: quantile 0.5 at position 2.5 -> 3 + 0.5 * (4 - 3) = 3.5 -> keeps 4, 5, 5
    mask = km.top_ratio_mask(scores, valid, 0.5)
    assert mask.tolist() == [[False, False, False, True], [True, True, False, False]]


def test_top_ratio_mask_ignores_non_finite_and_keeps_all_at_ratio_one():
    scores = torch.tensor([[float("-inf"), 1.0, 2.0, 3.0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    # finite [1, 2, 3]: 0.5 quantile = 2 -> keeps 2 and 3, never the -inf
    assert km.top_ratio_mask(scores, valid, 0.5).tolist() == [[False, False, True, True]]
    assert km.top_ratio_mask(scores, valid, 1.0).all()
    assert not km.top_ratio_mask(scores, torch.zeros_like(valid), 0.2).any()


def test_union_and_image_rule():
    e = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)
    v = torch.tensor([[0, 1, 0, 0]], dtype=torch.bool)
    t = torch.tensor([[0, 0, 1, 0]], dtype=torch.bool)
    masks = {"entropy": e, "visual": v, "temporal": t}
    assert km.combine_masks(masks).tolist() == [[True, True, True, False]]
    assert km.combine_masks(masks, video=False).tolist() == [[True, True, False, False]]
    assert km.combine_masks({"entropy": None, "visual": v}).tolist() == v.tolist()
    with pytest.raises(ValueError):
        km.combine_masks({"visual": None})


def test_k3_kl_hand_values():
    logp = torch.tensor([math.log(0.5), math.log(0.2), 0.0])
    ref = torch.tensor([math.log(0.25), math.log(0.2), -30.0])
    kl = km.k3_kl(logp, ref)
    # x = log(0.5): 0.5 - log 0.5 - 1 = 0.193147; x = 0 -> 0; x clamped to -10: e^-10 + 10 - 1
    assert kl[0].item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)
    assert kl[2].item() == pytest.approx(math.exp(-10) + 9, abs=1e-5)


def test_group_advantages_unbiased_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = km.group_advantages(r)
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]: sum sq dev 1 / 3
    assert adv[0, 0].item() == pytest.approx(0.5 / (std + 1e-4), rel=1e-6)
    assert adv[0, 1].item() == pytest.approx(-0.5 / (std + 1e-4), rel=1e-6)
    assert adv[1].abs().max().item() == 0.0


def test_loss_per_sequence_kept_token_normalisation():
    # value of the surrogate is -A per kept token (ratio 1), so each sequence's loss is -A
    # whatever its kept count; the mean over sequences: -(2 + (-1)) / 2 = -0.5.
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    keep = torch.tensor([[True, True, False], [True, False, False]])
    loss, stats = km.ktr_loss(logp, adv, keep)
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    # d/dlogp of -A * exp(logp - sg(logp)) / n_kept / S: seq 0: -2 / 2 / 2 = -0.5 on 2 tokens;
    # seq 1: +1 / 1 / 2 = 0.5 on its one token; dropped tokens get exactly 0.
    assert logp.grad.tolist() == [[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]
    assert stats["empty_sequences"] == 0


def test_token_normalisation_option():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    keep = torch.tensor([[True, True, False], [True, False, False]])
    loss, _ = km.ktr_loss(logp, adv, keep, normalisation="token")
    assert loss.item() == pytest.approx(-(2 + 2 - 1) / 3)


def test_no_kept_token_sequence_is_finite_with_zero_gradient():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -0.2]])
    adv = torch.tensor([1.0, 3.0])
    keep = torch.tensor([[True, False], [False, False]])
    loss, stats = km.ktr_loss(logp, adv, keep, ref_logp=ref, beta=0.04)
    assert torch.isfinite(loss)
    loss.backward()
    assert logp.grad[1].abs().max().item() == 0.0
    assert logp.grad[0, 0].item() != 0.0
    assert stats["empty_sequences"] == 1
    # sequence 0, one kept token: -(A - beta * kl), kl = exp(-0.5) + 0.5 - 1; averaged over S = 2
    kl = math.exp(-0.5) + 0.5 - 1
    assert loss.item() == pytest.approx(-(1.0 - 0.04 * kl) / 2, rel=1e-6)
    kept_only, _ = km.ktr_loss(logp.detach(), adv, keep, ref_logp=ref, beta=0.04, normalisation="sequence_kept")
    assert kept_only.item() == pytest.approx(-(1.0 - 0.04 * kl), rel=1e-6)
    nothing, _ = km.ktr_loss(logp.detach(), adv, torch.zeros_like(keep))
    assert nothing.item() == 0.0


def test_rewards_and_parsing():
    good = "<think> first the red star , then the blue circle </think> <answer> B </answer>"
    assert km.format_reward(good) == 1.0
    assert km.accuracy_reward(good, "B") == 1.0
    assert km.accuracy_reward(good, "A") == 0.0
    assert km.format_reward("<answer>B</answer>") == 0.0
    assert km.format_reward(good + " extra") == 0.0
    assert km.accuracy_reward("<think>x</think><answer>BB</answer>", "B") == 0.0
    assert km.parse_answer("no tags") is None
    assert km.kept_ratio(torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 0]])) == 0.5
