"""File helpers shared by every layer: JSON / JSON-lines written atomically.

A file is written under a temporary name beside it and renamed into place, so a reader (or a
run killed half-way) never sees half a file. Parents are created. Nothing here imports the rest
of refocus, so any module may use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON with a trailing newline, written atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON object per line (non-ASCII kept as is), written atomically."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
