"""The reward-model prompt of paper Appendix B.6.1, built as chat messages.

The prompt is model-agnostic up to the chat template: a system line asking for one letter,
then for every shown frame ``Frame{i}: <image>`` (one image per frame, in temporal order, each
frame on its own line as in the paper), then the question and the lettered options. Each
model renders it through its own chat template, which also places its image markup
(``<image>``, ``<IMG_CONTEXT>``, ``<|vision_start|><|image_pad|><|vision_end|>`` ...), so the
same messages serve every adapter and the project's own reference model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refocus.data.questions import LETTERS

SYSTEM_PROMPT = (
    "You are a helpful assistant. Please choose the correct answer to the multiple-choice "
    "question regarding a video. The answer must be a single uppercase letter."
)
"""System message of Appendix B.6.1 (the paper wraps it over three lines; one line here)."""


def format_question(question: str, options: Sequence[str]) -> str:
    """Text after the frames: ``"\\n{question}\\nOptions:\\nA. ...\\nB. ...\\n"``."""
    if not 1 <= len(options) <= len(LETTERS):
        raise ValueError(f"need 1..{len(LETTERS)} options, got {len(options)}")
    lines = [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    return "\n" + question + "\nOptions:\n" + "\n".join(lines) + "\n"


def build_prompt_messages(
    item: Any,
    num_frames: int,
    system_prompt: str | None = SYSTEM_PROMPT,
    template_breaks_after_image: bool = False,
) -> list[dict[str, Any]]:
    """Chat messages of the reward prompt for ``num_frames`` frames of ``item``.

    item: anything with ``question`` and ``options`` (a ``QAItem``).
    The user content is ``Frame1: `` image, ``\\nFrame2: `` image, ..., then the question
    text; image entries are ``{"type": "image"}`` placeholders that the processor fills with
    the frames in the same order. ``system_prompt=None`` leaves the system message out (for
    chat templates without a system role; :func:`render_prompt` then folds it into the user
    turn). ``template_breaks_after_image``: the chat template already writes a newline after
    each image (InternVL's does, see :func:`template_breaks_after_image`), so the text after
    an image does not start with one; either way each frame ends up on its own line.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    lead = "" if template_breaks_after_image else "\n"
    content: list[dict[str, Any]] = []
    for i in range(1, num_frames + 1):
        content.append({"type": "text", "text": f"Frame{i}: " if i == 1 else f"{lead}Frame{i}: "})
        content.append({"type": "image"})
    question = format_question(item.question, item.options)
    content.append({"type": "text", "text": question if lead else question[1:]})
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


def render_prompt(processor: Any, messages: list[dict[str, Any]]) -> str:
    """Render ``messages`` with the processor's chat template, ending in the generation prompt.

    Falls back to the tokenizer's renderer with the same template when the processor's own
    ``apply_chat_template`` needs its video processor (SmolVLM reads video defaults even for
    image-only chats; video processors need torchvision, which is not installed), and folds
    the system message into the user turn when the template has no system role.
    """
    template = getattr(processor, "chat_template", None)
    tokenizer = getattr(processor, "tokenizer", processor)
    if template is None:
        template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ValueError("the checkpoint has no chat template (processor or tokenizer)")
    try:
        if not hasattr(processor, "tokenizer"):  # a bare tokenizer
            return tokenizer.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
        try:
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except AttributeError:
            if getattr(processor, "video_processor", "absent") is not None:
                raise
            return tokenizer.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
    except Exception as err:  # jinja2 raises TemplateError subclasses for unsupported roles
        if messages and messages[0]["role"] == "system" and "system" in str(err).lower():
            return render_prompt(processor, _fold_system(messages))
        raise


def template_breaks_after_image(processor: Any) -> bool:
    """Whether the chat template writes a newline right after each image's markup.

    Renders a probe ``[text, image, text]`` and looks at what separates the image markup
    from the following text.
    """
    probe = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<<before>>"},
                {"type": "image"},
                {"type": "text", "text": "<<after>>"},
            ],
        }
    ]
    try:
        text = render_prompt(processor, probe)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe: assume no break
        return False
    start, end = text.find("<<before>>"), text.find("<<after>>")
    return 0 <= start < end and text[:end].endswith("\n")


def _fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Move the system text to the front of the first user turn."""
    system, rest = messages[0], [dict(m) for m in messages[1:]]
    text = "".join(c.get("text", "") for c in system["content"])
    rest[0]["content"] = [{"type": "text", "text": text + "\n"}] + list(rest[0]["content"])
    return rest
