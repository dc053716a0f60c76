"""Reference-model interface, the margin reward, and the scoring logic shared by all adapters.

A reference model scores candidate frame subsets of one question: for each subset it reads
the logits of the option letters at the answer position (the next token after the assistant
prompt), and :func:`refocus.reference.reward.margin_rewards` turns them into
``r = tanh((z* - max_wrong z) / 2)`` (paper Eq. 1 / Eq. 5, Appendix B.3.1).

:class:`HFReference` implements scoring for transformers image-text-to-text models, with
frame reuse: the candidate subsets of one question share most frames, so each distinct frame
goes through the vision tower (and projector) once per call, in one batched pass over the
union of indices; every subset's inputs are then assembled from those features. The
assembly goes through the model's own forward (``mm_encoder_outputs``), which scatters the
features into the image-placeholder positions (``masked_scatter``) and, for M-RoPE models
such as Qwen2.5-VL, computes position ids with the model's own ``get_rope_index``. All
subsets with the same number of frames have identical token ids, so the prompt is tokenized
once per subset size and shared. Only the last position's logits are computed
(``logits_to_keep=1``).

Not done: reusing the key/value cache of the shared text prefix. The shared prefix is only
the system line and ``Frame1:`` (tens of tokens against K x P image tokens per subset), so it
would save about 1-2% of the language-model work while complicating padding and M-RoPE.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from refocus.data.questions import LETTERS
from refocus.reference.prompt import (
    build_prompt_messages,
    render_prompt,
    template_breaks_after_image,
)


@runtime_checkable
class ReferenceModel(Protocol):
    """A frozen vision-language model that scores frame subsets of a multiple-choice item."""

    name: str
    image_size: int
    """Frame size (pixels, square) the model's processor expects; decode frames at this size."""

    def option_logits(
        self, item: Any, frames: np.ndarray, subsets: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """Option-letter logits of each subset.

        item: a ``QAItem``; frames: (T, H, W, 3) uint8; subsets: G lists of frame indices.
        Returns (G, O) float32, O = len(item.options), columns in letter order A, B, ...
        """
        ...


def resolve_letter_tokens(tokenizer: Any, prompt: str, letters: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids under which the model would answer each letter right after ``prompt``.

    For each letter, two spellings are tried, the bare letter (``A``) and the letter after a
    space (`` A``, which SentencePiece spells ``▁A`` and byte-level BPE ``ĠA``): a spelling
    counts when appending it to the rendered prompt adds exactly one token that reads as the
    letter (or, if it merges with the end of the prompt, when the spelling alone is one
    token). Templates differ in whether the answer follows a newline (``assistant\\n``) or a
    colon (``ASSISTANT:``), so when both spellings exist as single tokens both are kept and
    the letter's logit is their maximum: the more likely spelling is the one the model would
    emit. Raises ValueError when a letter has no single-token spelling.
    """
    base = tokenizer.encode(prompt, add_special_tokens=False)
    result: list[tuple[int, ...]] = []
    for letter in letters:
        ids: list[int] = []
        for text in (letter, " " + letter):
            token = _appended_token(tokenizer, prompt, base, text)
            if token is not None and _reads_as(tokenizer, token, letter) and token not in ids:
                ids.append(token)
        if not ids:
            raise ValueError(
                f"option letter {letter!r} is not a single token of this tokenizer "
                "(neither alone nor after a space)"
            )
        result.append(tuple(ids))
    return result


def _appended_token(tokenizer: Any, prompt: str, base: list[int], text: str) -> int | None:
    ids = tokenizer.encode(prompt + text, add_special_tokens=False)
    if len(ids) == len(base) + 1 and ids[: len(base)] == base:
        return int(ids[-1])
    alone = tokenizer.encode(text, add_special_tokens=False)
    return int(alone[0]) if len(alone) == 1 else None


def _reads_as(tokenizer: Any, token: int, letter: str) -> bool:
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str) and piece.replace("Ġ", " ").replace("▁", " ").strip() == letter:
        return True
    return tokenizer.decode([token]).strip() == letter


@dataclass
class ScoringConfig:
    """How :class:`HFReference` batches its work."""

    batch_size: int = 16
    """Subsets per language-model forward (and per naive processor call); bounds memory."""
    frame_reuse: bool = True
    """Encode each distinct frame once per call and assemble the subsets from its features
    (True), or run the processor and the full model on every subset (False, the reference)."""
    vision_batch_size: int | None = None
    """Frames per vision-tower forward when encoding the union; None: batch_size times the
    largest subset, the number of frames one naive batch would encode."""


# Processor outputs the language model needs besides the features: per sample (one row per
# subset) and per image (one row per frame, e.g. Qwen2.5-VL's grid sizes for M-RoPE).
PER_SAMPLE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
PER_IMAGE_KEYS = ("image_grid_thw",)


class ReuseUnsupported(RuntimeError):
    """The model's image features cannot be split per frame or fed back to its forward."""


class HFReference:
    """Scoring for a transformers image-text-to-text model and its processor.

    Family adapters set the class attributes below; the generic fallback uses them as they
    are. ``model`` and ``processor`` are the loaded transformers objects.
    """

    family: ClassVar[str] = "generic"
    model_class: ClassVar[str] = "AutoModelForImageTextToText"
    """transformers class used to load the checkpoint."""
    processor_kwargs: ClassVar[dict[str, Any]] = {}
    """Per-call processor options of the reward setting (one image per frame, no tiling)."""
    stack_features: ClassVar[bool] = False
    """Feed per-frame features back as one (N, P, D) tensor instead of a list (InternVL)."""
    single_frame_reuse: ClassVar[bool] = True
    """Whether one-frame subsets can use features encoded in a multi-image call."""
    verify_reuse: ClassVar[bool] = False
    """Check reuse against naive scoring on the first subset and fall back if they differ
    (for architectures without a dedicated, tested adapter)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str | None = None,
        batch_size: int = 16,
        frame_reuse: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.name = name or self.family
        self.config = ScoringConfig(batch_size=batch_size, frame_reuse=frame_reuse)
        self.frames_encoded = 0
        """Frames passed through the vision tower so far (reuse: the union once per call)."""
        self._letters: dict[tuple[str, int], list[tuple[int, ...]]] = {}
        self._reuse = frame_reuse and self._supports_reuse()
        self._verified = not self.verify_reuse
        self._break_after_image = template_breaks_after_image(processor)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: Any = None,
        batch_size: int = 16,
        frame_reuse: bool = True,
        attn_implementation: str | None = None,
    ) -> HFReference:
        """Load model and processor from a local checkpoint directory (never the hub)."""
        import transformers

        from refocus.reference.adapters._processor import load_processor

        model_cls = getattr(transformers, cls.model_class)
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        model = model_cls.from_pretrained(
            str(path), local_files_only=True, dtype=_resolve_dtype(dtype, device), **extra
        )
        model.to(device)
        processor = load_processor(path)
        return cls(model, processor, name=Path(path).name, batch_size=batch_size, frame_reuse=frame_reuse)

    # ----------------------------------------------------------------------------------- interface
    @property
    def image_size(self) -> int:
        """Square frame size the image processor resizes to (decode frames at this size)."""
        return _size_from_image_processor(self.processor.image_processor)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def prompt(self, item: Any, num_frames: int) -> str:
        """The rendered reward prompt for ``num_frames`` frames (image markup unexpanded)."""
        messages = build_prompt_messages(
            item, num_frames, template_breaks_after_image=self._break_after_image
        )
        return render_prompt(self.processor, messages)

    def letter_tokens(self, prompt: str, num_options: int) -> list[tuple[int, ...]]:
        """Token-id variants of the first ``num_options`` letters (see resolve_letter_tokens).

        The answer position follows the generation prompt, which ends every prompt the same
        way, so resolution is cached on the prompt's tail.
        """
        key = (prompt[-64:], num_options)
        if key not in self._letters:
            if len(self._letters) >= 1024:  # one entry per distinct prompt tail; keep it small
                self._letters.clear()
            self._letters[key] = resolve_letter_tokens(
                self.processor.tokenizer, prompt, LETTERS[:num_options]
            )
        return self._letters[key]

    def option_logits(
        self, item: Any, frames: np.ndarray, subsets: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """Option-letter logits (G, O) float32 of each subset; see :class:`ReferenceModel`.

        Each subset's frames are shown in temporal (index) order. Subsets are scored in
        groups of equal size, ``batch_size`` subsets per forward.
        """
        import torch

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
        subsets = [_check_subset(s, len(frames)) for s in subsets]
        num_options = len(item.options)
        out = np.zeros((len(subsets), num_options), dtype=np.float32)  # (G, O)
        if not subsets:
            return out
        groups: dict[int, list[int]] = {}
        for g, subset in enumerate(subsets):
            groups.setdefault(len(subset), []).append(g)
        prompts = {k: self.prompt(item, k) for k in groups}
        letters = self.letter_tokens(next(iter(prompts.values())), num_options)

        with torch.inference_mode():
            if self._reuse and not self._verified:
                self._verify(prompts, frames, subsets)
            reuse_sizes = [k for k in groups if self._reuse and (k > 1 or self.single_frame_reuse)]
            features: dict[int, Any] = {}
            if reuse_sizes:
                union = sorted({i for k in reuse_sizes for g in groups[k] for i in subsets[g]})
                features = self._encode_union(frames, union, max(reuse_sizes))
            for k, members in groups.items():
                template = None
                for chunk in _chunks(members, self.config.batch_size):
                    if k in reuse_sizes:
                        if template is None:
                            template = self._template(prompts[k], [frames[i] for i in subsets[chunk[0]]])
                        logits = self._forward_reuse(template, [subsets[g] for g in chunk], features)
                    else:
                        images = [[frames[i] for i in subsets[g]] for g in chunk]
                        logits = self._forward_naive(prompts[k], images)
                    out[chunk] = _pick_letters(logits, letters)
        return out

    # ----------------------------------------------------------------------------------- naive
    def _forward_naive(self, prompt: str, images: list[list[np.ndarray]]) -> Any:
        """Processor + full model forward on a batch of subsets; last-position logits (b, V)."""
        inputs = self.processor(
            text=[prompt] * len(images),
            images=images,
            return_tensors="pt",
            padding=True,
            **self.processor_kwargs,
        )
        self.frames_encoded += sum(len(x) for x in images)
        out = self.model(**self._to_device(inputs), logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, :]

    # ----------------------------------------------------------------------------------- reuse
    def _supports_reuse(self) -> bool:
        forward = inspect.signature(self.model.forward).parameters
        return "mm_encoder_outputs" in forward and hasattr(self.model, "get_image_features")

    def _encode_union(self, frames: np.ndarray, union: list[int], max_k: int) -> dict[int, Any]:
        """Per-frame features of every frame in ``union`` (frame index -> (P, D) tensor)."""
        chunk = self.config.vision_batch_size or self.config.batch_size * max_k
        features: dict[int, Any] = {}
        for part in _chunks(union, chunk):
            encoded = self._encode_frames([frames[i] for i in part])
            features.update(zip(part, encoded, strict=True))
        return features

    def _encode_frames(self, images: list[np.ndarray]) -> list[Any]:
        """Vision tower + projector on ``images`` (processed as one multi-image sample, the
        way the processor prepares a subset's frames); one (P, D) tensor per image."""
        n = len(images)
        text = self.processor.image_token * n
        inputs = self.processor(text=[text], images=[images], return_tensors="pt", **self.processor_kwargs)
        accepted = inspect.signature(self.model.get_image_features).parameters
        kwargs = {k: v for k, v in self._feature_inputs(inputs, n).items() if k in accepted}
        kwargs = self._to_device(kwargs)
        output = self.model.get_image_features(**kwargs, return_dict=True)
        self.frames_encoded += n
        return _split_per_image(output.pooler_output, n)

    def _feature_inputs(self, inputs: Any, n: int) -> dict[str, Any]:
        """Processor outputs passed to ``get_image_features`` (family hook)."""
        return {k: v for k, v in inputs.items() if k not in PER_SAMPLE_KEYS}

    def _template(self, prompt: str, images: list[np.ndarray]) -> dict[str, Any]:
        """Tokenized prompt of one subset size (identical for every subset of that size)."""
        inputs = self.processor(text=[prompt], images=[images], return_tensors="pt", **self.processor_kwargs)
        keep = PER_SAMPLE_KEYS + PER_IMAGE_KEYS
        return {k: v for k, v in inputs.items() if k in keep}

    def _forward_reuse(self, template: dict[str, Any], subsets: list[tuple[int, ...]], features: dict[int, Any]) -> Any:
        """Language model on a batch of subsets assembled from cached frame features."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        b = len(subsets)
        inputs: dict[str, Any] = {}
        for key, value in template.items():
            reps = (b,) + (1,) * (value.ndim - 1)
            inputs[key] = value.repeat(*reps)  # per sample: (1, L) -> (b, L); per image: (k, .) -> (b*k, .)
        per_frame = [features[i] for subset in subsets for i in subset]  # b*k x (P, D)
        pooled = torch.stack(per_frame) if self.stack_features else per_frame
        out = self.model(
            **self._to_device(inputs),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=pooled)},
            logits_to_keep=1,
            use_cache=False,
        )
        return out.logits[:, -1, :]

    def _verify(self, prompts: dict[int, str], frames: np.ndarray, subsets: list[tuple[int, ...]]) -> None:
        """Compare reuse with naive scoring on one subset; disable reuse if they differ.

        Tries the features as a list and as one stacked tensor (models differ in what their
        forward takes back). Any failure of the reuse path here means "not supported".
        """
        import warnings

        self._verified = True
        subset = next((s for s in subsets if len(s) > 1 or self.single_frame_reuse), None)
        if subset is None:
            return
        prompt = prompts[len(subset)]
        images = [frames[i] for i in subset]
        naive = self._forward_naive(prompt, [images]).float()
        problem = "no feature layout matched"
        for stack in (self.stack_features, not self.stack_features):
            self.stack_features = stack
            try:
                features = self._encode_union(frames, list(subset), len(subset))
                template = self._template(prompt, images)
                reused = self._forward_reuse(template, [subset], features).float()
            except Exception as err:  # noqa: BLE001 - any failure means reuse is unsupported
                problem = f"{type(err).__name__}: {err}"
                continue
            if bool(((reused - naive).abs() <= 1e-3 * (1.0 + naive.abs())).all()):
                return
            problem = "reused features do not reproduce naive scoring"
        warnings.warn(f"{self.name}: frame reuse unavailable ({problem}); scoring naively", stacklevel=3)
        self._reuse = False

    # ----------------------------------------------------------------------------------- utils
    def _to_device(self, inputs: Any) -> dict[str, Any]:
        import torch

        device, dtype = self.device, self.model.dtype
        moved: dict[str, Any] = {}
        for key, value in dict(inputs).items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
            moved[key] = value
        return moved


def _pick_letters(logits: Any, letters: list[tuple[int, ...]]) -> np.ndarray:
    """(b, V) last-position logits -> (b, O) letter logits (max over a letter's spellings)."""
    import torch

    logits = logits.float()
    columns = [logits[:, list(ids)].max(dim=1).values for ids in letters]  # O x (b,)
    return torch.stack(columns, dim=1).cpu().numpy().astype(np.float32)


def _split_per_image(pooled: Any, n: int) -> list[Any]:
    """Split a ``get_image_features`` pooler output into one (P, D) tensor per image."""
    import torch

    if isinstance(pooled, torch.Tensor):
        if pooled.ndim == 3 and pooled.shape[0] == n:
            return list(pooled.unbind(0))
        if pooled.ndim == 2 and pooled.shape[0] % n == 0:
            return list(pooled.chunk(n, dim=0))
    elif isinstance(pooled, (list, tuple)):
        if len(pooled) == n:
            return [p.reshape(-1, p.shape[-1]) for p in pooled]
        if len(pooled) == 1:
            return _split_per_image(pooled[0], n)
    shape = getattr(pooled, "shape", None) or [getattr(p, "shape", None) for p in pooled]
    raise ReuseUnsupported(f"cannot split image features {shape} into {n} frames")


def _check_subset(subset: Sequence[int], num_frames: int) -> tuple[int, ...]:
    indices = sorted(int(i) for i in subset)
    if not indices:
        raise ValueError("empty frame subset")
    if len(set(indices)) != len(indices):
        raise ValueError(f"frame subset has repeated indices: {list(subset)}")
    if indices[0] < 0 or indices[-1] >= num_frames:
        raise ValueError(f"frame index out of range [0, {num_frames}): {list(subset)}")
    return tuple(indices)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _resolve_dtype(dtype: Any, device: str) -> Any:
    """None: float32 on CPU (half-precision matmuls are slow or missing there), the
    checkpoint's own dtype on accelerators. Strings name torch dtypes or "auto"."""
    import torch

    if dtype is None:
        return torch.float32 if str(device).startswith("cpu") else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return resolved
    return dtype


def _size_from_image_processor(image_processor: Any) -> int:
    """Output side of an image processor with a fixed square output (crop, then size)."""
    for attr in ("crop_size", "size"):
        if attr == "crop_size" and not getattr(image_processor, "do_center_crop", False):
            continue
        size = getattr(image_processor, attr, None)
        if size is None:
            continue
        size = dict(size) if not isinstance(size, int) else {"height": size}
        for key in ("height", "shortest_edge", "longest_edge", "width"):
            if size.get(key):
                return int(size[key])
    raise ValueError(f"cannot tell the frame size of {type(image_processor).__name__}")
