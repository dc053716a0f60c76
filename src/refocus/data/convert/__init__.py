"""Converters from published benchmark layouts to the question-file format.

``refocus data convert NAME --src FILE --videos DIR --out QA.jsonl`` calls :func:`convert`.
Each benchmark is one module with ``rows(src)`` and ``item(row, finder)`` (the
:class:`~refocus.data.convert._common.Converter` protocol); see the module docstrings for the
exact source layouts and where videos are looked up.

Rules shared by all converters:

* option texts lose their letter prefixes ("A. foo", "(A) foo", "A: foo" -> "foo");
* the benchmark's category is kept as ``category``; its other per-question fields go to
  ``meta`` (with ``meta["benchmark"]`` = the converter name);
* rows that are not multiple-choice, rows with invalid structure and rows whose video is not
  on disk are skipped, never fatal, and listed one per line in ``OUT.skipped.jsonl`` (``OUT``
  with its suffix replaced, e.g. ``qa.jsonl`` -> ``qa.skipped.jsonl``; written, possibly
  empty, on every run so a stale list never outlives its conversion);
* ids are unique: a repeated id gets a ``#2``, ``#3``, ... suffix and its original id is kept
  in ``meta["source_id"]``;
* video paths in the output are relative to the output file's directory (written by
  :func:`refocus.data.questions.write_questions`).
"""

from __future__ import annotations

from pathlib import Path

from refocus.data.convert._common import (
    ConvertReport,
    InvalidRow,
    Skip,
    VideoFinder,
)
from refocus.data.questions import QAItem, write_questions
from refocus.errors import RefocusError
from refocus.io import write_jsonl
from refocus.registry import Registry

CONVERTERS = Registry("converters", {
    name: f"refocus.data.convert.{name}" for name in ("videomme", "longvideobench", "mlvu", "nextqa", "videommmu")
}, what="benchmark")
"""Benchmark name -> its converter module (``load``, ``row_to_item``, ...), imported on first
use; plug-ins register through the ``refocus.converters`` entry points."""

__all__ = ["CONVERTERS", "ConvertReport", "Skip", "convert", "skipped_path_for"]


def skipped_path_for(out: str | Path) -> Path:
    """Where the skipped rows of a conversion into ``out`` are listed."""
    return Path(out).with_suffix(".skipped.jsonl")


def convert(
    name: str, src: str | Path, videos: str | Path, out: str | Path, progress: bool = False
) -> ConvertReport:
    """Convert benchmark ``name`` from ``src`` (file or directory) into the question file ``out``.

    Raises :class:`RefocusError` for an unknown benchmark, a missing ``src`` or ``videos``
    directory, or an unreadable source file; bad rows are skipped and reported instead.
    """
    module = CONVERTERS.load(name)
    src, videos, out = Path(src), Path(videos), Path(out)
    if not src.exists():
        raise RefocusError(f"{src}: source file not found (--src)")
    if not videos.is_dir():
        raise RefocusError(f"{videos}: videos directory not found (--videos)")
    if out.is_dir():
        raise RefocusError(f"{out}: is a directory, expected the output JSONL path (--out)")

    report = ConvertReport(benchmark=name, src=src, out=out)
    finder = VideoFinder(videos)
    items: list[dict] = []
    row_iter = module.rows(src)
    if progress:
        from tqdm import tqdm

        row_iter = tqdm(row_iter, desc=f"convert {name}", unit=" rows", leave=False)
    for row in row_iter:
        try:
            if not isinstance(row.data, dict):
                raise InvalidRow(f"expected an object, got {type(row.data).__name__}")
            items.append(module.item(row, finder))
        except InvalidRow as exc:
            report.skipped.append(
                Skip(exc.reason, exc.detail, str(row.source), row.index, _row_id(row.data))
            )

    _make_ids_unique(items, report)
    report.converted = len(items)
    report.skipped_path = skipped_path_for(out)
    write_questions(out, [_to_item(item) for item in items])
    write_jsonl(report.skipped_path, [s.to_dict() for s in report.skipped])
    return report


def _make_ids_unique(items: list[dict], report: ConvertReport) -> None:
    taken = {item["id"] for item in items}
    seen: set[str] = set()
    for item in items:
        original = item["id"]
        if original not in seen:
            seen.add(original)
            continue
        n = 2
        while f"{original}#{n}" in taken:
            n += 1
        new = f"{original}#{n}"
        taken.add(new)
        seen.add(new)
        item["id"] = new
        item["meta"]["source_id"] = original
        report.renamed.append((original, new))


def _to_item(item: dict) -> QAItem:
    return QAItem(
        id=item["id"],
        video=Path(item["video"]).resolve(),
        question=item["question"],
        options=tuple(item["options"]),
        answer=item["answer"],
        category=item.get("category"),
        meta=item["meta"],
    )


def _row_id(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("question_id", "id", "qid"):
        value = data.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None
