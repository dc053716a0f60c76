"""Video-MME (lmms-lab/Video-MME): the ``videomme/test-*.parquet`` layout.

Columns: ``video_id, duration, domain, sub_category, url, videoID, question_id, task_type,
question, options, answer``; ``options`` is a list like ``["A. text", ...]`` and ``answer`` a
letter. Videos are ``<videos>/<videoID>.mp4`` (the zip archives unpack into ``data/``, so a
file of that name anywhere under ``--videos`` is accepted too). ``--src`` may be the parquet
file or a directory of parquet files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from refocus.data.convert._common import (
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

NAME = "videomme"


def rows(src: Path) -> Iterator[Row]:
    return rows_of(source_files(src, ".parquet"), read_parquet)


def item(row: Row, finder: VideoFinder) -> dict:
    d = row.data
    video_id = require_text(d, "videoID")
    file_name = f"{video_id}.mp4"
    return make_item(
        id=require_text(d, "question_id"),
        video=finder.find([file_name], name=file_name),
        question=require_text(d, "question"),
        options=as_text_list(d.get("options"), "options"),
        answer=require_text(d, "answer"),
        category=optional_text(d, "task_type"),
        meta={
            "benchmark": NAME,
            "question_id": optional_text(d, "question_id"),
            "video_id": optional_text(d, "video_id"),
            "videoID": video_id,
            "duration": optional_text(d, "duration"),
            "domain": optional_text(d, "domain"),
            "sub_category": optional_text(d, "sub_category"),
        },
    )
