"""MLVU (MLVU/MVLU dev set): the ``MLVU/json/*.json`` layout.

Each task file (``1_plotQA.json``, ``2_needle.json``, ...) is a JSON list of objects with
``video, duration, question, candidates`` (option texts), ``answer`` (the text of the right
candidate) and ``question_type``. ``--src`` may be one task file or the ``json`` directory.

Videos: MLVU stores them per task folder (``MLVU/video/1_plotQA/<video>``), so each row's video
is looked up as ``<videos>/<video>``, then ``<videos>/<task file stem>/<video>``
(``1_plotQA.json`` -> ``1_plotQA/``), then as the unique file of that name anywhere under
``--videos``. The generation tasks (``8_sub_scene``, ``9_summary``) have no candidates and are
counted as not multiple-choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from refocus.data.convert._common import (
    LETTERS,
    InvalidRow,
    NotMultipleChoice,
    Row,
    VideoFinder,
    as_text_list,
    make_item,
    optional_text,
    read_json_list,
    require_text,
    rows_of,
    source_files,
)

NAME = "mlvu"


def rows(src: Path) -> Iterator[Row]:
    return rows_of(source_files(src, ".json"), read_json_list)


def item(row: Row, finder: VideoFinder) -> dict:
    d = row.data
    task = row.source.stem
    if not d.get("candidates"):
        raise NotMultipleChoice(
            f"no candidates (task {task}, question_type {d.get('question_type')!r})"
        )
    options = as_text_list(d["candidates"], "candidates")
    answer = _answer_letter(require_text(d, "answer"), options)
    video = require_text(d, "video")
    return make_item(
        # The release has no question ids; task file + row position is stable across copies.
        id=f"{task}_{row.index}",
        video=finder.find([video, f"{task}/{video}"], name=PurePosixPath(video).name),
        question=require_text(d, "question"),
        options=options,
        answer=answer,
        category=optional_text(d, "question_type"),
        meta={"benchmark": NAME, "task": task, "video": video, "duration": d.get("duration")},
    )


def _answer_letter(answer: str, options: list[str]) -> str:
    """The letter of the candidate whose text is the answer (exact, then case-insensitive)."""
    texts = [o.strip() for o in options]
    for key in (lambda s: s, lambda s: " ".join(s.split()).casefold()):
        matches = [i for i, t in enumerate(texts) if key(t) == key(answer.strip())]
        if matches:
            return LETTERS[matches[0]]
    raise InvalidRow(f"answer {answer!r} matches none of the candidates")
