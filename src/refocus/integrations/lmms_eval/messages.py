"""lmms-eval chat messages with the video replaced by the frames a refocus selection shows.

lmms-eval hands a chat model each question as messages (``{"role", "content": [...]}``, the
content items ``{"type": "video", "url": PATH}``, ``{"type": "text", "text": ...}``, ...). Here
the one video item becomes one image per selected frame, each after a label with its real
presentation time (``Frame1 at 12.25s: `` image, ``\\nFrame2 at 20.50s: `` image, ...), the
prompt refocus's reward model reads (paper Appendix B.6.1) with the time added. The frames are
not passed as a video: a selection is not evenly spaced, so a video input (fixed fps,
Qwen2.5-VL merging pairs of frames into one temporal patch) would misstate when they were
taken; as images each frame keeps its own tokens and its time is in the text. Everything
else in the messages (the task's prompt, system turn, other images) is kept as it was.
"""

from __future__ import annotations

import copy
from typing import Any

FRAME_LABEL = "Frame{index} at {time:.2f}s: "
"""Text before each frame: its 1-based position among the shown frames and its time (s)."""


def video_url(messages: list[dict]) -> str:
    """Path of the one video in ``messages``; an error when there is none or several."""
    urls = [c.get("url") for m in messages for c in m.get("content", []) if c.get("type") == "video"]
    if len(urls) != 1:
        raise ValueError(f"a refocus model answers questions about one video each, got {len(urls)} videos "
                         "in the task's messages")
    url = urls[0]
    if isinstance(url, dict):  # lmms-eval passes {"path"/"url", "video_start", ...} for clips
        url = url.get("path") or url.get("url")
    if not isinstance(url, str):
        raise ValueError(f"the task's video is not a file path: {url!r}")
    return url


def frame_content(images: list[Any], timestamps: list[float]) -> list[dict]:
    """Content items for the shown frames: label text, image, label text, image, ..."""
    if len(images) != len(timestamps):
        raise ValueError(f"{len(images)} frames but {len(timestamps)} timestamps")
    content: list[dict] = []
    for i, (image, t) in enumerate(zip(images, timestamps, strict=True), start=1):
        label = FRAME_LABEL.format(index=i, time=float(t))
        content.append({"type": "text", "text": label if i == 1 else "\n" + label})
        content.append({"type": "image", "url": image})
    return content


def with_frames(messages: list[dict], images: list[Any], timestamps: list[float]) -> list[dict]:
    """A copy of ``messages`` whose video item is replaced by :func:`frame_content`.

    The text that followed the video starts on a new line after the last frame.
    """
    video_url(messages)  # exactly one video
    out = []
    for message in messages:
        content, after_video = [], False
        for item in message.get("content", []):
            if item.get("type") == "video":
                content.extend(frame_content(images, timestamps))
                after_video = True
                continue
            item = copy.copy(item)
            if after_video and item.get("type") == "text" and not item["text"].startswith("\n"):
                item["text"] = "\n" + item["text"]
            after_video = False
            content.append(item)
        out.append({**message, "content": content})
    return out
