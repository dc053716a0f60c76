"""Question files: one multiple-choice item per JSONL line.

Every component reads and writes questions through this module, so the file format is
validated in one place and a bad line is reported with its file, line number and field
instead of failing somewhere deep inside decoding or training.

Line format (SPEC)::

    {"id": str, "video": path relative to the file, "question": str,
     "options": [str, ...] (2-26), "answer": "B",
     "evidence": [[start_s, end_s], ...] (optional), "category": str (optional),
     "meta": {...} (optional)}

Any other top-level key (e.g. ``subsets``, ``margins``, ``variance`` written by
``refocus filter``) is kept in :attr:`QAItem.extra` and written back unchanged, so a filtered
file survives load -> write round trips.
"""

from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refocus.errors import QuestionFileError
from refocus.io import write_text

LETTERS = string.ascii_uppercase
MIN_OPTIONS = 2
MAX_OPTIONS = len(LETTERS)
KNOWN_KEYS = ("id", "video", "question", "options", "answer", "evidence", "category", "meta")


@dataclass(frozen=True)
class QAItem:
    """One multiple-choice question about one video.

    Items hash and compare on their question content; ``meta`` and ``extra`` are dicts and
    are left out of the hash (they still take part in equality).
    """

    id: str
    """Unique within its question file."""
    video: Path
    """Absolute path of the video (the file stores it relative to the question file)."""
    question: str
    options: tuple[str, ...]
    """2..26 option texts, without letter prefixes ("A." is added by prompt builders)."""
    answer: str
    """Correct option letter, "A".."Z", within the first ``len(options)`` letters."""
    evidence: tuple[tuple[float, float], ...] | None = None
    """Time spans (seconds, start <= end) that hold the answer, when known."""
    category: str | None = None
    meta: dict = field(default_factory=dict, hash=False)
    """Free-form per-item information from the benchmark (e.g. needle position)."""
    extra: dict = field(default_factory=dict, hash=False)
    """Unknown top-level keys of the line (e.g. filter outputs), written back as they were."""

    @property
    def answer_index(self) -> int:
        """0-based index of the correct option."""
        return LETTERS.index(self.answer)

    @property
    def letters(self) -> tuple[str, ...]:
        """The option letters of this item: ("A", "B", ...) with one letter per option."""
        return tuple(LETTERS[: len(self.options)])


def load_questions(path: str | Path, errors: list[QuestionFileError] | None = None) -> list[QAItem]:
    """Read and validate a question file.

    ``errors is None``: raise :class:`QuestionFileError` on the first invalid line.
    ``errors`` a list: skip invalid lines, append one error per skipped line, and return the
    valid items (so one bad item does not stop a batch; the caller reports the skipped ones).
    Blank lines are ignored. Videos are not required to exist here: decoding reports missing
    videos per item later.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise QuestionFileError(path, None, None, "question file not found") from None
    except IsADirectoryError:
        raise QuestionFileError(path, None, None, "is a directory, expected a JSONL file") from None
    base = path.resolve().parent
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for lineno, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
            if not line.strip():
                continue
            item = _parse_line(path, lineno, line, base)
            if item.id in seen:
                raise QuestionFileError(
                    path, lineno, "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})"
                )
        except UnicodeDecodeError:
            err = QuestionFileError(path, lineno, None, "line is not valid UTF-8")
            if errors is None:
                raise err from None
            errors.append(err)
            continue
        except QuestionFileError as err:
            if errors is None:
                raise
            errors.append(err)
            continue
        seen[item.id] = lineno
        items.append(item)
    return items


def write_questions(
    path: str | Path, items: Iterable[QAItem], extra: Sequence[dict] | None = None
) -> None:
    """Write items as JSONL, video paths relative to ``path``'s directory.

    ``extra``: one dict per item, merged into that item's line after the item's own
    :attr:`QAItem.extra` (e.g. filter results: ``subsets``, ``margins``, ``variance``).
    The file is written to a temporary name and renamed, so readers never see half a file.
    """
    path = Path(path)
    items = list(items)
    if extra is not None and len(extra) != len(items):
        raise ValueError(f"extra has {len(extra)} entries for {len(items)} items")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    lines = []
    for i, item in enumerate(items):
        row = item_to_dict(item, base)
        if extra is not None:
            clash = sorted(set(extra[i]) & set(KNOWN_KEYS))
            if clash:
                raise ValueError(f"extra for item {item.id!r} overrides reserved keys {clash}")
            row.update(extra[i])
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text(path, "".join(line + "\n" for line in lines))


def item_to_dict(item: QAItem, relative_to: str | Path) -> dict:
    """The JSON line of ``item``, its video path relative to the directory ``relative_to``.

    Optional fields are left out when empty, so a loaded-then-written file keeps its shape.
    """
    video = Path(os.path.relpath(Path(item.video).resolve(), Path(relative_to).resolve()))
    row: dict[str, Any] = {
        "id": item.id,
        "video": video.as_posix(),
        "question": item.question,
        "options": list(item.options),
        "answer": item.answer,
    }
    if item.evidence is not None:
        row["evidence"] = [[float(s), float(e)] for s, e in item.evidence]
    if item.category is not None:
        row["category"] = item.category
    if item.meta:
        row["meta"] = item.meta
    for key, value in item.extra.items():
        if key not in row:
            row[key] = value
    return row


def _parse_line(path: Path, lineno: int, line: str, base: Path) -> QAItem:
    def fail(field_name: str | None, reason: str) -> QuestionFileError:
        return QuestionFileError(path, lineno, field_name, reason)

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise fail(None, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise fail(None, f"expected a JSON object, got {type(obj).__name__}")

    for key in ("id", "video", "question", "options", "answer"):
        if key not in obj:
            raise fail(key, "missing")

    item_id = obj["id"]
    if not isinstance(item_id, str) or not item_id.strip():
        raise fail("id", f"must be a non-empty string, got {item_id!r}")

    video = obj["video"]
    if not isinstance(video, str) or not video.strip():
        raise fail("video", f"must be a non-empty path string, got {video!r}")

    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        raise fail("question", "must be a non-empty string")

    options = obj["options"]
    if not isinstance(options, list):
        raise fail("options", f"must be a list of strings, got {type(options).__name__}")
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise fail("options", f"must have {MIN_OPTIONS}-{MAX_OPTIONS} entries, got {len(options)}")
    for j, opt in enumerate(options):
        if not isinstance(opt, str) or not opt.strip():
            raise fail("options", f"entry {j} must be a non-empty string, got {opt!r}")

    answer = obj["answer"]
    allowed = LETTERS[: len(options)]
    if not isinstance(answer, str) or len(answer) != 1 or answer not in allowed:
        raise fail("answer", f"must be one letter in {allowed[0]}..{allowed[-1]}, got {answer!r}")

    evidence = _parse_evidence(obj.get("evidence"), fail)

    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise fail("category", f"must be a string or null, got {type(category).__name__}")

    meta = obj.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise fail("meta", f"must be an object, got {type(meta).__name__}")

    return QAItem(
        id=item_id,
        video=(base / video).resolve(),
        question=question,
        options=tuple(options),
        answer=answer,
        evidence=evidence,
        category=category,
        meta=meta,
        extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS},
    )


def _parse_evidence(value: Any, fail) -> tuple[tuple[float, float], ...] | None:
    """Evidence spans; missing, null and [] all mean "unknown"."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise fail("evidence", "must be a list of [start_s, end_s] pairs")
    spans = []
    for j, span in enumerate(value):
        if not isinstance(span, list) or len(span) != 2 or not all(_is_number(x) for x in span):
            raise fail("evidence", f"entry {j} must be [start_s, end_s] numbers, got {span!r}")
        start, end = float(span[0]), float(span[1])
        if not 0 <= start <= end:
            raise fail("evidence", f"entry {j} needs 0 <= start <= end, got {span!r}")
        spans.append((start, end))
    return tuple(spans) or None


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
