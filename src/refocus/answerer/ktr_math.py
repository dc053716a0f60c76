"""Pure tensor math of answerer-side GRPO and Video-KTR key-token selection.

Shapes: ``S`` completions in the batch (B questions x G rollouts), ``C`` completion tokens
(padded). ``valid`` is the (S, C) mask of real completion tokens (up to and including EOS).

What follows the authors' trainer (github zywang0104/Video-KTR,
``src/r1-v/src/open_r1/trainer/grpo_trainer.py``) and where it departs:

- :func:`top_ratio_mask`: keep tokens whose score is ``>=`` the ``1 - ratio`` quantile
  (``torch.quantile``, linear interpolation) of the finite scores over all valid tokens of
  the batch. Same rule as ``keep_token_by_ratio``.
- :func:`combine_masks`: OR of the masks; for image inputs the temporal mask does not exist
  (entropy | visual), as in the authors' code.
- :func:`ktr_loss`: ``-[exp(logp - logp.detach()) * A - beta * KL_k3]`` per kept token, each
  sequence divided by its own kept-token count, then the mean over sequences. Departure: a
  sequence with no kept token contributes 0 (the authors divide by 0 and get NaN); the mean
  runs over all sequences (``normalisation="sequence"``, the authors' ``.mean()``) or over the
  sequences that have kept tokens (``"sequence_kept"``); ``"token"`` divides the batch's
  kept-token sum by its kept-token count (DAPO-style). The last two are options.
- :func:`k3_kl`: ``exp(x) - x - 1`` with ``x = logp_ref - logp`` clamped to [-10, 10] (the
  authors' clamp).
- :func:`group_advantages`: ``(r - mean) / (std + 1e-4)`` within each group; std unbiased
  (``torch.std`` default, as the authors).
"""

from __future__ import annotations

import re

import torch

THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
"""The authors' format regex, applied with ``fullmatch`` to the stripped completion."""
ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)

NORMALISATIONS = ("sequence", "sequence_kept", "token")


def top_ratio_mask(scores: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """(S, C) bool: valid tokens whose score is >= the (1 - ratio) quantile over the batch.

    The quantile is taken over the finite scores of all valid tokens together (not per
    sequence). ``ratio >= 1`` keeps every valid token, ``ratio <= 0`` keeps the maximum
    only (the 1.0 quantile, ties included). No finite valid score: nothing kept.
    """
    valid = valid.bool()
    if ratio >= 1.0:
        return valid.clone()
    flat = scores[valid].float()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return torch.zeros_like(valid)
    threshold = torch.quantile(flat, 1.0 - max(ratio, 0.0))
    return valid & torch.isfinite(scores) & (scores.float() >= threshold)


def combine_masks(masks: dict[str, torch.Tensor | None], video: bool = True) -> torch.Tensor:
    """OR of the given masks (None entries skipped). ``video=False``: the image rule,
    entropy | visual (a temporal mask, if given, is ignored)."""
    use = [m for name, m in masks.items() if m is not None and (video or name != "temporal")]
    if not use:
        raise ValueError("combine_masks needs at least one mask")
    out = use[0].bool().clone()
    for m in use[1:]:
        out |= m.bool()
    return out


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the full next-token distribution: (..., V) -> (...), float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(x) - x - 1, x = ref_logp - logp (clamped)."""
    x = torch.clamp(ref_logp - logp, min=-clamp, max=clamp)
    return torch.exp(x) - x - 1.0


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(B, G) rewards -> (B, G) advantages (r - mean) / (std + eps), std unbiased within the group.

    A group of one has std NaN in torch; it is treated as 0 (advantage 0)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (torch.nan_to_num(std) + eps)


def ktr_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    normalisation: str = "sequence",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy-gradient loss on kept tokens (one update per rollout, so no ratio clipping).

    logp: (S, C) log-probs of the completion tokens under the current policy (with grad);
    advantages: (S,); keep: (S, C) bool, already restricted to valid tokens; ref_logp:
    (S, C) under the frozen reference policy, needed when ``beta > 0``.
    Returns (loss, stats) with stats ``kl`` (mean over kept tokens) and ``empty_sequences``.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    keep_f = keep.to(logp.dtype)
    per_token = torch.exp(logp - logp.detach()) * advantages.to(logp.dtype).unsqueeze(1)
    kl = torch.zeros_like(logp)
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp.to(logp.dtype))
        per_token = per_token - beta * kl
    per_token = -per_token * keep_f  # masked before any sum, so no NaN from a padded position leaks
    counts = keep_f.sum(dim=1)  # (S,)
    has = counts > 0
    if normalisation == "token":
        loss = per_token.sum() / counts.sum().clamp(min=1.0)
    else:
        seq = per_token.sum(dim=1) / counts.clamp(min=1.0)  # 0 where nothing kept
        denom = has.sum() if normalisation == "sequence_kept" else torch.tensor(seq.shape[0])
        loss = seq.sum() / denom.clamp(min=1).to(seq.dtype)
    total = counts.sum().clamp(min=1.0)
    stats = {
        "kl": float((kl.detach() * keep_f).sum() / total),
        "empty_sequences": int((~has).sum()),
    }
    return loss, stats


def parse_answer(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (stripped), or None."""
    found = ANSWER.findall(text)
    return found[-1].strip() if found else None


def accuracy_reward(text: str, answer: str) -> float:
    """1.0 when the ``<answer>`` content equals the correct letter exactly (multiple choice)."""
    got = parse_answer(text)
    return 1.0 if got is not None and got == answer else 0.0


def format_reward(text: str) -> float:
    """1.0 when the completion is exactly ``<think>...</think> <answer>...</answer>``."""
    return 1.0 if THINK_ANSWER.fullmatch(text.strip()) else 0.0


def kept_ratio(keep: torch.Tensor, valid: torch.Tensor) -> float:
    """Kept share of valid tokens (the ``ktr/*_ratio`` metrics)."""
    n = valid.bool().sum()
    return float((keep.bool() & valid.bool()).sum() / n) if n > 0 else 0.0
