"""One registry mechanism for every pluggable kind: selectors, reference adapters, video
decoders, benchmark converters and synthetic kinds.

A :class:`Registry` maps a name to ``"module:attribute"`` and imports the module only when the
name is first used, so ``import refocus`` stays light and an optional dependency breaks only
its own entry (with a one-line error). Third-party packages add entries without touching
refocus through the entry-point group ``refocus.<kind>`` in their packaging metadata::

    [project.entry-points."refocus.selectors"]
    clip = "my_package.clip:ClipSelector"

or at run time with :meth:`Registry.register`.
"""

from __future__ import annotations

import importlib
from typing import Any

from refocus.errors import RefocusError


class Registry:
    """``name -> "module:attribute"``, lazily imported; plug-ins through entry points."""

    def __init__(self, kind: str, entries: dict[str, str], what: str | None = None) -> None:
        self.kind = kind
        self.what = what or kind.rstrip("s")
        self._targets: dict[str, str | Any] = dict(entries)
        self._loaded: dict[str, Any] = {}
        self._plugins_read = False

    @property
    def group(self) -> str:
        """The entry-point group plug-ins register under."""
        return f"refocus.{self.kind}"

    def register(self, name: str, target: str | Any) -> None:
        """Add ``name``: a ``"module:attribute"`` string (imported on first use) or the object."""
        previous = self._loaded.get(name, self._targets.get(name))
        if previous is not None and previous is not target and previous != target:
            if not (hasattr(target, "__qualname__") and getattr(previous, "__qualname__", None) == target.__qualname__):
                raise ValueError(f"{self.what} {name!r} is already registered as {previous!r}")
        self._targets[name] = target
        self._loaded.pop(name, None)
        if not isinstance(target, str):
            self._loaded[name] = target

    def unregister(self, name: str) -> None:
        self._targets.pop(name, None)
        self._loaded.pop(name, None)

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            self._targets.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._read_plugins()
        return sorted(self._targets)

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        return name in self._targets

    def target(self, name: str) -> str | Any:
        """What ``name`` points at (a ``"module:attribute"`` string or an object), unimported."""
        if name not in self:
            raise RefocusError(f"unknown {self.what} {name!r}; available: {', '.join(self.names())}")
        return self._targets[name]

    def load(self, name: str) -> Any:
        """The object registered as ``name``, importing its module on first use."""
        if name in self._loaded:
            return self._loaded[name]
        target = self.target(name)
        if isinstance(target, str):
            try:
                target = load_target(target)
            except ModuleNotFoundError as exc:
                raise RefocusError(
                    f"{self.what} {name!r} cannot be loaded: {exc} (install the package it needs)"
                ) from exc
        self._loaded[name] = target
        return target


def load_target(target: str) -> Any:
    """Import ``"module:attribute"`` (``"module"`` alone: the module itself)."""
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj
