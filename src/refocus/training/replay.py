"""Sampling and replay of a training step in micro-batches of questions.

One GRPO step samples G candidates for each of the B questions on this process, then
replays them with gradients (paper Algorithm 1). Done for all B x G candidates at once, the
memory of both grows with B: the recurrent state of every question is copied to its G
candidates (at the paper's sizes 24 x 16 copies of 48 layers' state, ~20 GB in bf16) and the
backward pass keeps the activations of every question's prefix. Here both run over
micro-batches of ``micro_batch_size`` questions, so peak memory depends on the micro-batch,
not on B:

- :func:`sample_candidates` draws the (B, G, K) random numbers once, then samples each
  micro-batch with its slice: the selections are exactly those of one full-batch call.
- :func:`accumulate_replay` replays each micro-batch, weights its loss by its share of the
  batch and back-propagates it before the next one (gradient accumulation; under DDP the
  gradients are all-reduced once, at the last micro-batch; under DeepSpeed that backward is
  the accumulation boundary). For a loss that is a mean over questions of per-question terms
  (the GRPO loss: means over candidates and steps, every question with G candidates of K
  steps), the accumulated gradient equals the full-batch gradient.

Features stay where the caller keeps them (the trainer: on the CPU) and are moved to the
policy's device per micro-batch, by the policy itself (per prefix segment).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refocus.policy.sampling import SelectionOutput, draw_uniforms


def micro_batches(n: int, size: int | None) -> list[slice]:
    """Consecutive slices of ``range(n)`` with at most ``size`` items (None: one slice)."""
    if size is None or size >= n:
        return [slice(0, n)]
    if size < 1:
        raise ValueError(f"micro_batch_size must be >= 1 or None, got {size}")
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def sample_candidates(
    policy,
    features: Sequence[torch.Tensor],
    question_ids: Sequence[torch.Tensor],
    k: int,
    num_candidates: int,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SelectionOutput:
    """``policy.select(..., mode="sample")`` over micro-batches of questions; the same output
    as one call (the random numbers are drawn once, in the full-batch shape)."""
    b = len(features)
    uniforms = draw_uniforms((b, num_candidates, k), generator)
    parts = [
        policy.select(list(features[s]), list(question_ids[s]), k=k, num_candidates=num_candidates,
                      mode="sample", temperature=temperature, uniforms=uniforms[s])
        for s in micro_batches(b, micro_batch_size)
    ]
    if len(parts) == 1:
        return parts[0]
    width = max(p.frame_mask.shape[1] for p in parts)
    return SelectionOutput(
        indices=torch.cat([p.indices for p in parts]),
        order=torch.cat([p.order for p in parts]),
        logprobs=torch.cat([p.logprobs for p in parts]),
        frame_mask=torch.cat([F.pad(p.frame_mask, (0, width - p.frame_mask.shape[1])) for p in parts]),
    )


@dataclass
class ReplayResult:
    loss: float
    """The full-batch loss (sum of the weighted micro-batch losses)."""
    stats: dict[str, float]
    """The loss function's stats, averaged over micro-batches with the same weights."""
    logprobs: torch.Tensor
    """(B, G, K) detached float32 replayed log-probs."""
    entropies: torch.Tensor
    """(B, G, K) detached float32 per-step entropies."""
    finite: bool = True
    """False: a micro-batch's loss was NaN/inf; nothing after it was back-propagated."""


LossFn = Callable[[torch.Tensor, torch.Tensor, slice], tuple[torch.Tensor, dict[str, float]]]
"""(logprobs (b, G, K), entropies (b, G, K), the micro-batch's slice of the batch) -> (loss, stats)."""


def accumulate_replay(
    accelerator,
    model,
    features: Sequence[torch.Tensor],
    question_ids: Sequence[torch.Tensor],
    order: torch.Tensor,
    loss_fn: LossFn,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> ReplayResult:
    """Replay ``order`` (B, G, K) in micro-batches and back-propagate ``loss_fn`` of each,
    weighted by its share of the B questions, through ``accelerator.backward``.

    ``model`` is the prepared (possibly DDP/DeepSpeed-wrapped) policy; its forward is the
    replay. The caller zeroes gradients before and steps the optimiser after.
    """
    b = len(features)
    slices = micro_batches(b, micro_batch_size)
    total, stats_sum = 0.0, {}
    logps, ents = [], []
    for i, s in enumerate(slices):
        last = i == len(slices) - 1
        weight = (s.stop - s.start) / b
        with _accumulating(accelerator, model, last):
            with autocast():
                replay = model(list(features[s]), list(question_ids[s]), order[s], temperature=temperature)
            logp, ent = replay.logprobs.float(), replay.entropies.float()
            loss, stats = loss_fn(logp, ent, s)
            if not torch.isfinite(loss).all():
                accelerator.sync_gradients = True
                return ReplayResult(float(loss.detach()), stats, logp.detach(), ent.detach(), finite=False)
            accelerator.backward(loss * weight)
        total += weight * float(loss.detach())
        for key, value in stats.items():
            stats_sum[key] = stats_sum.get(key, 0.0) + weight * float(value)
        logps.append(logp.detach())
        ents.append(ent.detach())
    return ReplayResult(total, stats_sum, torch.cat(logps), torch.cat(ents))


@contextlib.contextmanager
def _accumulating(accelerator, model, last: bool):
    """Gradient accumulation for one micro-batch: no DDP all-reduce and no DeepSpeed step
    before the last one (``sync_gradients`` is the boundary flag both read)."""
    accelerator.sync_gradients = last
    try:
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            yield
    finally:
        accelerator.sync_gradients = True
