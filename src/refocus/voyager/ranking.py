"""Pure math of Frame-Voyager: the reference loss of a combination and the pairwise ranking loss.

Shape letters: B questions, G combinations per question, O options.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def reference_losses(logits: np.ndarray, answer_index: int) -> np.ndarray:
    """Cross-entropy of the correct letter over the option logits: (G, O) -> (G,) float64.

    ``-log softmax(z)[answer] = logsumexp(z) - z[answer]``: Frame-Voyager's label, the
    Video-LLM's prediction loss on the answer, restricted to the option letters.
    """
    z = np.asarray(logits, dtype=np.float64)  # (G, O)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (G, O) with O >= 2, got {z.shape}")
    if not 0 <= answer_index < z.shape[1]:
        raise ValueError(f"answer_index {answer_index} out of range for {z.shape[1]} options")
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return lse - z[:, answer_index]


def loss_ranks(losses: np.ndarray) -> np.ndarray:
    """0-based rank of each loss, 0 = lowest; ties keep their input order. (G,) -> (G,) int64."""
    order = np.argsort(np.asarray(losses, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def preference_pairs(
    losses: torch.Tensor, min_gap: float = 0.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, G, G) bool: ``[b, i, j]`` is True when combination i should outrank j.

    That is ``losses[b, i] + min_gap < losses[b, j]`` with both combinations valid (padding
    excluded); i == j and ties within ``min_gap`` are never pairs.
    """
    better = losses[:, :, None] + min_gap < losses[:, None, :]  # (B, G, G)
    if valid is not None:
        better = better & valid[:, :, None] & valid[:, None, :]
    return better


def pairwise_ranking_loss(
    scores: torch.Tensor,
    losses: torch.Tensor,
    min_gap: float = 0.0,
    margin: float = 0.0,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RankNet / logistic pairwise loss over every preference pair of every question.

    scores (B, G): the model's combination scores (higher = better), with gradients.
    losses (B, G): reference losses (lower = better). For each pair (i, j) of
    :func:`preference_pairs`: ``-log sigmoid(s_i - s_j - margin) = softplus(margin - (s_i - s_j))``,
    averaged over all pairs of the batch. Returns (loss, stats): ``pairs`` (count),
    ``pair_accuracy`` (share of pairs with s_i > s_j) and ``score_gap`` (mean s_i - s_j).
    With no pair the loss is a zero that still depends on ``scores`` (backward is a no-op).
    """
    pairs = preference_pairs(losses.to(scores.device), min_gap, valid)  # (B, G, G)
    diff = scores[:, :, None] - scores[:, None, :]  # (B, G, G): s_i - s_j
    n = int(pairs.sum())
    if n == 0:
        return scores.sum() * 0.0, {"pairs": 0, "pair_accuracy": float("nan"), "score_gap": float("nan")}
    d = diff[pairs]  # (n,)
    loss = F.softplus(margin - d).mean()
    detached = d.detach()
    return loss, {
        "pairs": n,
        "pair_accuracy": float((detached > 0).float().mean()),
        "score_gap": float(detached.mean()),
    }
