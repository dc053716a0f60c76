"""Tiny random vision-language checkpoints of real transformers architectures, built offline.

A test fixture, not part of the package: tests import it as ``from tiny_models import ...``
(pytest puts ``tests/`` on ``sys.path``); benchmarks put the repository root on ``sys.path``
and import ``tests.tiny_models``.

Tests and benchmarks need every reference-model family the adapters support, but nothing
may be downloaded. Each builder here makes a randomly initialised model of the family's own
transformers class from a small config, a tokenizer trained on the spot with ``tokenizers``
(carrying the family's special tokens), the family's PIL image processor, its processor class
and a chat template in the family's style, and saves them with ``save_pretrained`` so that
``load_reference(path)`` reads them exactly like a real checkpoint directory.

Sizes: ``size="tiny"`` is for unit tests (32 px frames, one layer, hidden 32). ``size="bench"``
has a vision tower that outweighs the language model (64 px frames, patch 8 -> 64 patches per
frame, 4 vision layers of width 128 against 2 text layers of width 64), as in small VLMs such
as SmolVLM-256M or InternVL3-1B where most of the cost of scoring a subset is the vision
tower; ``benchmarks/reward_scoring.py`` uses it.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refocus.reference.adapters._processor import image_only

FAMILIES = ("llava", "internvl", "qwen2_5_vl", "llava_onevision", "smolvlm")


def tiny_small_reference_config():
    """The project's own small reference model at unit-test size (32 px frames, one token per
    frame, one text layer of width 32)."""
    from refocus.reference.small_model import SmallReferenceConfig

    return SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1),
                                vision_heads=(2, 2), text_hidden=32, text_layers=1, text_heads=2)

SYSTEM_CORPUS = (
    "You are a helpful assistant. Please choose the correct answer to the multiple-choice "
    "question regarding a video. The answer must be a single uppercase letter."
)

# Chat templates in the style of each family (content lists with interleaved text and images).
QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ IMAGE }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _qwen_style(image_markup: str) -> str:
    return QWEN_STYLE_TEMPLATE.replace("{{ IMAGE }}", "{{ '" + image_markup + "' }}")


def _corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: the reward prompt and letters in both spellings."""
    letters = list(string.ascii_uppercase)
    lines = [SYSTEM_CORPUS] * 4
    lines += [f"Frame{i}: " for i in range(1, 65)]
    lines += ["Options:", "What color is the square in the video?", "How many objects appear?"]
    # Whole prompt bodies, so that newlines and the text around image markup are in the vocabulary.
    lines += [
        "Frame1: \nFrame2: \nFrame3: \nWhat color is the square in the video?\nOptions:\n"
        "A. red\nB. blue\nC. green\nD. yellow\n"
    ] * 4
    lines += ["red green blue yellow black white circle square triangle star"] * 4
    # Letters alone (after a newline, "A. ...") and after a space (" A"), so a byte-level BPE
    # learns both "A" and "ĠA" as single tokens.
    for _ in range(8):
        lines += [f"{c}. option" for c in letters]
        lines.append("answer " + " ".join(letters))
        lines.append("Assistant: " + " Assistant: ".join(letters))
    return lines


def train_family_tokenizer(
    kind: str,
    special_tokens: list[str],
    named_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    vocab_size: int = 600,
    pad_token: str = "<pad>",
    eos_token: str | None = None,
) -> Any:
    """Train a small BPE tokenizer and wrap it in ``PreTrainedTokenizerFast``.

    kind: ``"word"`` (whitespace/punctuation pre-tokenizer: letters are their own token ``A``,
    no space variant; like the project's own reference model), ``"bytelevel"`` (GPT-2/Qwen
    style: both ``A`` and ``ĠA``), ``"metaspace"`` (SentencePiece style: ``▁A``).
    named_tokens: attributes such as ``{"image_token": "<image>"}`` that processors read from
    the tokenizer (``tokenizer.image_token``, ``tokenizer.image_token_id``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    named_tokens = dict(named_tokens or {})
    specials = [pad_token, "<unk>"] + [t for t in special_tokens if t not in (pad_token, "<unk>")]
    for tok in named_tokens.values():
        if tok not in specials:
            specials.append(tok)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    initial_alphabet: list[str] = []
    if kind == "word":
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    elif kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        initial_alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace(prepend_scheme="never")]
        )
        tok.decoder = decoders.Metaspace(prepend_scheme="never")
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=initial_alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    kwargs: dict[str, Any] = dict(named_tokens)
    if eos_token is not None:
        kwargs["eos_token"] = eos_token
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad_token, unk_token="<unk>", padding_side="left", **kwargs
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _text_config(kind: str, vocab_size: int, hidden: int, layers: int, **extra: Any) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **extra,
    )


def _sizes(size: str) -> dict[str, int]:
    if size == "tiny":
        return {"image": 32, "patch": 8, "v_hidden": 32, "v_layers": 1, "t_hidden": 32, "t_layers": 1}
    if size == "bench":
        return {"image": 64, "patch": 8, "v_hidden": 128, "v_layers": 4, "t_hidden": 64, "t_layers": 2}
    raise ValueError(f"unknown size {size!r}; use 'tiny' or 'bench'")


def build_llava(out: Path, size: str = "tiny", tokenizer_kind: str = "word", seed: int = 0) -> Path:
    """LLaVA with a SigLIP vision tower ("full" features, last layer): the layout of the
    project's own small reference model."""
    import torch
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    s = _sizes(size)
    tokenizer = train_family_tokenizer(
        tokenizer_kind,
        ["<|im_start|>", "<|im_end|>"],
        named_tokens={"image_token": "<image>"},
        chat_template=_qwen_style("<image>"),
        eos_token="<|im_end|>",
    )
    vision = SiglipVisionConfig(
        hidden_size=s["v_hidden"],
        intermediate_size=2 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=2,
        image_size=s["image"],
        patch_size=s["patch"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config("llama", len(tokenizer), s["t_hidden"], s["t_layers"]),
        image_token_index=tokenizer.image_token_id,
        image_seq_length=(s["image"] // s["patch"]) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = image_only(LlavaProcessor)(
        image_processor=SiglipImageProcessorPil(size={"height": s["image"], "width": s["image"]}),
        tokenizer=tokenizer,
        patch_size=s["patch"],
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=tokenizer.chat_template,
    )
    return _save(out, model, processor)


def build_internvl(out: Path, size: str = "tiny", tokenizer_kind: str = "bytelevel", seed: int = 0) -> Path:
    """InternVL3 in the ``-hf`` layout (InternViT + pixel shuffle + Qwen2 text)."""
    import torch
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
    )

    s = _sizes(size)
    tokenizer = train_family_tokenizer(
        tokenizer_kind,
        ["<|im_start|>", "<|im_end|>"],
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        chat_template=_qwen_style("<IMG_CONTEXT>\\n"),  # InternVL3-hf breaks the line after an image
        eos_token="<|im_end|>",
    )
    vision = InternVLVisionConfig(
        hidden_size=s["v_hidden"],
        intermediate_size=2 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=2,
        image_size=[s["image"], s["image"]],
        patch_size=[s["patch"], s["patch"]],
    )
    seq = (s["image"] // s["patch"]) ** 2 // 4  # pixel shuffle with downsample ratio 0.5
    config = InternVLConfig(
        vision_config=vision,
        text_config=_text_config("qwen2", len(tokenizer), s["t_hidden"], s["t_layers"]),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=seq,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": s["image"], "width": s["image"]},
        crop_to_patches=False,
        max_patches=1,
        min_patches=1,
    )
    processor = image_only(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=seq,
        chat_template=tokenizer.chat_template,
    )
    return _save(out, model, processor)


def build_qwen2_5_vl(out: Path, size: str = "tiny", tokenizer_kind: str = "bytelevel", seed: int = 0) -> Path:
    """Qwen2.5-VL (window-attention ViT with 2x2 patch merging, M-RoPE text model)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    s = _sizes(size)
    patch = 14 if size == "tiny" else 8
    image = 56 if size == "tiny" else 64
    tokenizer = train_family_tokenizer(
        tokenizer_kind,
        ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"],
        named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=_qwen_style("<|vision_start|><|image_pad|><|vision_end|>"),
        eos_token="<|im_end|>",
    )
    hd = s["t_hidden"]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hd,
        intermediate_size=2 * hd,
        num_hidden_layers=s["t_layers"],
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # M-RoPE splits the rotary half of each head (head_dim / 2) into t/h/w sections in
        # Qwen's 1/4, 3/8, 3/8 proportion ([16, 24, 24] for head_dim 128).
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [hd // 16, 3 * hd // 32, 3 * hd // 32],
        },
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        depth=s["v_layers"],
        hidden_size=s["v_hidden"],
        intermediate_size=2 * s["v_hidden"],
        num_heads=2,
        patch_size=patch,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=2 * patch * 2,
        out_hidden_size=hd,
        fullatt_block_indexes=[s["v_layers"] - 1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    pixels = image * image
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = image_only(Qwen2_5_VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    return _save(out, model, processor)


def build_llava_onevision(
    out: Path, size: str = "tiny", tokenizer_kind: str = "bytelevel", seed: int = 0
) -> Path:
    """LLaVA-OneVision (SigLIP + Qwen2); a single grid pinpoint equal to the frame size."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        SiglipVisionConfig,
    )

    s = _sizes(size)
    tokenizer = train_family_tokenizer(
        tokenizer_kind,
        ["<|im_start|>", "<|im_end|>"],
        named_tokens={"image_token": "<image>", "video_token": "<video>"},
        chat_template=_qwen_style("<image>"),
        eos_token="<|im_end|>",
    )
    vision = SiglipVisionConfig(
        hidden_size=s["v_hidden"],
        intermediate_size=2 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=2,
        image_size=s["image"],
        patch_size=s["patch"],
    )
    pinpoints = [[s["image"], s["image"]]]
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=_text_config("qwen2", len(tokenizer), s["t_hidden"], s["t_layers"]),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": s["image"], "width": s["image"]},
        image_grid_pinpoints=pinpoints,
    )
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(s["image"] // s["patch"]) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
    )
    return _save(out, model, processor)


def build_smolvlm(out: Path, size: str = "tiny", tokenizer_kind: str = "metaspace", seed: int = 0) -> Path:
    """SmolVLM (Idefics3-style: SigLIP-like encoder, pixel-shuffle connector, Llama text)."""
    import torch
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
    )

    s = _sizes(size)
    tokenizer = train_family_tokenizer(
        tokenizer_kind,
        ["<|im_start|>", "<row_1_col_1>"],
        named_tokens={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        chat_template=SMOLVLM_TEMPLATE,
        eos_token="<end_of_utterance>",
    )
    scale = 2
    vision = dict(
        hidden_size=s["v_hidden"],
        intermediate_size=2 * s["v_hidden"],
        num_hidden_layers=s["v_layers"],
        num_attention_heads=2,
        image_size=s["image"],
        patch_size=s["patch"],
    )
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=_text_config("llama", len(tokenizer), s["t_hidden"], s["t_layers"]),
        image_token_id=tokenizer.image_token_id,
        scale_factor=scale,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).eval()
    image_processor = SmolVLMImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": s["image"]},
        max_image_size={"longest_edge": s["image"]},
    )
    processor = image_only(SmolVLMProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_len=(s["image"] // s["patch"]) ** 2 // scale**2,
        chat_template=tokenizer.chat_template,
    )
    return _save(out, model, processor)


BUILDERS: dict[str, Callable[..., Path]] = {
    "llava": build_llava,
    "internvl": build_internvl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "llava_onevision": build_llava_onevision,
    "smolvlm": build_smolvlm,
}


def build_tiny(family: str, out: str | Path, size: str = "tiny", **kwargs: Any) -> Path:
    """Build and save a tiny random checkpoint of ``family`` (one of :data:`FAMILIES`) in ``out``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return BUILDERS[family](Path(out), size=size, **kwargs)


def _unit_scale(model: Any) -> None:
    """Re-draw every weight matrix with std 1/sqrt(fan_in) (embeddings: std 1).

    The default init (std 0.02) shrinks signals so much that random tiny models give almost
    the same logits whatever frames they see, and a test comparing two ways of feeding frames
    could not tell right from wrong frames. At unit scale each frame visibly moves the logits.
    """
    import math

    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim < 2:
                continue
            fan_in = 1 if "embed_tokens" in name else math.prod(param.shape[1:])
            param.normal_(0.0, 1.0 / math.sqrt(fan_in))


def _save(out: Path, model: Any, processor: Any) -> Path:
    _unit_scale(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
