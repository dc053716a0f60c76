"""The explicit Mamba2 recurrent state of the policy backbone, and the cache stand-in that
lets transformers' Mamba2 layers read and record it.

Shape letters: N sequences, C conv channels, k conv kernel, H heads, hd head dim, n state size.
:mod:`refocus.policy.modeling` runs the backbone with it; :mod:`refocus.policy.sampling`
copies and concatenates it. It imports nothing else of the policy package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RecurrentState:
    """Mamba2 state of a batch of N sequences after some tokens, one entry per backbone layer.

    ``conv[l]`` (N, C, k) holds the last ``k`` (conv kernel) inputs of layer ``l``'s causal
    convolution; ``ssm[l]`` (N, H, hd, n) the selective-scan state. Together they are all a
    Mamba2 layer needs to continue a sequence, so copying them to G candidates is the
    "prefix once, then branch" of the sampler.
    """

    conv: list[torch.Tensor]
    ssm: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.conv[0].shape[0]

    def repeat_interleave(self, repeats: int) -> RecurrentState:
        """Each sequence's state repeated ``repeats`` times in place: (N, ...) -> (N * repeats, ...).

        (transformers' ``cache.batch_repeat_interleave`` does not handle Mamba2 layers.)
        """
        return RecurrentState(
            [c.repeat_interleave(repeats, dim=0) for c in self.conv],
            [s.repeat_interleave(repeats, dim=0) for s in self.ssm],
        )

    def index_select(self, index: torch.Tensor) -> RecurrentState:
        return RecurrentState(
            [c.index_select(0, index) for c in self.conv],
            [s.index_select(0, index) for s in self.ssm],
        )

    @staticmethod
    def cat(states: Sequence[RecurrentState]) -> RecurrentState:
        return RecurrentState(
            [torch.cat(cs, dim=0) for cs in zip(*(s.conv for s in states), strict=True)],
            [torch.cat(ss, dim=0) for ss in zip(*(s.ssm for s in states), strict=True)],
        )


def _owns_storage(t: torch.Tensor) -> bool:
    """True when ``t`` spans its whole storage (it keeps nothing else alive)."""
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


class StateCache:
    """Stand-in for a transformers cache that reads given states and records new ones.

    transformers' Mamba2 mixer talks to its cache through five methods; this object answers
    them without mutating the states it was given, so (i) one prefix state can be continued
    many times, and (ii) a block re-run by gradient checkpointing sees the same inputs again.
    ``is_recording_past`` is True so that even a single token takes the out-of-place
    convolution path; the single-token scan updates the recurrent state in place, hence the
    clone (that path only runs without gradients: replay always feeds >= 2 tokens).
    """

    def __init__(self, num_layers: int, conv_kernel: int, state: RecurrentState | None) -> None:
        self.conv_kernel = conv_kernel
        self.conv_in = list(state.conv) if state is not None else [None] * num_layers
        self.ssm_in = list(state.ssm) if state is not None else [None] * num_layers
        self.conv_out: list[torch.Tensor | None] = [None] * num_layers
        self.ssm_out: list[torch.Tensor | None] = [None] * num_layers

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return self.conv_in[layer_idx]

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        state = self.ssm_in[layer_idx]
        if state is not None:
            state = state.clone()
            self.ssm_out[layer_idx] = state
        return state

    def is_recording_past(self, layer_idx: int) -> bool:
        return True

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        """Intermediate per-token states to keep (transformers >= 5.2x asks): none, only the last."""
        return 0

    def increase_count(self, layer_idx: int, state_idx: int = 0) -> None:
        """Token counting of transformers' own caches; this cache keeps no count."""

    def update_conv_state(self, new: torch.Tensor, layer_idx: int, **kwargs) -> torch.Tensor:
        prev = self.conv_in[layer_idx]
        full = new if prev is None else torch.cat([prev.to(new.dtype), new], dim=-1)
        last = full[..., -self.conv_kernel :]
        if last.shape[-1] < self.conv_kernel:  # a prefix shorter than the kernel: zero history
            last = F.pad(last, (self.conv_kernel - last.shape[-1], 0))
        # A copy, not a view: the view would keep ``full`` (every token of the chunk) alive
        # for as long as the state lives, e.g. all segment-boundary states of the prefix.
        self.conv_out[layer_idx] = last.clone()
        return full

    def update_recurrent_state(self, state: torch.Tensor, layer_idx: int, **kwargs) -> torch.Tensor:
        self.ssm_out[layer_idx] = state if _owns_storage(state) else state.clone()
        return state

    def result(self) -> RecurrentState:
        return RecurrentState(list(self.conv_out), list(self.ssm_out))
