"""How the ReFoCUS policy scores a frame combination, and its highest-scoring combination.

The ranker is a :class:`refocus.policy.FramePolicy`; no head is added. Two scorings
(``VoyagerConfig.scoring``), each paired with the selection that maximises it:

- ``sequence`` (default): ``s(c) = sum_i log pi(c_(i) | c_(1..i-1))`` with c's frames fed in
  temporal order (the replay of the ReFoCUS sampler); selection is greedy decoding, which
  approximates the best combination.
- ``set``: ``s(c) = mean_{f in c} log pi_1(f)``, with ``pi_1`` the policy's distribution at
  its first selection step (the ``<start_of_frame>`` query against every frame key). The
  best K-combination is exactly the top-K frames of ``pi_1``.

Shape letters: B questions, G combinations, K frames per combination, T frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from refocus.voyager.config import SCORINGS


def first_step_logprobs(
    policy, features: torch.Tensor | Sequence[torch.Tensor], question_ids
) -> torch.Tensor:
    """(B, T) float32 log-probabilities of the policy's first selection step, with gradients.

    The prefix ``[frames, question]`` runs once; the ``<start_of_frame>`` token gives the query.
    Padding frames (videos shorter than the longest of the batch) get -inf. Equal to the
    first step of :meth:`FramePolicy.replay_logprobs` and of the sampler.
    """
    from refocus.policy.sampling import encode_prefix, masked_log_softmax, prepare_inputs

    feats, ids, masks, num_frames = prepare_inputs(
        features, question_ids, None, policy.backbone.config.vocab_size
    )
    prefix = encode_prefix(policy, feats, ids, masks, num_frames)
    b = prefix.keys.shape[0]
    start = policy.start_vector.expand(b, 1, -1)
    # A trailing dummy token keeps the backbone on its out-of-place path (the single-token
    # path updates state in place, which autograd rejects); it cannot change step 1 (causal).
    hidden, _ = policy.run_backbone(torch.cat([start, torch.zeros_like(start)], dim=1), prefix.state)
    queries = policy.query_head(hidden[:, :1])  # (B, 1, d)
    logits = policy.frame_logits(prefix.keys, queries)  # (B, 1, T)
    return masked_log_softmax(logits, ~prefix.frame_mask[:, None, :])[:, 0]


def combination_scores(
    policy,
    features: torch.Tensor | Sequence[torch.Tensor],
    question_ids,
    combinations: torch.Tensor,
    scoring: str = "sequence",
) -> torch.Tensor:
    """Scores (B, G) float32 of combinations (B, G, K) of frame indices, with gradients.

    See the module docstring for ``scoring``. The frames of a combination may come in any
    order; the sequence scoring sorts them (temporal order).
    """
    combinations = torch.as_tensor(combinations, dtype=torch.long)
    if combinations.ndim != 3:
        raise ValueError(f"combinations must be (B, G, K), got {tuple(combinations.shape)}")
    if scoring == "set":
        logp = first_step_logprobs(policy, features, question_ids)  # (B, T)
        b, g, k = combinations.shape
        picked = logp.gather(1, combinations.reshape(b, g * k).to(logp.device)).view(b, g, k)
        return picked.mean(dim=-1)
    if scoring == "sequence":
        order = combinations.sort(dim=-1).values
        logprobs, _ = policy.replay_logprobs(features, question_ids, order)  # (B, G, K)
        return logprobs.sum(dim=-1)
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


@torch.no_grad()
def best_combination(policy, features: torch.Tensor, question_ids: torch.Tensor, k: int,
                     scoring: str = "sequence") -> list[int]:
    """Sorted indices of the highest-scoring ``k``-frame combination of one video.

    features (T, P, Dv), question_ids (L,). ``set``: the top-k frames of the first step
    (exact argmax of the set score; ties go to the earlier frame). ``sequence``: greedy
    decoding with the ReFoCUS sampler (approximate argmax).
    """
    num_frames = features.shape[0]
    if k >= num_frames:
        return list(range(num_frames))
    if scoring == "set":
        logp = first_step_logprobs(policy, [features], [question_ids])[0]  # (T,)
        # stable descending sort: equal scores keep temporal order
        top = torch.sort(-logp.double().cpu(), stable=True).indices[:k]
        return sorted(int(i) for i in top)
    if scoring == "sequence":
        out = policy.select([features], [question_ids], k=k, num_candidates=1, mode="greedy")
        return [int(i) for i in out.indices[0, 0].tolist()]
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
