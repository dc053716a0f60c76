"""Inputs of the policy: the question prompt (Appendix B.6.2) and frame preprocessing.

The policy reads ``[frame tokens of frame 1..T, question tokens]``. The frames take the
places of ``<image_1> ... <image_|v|>`` in the paper's policy prompt; the text after them is
built here, so the trainer, the selector and the tests tokenise exactly the same string.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F


class _HasQuestion(Protocol):
    question: str
    options: Sequence[str]


def build_question_text(item: _HasQuestion) -> str:
    """The policy's question text (Appendix B.6.2): the question, then one "A. ..." line per option.

    >>> from types import SimpleNamespace
    >>> build_question_text(SimpleNamespace(question="What color?", options=("red", "blue")))
    'What color?\\nA. red\\nB. blue'
    """
    letters = string.ascii_uppercase
    lines = [item.question.strip()]
    lines += [f"{letters[i]}. {option}" for i, option in enumerate(item.options)]
    return "\n".join(lines)


BLIND_QUESTION = "Select the frames."
"""What a question-blind policy (``FramePolicyConfig.question_blind``) reads for every item."""


def tokenize_question(tokenizer: Any, item: _HasQuestion | str, *, blind: bool = False) -> torch.Tensor:
    """Token ids (L,) of one question (an item, or an already built text) for the policy.

    No special tokens are added: the question follows the frame tokens directly. ``blind``:
    the ids of :data:`BLIND_QUESTION` whatever the item (pass the policy's
    ``config.question_blind``).
    """
    text = BLIND_QUESTION if blind else item if isinstance(item, str) else build_question_text(item)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 0:
        raise ValueError(f"the question text {text!r} tokenises to no tokens")
    return torch.tensor(ids, dtype=torch.long)


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 RGB frames (T, H, W, 3) -> normalised pixel values (T, 3, S, S) float32.

    Frames are resized with antialiased bilinear interpolation (no torchvision or PIL needed),
    then normalised per channel as ``(x / 255 - mean) / std``.
    """
    if isinstance(frames, np.ndarray) and not frames.flags.writeable:
        frames = np.array(frames)  # decoded frames are read-only views of the frame cache
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def pool_frame_tokens(tokens: torch.Tensor, tokens_per_frame: int | None) -> torch.Tensor:
    """Average-pool each frame's token sequence (T, P, Dv) to (T, tokens_per_frame, Dv).

    Square grids pooled to a square count are pooled in 2-D (neighbouring patches are
    averaged, keeping the layout); anything else is pooled along the sequence in 1-D.
    ``None`` or a count >= P returns the tokens unchanged.
    """
    num_frames, num_tokens, width = tokens.shape
    if tokens_per_frame is None or tokens_per_frame >= num_tokens:
        return tokens
    side, out_side = math.isqrt(num_tokens), math.isqrt(tokens_per_frame)
    if side * side == num_tokens and out_side * out_side == tokens_per_frame:
        grid = tokens.transpose(1, 2).reshape(num_frames, width, side, side)
        pooled = F.adaptive_avg_pool2d(grid, out_side)  # (T, Dv, s, s)
        return pooled.flatten(2).transpose(1, 2).contiguous()
    pooled = F.adaptive_avg_pool1d(tokens.transpose(1, 2), tokens_per_frame)  # (T, Dv, P')
    return pooled.transpose(1, 2).contiguous()
