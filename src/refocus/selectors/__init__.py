"""Frame selectors behind one interface, registered by name.

A selector spec is ``NAME`` or ``NAME:ARG``: ``uniform``, ``random``, ``oracle`` (synthetic
data: needs evidence spans), ``policy:DIR`` (a trained ReFoCUS policy), and later plug-ins
such as ``clip:MODEL`` or ``voyager:DIR``. ``get_selector(spec, seed=, mode=)`` builds one.

Adding a selector is one decorated class in a new module ``refocus/selectors/<name>.py``
(or ``<name>_selector.py`` where ``<name>.py`` would shadow a standard module)::

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

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from typing import Any, TypeVar

from refocus.errors import RefocusError
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
    "register_selector",
    "stable_hash",
    "uniform_indices",
    "validate_indices",
]

_REGISTRY: dict[str, type] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_NOT_SELECTORS = {"base"}  # modules of this package that register nothing

C = TypeVar("C", bound=type)


def register_selector(name: str) -> Callable[[C], C]:
    """Class decorator: make the class available as selector ``name``.

    The class needs ``from_spec(arg, *, seed, mode)`` (inherit :class:`BaseSelector` for the
    argument-less default).
    """
    if not _NAME.match(name):
        raise ValueError(f"selector names are lower-case identifiers, got {name!r}")

    def decorate(cls: C) -> C:
        if not callable(getattr(cls, "from_spec", None)):
            raise TypeError(f"selector class {cls.__name__} needs a from_spec(arg, *, seed, mode) classmethod")
        previous = _REGISTRY.get(name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise ValueError(f"selector {name!r} is already registered by {previous.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def _module_names(name: str) -> list[str]:
    return [f"{__name__}.{name.replace('-', '_')}", f"{__name__}.{name.replace('-', '_')}_selector"]


def _load(name: str) -> type | None:
    """The class registered as ``name``, importing its module on first use."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for module in _module_names(name):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # no such module: try the next spelling
            raise RefocusError(f"selector {name!r} cannot be loaded: {exc} (install it to use this selector)") from exc
        if name in _REGISTRY:
            return _REGISTRY[name]
    return None


def available_selectors() -> list[str]:
    """Names of the selectors shipped in this package and any registered elsewhere."""
    names = set(_REGISTRY)
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in _NOT_SELECTORS:
            names.add(info.name.removesuffix("_selector"))
    return sorted(names)


def get_selector(
    spec: str, *, seed: int = 0, mode: str | None = None, device: Any = None, dtype: Any = None,
    options: dict[str, Any] | None = None,
) -> Selector:
    """Build the selector described by ``spec`` (``NAME`` or ``NAME:ARG``).

    ``seed``: the run seed (random and sampling selectors mix it with each item's id).
    ``mode``: for selectors with modes (``policy``: sample / greedy / distribution); None
    means the selector's default. ``device`` / ``dtype``: where a selector with a model runs
    (see :func:`refocus.distributed.resolve_device`); passed only to selectors whose
    ``from_spec`` takes them. ``options``: selector keywords (the policy's ``num_samples``,
    ``candidate``, ``uniform_below``), for selectors whose ``from_spec`` takes ``options``.
    Raises RefocusError for an unknown name or a bad argument.
    """
    name, _, arg = str(spec).partition(":")
    name = name.strip().lower()
    cls = _load(name) if _NAME.match(name) else None
    if cls is None:
        raise RefocusError(f"unknown selector {spec!r}; available: {', '.join(available_selectors())}")
    accepted = inspect.signature(cls.from_spec).parameters
    placement = {k: v for k, v in (("device", device), ("dtype", dtype)) if k in accepted and v is not None}
    if options:
        if "options" not in accepted:
            raise RefocusError(f"selector {name!r} takes no options ({', '.join(sorted(options))})")
        placement["options"] = options
    return cls.from_spec(arg or None, seed=seed, mode=mode, **placement)
