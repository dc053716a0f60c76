"""LongVideoBench (longvideobench/LongVideoBench): the ``lvb_val.json`` layout.

A JSON list of objects with ``video_path, question, candidates`` (option texts),
``correct_choice`` (0-based index), ``question_category, duration_group, id`` and, in the
release, ``video_id, duration, topic_category, level, position,
starting_timestamp_for_subtitles, subtitle_path, view_count``. Videos are
``<videos>/<video_path>`` (a file of that name anywhere under ``--videos`` is accepted too).
The test split (``lvb_test_wo_gt.json``) has no ``correct_choice``; its rows are reported
as invalid.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from refocus.data.convert._common import (
    InvalidRow,
    Row,
    VideoFinder,
    as_text_list,
    letter_for_index,
    make_item,
    optional_text,
    read_json_list,
    require_text,
    rows_of,
    source_files,
)

NAME = "longvideobench"


def rows(src: Path) -> Iterator[Row]:
    return rows_of(source_files(src, ".json"), read_json_list)


def item(row: Row, finder: VideoFinder) -> dict:
    d = row.data
    video_path = require_text(d, "video_path")
    options = as_text_list(d.get("candidates"), "candidates")
    if d.get("correct_choice") is None:
        raise InvalidRow("field 'correct_choice' is missing (test split without answers?)")
    answer = letter_for_index(d["correct_choice"], len(options), "correct_choice")
    return make_item(
        id=require_text(d, "id"),
        video=finder.find([video_path], name=PurePosixPath(video_path).name),
        question=require_text(d, "question"),
        options=options,
        answer=answer,
        category=optional_text(d, "question_category"),
        meta={
            "benchmark": NAME,
            "video_id": optional_text(d, "video_id"),
            "duration_group": d.get("duration_group"),
            "duration": d.get("duration"),
            "topic_category": optional_text(d, "topic_category"),
            "level": optional_text(d, "level"),
            "starting_timestamp_for_subtitles": d.get("starting_timestamp_for_subtitles"),
            "view_count": d.get("view_count"),
        },
    )
