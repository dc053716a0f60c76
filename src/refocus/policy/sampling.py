"""Autoregressive frame sampling (Algorithm 2), its fast cached form, and log-prob replay.

Shape letters: B questions, G candidates per question, T frames (padded to the longest
video of the batch), P tokens per frame, K frames to select, D backbone width, d key width.

Fast sampler (:func:`select`): the long prefix ``[frames, question]`` runs through the Mamba2
backbone once per question; its recurrent state is copied to the G candidates; then K
batched single-token steps over all B * G candidates: ``<start_of_frame>`` first, then the
value vector of the frame chosen last. Cost: one prefix pass + K steps of batch B * G, and
linear in T (the prefix is a linear scan; each step scores T keys).

Literal Algorithm 2 (:func:`select_recompute`): the whole backbone is recomputed over
``[prefix, start, chosen values...]`` at every step for every candidate. It exists to check
the fast sampler and to measure the speed-up.

Replay (:func:`replay_logprobs`): given selection orders, recompute with gradients the
log-probability of each chosen frame and the entropy over the still-available frames at
each step (B.3.2): the prefix once, then all K step inputs as one chunk continued from the
copied prefix state.

Randomness: one uniform number per (question, candidate, step) is drawn up front from the
generator and turned into a frame by inverse-CDF sampling, so a seed fixes the output
regardless of how the work is batched, and the literal and fast samplers draw alike.

Variable T: questions are grouped by (T_b, L_b) and each group's prefix runs as one batch,
without padding inside the backbone (exact; a left-padded prefix would depend on the
backbone having no in_proj bias). Keys, values and the frame mask are then padded to the
longest T; padded frames get -inf scores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from refocus.errors import RefocusError
from refocus.policy.prefix import run_prefix
from refocus.policy.processing import PromptIds
from refocus.policy.state import RecurrentState


class FramePolicy(Protocol):
    """What sampling and replay read of the policy (:class:`refocus.policy.FramePolicy`).

    A protocol rather than an import, so this module does not depend on the model module
    (which binds these functions as its methods).
    """

    device: torch.device
    backbone: torch.nn.Module
    start_vector: torch.Tensor  # (D,) the <start_of_frame> input
    key_head: torch.nn.Module
    value_head: torch.nn.Module
    query_head: torch.nn.Module
    prefix_segment_frames: int | None
    """Frames per prefix segment (see :mod:`refocus.policy.prefix`); None: one pass."""

    def embed_prefix(
        self, features: torch.Tensor, question_ids: torch.Tensor, before_ids: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def run_backbone(
        self, inputs_embeds: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, RecurrentState]: ...

    def frame_logits(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor: ...


Mode = Literal["sample", "greedy", "distribution"]
MODES = ("sample", "greedy", "distribution")


@dataclass
class SelectionOutput:
    """Frames selected by the policy for B questions, G candidates each."""

    indices: torch.Tensor
    """(B, G, K) int64 frame indices of each candidate, sorted ascending (temporal order)."""
    order: torch.Tensor
    """(B, G, K) int64 the same frames in the order they were selected (input of replay)."""
    logprobs: torch.Tensor
    """(B, G, K) float32 log-probability of each choice under the sampling distribution
    (at the given temperature); their sum over K is the candidate's log-likelihood."""
    frame_mask: torch.Tensor
    """(B, T) bool frames that could be selected (False: padding or excluded)."""
    distribution: torch.Tensor | None = None
    """(B, T) float32 in "distribution" mode: per-frame selection probability averaged over
    steps, then over candidates (Appendix C); each row sums to 1."""


@dataclass
class PrefixEncoding:
    """What the candidates of each question share: frame keys/values and the prefix state."""

    keys: torch.Tensor  # (B, T, d)
    values: torch.Tensor  # (B, T, D)
    frame_mask: torch.Tensor  # (B, T) bool, selectable frames
    state: RecurrentState  # batch B, after [frames, question]


# ---------------------------------------------------------------------------- pure functions


def masked_log_softmax(
    logits: torch.Tensor, unavailable: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """float32 log-softmax of ``logits / temperature`` over the last axis with ``unavailable`` at -inf."""
    scaled = logits.float() / temperature
    return scaled.masked_fill(unavailable, float("-inf")).log_softmax(dim=-1)


def masked_entropy(logp: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Entropy over the available entries of log-probs ``logp`` (last axis); safe to differentiate.

    Masked entries (log-prob -inf, probability 0) contribute 0 and no NaN gradients.
    """
    safe = logp.masked_fill(~available, 0.0)
    return -(safe.exp().masked_fill(~available, 0.0) * safe).sum(dim=-1)


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one index per row of ``probs`` (..., T) from uniforms (...) in [0, 1).

    Returns the first index whose cumulative probability exceeds ``u * total``; an index with
    zero probability is never returned.
    """
    cdf = probs.double().cumsum(dim=-1)
    target = uniforms.double().unsqueeze(-1) * cdf[..., -1:]
    index = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    # u * total can round up to total; clamp to the last index with non-zero probability.
    num = probs.shape[-1]
    last = num - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(index, last)


def available_frames(order: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """(B, G, K, T) bool: frames still selectable at each step of the given orders (B, G, K).

    A frame is available at step i if the frame mask allows it and it is not among the
    frames chosen at steps < i.
    """
    b, g, k = order.shape
    t = frame_mask.shape[-1]
    step_of = torch.full((b, g, t), k, dtype=torch.long, device=order.device)
    step_of.scatter_(-1, order, torch.arange(k, device=order.device).expand(b, g, k))
    steps = torch.arange(k, device=order.device).view(1, 1, k, 1)
    chosen_before = step_of.unsqueeze(2) < steps  # (B, G, K, T)
    return frame_mask[:, None, None, :] & ~chosen_before


def draw_uniforms(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """The sampler's random numbers, float64 on the generator's device (CPU by default)."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _choose(logp: torch.Tensor, mode: Mode, uniforms: torch.Tensor | None) -> torch.Tensor:
    if mode == "greedy":
        return logp.argmax(dim=-1)
    return sample_inverse_cdf(logp.exp(), uniforms)


# ---------------------------------------------------------------------------- inputs


def prepare_inputs(
    features: torch.Tensor | np.ndarray | Sequence[torch.Tensor],
    question_ids: torch.Tensor | Sequence,
    frame_mask: torch.Tensor | None,
    vocab_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], int]:
    """Per-question features (T_b, P, Dv), token ids (L_b,), selectable masks (T_b,), and T.

    With batched features (B, T, P, Dv), frames after a question's last True in
    ``frame_mask`` are padding and are dropped (the backbone never reads them); False
    entries before it are frames the backbone reads but that cannot be selected. Outputs
    keep the caller's T (``frame_mask`` width, or the longest video of a list).
    """
    if isinstance(features, torch.Tensor | np.ndarray):
        features = torch.as_tensor(features)
        if features.ndim != 4:
            raise ValueError(
                f"features must be (B, T, P, Dv) or a list of (T, P, Dv), got {tuple(features.shape)}"
            )
        full = list(features)
    else:
        full = [torch.as_tensor(f) for f in features]
    batch = len(full)
    if batch == 0:
        raise ValueError("no questions given")
    if frame_mask is not None:
        frame_mask = torch.as_tensor(frame_mask, dtype=torch.bool)
        if frame_mask.ndim != 2 or frame_mask.shape[0] != batch:
            raise ValueError(f"frame_mask must be (B={batch}, T), got {tuple(frame_mask.shape)}")
    feats, masks = [], []
    num_frames = frame_mask.shape[1] if frame_mask is not None else max(f.shape[0] for f in full)
    for b, f in enumerate(full):
        if f.ndim != 3:
            raise ValueError(
                f"question {b}: frame features must be (T, P, Dv), got {tuple(f.shape)}"
            )
        mask = torch.ones(f.shape[0], dtype=torch.bool)
        if frame_mask is not None:
            if frame_mask.shape[1] < f.shape[0]:
                raise ValueError(
                    f"question {b}: frame_mask has {frame_mask.shape[1]} frames, features {f.shape[0]}"
                )
            mask = frame_mask[b, : f.shape[0]].cpu()
        valid = mask.nonzero()
        if len(valid) == 0:
            raise RefocusError(f"question {b}: no selectable frame")
        length = int(valid.max()) + 1
        feats.append(f[:length])
        masks.append(mask[:length])
    if len({tuple(f.shape[1:]) for f in feats}) != 1:
        raise ValueError(
            f"all questions need the same (P, Dv), got {sorted({tuple(f.shape[1:]) for f in feats})}"
        )

    ids = _prompt_ids(question_ids, batch, vocab_size)
    return feats, ids, masks, num_frames


def _prompt_ids(question_ids, batch: int, vocab_size: int) -> list[PromptIds]:
    """Each question's ids as PromptIds; a bare (L,) sequence is the text after the frames."""
    if isinstance(question_ids, torch.Tensor):
        if question_ids.ndim != 2:
            raise ValueError(
                f"question_ids must be (B, L) or a list of (L,), got {tuple(question_ids.shape)}"
            )
        question_ids = list(question_ids)
    empty = torch.zeros(0, dtype=torch.long)
    ids = [
        PromptIds(torch.as_tensor(q.before, dtype=torch.long), torch.as_tensor(q.after, dtype=torch.long))
        if isinstance(q, PromptIds) else PromptIds(empty, torch.as_tensor(q, dtype=torch.long))
        for q in question_ids
    ]
    if len(ids) != batch:
        raise ValueError(f"{len(ids)} questions' token ids for {batch} questions' frames")
    for b, prompt in enumerate(ids):
        if prompt.after.ndim != 1 or prompt.after.numel() == 0 or prompt.before.ndim != 1:
            raise ValueError(f"question {b}: token ids must be a non-empty 1-D sequence")
        for q in (prompt.before, prompt.after):
            if q.numel() and (int(q.min()) < 0 or int(q.max()) >= vocab_size):
                raise ValueError(
                    f"question {b}: token id {int(q.max())} outside the backbone vocabulary ({vocab_size}); "
                    "the policy's tokenizer must be its backbone's"
                )
    return ids


def encode_prefix(
    policy: FramePolicy,
    feats: list[torch.Tensor],
    ids: list[PromptIds],
    masks: list[torch.Tensor],
    num_frames: int,
) -> PrefixEncoding:
    """Run each question's prefix [text before, frames, question] once; frame keys/values and
    the end state.

    Differentiable (replay calls it with gradients). Questions sharing (T_b, L0_b, L_b) run as
    one batch; see the module docstring on variable T. The prefix runs in segments of
    ``policy.prefix_segment_frames`` frames (checkpointed under gradient checkpointing), see
    :mod:`refocus.policy.prefix`.
    """
    device = policy.device
    masks = [m.to(device) for m in masks]
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for b, (f, q) in enumerate(zip(feats, ids, strict=True)):
        groups[(f.shape[0], q.before.shape[0], q.after.shape[0])].append(b)
    keys: list[torch.Tensor | None] = [None] * len(feats)
    values: list[torch.Tensor | None] = [None] * len(feats)
    states, members_in_order = [], []
    for members in groups.values():
        frame_hidden, state = run_prefix(  # (n, t, D): each frame's last token (B.5)
            policy,
            torch.stack([feats[b] for b in members]),
            torch.stack([ids[b].after for b in members]),
            getattr(policy, "prefix_segment_frames", None),
            torch.stack([ids[b].before for b in members]),
        )
        group_keys, group_values = policy.key_head(frame_hidden), policy.value_head(frame_hidden)
        for j, b in enumerate(members):
            keys[b], values[b] = group_keys[j], group_values[j]
        states.append(state)
        members_in_order += members
    state = RecurrentState.cat(states) if len(states) > 1 else states[0]
    if members_in_order != list(range(len(feats))):
        inverse = torch.empty(len(feats), dtype=torch.long)
        inverse[torch.tensor(members_in_order)] = torch.arange(len(feats))
        state = state.index_select(inverse.to(device))
    pad = num_frames - max(len(m) for m in masks)  # frames after every question's last one
    return PrefixEncoding(
        keys=F.pad(pad_sequence(keys, batch_first=True), (0, 0, 0, pad)),
        values=F.pad(pad_sequence(values, batch_first=True), (0, 0, 0, pad)),
        frame_mask=F.pad(pad_sequence(masks, batch_first=True, padding_value=False), (0, pad)),
        state=state,
    )


def _check_request(
    masks: list[torch.Tensor], k: int, num_candidates: int, mode: str, temperature: float
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 1 or num_candidates < 1:
        raise ValueError(
            f"k and num_candidates must be >= 1, got k={k}, num_candidates={num_candidates}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for b, mask in enumerate(masks):
        if int(mask.sum()) < k:
            raise RefocusError(
                f"question {b}: cannot select {k} frames from {int(mask.sum())} selectable frames"
            )


# ---------------------------------------------------------------------------- samplers


@torch.no_grad()
def select(
    policy: FramePolicy,
    features: torch.Tensor | Sequence[torch.Tensor],
    question_ids: torch.Tensor | Sequence,
    k: int,
    num_candidates: int = 1,
    mode: Mode = "sample",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    frame_mask: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
) -> SelectionOutput:
    """Fast cached sampler: prefix once, then K batched single-token steps over B * G candidates.

    Modes: "sample" (categorical at ``temperature``, seeded by ``generator``), "greedy"
    (argmax; G > 1 gives G identical rows), "distribution" (samples like "sample" and also
    returns the averaged per-frame selection probability, Appendix C). ``uniforms``: the
    (B, G, K) random numbers to use instead of drawing them from ``generator`` (a caller
    that samples a batch in parts draws them once for the whole batch and passes slices).
    """
    feats, ids, masks, num_frames = prepare_inputs(
        features, question_ids, frame_mask, policy.backbone.config.vocab_size
    )
    _check_request(masks, k, num_candidates, mode, temperature)
    prefix = encode_prefix(policy, feats, ids, masks, num_frames)
    b, t = prefix.frame_mask.shape
    g = num_candidates
    device = prefix.keys.device
    if mode == "greedy":
        uniforms = None
    elif uniforms is None:
        uniforms = draw_uniforms((b, g, k), generator).to(device)
    elif tuple(uniforms.shape) != (b, g, k):
        raise ValueError(f"uniforms must be (B, G, K) = {(b, g, k)}, got {tuple(uniforms.shape)}")
    else:
        uniforms = uniforms.to(device)

    state = prefix.state.repeat_interleave(g)  # (B*G, ...): candidates share the prefix
    start = policy.start_vector
    width = start.shape[0]
    step_input = start.expand(b * g, 1, width)
    unavailable = (~prefix.frame_mask)[:, None, :].expand(b, g, t).clone()  # (B, G, T)
    order = torch.empty((b, g, k), dtype=torch.long, device=device)
    logprobs = torch.empty((b, g, k), dtype=torch.float32, device=device)
    prob_sum = (
        torch.zeros((b, g, t), dtype=torch.float32, device=device)
        if mode == "distribution"
        else None
    )
    for i in range(k):
        hidden, state = policy.run_backbone(step_input, state)  # (B*G, 1, D)
        queries = policy.query_head(hidden[:, 0]).view(b, g, -1)  # (B, G, d)
        logp = masked_log_softmax(
            policy.frame_logits(prefix.keys, queries), unavailable, temperature
        )
        choice = _choose(logp, mode, None if uniforms is None else uniforms[:, :, i])  # (B, G)
        order[:, :, i] = choice
        logprobs[:, :, i] = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        if prob_sum is not None:
            prob_sum += logp.exp()
        unavailable.scatter_(-1, choice.unsqueeze(-1), True)
        chosen = prefix.values.gather(1, choice.unsqueeze(-1).expand(b, g, width))  # (B, G, D)
        step_input = chosen.reshape(b * g, 1, width).to(start.dtype)
    return SelectionOutput(
        indices=order.sort(dim=-1).values,
        order=order,
        logprobs=logprobs,
        frame_mask=prefix.frame_mask,
        distribution=None if prob_sum is None else prob_sum.sum(dim=1) / (g * k),
    )


@torch.no_grad()
def select_recompute(
    policy: FramePolicy,
    features: torch.Tensor | Sequence[torch.Tensor],
    question_ids: torch.Tensor | Sequence,
    k: int,
    num_candidates: int = 1,
    mode: Mode = "sample",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    frame_mask: torch.Tensor | None = None,
) -> SelectionOutput:
    """Literal Algorithm 2: for every question, candidate and step, run the backbone over
    ``[frames, question, start, V[f_1], ..., V[f_{i-1}]]`` from scratch and take the last output.

    Draws the same random numbers as :func:`select`, so equal seeds give equal selections
    (up to floating-point ties).
    """
    feats, ids, masks, num_frames = prepare_inputs(
        features, question_ids, frame_mask, policy.backbone.config.vocab_size
    )
    _check_request(masks, k, num_candidates, mode, temperature)
    # Lines 1-3 of Algorithm 2: H = Backbone(v), K = KeyHead(H), V = ValueHead(H).
    prefix = encode_prefix(policy, feats, ids, masks, num_frames)
    b, t = prefix.frame_mask.shape
    g = num_candidates
    device = prefix.keys.device
    uniforms = None if mode == "greedy" else draw_uniforms((b, g, k), generator).to(device)
    start = policy.start_vector
    order = torch.empty((b, g, k), dtype=torch.long, device=device)
    logprobs = torch.empty((b, g, k), dtype=torch.float32, device=device)
    prob_sum = (
        torch.zeros((b, g, t), dtype=torch.float32, device=device)
        if mode == "distribution"
        else None
    )
    for q in range(b):
        prompt = policy.embed_prefix(feats[q][None], ids[q].after[None], ids[q].before[None])  # (1, S, D)
        for j in range(g):
            inputs = torch.cat([prompt, start.view(1, 1, -1).to(prompt.dtype)], dim=1)
            unavailable = ~prefix.frame_mask[q : q + 1, None, :].clone()  # (1, 1, T)
            for i in range(k):
                hidden, _ = policy.run_backbone(inputs)  # recomputed from scratch
                query = policy.query_head(hidden[:, -1]).view(1, 1, -1)
                logp = masked_log_softmax(
                    policy.frame_logits(prefix.keys[q : q + 1], query), unavailable, temperature
                )
                u = None if uniforms is None else uniforms[q : q + 1, j : j + 1, i]
                choice = _choose(logp, mode, u)  # (1, 1)
                order[q, j, i] = choice[0, 0]
                logprobs[q, j, i] = logp[0, 0, choice[0, 0]]
                if prob_sum is not None:
                    prob_sum[q, j] += logp[0, 0].exp()
                unavailable[0, 0, choice[0, 0]] = True
                value = prefix.values[q, choice[0, 0]].view(1, 1, -1).to(inputs.dtype)
                inputs = torch.cat([inputs, value], dim=1)
    return SelectionOutput(
        indices=order.sort(dim=-1).values,
        order=order,
        logprobs=logprobs,
        frame_mask=prefix.frame_mask,
        distribution=None if prob_sum is None else prob_sum.sum(dim=1) / (g * k),
    )


def replay_logprobs(
    policy: FramePolicy,
    features: torch.Tensor | Sequence[torch.Tensor],
    question_ids: torch.Tensor | Sequence,
    order: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each chosen frame and entropy over the available frames, per step, with gradients.

    ``order`` (B, G, K): selections in the order they were made (``SelectionOutput.order``).
    One batched pass: the prefix once, then the K step inputs ``[start, V[o_1], ...,
    V[o_{K-1}]]`` as one chunk for all B * G candidates, continued from the copied prefix
    state. Returns ``(logprobs, entropies)``, both (B, G, K) float32.
    """
    feats, ids, masks, num_frames = prepare_inputs(
        features, question_ids, frame_mask, policy.backbone.config.vocab_size
    )
    order = torch.as_tensor(order, dtype=torch.long)
    if order.ndim != 3 or order.shape[0] != len(feats):
        raise ValueError(f"order must be (B={len(feats)}, G, K), got {tuple(order.shape)}")
    prefix = encode_prefix(policy, feats, ids, masks, num_frames)
    b, g, k = order.shape
    t = prefix.frame_mask.shape[1]
    order = order.to(prefix.keys.device)
    if int(order.min()) < 0 or int(order.max()) >= t:
        raise ValueError(f"order has frame indices outside [0, {t})")
    ordered = order.sort(dim=-1).values
    if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
        raise ValueError("order selects the same frame twice within a candidate")
    available = available_frames(order, prefix.frame_mask)  # (B, G, K, T)
    if not bool(available.gather(-1, order.unsqueeze(-1)).all()):
        raise ValueError("order selects a frame that the frame mask excludes")

    start = policy.start_vector
    width = start.shape[0]
    previous = order[:, :, :-1].reshape(b, g * (k - 1), 1).expand(-1, -1, width)
    fed_back = prefix.values.gather(1, previous).view(b, g, k - 1, width)  # V[o_1..o_{K-1}]
    inputs = torch.cat([start.expand(b, g, 1, width), fed_back.to(start.dtype)], dim=2)
    inputs = inputs.reshape(b * g, k, width)
    if k == 1:
        # A trailing dummy token cannot change earlier outputs (causal) and keeps the chunk
        # on the out-of-place path; transformers' single-token step updates state in place.
        inputs = torch.cat([inputs, torch.zeros_like(inputs)], dim=1)
    hidden, _ = policy.run_backbone(inputs, prefix.state.repeat_interleave(g))  # (B*G, K, D)
    queries = policy.query_head(hidden[:, :k]).view(b, g, k, -1)
    logp = masked_log_softmax(policy.frame_logits(prefix.keys, queries), ~available, temperature)
    logprobs = logp.gather(-1, order.unsqueeze(-1)).squeeze(-1)
    return logprobs, masked_entropy(logp, available)
