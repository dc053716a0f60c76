"""Selection-file records: what ``refocus select`` writes for each item, and how it decodes.

One record per item: ``{id, video, selector, mode, budget, seed, indices (sorted, into the
decoded frames), timestamps (s, pts), num_frames, fps}``, or the same keys up to ``seed`` with
an ``error`` field instead when the item cannot be selected. The lmms-eval integration makes
its on-the-fly selections with the same function, so they equal the file's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from refocus.video.config import DecodeConfig

DEFAULT_DECODE_SIZE = 64
"""Decode size for selectors that ignore pixels (only the timestamps matter to them)."""


def selection_records(
    items: Iterable[Any],
    selector: Any,
    budget: int,
    *,
    fps: float = DecodeConfig.fps,
    max_frames: int = DecodeConfig.max_frames,
    progress: bool = True,
) -> Iterator[dict]:
    """One selection-file record per item; failures become records with an ``error`` field.

    Videos are decoded at the selector's image size (``DEFAULT_DECODE_SIZE`` if it has none);
    consecutive items of the same video reuse one decode.
    """
    from tqdm.auto import tqdm

    from refocus.errors import RefocusError
    from refocus.selectors import validate_indices
    from refocus.video import load_video

    size = selector.image_size or DEFAULT_DECODE_SIZE
    last: tuple[str, Any] | None = None
    for item in tqdm(list(items), desc=f"select {selector.name}", unit="item", disable=not progress):
        record = {"id": item.id, "video": str(item.video), "selector": selector.name,
                  "mode": getattr(selector, "mode", None), "budget": budget, "seed": selector.seed}
        try:
            if last is None or last[0] != str(item.video):
                last = (str(item.video), load_video(item.video, fps=fps, max_frames=max_frames, size=size))
            video = last[1]
            indices = validate_indices(selector.select(video, item, budget), video.num_frames, budget,
                                       selector.name)
        except RefocusError as exc:
            record["error"] = " ".join(str(exc).split())
            yield record
            continue
        record.update(
            indices=indices,
            timestamps=[round(float(video.timestamps[i]), 6) for i in indices],
            num_frames=video.num_frames,
            fps=round(float(video.fps), 6),
        )
        yield record
