"""Small helpers shared by command modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def summary(line: str) -> None:
    """Print the one-line summary every command ends with (stderr, so stdout stays JSON)."""
    print(line, file=sys.stderr, flush=True)


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def parse_int_pair(text: str, name: str) -> tuple[int, int]:
    """Parse ``MIN,MAX`` into two ints, raising a RefocusError naming the option."""
    from refocus.errors import RefocusError

    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise RefocusError(f"{name} expects MIN,MAX (two integers), got {text!r}") from None
    if lo < 1 or hi < lo:
        raise RefocusError(f"{name} expects 1 <= MIN <= MAX, got {text!r}")
    return lo, hi
