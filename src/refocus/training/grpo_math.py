"""Pure GRPO math for frame selection: advantages, importance ratios, losses (paper §3.2, Eq. 2).

The trainer loop composes these functions; each is tested alone against hand computations.
Shape letters: ``B`` questions, ``G`` candidate subsets per question (the paper's N),
``K`` selection steps per candidate (the paper's T').

One candidate subset is one action (paper §3.2: "the full trajectory is treated as an atomic
action"). Its log-probability under the policy is the sum over the ``K`` steps of the log
probability of the frame chosen at that step; the functions take the per-step log-probs
``(B, G, K)`` so both importance-sampling levels can be computed from the same tensors.

Conventions follow TRL's ``GRPOTrainer`` where the idea is the same (names ``scale_rewards``,
``importance_sampling_level``, ``epsilon`` / ``epsilon_high``, ``beta``, the k3 KL estimator,
the ``clip_ratio`` statistic), so its documentation applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from refocus.estimators import kl_entropy

ScaleRewards = Literal["group", "batch", "none"]
ImportanceLevel = Literal["subset", "sequence", "token"]


def mean_temporal_entropy(
    timestamps: np.ndarray, subsets: Sequence[Sequence[int]] | np.ndarray, k: int = 1
) -> float:
    """Mean Kozachenko–Leonenko entropy of the chosen timestamps over candidates (§4.3).

    ``timestamps`` is ``(T,)`` seconds; ``subsets`` is ``G`` index lists (``(G, K)``). Each
    candidate's timestamps give one estimate; candidates with too few frames (``nan``) are
    left out, and ``nan`` is returned when none is left.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    values = [kl_entropy(ts[np.asarray(sub, dtype=np.int64)], k) for sub in subsets]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def group_advantages(
    rewards: Tensor, scale: ScaleRewards = "group", eps: float = 1e-4, zero_tol: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages ``(r - mean_group) / (std + eps)`` (Algorithm 1, line 7).

    Args:
        rewards: ``(B, G)`` margin rewards of the ``G`` candidates of each question.
        scale: ``"group"``: divide by each group's std (the paper); ``"batch"``: centre per
            group, divide by the std of all ``B * G`` rewards (TRL's ``scale_rewards="batch"``,
            Dr. GRPO's critique of per-group scaling); ``"none"``: only centre.
        eps: added to the std so near-constant groups do not explode (the paper's epsilon,
            1e-4 as in TRL).
        zero_tol: a group whose rewards span (max - min) at most this much has no spread.

    Returns:
        ``advantages (B, G)`` and ``zero_std_mask (B,)`` (bool). A group with no spread carries
        no learning signal: its advantages are exactly 0, whatever ``scale``, and it is flagged
        so the trainer can report ``reward/frac_zero_std``.

    The std is the sample std (``torch.std``, Bessel-corrected), as in TRL's GRPO trainer;
    the paper's ``std(r)`` does not say which. With ``G = 16`` the two differ by 3%.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, G), got shape {tuple(rewards.shape)}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    r = rewards if rewards.is_floating_point() else rewards.float()
    B, G = r.shape
    centred = r - r.mean(dim=1, keepdim=True)  # (B, G)
    zero_std = (r.amax(dim=1) - r.amin(dim=1)) <= zero_tol  # (B,)
    if scale == "group":
        std = r.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(r[:, :1])  # (B, 1)
        advantages = centred / (std + eps)
    elif scale == "batch":
        std = r.std() if r.numel() > 1 else torch.zeros((), dtype=r.dtype, device=r.device)
        advantages = centred / (std + eps)
    else:
        advantages = centred
    advantages = torch.where(zero_std[:, None], torch.zeros_like(advantages), advantages)
    return advantages, zero_std


def _check_logps(logp_new: Tensor, logp_old: Tensor, step_mask: Tensor | None) -> Tensor:
    """Validate ``(B, G, K)`` inputs; return the step mask as a float tensor of that shape."""
    if logp_new.dim() != 3 or logp_new.shape != logp_old.shape:
        raise ValueError(
            "logp_new and logp_old must both be (B, G, K), got "
            f"{tuple(logp_new.shape)} and {tuple(logp_old.shape)}"
        )
    if step_mask is None:
        return torch.ones_like(logp_new)
    if step_mask.shape != logp_new.shape:
        raise ValueError(
            f"step_mask must match logp (B, G, K) {tuple(logp_new.shape)}, "
            f"got {tuple(step_mask.shape)}"
        )
    return step_mask.to(logp_new.dtype)


def sequence_log_ratio(
    logp_new: Tensor,
    logp_old: Tensor,
    level: ImportanceLevel = "subset",
    step_mask: Tensor | None = None,
) -> Tensor:
    """Log importance weights ``log pi_theta / pi_theta_old``.

    Args:
        logp_new: ``(B, G, K)`` per-step log-probs of the chosen frames under the current policy.
        logp_old: ``(B, G, K)`` the same under the sampling policy (no gradient needed).
        level: ``"subset"`` (the paper's Eq. 2): the ratio of whole-subset probabilities
            ``pi(f) / pi_old(f)``, i.e. the product of the per-step ratios, log ratio
            ``sum_k (logp_new - logp_old)``, ``(B, G, 1)``; ``"sequence"``: the length-normalised
            log ratio ``mean_k (logp_new - logp_old)`` (GSPO), ``(B, G, 1)``; ``"token"``: the
            per-step log ratio, ``(B, G, K)`` (PPO / GRPO per token).
        step_mask: optional ``(B, G, K)``, 1/True for steps that exist; masked steps are left
            out of the sum / mean and get a log ratio of 0 at token level.

    At ``new == old`` the gradient of the subset ratio is that of the subset's log-likelihood
    (``sum_k``), the REINFORCE gradient of the whole trajectory; the sequence ratio divides it
    by ``K`` (32x at T' = 32 against the entropy bonus), in exchange for a ratio that stays
    near 1 under several update passes, so one clip range serves every curriculum stage.
    """
    mask = _check_logps(logp_new, logp_old, step_mask)  # (B, G, K)
    log_ratio = (logp_new - logp_old) * mask  # (B, G, K)
    if level == "token":
        return log_ratio
    if level == "subset":
        return log_ratio.sum(dim=-1, keepdim=True)  # (B, G, 1): log of the product of step ratios
    if level == "sequence":
        steps = mask.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (B, G, 1)
        return log_ratio.sum(dim=-1, keepdim=True) / steps  # (B, G, 1)
    raise ValueError(f"level must be 'subset', 'sequence' or 'token', got {level!r}")


def _candidate_mean(per_term: Tensor, mask: Tensor) -> Tensor:
    """Mean over steps within each candidate, then over candidates that have a step.

    ``per_term`` is ``(B, G, 1)`` (one term per candidate) or ``(B, G, K)``.
    """
    if per_term.shape[-1] == 1:
        per_candidate = per_term[..., 0]  # (B, G)
    else:
        per_candidate = (per_term * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B, G)
    has_steps = (mask.sum(-1) > 0).to(per_candidate.dtype)  # (B, G)
    return (per_candidate * has_steps).sum() / has_steps.sum().clamp(min=1.0)


def policy_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    level: ImportanceLevel = "subset",
    epsilon: float | None = None,
    epsilon_high: float | None = None,
    step_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Negative importance-weighted surrogate: the policy part of Eq. 2, to minimise.

    Args:
        logp_new, logp_old, step_mask: see :func:`sequence_log_ratio`, ``(B, G, K)``.
        advantages: ``(B, G)`` from :func:`group_advantages` (constants: no gradient).
        level: importance-sampling level, ``"subset"`` (Eq. 2), ``"sequence"`` or ``"token"``.
        epsilon: ``None`` gives the paper's unclipped Eq. 2, ``ratio * A``. A float gives the
            PPO clipped surrogate ``min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A)``.
        epsilon_high: upper clip (DAPO's clip-higher); defaults to ``epsilon``.

    Returns:
        ``loss``: scalar, ``-mean`` of the surrogate over candidates (subset / sequence level), or over
        steps within each candidate and then over candidates (token level); candidates whose
        steps are all masked are left out. Zero-spread groups have ``A = 0`` and add nothing
        but still count in the mean, as in TRL. ``stats``: ``clip_ratio`` (share of surrogate
        terms where the clipped branch is active, i.e. the gradient is cut off),
        ``clip_ratio_low`` / ``clip_ratio_high`` (ratio below ``1 - eps`` with ``A < 0`` /
        above ``1 + eps_high`` with ``A > 0``), ``ratio_mean``.
    """
    if epsilon is None and epsilon_high is not None:
        raise ValueError("epsilon_high needs epsilon (set epsilon, or leave both None for Eq. 2)")
    if advantages.shape != logp_new.shape[:2]:
        raise ValueError(
            f"advantages must be (B, G) {tuple(logp_new.shape[:2])}, got {tuple(advantages.shape)}"
        )
    mask = _check_logps(logp_new, logp_old, step_mask)  # (B, G, K)
    log_w = sequence_log_ratio(logp_new, logp_old, level, step_mask)  # (B, G, 1) or (B, G, K)
    ratio = torch.exp(log_w)
    adv = advantages.to(ratio.dtype).detach()[..., None]  # (B, G, 1)
    surrogate = ratio * adv
    if epsilon is None:
        low = high = torch.zeros_like(ratio, dtype=torch.bool)
    else:
        eps_high = epsilon if epsilon_high is None else epsilon_high
        clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high) * adv
        surrogate = torch.minimum(surrogate, clipped)
        low = (ratio < 1.0 - epsilon) & (adv < 0)
        high = (ratio > 1.0 + eps_high) & (adv > 0)
    loss = -_candidate_mean(surrogate, mask)

    with torch.no_grad():
        # One term per candidate at sequence level, one per valid step at token level.
        term_mask = (mask.sum(-1, keepdim=True) > 0) if ratio.shape[-1] == 1 else mask > 0
        term_mask = term_mask.expand_as(ratio)
        n_terms = term_mask.sum().clamp(min=1).item()
        low_share = (low & term_mask).sum().item() / n_terms
        high_share = (high & term_mask).sum().item() / n_terms
        stats = {
            "clip_ratio": low_share + high_share,
            "clip_ratio_low": low_share,
            "clip_ratio_high": high_share,
            "ratio_mean": (ratio * term_mask).sum().item() / n_terms,
        }
    return loss, stats


def entropy_bonus(entropies: Tensor, step_mask: Tensor | None = None) -> Tensor:
    """Mean per-step entropy of the selection distributions, H(pi_theta) of Eq. 2 / Eq. 7.

    ``entropies`` is ``(B, G, K)``: the entropy of step ``k``'s categorical distribution over
    the frames still available (it must carry gradient). Eq. 7 takes the expectation over
    steps, candidates and questions, so this is the plain mean over valid steps. Maximising it
    equals minimising the KL to the uniform distribution over the remaining frames (B.3.2).
    """
    if entropies.dim() != 3:
        raise ValueError(f"entropies must be (B, G, K), got shape {tuple(entropies.shape)}")
    if step_mask is None:
        return entropies.mean()
    if step_mask.shape != entropies.shape:
        raise ValueError(
            f"step_mask must match entropies {tuple(entropies.shape)}, got {tuple(step_mask.shape)}"
        )
    mask = step_mask.to(entropies.dtype)
    return (entropies * mask).sum() / mask.sum().clamp(min=1.0)


def kl_k3(logp_new: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-step k3 estimate of KL(pi_theta || pi_ref): ``exp(ref - new) - (ref - new) - 1``.

    Non-negative, unbiased for samples drawn from pi_theta, and the estimator TRL uses for
    ``beta > 0``. Shapes ``(B, G, K)``.
    """
    delta = ref_logp - logp_new
    return torch.exp(delta) - delta - 1.0


def approx_kl(logp_new: Tensor, logp_old: Tensor) -> float:
    """How far an update moved the policy from the sampling one: the k3 estimate of
    KL(pi_old || pi_theta), ``mean((r - 1) - log r)`` with ``r = exp(logp_new - logp_old)``
    per selection step (Schulman's estimator, as PPO implementations log it). Non-negative,
    0 when the policies agree on every sampled step. Shapes ``(B, G, K)``; a diagnostic only
    (no gradient)."""
    _check_logps(logp_new, logp_old, None)
    with torch.no_grad():
        log_r = (logp_new - logp_old).double()
        return float((torch.expm1(log_r) - log_r).mean())


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    entropies: Tensor | None = None,
    *,
    level: ImportanceLevel = "subset",
    epsilon: float | None = None,
    epsilon_high: float | None = None,
    entropy_coef: float = 0.0,
    beta: float = 0.0,
    ref_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The loss minimised in one update pass: ``policy_loss - entropy_coef * H + beta * KL``.

    The paper (Eq. 2, §4) uses the entropy bonus with weight 0.002 and no KL term
    (``beta = 0``, which skips the reference log-probs altogether); the defaults here are
    neutral and the training config supplies the paper's values. With ``beta > 0``,
    ``ref_logp`` ``(B, G, K)`` holds the frozen reference policy's per-step log-probs and the
    k3 estimate is averaged like the token-level surrogate.

    Returns ``(loss, stats)`` with the :func:`policy_loss` stats plus ``policy_loss``,
    ``entropy``, ``kl`` and ``loss`` as floats.
    """
    pg_loss, stats = policy_loss(
        logp_new, logp_old, advantages, level, epsilon, epsilon_high
    )
    loss = pg_loss
    stats = {"policy_loss": pg_loss.item(), **stats}
    if entropies is not None:
        entropy = entropy_bonus(entropies)
        loss = loss - entropy_coef * entropy
        stats["entropy"] = entropy.item()
    elif entropy_coef != 0.0:
        raise ValueError("entropy_coef != 0 needs the per-step entropies (B, G, K)")
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp, the reference policy's (B, G, K) log-probs")
        if ref_logp.shape != logp_new.shape:
            raise ValueError(
                f"ref_logp must be (B, G, K) {tuple(logp_new.shape)}, got {tuple(ref_logp.shape)}"
            )
        mask = _check_logps(logp_new, logp_old, None)
        kl = _candidate_mean(kl_k3(logp_new, ref_logp.detach()), mask)
        loss = loss + beta * kl
        stats["kl"] = kl.item()
    stats["loss"] = loss.item()
    return loss, stats
