"""Shared pieces of the benchmark converters: reading sources, cleaning options, finding videos.

A converter turns one published benchmark layout into question-file rows. It never stops on a
bad row: it records a :class:`Skip` (why, which file, which row) and goes on, so a 3,000-row
benchmark with ten broken rows still converts and the user sees exactly which ten were lost.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from refocus.errors import RefocusError

LETTERS = string.ascii_uppercase
MIN_OPTIONS = 2
MAX_OPTIONS = len(LETTERS)

MISSING_VIDEO = "missing video"
INVALID = "invalid"
NOT_MULTIPLE_CHOICE = "not multiple-choice"
SKIP_REASONS = (MISSING_VIDEO, INVALID, NOT_MULTIPLE_CHOICE)


class InvalidRow(Exception):
    """A source row whose structure cannot become a question item (reported, then skipped)."""

    def __init__(self, detail: str, reason: str = INVALID) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class NotMultipleChoice(InvalidRow):
    """A row of an open-ended or generation task; the question format is multiple-choice only."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, NOT_MULTIPLE_CHOICE)


class MissingVideo(InvalidRow):
    """The row is fine but its video is not on disk."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, MISSING_VIDEO)


@dataclass
class Skip:
    """One source row that did not become an item."""

    reason: str
    """One of :data:`SKIP_REASONS`."""
    detail: str
    """Human-readable cause (the missing path, the bad field)."""
    source: str
    """The source file the row came from."""
    row: int
    """0-based position of the row in that file (its index in the JSON list / parquet / CSV)."""
    id: str | None = None
    """The row's question id, when it could be read."""

    def to_dict(self) -> dict:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "source": self.source,
            "row": self.row,
            "id": self.id,
        }


@dataclass
class ConvertReport:
    """What a conversion produced and what it left out."""

    benchmark: str
    src: Path
    out: Path
    converted: int = 0
    skipped: list[Skip] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    """(original id, new id) for ids made unique with a ``#N`` suffix."""
    skipped_path: Path | None = None
    """Where the skipped rows were written (``OUT`` with suffix ``.skipped.jsonl``)."""

    def counts(self) -> dict[str, int]:
        """Skipped rows per reason, every reason present (0 when none)."""
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for skip in self.skipped:
            counts[skip.reason] += 1
        return counts

    def summary(self) -> str:
        c = self.counts()
        return (
            f"converted {self.converted} items, skipped {len(self.skipped)} "
            f"(missing video: {c[MISSING_VIDEO]}, invalid: {c[INVALID]}, "
            f"not multiple-choice: {c[NOT_MULTIPLE_CHOICE]}) -> {self.out}"
        )


@dataclass
class Row:
    """One raw source record, with where it came from (for skip reports)."""

    data: dict[str, Any]
    """The record; anything else (a JSON list entry that is not an object) is skipped."""
    source: Path
    index: int


class Converter(Protocol):
    """A benchmark converter (one module per benchmark): raw rows in, question-item dicts out.

    ``rows(src)`` reads the source file (or directory of files); ``item(row, finder)`` returns the item as a dict in the question-file schema but
    with ``video`` an absolute :class:`Path` (the writer makes it relative to the output
    file), or raises :class:`InvalidRow` / :class:`NotMultipleChoice` / :class:`MissingVideo`.
    """

    def rows(self, src: Path) -> Iterator[Row]: ...

    def item(self, row: Row, finder: VideoFinder) -> dict: ...


# --- options and answers ---------------------------------------------------------------------

# "A. foo", "A: foo", "A) foo", "(A) foo", "[A] foo"; the letter is captured once.
_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])\s*[.:)])\s*")


def strip_option_prefixes(options: Sequence[str]) -> list[str]:
    """Remove letter prefixes ("A. foo", "(A) foo", "A: foo" -> "foo") from option texts.

    Prefixes are removed only when every option carries its own letter in order (A, B, C...):
    an unprefixed list whose first option merely starts like one ("A. Lincoln") stays intact.
    """
    texts = [str(o).strip() for o in options]
    stripped = []
    for letter, text in zip(LETTERS, texts, strict=False):
        m = _PREFIX.match(text)
        if m is None or next(g for g in m.groups() if g) != letter:
            return texts
        stripped.append(text[m.end() :].strip())
    return stripped


def as_text_list(value: Any, field_name: str) -> list[str]:
    """A list of option strings from a list, a tuple, or a string holding a list literal."""
    if isinstance(value, str):
        # Some dumps store the options list as its Python / JSON repr.
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise InvalidRow(f"field '{field_name}' is not a list: {value[:60]!r}") from None
    if not isinstance(value, list | tuple):
        raise InvalidRow(f"field '{field_name}' must be a list, got {type(value).__name__}")
    out = []
    for j, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise InvalidRow(f"field '{field_name}' entry {j} must be text, got {v!r}")
        out.append(str(v))
    return out


def letter_for_index(value: Any, n_options: int, field_name: str) -> str:
    """The answer letter of a 0-based option index (int or digit string)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRow(f"field '{field_name}' must be an option index, got {value!r}")
    if not 0 <= value < n_options:
        raise InvalidRow(f"field '{field_name}' = {value} is outside 0..{n_options - 1}")
    return LETTERS[value]


def check_letter(value: Any, n_options: int, field_name: str = "answer") -> str:
    """Validate an answer letter ("B", " b ", "(B)" and "B." are accepted)."""
    text = str(value).strip().strip("().").upper() if isinstance(value, str) else None
    allowed = LETTERS[:n_options]
    if not text or len(text) != 1 or text not in allowed:
        raise InvalidRow(
            f"field '{field_name}' must be a letter in A..{allowed[-1]}, got {value!r}"
        )
    return text


def require_text(data: dict, key: str) -> str:
    """A non-empty string field (numbers are accepted and turned into text)."""
    if key not in data or data[key] is None:
        raise InvalidRow(f"field '{key}' is missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRow(f"field '{key}' must be text, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise InvalidRow(f"field '{key}' is empty")
    return text


def optional_text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def make_item(
    *,
    id: str,
    video: Path,
    question: str,
    options: Sequence[str],
    answer: str,
    category: str | None,
    meta: dict,
) -> dict:
    """Assemble and validate one item dict (option count, non-empty texts, answer in range)."""
    options = strip_option_prefixes(options)
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise InvalidRow(f"needs {MIN_OPTIONS}-{MAX_OPTIONS} options, got {len(options)}")
    for j, text in enumerate(options):
        if not text:
            raise InvalidRow(f"option {LETTERS[j]} is empty")
    answer = check_letter(answer, len(options))
    item = {
        "id": id,
        "video": video,
        "question": question,
        "options": options,
        "answer": answer,
    }
    if category is not None:
        item["category"] = category
    item["meta"] = {k: v for k, v in meta.items() if v is not None}
    return item


# --- reading sources -----------------------------------------------------------------------


def source_files(src: Path, suffix: str) -> list[Path]:
    """``src`` itself, or every ``*suffix`` file under the directory ``src`` (sorted)."""
    if src.is_dir():
        files = sorted(p for p in src.rglob(f"*{suffix}") if p.is_file())
        if not files:
            raise RefocusError(f"{src}: directory holds no {suffix} files")
        return files
    return [src]


def read_parquet(path: Path) -> list[dict]:
    """Rows of a parquet file as plain dicts (pyarrow only; pandas is not needed)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise RefocusError(f"{path}: cannot read parquet ({exc})") from None
    return table.to_pylist()


def read_json_list(path: Path) -> list:
    """A JSON file holding a list of objects (a JSONL file is accepted too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RefocusError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise RefocusError(
                f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
    if isinstance(data, dict):
        # Some copies wrap the list in an object; take its one list-valued entry.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise RefocusError(f"{path}: expected a JSON list of question objects")
    return data


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file with a header line, as dicts of strings."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def rows_of(files: Sequence[Path], reader) -> Iterator[Row]:
    for path in files:
        for i, data in enumerate(reader(path)):
            yield Row(data, path, i)


# --- finding videos --------------------------------------------------------------------------


class VideoFinder:
    """Looks a video up under the videos directory: exact paths first, then by file name.

    The recursive index of the directory is built once, on the first lookup that needs it,
    because benchmarks nest videos in per-task / per-track / per-shard folders that differ
    between copies of the same benchmark.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, list[Path]] | None = None
        self.cache: dict[str, Any] = {}
        """Per-conversion state a converter may keep (e.g. a video-id map read once)."""

    def find(self, candidates: Sequence[Path | str], name: str | None = None) -> Path:
        """The first existing candidate (relative to the root), else the unique file called
        ``name`` anywhere under the root; raises :class:`MissingVideo` otherwise."""
        for cand in candidates:
            path = self.root / cand
            if path.is_file():
                return path
        tried = ", ".join(str(self.root / c) for c in candidates)
        if name is not None:
            hits = self.index().get(name, [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise MissingVideo(
                    f"{len(hits)} files named {name} under {self.root}, cannot tell which "
                    f"(tried {tried})"
                )
            return self._missing(f"{tried}; no file named {name} under {self.root}")
        return self._missing(tried)

    def index(self) -> dict[str, list[Path]]:
        if self._index is None:
            index: dict[str, list[Path]] = {}
            for path in sorted(self.root.rglob("*")):
                if path.is_file():
                    index.setdefault(path.name, []).append(path)
            self._index = index
        return self._index

    @staticmethod
    def _missing(tried: str) -> Path:
        raise MissingVideo(f"video not found: {tried}")
