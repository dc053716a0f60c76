"""Inputs of the policy: the prompt (Appendix B.6.2) and frame preprocessing.

The policy reads ``[prompt text before the frames, frame tokens of frame 1..T, prompt text
after them]``. The prompt template (``FramePolicyConfig.prompt_template``, by default the
paper's B.6.2 prompt) has a ``{frames}`` slot, the paper's ``<image_1> ... <image_|v|>``, and a
``{question}`` slot for the question and its option lines. Both text parts are tokenised here
by the policy's own tokenizer, so the trainer, the selectors and the tests read the same ids.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PromptIds:
    """Token ids of one question's prompt: ``before`` (L0,) the frames (may be empty), ``after`` (L,)."""

    before: torch.Tensor
    after: torch.Tensor


def split_prompt(template: str, question_text: str) -> tuple[str, str]:
    """The prompt text before and after the frames, with the question put in.

    >>> split_prompt("<s>{frames}-{question}</s>", "Q?")
    ('<s>', '-Q?</s>')
    >>> split_prompt("{question}{frames}{question}", "Q?")
    ('Q?', 'Q?')
    """
    before, after = template.split("{frames}", 1)
    return before.replace("{question}", question_text), after.replace("{question}", question_text)


def tokenize_question(
    tokenizer: Any, item: _HasQuestion | str, template: str | None = None, *, blind: bool = False
) -> PromptIds:
    """Prompt token ids of one question (an item, or an already built question text).

    ``template``: the policy's ``config.prompt_template`` (None: the paper's B.6.2 prompt). Each
    text part is tokenised without added special tokens: the template spells out its own
    (``<|endoftext|>`` is the GPT-NeoX tokenizer's end-of-text token, which Mamba2 checkpoints
    use). ``blind``: :data:`BLIND_QUESTION` in place of every item's question (pass the
    policy's ``config.question_blind``). :func:`policy_prompt` passes both from a config.
    """
    from refocus.policy.configuration import PAPER_PROMPT

    question = BLIND_QUESTION if blind else item if isinstance(item, str) else build_question_text(item)
    before, after = split_prompt(PAPER_PROMPT if template is None else template, question)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] if text else [] for text in (before, after)]
    if len(ids[1]) == 0:
        raise ValueError(f"the prompt text after the frames {after!r} tokenises to no tokens")
    return PromptIds(torch.tensor(ids[0], dtype=torch.long), torch.tensor(ids[1], dtype=torch.long))


def policy_prompt(config: Any, tokenizer: Any, item: _HasQuestion | str) -> PromptIds:
    """The prompt ids a policy with ``config`` reads for ``item`` (its template, blind or not)."""
    return tokenize_question(tokenizer, item, config.prompt_template, blind=bool(config.question_blind))


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


def pool_frame_tokens(
    tokens: torch.Tensor, tokens_per_frame: int | None, stride: int | None = None,
    mode: str = "average",
) -> torch.Tensor:
    """Average-pool each frame's token sequence (T, P, Dv) to (T, tokens_per_frame, Dv).

    Square grids pooled to a square count are pooled in 2-D (neighbouring patches are
    averaged, keeping the layout); anything else is pooled along the sequence in 1-D.
    ``None`` or a count >= P returns the tokens unchanged. ``stride`` s instead pools s x s
    patches with stride s over a square grid, as the authors' ``get_2dPool`` by ``mode``:
    "average" (``avg_pool2d``, floor: 27 x 27 -> 13 x 13), "max" (``max_pool2d``) or
    "bilinear" (resized to ceil(side / s): 27 x 27 -> 14 x 14).
    """
    num_frames, num_tokens, width = tokens.shape
    if stride is not None and stride > 1:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"token_pool_stride needs a square token grid, got {num_tokens} tokens")
        grid = tokens.transpose(1, 2).reshape(num_frames, width, side, side)
        if mode == "average":
            grid = F.avg_pool2d(grid, stride)
        elif mode == "max":
            grid = F.max_pool2d(grid, stride)
        elif mode == "bilinear":
            grid = F.interpolate(grid, size=[math.ceil(side / stride)] * 2, mode="bilinear")
        else:
            raise ValueError(f"token pooling mode must be 'average', 'max' or 'bilinear', got {mode!r}")
        return grid.flatten(2).transpose(1, 2).contiguous()
    if tokens_per_frame is None or tokens_per_frame >= num_tokens:
        return tokens
    side, out_side = math.isqrt(num_tokens), math.isqrt(tokens_per_frame)
    if side * side == num_tokens and out_side * out_side == tokens_per_frame:
        grid = tokens.transpose(1, 2).reshape(num_frames, width, side, side)
        pooled = F.adaptive_avg_pool2d(grid, out_side)  # (T, Dv, s, s)
        return pooled.flatten(2).transpose(1, 2).contiguous()
    pooled = F.adaptive_avg_pool1d(tokens.transpose(1, 2), tokens_per_frame)  # (T, Dv, P')
    return pooled.transpose(1, 2).contiguous()
