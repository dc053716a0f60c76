"""What every config dataclass of refocus shares: the documentation of its fields, read from
the attribute docstrings (the string under each field), and ``key=value`` overrides.

A config is the single source of its defaults: command-line flags and ``--set key=value``
are derived from its fields (:func:`field_help`, :func:`parse_overrides`) rather than
re-declared. Imports nothing heavy.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from pathlib import Path
from typing import Any

from refocus.errors import ConfigError


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass and its bases (the string literal right under a
    field's line; fields without one are absent)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # the class statement's body
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_help(cls: type, name: str) -> str:
    """One line of help for ``--flag`` of field ``name``: its docstring's first sentence and
    its default."""
    doc = field_docs(cls).get(name, "")
    first = " ".join(doc.split("\n\n")[0].split())
    default = {f.name: f for f in dataclasses.fields(cls)}[name].default
    shown = "" if default is dataclasses.MISSING else f" (default {default})"
    return (first + shown).replace("%", "%%")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "decode.fps=2", "policy.head_dim=16"]`` -> a nested mapping; each value is
    read as YAML (numbers, true/false, null, lists ``[4, 8]``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot read {text!r} as a value") from None
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is set to a value and to a mapping")
        node[leaf] = value
    return out


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mapping values merged key by key (``policy.head_dim`` keeps the
    other policy fields)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: str | Path, what: str = "config fields") -> dict[str, Any]:
    """The mapping at the top of a YAML file (an empty file is ``{}``); a missing file,
    invalid YAML or another top-level value is a :class:`ConfigError` naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of {what}")
    return loaded
