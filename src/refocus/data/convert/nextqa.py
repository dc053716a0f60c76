"""NExT-QA multiple choice (doc-doc/NExT-QA): the ``val.csv`` / ``test.csv`` layout.

Columns ``video, frame_count, width, height, question, answer`` (0-4), ``qid, type,
a0, a1, a2, a3, a4``. Item id is ``<video>_<qid>``, category the question ``type``
(CW, CH, TN, TC, TP, DL, DC, DO).

Videos: NExT-QA nests them in shard folders (``NExTVideo/0000/4010069381.mp4``). If
``<videos>/map_vid_vidorid.json`` exists (``{"4010069381": "0000/4010069381"}``) it is used;
otherwise ``<videos>/<video>.mp4``, then the unique ``<video>.mp4`` anywhere under
``--videos`` (one index of the directory per conversion).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from refocus.data.convert._common import (
    Row,
    VideoFinder,
    letter_for_index,
    make_item,
    optional_text,
    read_csv,
    require_text,
    rows_of,
    source_files,
)
from refocus.errors import RefocusError

NAME = "nextqa"
MAP_FILE = "map_vid_vidorid.json"
NUM_OPTIONS = 5


def rows(src: Path) -> Iterator[Row]:
    return rows_of(source_files(src, ".csv"), read_csv)


def item(row: Row, finder: VideoFinder) -> dict:
    d = row.data
    video = require_text(d, "video")
    qid = require_text(d, "qid")
    options = [require_text(d, f"a{j}") for j in range(NUM_OPTIONS)]
    mapped = _video_map(finder).get(video)
    candidates = [f"{mapped}.mp4"] if mapped else []
    candidates.append(f"{video}.mp4")
    return make_item(
        id=f"{video}_{qid}",
        video=finder.find(candidates, name=f"{video}.mp4"),
        question=require_text(d, "question"),
        options=options,
        answer=letter_for_index(require_text(d, "answer"), NUM_OPTIONS, "answer"),
        category=optional_text(d, "type"),
        meta={
            "benchmark": NAME,
            "video": video,
            "qid": qid,
            "frame_count": _number(d.get("frame_count")),
            "width": _number(d.get("width")),
            "height": _number(d.get("height")),
        },
    )


def _video_map(finder: VideoFinder) -> dict[str, str]:
    if MAP_FILE not in finder.cache:
        path = finder.root / MAP_FILE
        mapping: dict[str, str] = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RefocusError(f"{path}: not a valid JSON object ({exc})") from None
            if not isinstance(raw, dict):
                raise RefocusError(f"{path}: expected an object mapping video ids to paths")
            mapping = {str(k): str(v) for k, v in raw.items()}
        finder.cache[MAP_FILE] = mapping
    return finder.cache[MAP_FILE]


def _number(value: str | None) -> int | float | None:
    """CSV cells are text; keep numeric metadata numeric."""
    if value is None or not str(value).strip():
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else f
