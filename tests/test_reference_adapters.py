"""Reference-model adapters on tiny random checkpoints of every supported family.

Each family is built once per module (``tests/tiny_models.py``), saved like a real
checkpoint and loaded through ``load_reference``. The checks: the letter logits the adapter
reads equal a plain ``model(**processor(...))`` forward at the last position; frame reuse
gives the same logits and margins as naive per-subset scoring; the margin reward matches
Eq. 4 computed from probabilities; letter tokens resolve for ``A`` / ``ĠA`` / ``▁A``
tokenizers; the B.6.1 prompt renders to a fixed string.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import FAMILIES, _qwen_style, build_tiny, train_family_tokenizer  # noqa: E402

from refocus.data.questions import QAItem  # noqa: E402
from refocus.errors import RefocusError  # noqa: E402
from refocus.reference import (  # noqa: E402
    SYSTEM_PROMPT,
    build_prompt_messages,
    load_reference,
    margin_rewards,
    render_prompt,
)
from refocus.reference.base import (  # noqa: E402
    HFReference,
    _pick_letters,
    resolve_letter_tokens,
)

ADAPTER_NAMES = {
    "llava": "LlavaReference",
    "internvl": "InternVLReference",
    "qwen2_5_vl": "Qwen2_5_VLReference",
    "llava_onevision": "LlavaOnevisionReference",
    "smolvlm": "SmolVLMReference",
}

ITEM = QAItem(
    id="q1",
    video=Path("/nonexistent/video.mp4"),
    question="What color is the square?",
    options=("red", "blue", "green", "yellow"),
    answer="C",
)


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    if family == "smolvlm":
        pytest.importorskip("num2words", reason="the SmolVLM processor needs num2words")
    path = build_tiny(family, tmp_path_factory.mktemp(family) / "ckpt")
    return family, path


@pytest.fixture(scope="module")
def references(checkpoint):
    family, path = checkpoint
    reuse = load_reference(path, batch_size=3, frame_reuse=True)
    naive = load_reference(path, batch_size=3, frame_reuse=False)
    return family, reuse, naive


def _frames(size: int, count: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- margin reward
def test_margin_rewards_hand_values():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]])
    np.testing.assert_allclose(margin_rewards(logits, 0), [np.tanh(0.5), np.tanh(-1.5)], rtol=1e-6)
    np.testing.assert_allclose(margin_rewards(logits, 1), [np.tanh(-1.0), np.tanh(1.5)], rtol=1e-6)
    assert margin_rewards(logits, 0).dtype == np.float32


def test_margin_rewards_equal_probability_ratio_of_eq4():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, size=(64, 5))
    answer = 2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p_star = p[:, answer]
    p_tilde = np.delete(p, answer, axis=1).max(axis=1)
    ratio = (p_star - p_tilde) / (p_star + p_tilde)
    np.testing.assert_allclose(margin_rewards(logits, answer), ratio, atol=1e-6)


def test_margin_rewards_rejects_bad_shapes():
    with pytest.raises(ValueError):
        margin_rewards(np.zeros((3, 1)), 0)
    with pytest.raises(ValueError):
        margin_rewards(np.zeros((3, 4)), 4)


# ------------------------------------------------------------------------------- prompt
GOLDEN_PROMPT = (
    "<|im_start|>system\n"
    "You are a helpful assistant. Please choose the correct answer to the multiple-choice "
    "question regarding a video. The answer must be a single uppercase letter.<|im_end|>\n"
    "<|im_start|>user\n"
    "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\n"
    "What color is the square?\nOptions:\nA. red\nB. blue\nC. green\nD. yellow\n"
    "<|im_end|>\n<|im_start|>assistant\n"
)


def test_prompt_snapshot():
    tokenizer = train_family_tokenizer("word", ["<|im_start|>", "<|im_end|>"], {"image_token": "<image>"})
    tokenizer.chat_template = _qwen_style("<image>")
    messages = build_prompt_messages(ITEM, 3)
    assert render_prompt(tokenizer, messages) == GOLDEN_PROMPT
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}
    kinds = [c["type"] for c in messages[1]["content"]]
    assert kinds == ["text", "image"] * 3 + ["text"]


def test_adapter_prompt_puts_each_frame_on_its_own_line(references):
    family, reuse, _ = references
    prompt = reuse.prompt(ITEM, 2)
    markup = {
        "internvl": "<IMG_CONTEXT>",
        "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    }.get(family, "<image>")
    assert f"Frame1: {markup}\nFrame2: {markup}\nWhat color is the square?\nOptions:\nA. red\n" in prompt
    assert "\n\n" not in prompt


def test_prompt_folds_system_into_user_when_template_has_no_system_role():
    tokenizer = train_family_tokenizer("word", ["<|im_start|>", "<|im_end|>"], {"image_token": "<image>"})
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    text = render_prompt(tokenizer, build_prompt_messages(ITEM, 1))
    assert text.startswith("user: " + SYSTEM_PROMPT + "\nFrame1: <image>\nWhat color")
    assert text.endswith("D. yellow\nassistant:")


# ------------------------------------------------------------------------------- letter tokens
def test_letter_tokens_word_tokenizer_has_only_bare_letters():
    tokenizer = train_family_tokenizer("word", ["<|im_start|>", "<|im_end|>"])
    ids = resolve_letter_tokens(tokenizer, "<|im_start|>assistant\n", "ABCD")
    assert ids == [(tokenizer.convert_tokens_to_ids(c),) for c in "ABCD"]


def test_letter_tokens_bytelevel_tokenizer_keeps_both_spellings():
    tokenizer = train_family_tokenizer("bytelevel", ["<|im_start|>", "<|im_end|>"])
    ids = resolve_letter_tokens(tokenizer, "<|im_start|>assistant\n", "ABC")
    for letter, variants in zip("ABC", ids, strict=True):
        pieces = set(tokenizer.convert_ids_to_tokens(list(variants)))
        assert pieces == {letter, "Ġ" + letter}


def test_letter_tokens_sentencepiece_style_after_colon():
    tokenizer = train_family_tokenizer("metaspace", ["<|im_start|>"])
    ids = resolve_letter_tokens(tokenizer, "<|im_start|>Assistant:", "AB")
    for letter, variants in zip("AB", ids, strict=True):
        assert "▁" + letter in tokenizer.convert_ids_to_tokens(list(variants))


def test_letter_logit_is_max_over_spellings():
    logits = torch.zeros(2, 10)
    logits[0, 3], logits[0, 7] = 1.0, 5.0
    logits[1, 3], logits[1, 7] = 4.0, -2.0
    picked = _pick_letters(logits, [(3, 7), (2,)])
    np.testing.assert_array_equal(picked, [[5.0, 0.0], [4.0, 0.0]])


def test_letter_without_single_token_is_an_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "assistant": 1, "A": 2, "B": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert resolve_letter_tokens(tokenizer, "assistant", "AB") == [(2,), (3,)]
    with pytest.raises(ValueError, match="'C'"):
        resolve_letter_tokens(tokenizer, "assistant", "ABC")


# ------------------------------------------------------------------------------- adapters
def test_load_reference_picks_family_adapter(references):
    family, reuse, naive = references
    assert type(reuse).__name__ == ADAPTER_NAMES[family]
    assert reuse.image_size == (56 if family == "qwen2_5_vl" else 32)
    assert reuse.name == "ckpt"


def test_logits_equal_plain_forward(references):
    family, reuse, _ = references
    frames = _frames(reuse.image_size)
    subset = [1, 4, 8]
    logits = reuse.option_logits(ITEM, frames, [subset, [0, 2, 3]])
    prompt = reuse.prompt(ITEM, len(subset))
    inputs = reuse.processor(
        text=[prompt], images=[[frames[i] for i in subset]], return_tensors="pt", **reuse.processor_kwargs
    )
    with torch.no_grad():
        last = reuse.model(**inputs).logits[0, -1]  # plain forward, every position's logits
    letters = resolve_letter_tokens(reuse.processor.tokenizer, prompt, string.ascii_uppercase[:4])
    expected = [max(last[i].item() for i in ids) for ids in letters]
    np.testing.assert_allclose(logits[0], expected, atol=1e-5)
    assert logits.shape == (2, 4) and logits.dtype == np.float32


def test_frame_reuse_equals_naive(references):
    family, reuse, naive = references
    frames = _frames(reuse.image_size, count=10, seed=2)
    rng = np.random.default_rng(3)
    subsets = [sorted(rng.choice(10, 3, replace=False).tolist()) for _ in range(5)]
    subsets += [[7, 2], [0, 9], [5]]  # mixed sizes; given out of temporal order
    before = reuse.frames_encoded
    fast = reuse.option_logits(ITEM, frames, subsets)
    slow = naive.option_logits(ITEM, frames, subsets)
    assert np.abs(fast - slow).max() < 1e-5
    answer = ITEM.answer_index
    assert np.abs(margin_rewards(fast, answer) - margin_rewards(slow, answer)).max() < 1e-4
    # The comparison can fail: different subsets give clearly different logits.
    assert np.abs(fast[0] - fast[1]).max() > 1e-3
    # Each distinct frame went through the vision tower once (LLaVA-OneVision scores its
    # one-frame subset naively, in the model's single-image mode, and pairs a lone frame).
    union = {i for s in subsets if len(s) > 1 for i in s}
    extra = 1 if family == "llava_onevision" else 0
    if family != "llava_onevision":
        union |= {5}
    assert reuse.frames_encoded - before == len(union) + extra


def test_frame_order_is_temporal(references):
    _, reuse, _ = references
    frames = _frames(reuse.image_size, count=6, seed=4)
    logits = reuse.option_logits(ITEM, frames, [[4, 1, 3], [1, 3, 4], [3, 4, 1]])
    np.testing.assert_array_equal(logits[0], logits[1])
    np.testing.assert_array_equal(logits[0], logits[2])


def test_generic_adapter_reuses_frames_after_checking(checkpoint):
    family, path = checkpoint
    if family not in ("llava", "internvl"):
        pytest.skip("one list-feature and one stacked-feature family suffice")
    from refocus.reference.adapters.generic import GenericReference

    generic = GenericReference.from_pretrained(path, batch_size=4)
    naive = GenericReference.from_pretrained(path, batch_size=4, frame_reuse=False)
    kwargs = {"crop_to_patches": False} if family == "internvl" else {}
    generic.processor_kwargs = naive.processor_kwargs = kwargs
    frames = _frames(generic.image_size, count=8, seed=5)
    subsets = [[0, 1, 2], [1, 2, 3], [2, 5, 7], [0, 6, 7]]
    fast = generic.option_logits(ITEM, frames, subsets)
    assert generic._reuse, "generic reuse should pass its self-check on a supported model"
    assert np.abs(fast - naive.option_logits(ITEM, frames, subsets)).max() < 1e-5


def test_bad_inputs_are_reported(references, tmp_path):
    _, reuse, _ = references
    frames = _frames(reuse.image_size, count=4)
    with pytest.raises(ValueError, match="out of range"):
        reuse.option_logits(ITEM, frames, [[0, 4]])
    with pytest.raises(ValueError, match="repeated"):
        reuse.option_logits(ITEM, frames, [[1, 1]])
    with pytest.raises(ValueError, match="empty"):
        reuse.option_logits(ITEM, frames, [[]])
    assert reuse.option_logits(ITEM, frames, []).shape == (0, 4)


def test_load_reference_needs_a_local_checkpoint(tmp_path):
    with pytest.raises(RefocusError, match="not found"):
        load_reference(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefocusError, match="config.json"):
        load_reference(tmp_path / "empty")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text('{"model_type": "internvl_chat"}')
    with pytest.raises(RefocusError, match="-hf"):
        load_reference(tmp_path / "old")


def test_adapters_share_the_scoring_base():
    from refocus.reference.adapters import ADAPTERS, adapter_class

    for model_type in ADAPTERS:
        assert issubclass(adapter_class(model_type), HFReference)
    assert adapter_class("some_future_vlm").__name__ == "GenericReference"
