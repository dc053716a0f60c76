"""lmms-eval's own video models, answering from the frames a refocus policy selects.

Each class here subclasses one of lmms-eval's model classes (its properties, its chat-request
protocol and, where it can run without torchvision, its own ``generate_until``) and changes
two things:

1. **Frames.** Each request's ``doc_to_messages`` is wrapped so the question's video becomes
   the selected frames, one image per frame after a label with its real time
   (:mod:`refocus.integrations.lmms_eval.messages`); the frames come from a ``refocus select``
   file (``selection=SEL.jsonl``) or from a policy on the fly (``policy=DIR,budget=K``),
   by question id (:mod:`refocus.integrations.lmms_eval.frames`).
2. **Loading.** lmms-eval's ``__init__`` loads ``AutoProcessor``, which builds the checkpoint's
   video processor, and every transformers video processor needs torchvision (not installed
   with refocus: there is no usable CPU build). Frames go in as images, so the processor is
   loaded without its video component (:func:`refocus.reference.adapters._processor.load_processor`);
   the rest of loading follows lmms-eval's (its arguments and defaults, bfloat16, accelerate
   data parallelism).

``refocus_internvl_hf`` and ``refocus_llava_hf`` then run lmms-eval's ``generate_until``
unchanged on the rewritten messages. lmms-eval's Qwen2.5-VL ``generate_until`` goes through
``qwen_vl_utils.process_vision_info``, which imports torchvision, so ``refocus_qwen2_5_vl``
generates with the processor directly (:meth:`RefocusFrames.generate_with_processor`), with
lmms-eval's Qwen2.5-VL defaults (system prompt, greedy, 128 new tokens, ``until`` stops).

This module imports lmms-eval; ``import refocus`` never imports it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedType
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.chat.internvl_hf import InternVLHf
from lmms_eval.models.chat.llava_hf import LlavaHf
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
from PIL import Image
from tqdm import tqdm

from refocus.integrations.lmms_eval.frames import DocItem, FrameSource, strip_letters
from refocus.integrations.lmms_eval.messages import video_url, with_frames
from refocus.video.config import DecodeConfig

REFOCUS_ARGS = ("policy", "budget", "selection", "mode", "seed", "fps", "max_frames",
                "id_key", "question_key", "options_key", "frames_log")
"""Model arguments every refocus model takes besides those of the lmms-eval class it wraps."""


class RefocusFrames:
    """What the refocus models share: the frame source, the message rewrite, loading, a log.

    Refocus model arguments (``--model_args``, comma-separated ``key=value``):

    - ``selection=SEL.jsonl``: frames from a ``refocus select`` output, by question id; or
    - ``policy=DIR,budget=K`` (``mode=greedy|sample|distribution``, ``seed=0``): select now;
    - ``fps=4,max_frames=512``: the decode the selection indexes (``refocus select``'s own);
    - ``frame_size=S``: side of the frames given to the answerer (default per model);
    - ``id_key=id``: the document field with the question id (Video-MME: ``question_id``);
      ``question_key=question``, ``options_key=options``: what the policy reads;
    - ``frames_log=FILE``: append one JSON line per question with the frame indices, times and
      a SHA-256 per frame the answerer was shown.
    """

    is_simple = False
    default_frame_size = 448

    # ---------------------------------------------------------------- set-up

    @staticmethod
    def check_refocus_args(refocus: dict[str, Any]) -> None:
        """Reject model arguments that neither the wrapped class nor refocus takes (checked
        before the answerer is loaded, so a misspelled argument fails at once)."""
        unknown = set(refocus) - set(REFOCUS_ARGS)
        if unknown:
            raise TypeError(f"unexpected model arguments: {', '.join(sorted(unknown))}")

    def setup_frames(self, *, frame_size: int | None, policy: str | None = None, budget: int | None = None,
                     selection: str | None = None, mode: str | None = None, seed: int = 0,
                     fps: float = DecodeConfig.fps, max_frames: int = DecodeConfig.max_frames,
                     id_key: str = "id",
                     question_key: str = "question", options_key: str = "options",
                     frames_log: str | None = None) -> None:
        self.frame_source = FrameSource(
            frame_size=frame_size or self.default_frame_size, selection=selection, policy=policy,
            budget=budget, mode=mode, seed=seed, fps=fps, max_frames=max_frames, device=str(self.device))
        self.id_key, self.question_key, self.options_key = id_key, question_key, options_key
        self.frames_log = None
        if frames_log:
            path = Path(frames_log)
            if self.world_size > 1:
                path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            self.frames_log = path

    def load_answerer(self, pretrained: str, model_class: str, *, device: str, device_map: str | None,
                      dtype: str, attn_implementation: str | None, batch_size: int | str,
                      processor_kwargs: dict | None = None) -> None:
        """Load model, image-only processor and tokenizer as the wrapped lmms-eval class does."""
        import transformers

        from refocus.reference.adapters._processor import load_processor

        lmms.__init__(self)
        accelerator = Accelerator()
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
            self.device_map = f"cuda:{accelerator.local_process_index}"
        else:
            self._device = torch.device(device)
            self.device_map = device_map if device_map else device
        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "device_map": self.device_map}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        cls = getattr(transformers, model_class)
        self._model = cls.from_pretrained(pretrained, **kwargs).eval()
        self.processor = load_processor(pretrained, **(processor_kwargs or {}))
        self._tokenizer = self.processor.tokenizer
        self._config = self._model.config
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu != 1:
            raise ValueError("refocus models answer one question at a time: use --batch_size 1")
        self._rank, self._world_size = 0, 1
        if accelerator.num_processes > 1:
            if accelerator.distributed_type == DistributedType.FSDP:
                self._model = accelerator.prepare(self._model)
            else:
                self._model = accelerator.prepare_model(self._model, evaluation_mode=True)
            self._rank = accelerator.local_process_index
            self._world_size = accelerator.num_processes

    # ---------------------------------------------------------------- frames

    def doc_item(self, doc: dict, video: str) -> DocItem:
        """The question of one lmms-eval document, as the selector reads it."""
        if self.id_key not in doc:
            raise KeyError(f"the task's documents have no field {self.id_key!r} (set id_key=FIELD); "
                           f"fields: {', '.join(map(str, doc))}")
        options = doc.get(self.options_key) or []
        if isinstance(options, str):
            options = json.loads(options) if options.startswith("[") else options.splitlines()
        return DocItem(id=str(doc[self.id_key]), video=Path(video),
                       question=str(doc.get(self.question_key, "")), options=strip_letters(list(options)))

    def messages_with_frames(self, doc_to_messages):
        """``doc_to_messages`` of the task, with each question's video replaced by its frames."""

        def messages(doc: dict, **kwargs: Any) -> list[dict]:
            original = doc_to_messages(doc, **kwargs)
            shown = self.frame_source.frames(self.doc_item(doc, video_url(original)))
            if self.frames_log is not None:
                with self.frames_log.open("a") as f:
                    f.write(json.dumps(shown.log_record()) + "\n")
            images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in shown.frames]
            return with_frames(original, images, shown.timestamps)

        return messages

    def with_refocus_frames(self, requests: list[Instance]) -> list[Instance]:
        """The requests with their ``doc_to_messages`` (argument 1 of a chat request) wrapped."""
        wrapped: dict[int, Any] = {}
        out = []
        for request in requests:
            args = request.args
            fn = args[1]
            if id(fn) not in wrapped:
                wrapped[id(fn)] = self.messages_with_frames(fn)
            out.append(dataclasses.replace(request, arguments=(args[0], wrapped[id(fn)], *args[2:])))
        return out

    # ---------------------------------------------------------------- generation

    def generate_with_processor(self, requests: list[Instance], system_prompt: str | None,
                                max_new_tokens: int = 128) -> list[GenerationResult]:
        """Greedy (or sampled, ``temperature > 0``) generation from the processor's own inputs.

        For models whose lmms-eval ``generate_until`` needs torchvision-only helpers. The
        prompt is rendered by the processor's chat template; generation stops at ``until``.
        """
        from refocus.reference.prompt import render_prompt

        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="Model Responding"):
            ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            messages = doc_to_messages(self.task_dict[task][split][doc_id])
            if system_prompt and not any(m.get("role") == "system" for m in messages):
                messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}, *messages]
            images = [c["url"] for m in messages for c in m["content"] if c.get("type") == "image"]
            text = render_prompt(self.processor, messages)
            inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            sampling = {"do_sample": True, "temperature": temperature,
                        "top_p": gen_kwargs.get("top_p")} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = self.model.generate(
                    **inputs, max_new_tokens=int(gen_kwargs.get("max_new_tokens", max_new_tokens)),
                    num_beams=int(gen_kwargs.get("num_beams", 1)), use_cache=self.use_cache,
                    eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                    **sampling)
            new_tokens = out[0, inputs["input_ids"].shape[1]:]
            answer = self.processor.batch_decode([new_tokens], skip_special_tokens=True)[0]
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    answer = answer.split(stop)[0]
            results.append(GenerationResult(text=answer, token_counts=TokenCounts(output_tokens=len(new_tokens))))
            self.cache_hook.add_partial("generate_until", (text, gen_kwargs), answer)
        return results

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("refocus models answer single-round questions")


class RefocusQwen2_5_VL(RefocusFrames, Qwen2_5_VL):
    """lmms-eval's ``qwen2_5_vl`` answering from refocus-selected frames (model ``refocus_qwen2_5_vl``)."""

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", device: str = "cuda",
                 device_map: str | None = "auto", batch_size: int | str = 1, use_cache: bool = True,
                 attn_implementation: str | None = None, min_pixels: int = 256 * 28 * 28,
                 max_pixels: int = 1605632, system_prompt: str | None = "You are a helpful assistant.",
                 dtype: str = "bfloat16", frame_size: int | None = None, **refocus: Any) -> None:
        self.check_refocus_args(refocus)
        self.load_answerer(pretrained, "Qwen2_5_VLForConditionalGeneration", device=device,
                           device_map=device_map, dtype=dtype, attn_implementation=attn_implementation,
                           batch_size=batch_size,
                           processor_kwargs={"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)})
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.system_prompt = system_prompt
        self.use_cache = use_cache
        self._max_length = 2048
        self.setup_frames(frame_size=frame_size, **refocus)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        return self.generate_with_processor(self.with_refocus_frames(requests), self.system_prompt)


class RefocusInternVLHf(RefocusFrames, InternVLHf):
    """lmms-eval's ``internvl_hf`` (InternVL3 / 3.5 ``-hf``) on refocus-selected frames
    (model ``refocus_internvl_hf``). One 448-px tile per frame (``max_patches=1``), InternVL's
    own video convention."""

    def __init__(self, pretrained: str = "OpenGVLab/InternVL3-8B-hf", device: str = "cuda",
                 device_map: str | None = "auto", batch_size: int | str = 1, min_patches: int = 1,
                 max_patches: int = 1, attn_implementation: str | None = None, use_cache: bool = True,
                 dtype: str = "bfloat16", frame_size: int | None = None, **refocus: Any) -> None:
        self.check_refocus_args(refocus)
        self.load_answerer(pretrained, "InternVLForConditionalGeneration", device=device,
                           device_map=device_map, dtype=dtype, attn_implementation=attn_implementation,
                           batch_size=batch_size)
        self.path = pretrained
        self.min_patches, self.max_patches = int(min_patches), int(max_patches)
        self.num_frames = self.fps = None  # lmms-eval's video sampling: refocus chose the frames
        self.use_cache = use_cache
        self._max_length = 2048
        self.setup_frames(frame_size=frame_size, **refocus)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        return super().generate_until(self.with_refocus_frames(requests))


class RefocusLlavaHf(RefocusFrames, LlavaHf):
    """lmms-eval's ``llava_hf`` (LLaVA-OneVision ``-hf``, LLaVA, LLaVA-NeXT) on refocus-selected
    frames (model ``refocus_llava_hf``)."""

    default_frame_size = 384

    def __init__(self, pretrained: str = "llava-hf/llava-onevision-qwen2-7b-ov-hf", device: str = "cuda",
                 device_map: str | None = "auto", batch_size: int | str = 1,
                 attn_implementation: str | None = None, use_cache: bool = True, dtype: str = "bfloat16",
                 frame_size: int | None = None, **refocus: Any) -> None:
        self.check_refocus_args(refocus)
        self.load_answerer(pretrained, "AutoModelForImageTextToText", device=device, device_map=device_map,
                           dtype=dtype, attn_implementation=attn_implementation, batch_size=batch_size)
        self._image_processor = self.processor  # the name lmms-eval's LlavaHf reads
        self.pretrained = pretrained
        self.chat_template = None
        self.use_cache = use_cache
        self.setup_frames(frame_size=frame_size, **refocus)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        return super().generate_until(self.with_refocus_frames(requests))
