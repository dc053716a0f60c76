"""The ``refocus`` command line.

Each command group lives in its own module under ``refocus.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returns an exit code or None). Command modules import heavy dependencies inside
their functions so ``refocus --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order = order in ``refocus --help``.
COMMAND_MODULES = [
    "demo",
    "synth",
    "data",
    "frames",
    "reference",
    "filter",
    "policy",
    "train",
    "select",
    "eval",
    "analyze",
    "voyager",
    "answerer",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refocus",
        description="Learn which frames of a video a video-LLM should look at (ReFoCUS).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"refocus.cli.{name}").register(sub)  # a missing module is a bug
    return parser


def main(argv: list[str] | None = None) -> int:
    from refocus.errors import RefocusError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (RefocusError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        for line in _one_line(exc).split(" error: "):  # several problems: one line each
            print(f"error: {line}", file=sys.stderr)
        return 1
    return int(code or 0)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " error: ".join(" ".join(part.split()) for part in text.split("\nerror: "))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
