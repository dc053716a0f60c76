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


def add_decode_arguments(p, size: bool = False) -> None:
    """``--fps`` / ``--max-frames`` (and ``--size``), their defaults and help read from
    :class:`refocus.video.config.DecodeConfig`, the one place the decode defaults live."""
    from refocus.configuration import field_help
    from refocus.video.config import DecodeConfig

    p.add_argument("--fps", type=float, default=DecodeConfig.fps, help=field_help(DecodeConfig, "fps"))
    p.add_argument("--max-frames", type=int, default=DecodeConfig.max_frames,
                   help=field_help(DecodeConfig, "max_frames"))
    if size:
        p.add_argument("--size", type=int, default=DecodeConfig.size, help=field_help(DecodeConfig, "size"))


def add_config_arguments(p, what: str) -> None:
    """``--config YAML`` and repeatable ``--set KEY=VALUE`` for the fields of ``what``'s config."""
    p.add_argument("--config", metavar="YAML", help=f"{what} config file (fields to override)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", default=[],
                   help="override one config field after --config, e.g. --set learning_rate=1e-3 "
                   "--set decode.fps=2 --set selection_sizes=[4,8] (value read as YAML; repeatable)")


def add_field_arguments(p, cls: type, names: dict[str, str | None]) -> None:
    """One flag per config field, its type, default and help read from ``cls`` (the config is
    the single source of the default). ``names``: field -> flag (None: ``--field-name``)."""
    import dataclasses

    from refocus.configuration import field_help

    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name, flag in names.items():
        default = by_name[name].default
        kind = type(default) if default is not None and default is not dataclasses.MISSING else str
        p.add_argument(flag or "--" + name.replace("_", "-"), dest=name, type=kind, default=default,
                       help=field_help(cls, name))


def field_values(args, names) -> dict:
    """The parsed values of :func:`add_field_arguments` flags, by field name."""
    return {name: getattr(args, name) for name in names}
