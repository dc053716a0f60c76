"""Small helpers shared by command modules."""

from __future__ import annotations

import sys


def summary(line: str) -> None:
    """Print the one-line summary every command ends with (stderr, so stdout stays JSON)."""
    print(line, file=sys.stderr, flush=True)


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
