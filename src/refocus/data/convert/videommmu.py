"""Video-MMMU (lmms-lab/VideoMMMU): the per-track parquet layout.

``Perception/``, ``Comprehension/``, ``Adaptation/`` each hold a ``test-*.parquet`` with
``id`` (``validation_<Subject>_<n>``), ``question, options`` (a list, with or without
``"A. "`` prefixes), ``answer`` (a letter) and ``question_type``. ``--src`` may be one parquet
file or the dataset directory (all tracks). The category is the track, read from the parquet
file's name or folder (None when it is not one of the three); the subject goes to meta.

Only ``question_type`` "multiple-choice" is kept, plus "perception", which the official
scorer also grades as a letter choice; open questions are counted as not multiple-choice.
Videos are ``<videos>/<id>.mp4``, else the unique ``<id>.mp4`` anywhere under ``--videos``
(the release groups them in per-discipline folders such as ``Art/`` and ``Science/``).
All tracks share one video id per video, so converting several tracks into one file (read
in the order Perception, Comprehension, Adaptation) renames repeated ids with a ``#N``
suffix (see ``refocus.data.convert``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from refocus.data.convert._common import (
    InvalidRow,
    NotMultipleChoice,
    Row,
    VideoFinder,
    as_text_list,
    make_item,
    optional_text,
    read_parquet,
    require_text,
    rows_of,
    source_files,
)

NAME = "videommmu"
TRACKS = ("Perception", "Comprehension", "Adaptation")
CHOICE_TYPES = ("multiple-choice", "perception")
_SUBJECT = re.compile(r"^[^_]+_(.+)_\d+$")


def rows(src: Path) -> Iterator[Row]:
    # Tracks in the benchmark's order, so the Perception question keeps the bare id.
    files = sorted(source_files(src, ".parquet"), key=lambda p: (_track_rank(p), str(p)))
    return rows_of(files, read_parquet)


def _track_rank(path: Path) -> int:
    track = _track(path)
    return TRACKS.index(track) if track else len(TRACKS)


def item(row: Row, finder: VideoFinder) -> dict:
    d = row.data
    item_id = require_text(d, "id")
    question_type = optional_text(d, "question_type")
    if question_type not in CHOICE_TYPES:
        raise NotMultipleChoice(f"question_type {question_type!r}")
    options = as_text_list(d.get("options"), "options")
    if not options:
        raise InvalidRow("field 'options' is empty")
    track = _track(row.source)
    subject = _SUBJECT.match(item_id)
    return make_item(
        id=item_id,
        video=finder.find([f"{item_id}.mp4"], name=f"{item_id}.mp4"),
        question=require_text(d, "question"),
        options=options,
        answer=require_text(d, "answer"),
        category=track,
        meta={
            "benchmark": NAME,
            "video_id": item_id,
            "track": track,
            "subject": subject.group(1) if subject else None,
            "question_type": question_type,
        },
    )


def _track(path: Path) -> str | None:
    """The track named by the file (``Perception.parquet``) or its nearest folder."""
    for track in TRACKS:
        if track.lower() in path.stem.lower():
            return track
    for part in reversed(path.parts[:-1]):
        for track in TRACKS:
            if part.lower() == track.lower():
                return track
    return None
