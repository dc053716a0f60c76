"""The prefix pass ``[prompt, frames, question]`` in segments along the sequence, optionally checkpointed.

At the paper's sizes the prefix is long (512 frames x 729 SigLIP tokens = 373,248 tokens) and
a backward pass that keeps every block's input for all of it needs ``layers x tokens x
width`` floats (48 x 373k x 2048 x 4 bytes = 147 GB per question). Mamba2 is a recurrence,
so the prefix can run as consecutive segments, each continuing from the state the previous
one ended in; with gradients, each segment is checkpointed (non-reentrant, so the gradient
flows back through the chained states), keeping only the segment-boundary states (one
:class:`RecurrentState` per boundary) and each frame's last-token output until the backward
pass, which recomputes one segment at a time. Together with transformers' per-block
checkpointing inside each segment this is checkpointing along both axes, sequence and
depth (the paper's Multi-Axis Gradient Checkpointing, §4 / Appendix B.1).

The result equals the one-pass prefix up to floating-point error (the chunked scan splits
the sequence at different points). ``segment_frames=None`` runs the prefix in one pass.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from refocus.policy.state import RecurrentState


def _segment(
    policy, features: torch.Tensor, ids: torch.Tensor, state: RecurrentState | None,
    before: torch.Tensor | None = None,
):
    """One segment: optional (n, L0) prompt ids before the frames (first segment only),
    (n, s, P, Dv) features (+ (n, L) ids on the last segment, else (n, 0)) from ``state``;
    returns each frame's last-token output (n, s, D) and the end state."""
    p = features.shape[2]
    l0 = 0 if before is None else before.shape[1]
    embeds = policy.embed_prefix(features, ids, before)  # (n, L0 + s*P + L, D)
    hidden, new_state = policy.run_backbone(embeds, state)
    return hidden[:, l0 + p - 1 : l0 + features.shape[1] * p : p], new_state


def run_prefix(
    policy, features: torch.Tensor, ids: torch.Tensor, segment_frames: int | None = None,
    before: torch.Tensor | None = None,
) -> tuple[torch.Tensor, RecurrentState]:
    """Frame embeddings (n, T, D) (the backbone output at each frame's last token, B.5) and
    the state after ``[prompt before the frames, frames, question]``, for (n, T, P, Dv)
    features, (n, L) ids after the frames and optional (n, L0) ids before them.

    ``segment_frames``: frames per segment (None or >= T: one pass). Segments are
    checkpointed when gradients are on and the policy has gradient checkpointing enabled.
    """
    t = features.shape[1]
    if segment_frames is None or segment_frames >= t:
        return _segment(policy, features, ids, None, before)
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1 or None, got {segment_frames}")
    save_memory = torch.is_grad_enabled() and getattr(policy, "is_gradient_checkpointing", False)
    no_text = ids[:, :0]
    outputs, state = [], None
    for start in range(0, t, segment_frames):
        stop = min(t, start + segment_frames)
        seg_ids = ids if stop == t else no_text
        args = (policy, features[:, start:stop], seg_ids, state, before if start == 0 else None)
        if save_memory:
            hidden, state = checkpoint(_segment, *args, use_reentrant=False)
        else:
            hidden, state = _segment(*args)
        outputs.append(hidden)
    return torch.cat(outputs, dim=1), state
