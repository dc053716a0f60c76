"""Reasoned answers from any reference adapter's model: prompts, generation, per-token scores.

An :class:`Answerer` wraps the ``model`` and ``processor`` of a reference adapter (the small
reference model, Qwen2.5-VL, LLaVA, ... see ``refocus.reference.adapters``). Frames go in as
one image per frame (the reward prompt's layout, ``Frame1: <image> ...``) with a system line
asking for ``<think>...</think><answer>X</answer>`` (the Video-R1 / Video-KTR answer
format). Templates without a system role (the small reference model's) drop that line.

Departure from Video-KTR: frames are images, not one video input (transformers' video
processors need torchvision, which refocus does not install). The temporal-aware signal still
shuffles the frames before the processor; each frame keeps its own M-RoPE block on Qwen2.5-VL.

Scores for Video-KTR come from forwards over ``prompt + completion``:

- :meth:`Answerer.completion_logits` with the full inputs (the policy's own log-probs and
  entropies);
- the same with the visual tokens removed through the attention mask (position ids are
  computed first from the full mask, so text positions do not move; M-RoPE models get theirs
  from the model's own ``get_rope_index``); the image / video token ids are read as attributes
  of the model config (a transformers config has no ``.get``);
- the same with the frames permuted once before the processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refocus.reference.prompt import (
    build_prompt_messages,
    render_prompt,
    template_breaks_after_image,
)

REASON_SYSTEM_PROMPT = (
    "You are a helpful assistant. Please answer the multiple-choice question regarding a video. "
    "Think about the frames first, then give the answer: output the thinking process in "
    "<think> </think> and the final answer, a single uppercase option letter, in "
    "<answer> </answer> tags."
)


@dataclass
class GenerateConfig:
    """How completions are drawn (defaults: the authors' rollout settings)."""

    max_new_tokens: int = 768
    """Token budget of a completion (Video-KTR: 768)."""
    do_sample: bool = True
    """Sample (rollouts); False: greedy (evaluation)."""
    temperature: float = 1.0
    top_p: float = 0.95


@dataclass
class Completions:
    """N completions of one prompt."""

    ids: Any  # (N, C) long, padded after the stop token
    valid: Any  # (N, C) bool: tokens up to and including the first stop token
    texts: list[str]


class Answerer:
    """Reasoning generation and per-token scoring over a reference adapter's model."""

    def __init__(self, model: Any, processor: Any, name: str = "answerer", image_size: int | None = None) -> None:
        self.model = model
        self.image_size = image_size
        """Frame side to decode at (the adapter's); None when built without an adapter."""
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self._break = template_breaks_after_image(processor)
        stops = [self.tokenizer.eos_token_id]
        for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_utterance>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in stops:
                stops.append(tid)
        self.stop_ids = [s for s in stops if s is not None]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]

    @classmethod
    def from_adapter(cls, adapter: Any) -> Answerer:
        return cls(adapter.model, adapter.processor, name=getattr(adapter, "name", "answerer"),
                   image_size=int(adapter.image_size))

    @classmethod
    def load(cls, path, device: str = "cpu", dtype: Any = None) -> Answerer:
        from refocus.reference import load_reference

        return cls.from_adapter(load_reference(path, device=device, dtype=dtype))

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def visual_token_ids(self) -> list[int]:
        cfg = self.model.config
        ids = [getattr(cfg, name, None) for name in ("image_token_id", "video_token_id", "image_token_index")]
        return sorted({int(i) for i in ids if isinstance(i, int) and i >= 0})

    def markup_token_ids(self) -> list[int]:
        """Visual placeholders and vision start/end markers: never generated."""
        cfg = self.model.config
        extra = [getattr(cfg, n, None) for n in ("vision_start_token_id", "vision_end_token_id")]
        return sorted(set(self.visual_token_ids()) | {int(i) for i in extra if isinstance(i, int) and i >= 0})

    # ------------------------------------------------------------------------- prompts
    def prompt(self, item: Any, num_frames: int) -> str:
        messages = build_prompt_messages(item, num_frames, system_prompt=REASON_SYSTEM_PROMPT,
                                         template_breaks_after_image=self._break)
        return render_prompt(self.processor, messages)

    def encode(self, item: Any, frames: list[np.ndarray]) -> dict[str, Any]:
        """Processor outputs of one prompt with ``frames`` (in the order given)."""
        inputs = self.processor(text=[self.prompt(item, len(frames))], images=[list(frames)], return_tensors="pt")
        return self._to_device(inputs)

    # ------------------------------------------------------------------------- generation
    def generate(self, item: Any, frames: list[np.ndarray], cfg: GenerateConfig | None = None,
                 num: int = 1, seed: int | None = None) -> Completions:
        import torch

        cfg = cfg or GenerateConfig()
        enc = self.encode(item, frames)
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                      num_return_sequences=num, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                      # a completion holding an image placeholder could not be scored again
                      suppress_tokens=self.markup_token_ids())
        if cfg.do_sample:
            kwargs |= dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        else:
            kwargs |= dict(temperature=None, top_p=None, top_k=None)
        modes = [(m, m.training) for m in self.model.modules()]  # restored exactly (a frozen tower stays in eval)
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        for m, mode in modes:
            m.training = mode
        ids = out[:, enc["input_ids"].shape[1]:]
        if ids.shape[1] == 0:
            ids = torch.full((num, 1), self.pad_id, dtype=torch.long, device=out.device)
        valid = self.valid_mask(ids)
        texts = [self.decode(row[m]) for row, m in zip(ids, valid, strict=True)]
        return Completions(ids, valid, texts)

    def valid_mask(self, ids: Any) -> Any:
        """(N, C) bool: every token up to and including the first stop token (all if none)."""
        import torch

        is_stop = torch.isin(ids, torch.tensor(self.stop_ids, device=ids.device))
        first = torch.where(is_stop.any(1), is_stop.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1]))
        return torch.arange(ids.shape[1], device=ids.device)[None, :] <= first[:, None]

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()

    # ------------------------------------------------------------------------- scoring
    def completion_logits(self, enc: dict[str, Any], completions: Any, visual_masked: bool = False) -> Any:
        """Logits (N, C, V) predicting each completion token after ``enc``'s prompt.

        enc: :meth:`encode` of one prompt; completions: (N, C). ``visual_masked``: the
        attention mask hides every image / video token (position ids unchanged).
        """
        import torch

        n, c = completions.shape
        batch = _repeat(enc, n)
        prompt_len = batch["input_ids"].shape[1]
        batch["input_ids"] = torch.cat([batch["input_ids"], completions.to(batch["input_ids"].device)], 1)
        full = torch.ones_like(batch["input_ids"])
        full[:, :prompt_len] = batch["attention_mask"]
        batch["attention_mask"] = full
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in batch:
                batch[key] = torch.cat([batch[key], torch.zeros_like(completions)], 1)
        if visual_masked:
            batch["position_ids"] = self._position_ids(batch)
            vis = torch.isin(batch["input_ids"], torch.tensor(self.visual_token_ids(), device=full.device))
            batch["attention_mask"] = full.masked_fill(vis, 0)
        out = self.model(**batch, logits_to_keep=c + 1, use_cache=False)
        return out.logits[:, :-1, :]

    def _position_ids(self, batch: dict[str, Any]) -> Any:
        """Position ids of the unmasked sequence (M-RoPE through the model's get_rope_index)."""

        inner = getattr(self.model, "model", self.model)
        if hasattr(inner, "get_rope_index") and "image_grid_thw" in batch:
            pos, _ = inner.get_rope_index(
                batch["input_ids"], mm_token_type_ids=batch.get("mm_token_type_ids"),
                image_grid_thw=batch.get("image_grid_thw"), video_grid_thw=batch.get("video_grid_thw"),
                attention_mask=batch["attention_mask"],
            )
            return pos
        mask = batch["attention_mask"].long()
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def _to_device(self, inputs: Any) -> dict[str, Any]:
        device, dtype = self.device, self.model.dtype
        out = {}
        for key, value in dict(inputs).items():
            if hasattr(value, "to"):
                value = value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
            out[key] = value
        return out


def vision_module(model: Any) -> Any:
    """The vision tower of an HF VLM (``vision_tower`` or Qwen's ``visual``), or None."""
    for owner in (model, getattr(model, "model", None)):
        for name in ("vision_tower", "visual", "vision_model"):
            tower = getattr(owner, name, None) if owner is not None else None
            if tower is not None:
                return tower
    return None


def set_train_mode(model: Any, train_vision: bool) -> None:
    """Train mode for the parts being trained; a frozen vision tower stays in eval mode (its
    batch norms keep their running statistics, as in the small reference model's training)."""
    model.train()
    tower = vision_module(model)
    if tower is not None and not train_vision:
        tower.eval()


def _repeat(enc: dict[str, Any], n: int) -> dict[str, Any]:
    """One prompt's processor outputs repeated for n completions (per-sample rows and per-image rows)."""
    out = {}
    for key, value in enc.items():
        if not hasattr(value, "repeat"):
            out[key] = value
            continue
        out[key] = value.repeat(n, *([1] * (value.ndim - 1)))
    return out


def token_logprobs(logits: Any, ids: Any) -> Any:
    """log p of ``ids`` (N, C) under ``logits`` (N, C, V), float32."""
    import torch

    return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
