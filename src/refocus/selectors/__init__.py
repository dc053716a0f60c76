"""Frame selectors behind one interface, registered by name.

A selector spec is ``NAME``, ``NAME:ARG`` or ``NAME:key=value,...``: ``uniform``, ``random``,
``oracle`` (synthetic data: needs evidence spans), ``policy:DIR`` or ``policy:dir=DIR,mode=sample``
(a trained ReFoCUS policy), ``voyager:DIR``. ``get_selector(spec, seed=, mode=)`` builds one.

Selectors live in :data:`SELECTORS` (``refocus.registry``: name -> ``"module:Class"``, imported
on first use). A package adds one through the ``refocus.selectors`` entry-point group, or at
run time with the decorator::

    @register_selector("clip")
    class ClipSelector(BaseSelector):
        name = "clip"
        image_size = 224
        deterministic = True

        @classmethod
        def from_spec(cls, arg, *, seed=0, mode=None): ...   # arg = text after "clip:"

        def _select(self, video, item, budget): ...           # called only when T > budget

Modules are imported only when their name is asked for, so a plug-in's optional dependency
(open_clip, say) breaks only that plug-in, with a one-line error naming it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from refocus.errors import RefocusError
from refocus.registry import Registry
from refocus.seeding import item_seed, stable_hash
from refocus.selectors.base import (
    BaseSelector,
    Selector,
    VideoFrames,
    uniform_indices,
    validate_indices,
)

__all__ = [
    "BaseSelector",
    "Selector",
    "VideoFrames",
    "available_selectors",
    "get_selector",
    "item_seed",
    "SELECTORS",
    "parse_spec",
    "register_selector",
    "stable_hash",
    "uniform_indices",
    "validate_indices",
]

SELECTORS = Registry("selectors", {
    "uniform": "refocus.selectors.uniform:UniformSelector",
    "random": "refocus.selectors.random_selector:RandomSelector",
    "oracle": "refocus.selectors.oracle:OracleSelector",
    "policy": "refocus.selectors.policy:PolicySelector",
    "voyager": "refocus.selectors.voyager:VoyagerSelector",
})
"""Selector name -> class; plug-ins register through the ``refocus.selectors`` entry points."""
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_OPTION = re.compile(r"^[a-z_][a-z0-9_]*=")

C = TypeVar("C", bound=type)


def register_selector(name: str) -> Callable[[C], C]:
    """Class decorator: make the class available as selector ``name`` (a run-time plug-in;
    a package registers through the ``refocus.selectors`` entry-point group instead).

    The class needs ``from_spec(arg, *, seed, mode)`` (inherit :class:`BaseSelector` for the
    argument-less default).
    """
    if not _NAME.match(name):
        raise ValueError(f"selector names are lower-case identifiers, got {name!r}")

    def decorate(cls: C) -> C:
        if not callable(getattr(cls, "from_spec", None)):
            raise TypeError(f"selector class {cls.__name__} needs a from_spec(arg, *, seed, mode) classmethod")
        SELECTORS.register(name, cls)
        return cls

    return decorate


def available_selectors() -> list[str]:
    """Names of the selectors shipped in this package and any registered elsewhere."""
    return SELECTORS.names()


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``NAME``, ``NAME:ARG`` or ``NAME:key=value,key=value`` -> (name, arg, options).

    ``policy:runs/x/policy`` and ``policy:dir=runs/x/policy,protocol=official`` both name the
    directory; the ``key=value`` form is recognised when every comma-separated part starts
    with an identifier and ``=``, so a path keeps working as the bare argument.
    """
    name, _, rest = str(spec).partition(":")
    name = name.strip().lower()
    parts = rest.split(",") if rest else []
    if parts and all(_OPTION.match(part.strip()) for part in parts):
        options = {}
        for part in parts:
            key, _, value = part.strip().partition("=")
            if key in options:
                raise RefocusError(f"selector spec {spec!r} sets {key!r} twice")
            options[key] = value
        return name, None, options
    return name, rest or None, {}


def get_selector(
    spec: str, *, seed: int = 0, mode: str | None = None, device: Any = None, dtype: Any = None,
    options: dict[str, Any] | None = None,
) -> Selector:
    """Build the selector described by ``spec`` (see :func:`parse_spec`).

    ``seed``: the run seed (random and sampling selectors mix it with each item's id).
    ``mode``: for selectors with modes (``policy``: sample / greedy / distribution); None
    means the selector's default (a ``mode=`` option of the spec sets it too). ``device`` /
    ``dtype``: where a selector with a model runs (see :func:`refocus.distributed.resolve_device`);
    passed only to selectors whose ``from_spec`` takes them. Other ``key=value`` options of the
    spec, and ``options`` (the same as a dict, e.g. the policy's ``num_samples``,
    ``uniform_below`` from ``refocus select --protocol official``), go to ``from_spec`` by name;
    the class's ``spec_arg`` option (``dir`` for policy selectors) is its bare argument. Raises
    RefocusError for an unknown name, option or a bad argument.
    """
    name, arg, spec_options = parse_spec(spec)
    options = {**spec_options, **(options or {})}
    if not _NAME.match(name) or name not in SELECTORS:
        raise RefocusError(f"unknown selector {spec!r}; available: {', '.join(available_selectors())}")
    cls = SELECTORS.load(name)
    positional = getattr(cls, "spec_arg", None)
    if positional and positional in options:
        arg = options.pop(positional)
    if "mode" in options:
        mode = options.pop("mode")
    accepted = inspect.signature(cls.from_spec).parameters
    unknown = sorted(k for k in options if k not in accepted or k in ("arg", "seed", "device", "dtype"))
    if unknown:
        known = [k for k in accepted if k not in ("cls", "arg", "seed", "device", "dtype")] + ([positional] if positional else [])
        raise RefocusError(f"selector {name!r} has no option {unknown[0]!r} (options: {', '.join(known) or 'none'})")
    placement = {k: v for k, v in (("device", device), ("dtype", dtype)) if k in accepted and v is not None}
    return cls.from_spec(arg or None, seed=seed, mode=mode, **placement, **options)
