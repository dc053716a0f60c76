"""One registry mechanism (refocus.registry) behind selectors, adapters, decoders,
converters and synthetic kinds: lazy imports, run-time and entry-point plug-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from refocus.errors import RefocusError
from refocus.registry import Registry

SRC = Path(__file__).resolve().parents[1] / "src"


def test_entries_are_imported_on_first_use_only():
    code = ("import sys; from refocus.selectors import SELECTORS; from refocus.video import DECODERS; "
            "from refocus.data.convert import CONVERTERS; from refocus.data.synth import SYNTH_KINDS; "
            "from refocus.reference.adapters import ADAPTERS; "
            "mods = ['refocus.selectors.policy', 'refocus.video.decord_backend', 'refocus.data.convert.mlvu', "
            "'refocus.data.synth.multi', 'refocus.reference.adapters.llava']; "
            "print(sum(m in sys.modules for m in mods)); SELECTORS.load('policy'); CONVERTERS.load('mlvu'); "
            "print('refocus.selectors.policy' in sys.modules, 'refocus.data.convert.mlvu' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True", "True"]


def test_registry_names_loads_and_explains():
    reg = Registry("things", {"json": "json:dumps", "missing": "no_such_module_xyz:f"})
    assert reg.names() == ["json", "missing"] and "json" in reg and list(reg) == reg.names()
    import json

    assert reg.load("json") is json.dumps
    with pytest.raises(RefocusError, match="unknown thing 'nope'; available: json, missing"):
        reg.load("nope")
    with pytest.raises(RefocusError, match="thing 'missing' cannot be loaded.*no_such_module_xyz"):
        reg.load("missing")
    reg.register("obj", len)
    assert reg.load("obj") is len
    with pytest.raises(ValueError, match="already registered"):
        reg.register("obj", max)


def test_every_shipped_entry_loads():
    from refocus.data.convert import CONVERTERS
    from refocus.data.synth import SYNTH_KINDS, min_frames
    from refocus.reference.adapters import ADAPTERS
    from refocus.selectors import SELECTORS
    from refocus.video import DECODERS, available_backends

    for name in SELECTORS:
        assert callable(SELECTORS.load(name).from_spec)
    for name in ADAPTERS:
        assert hasattr(ADAPTERS.load(name), "from_pretrained")
    for name in CONVERTERS:
        module = CONVERTERS.load(name)
        assert callable(module.rows) and callable(module.item)
    for name in SYNTH_KINDS:
        assert callable(SYNTH_KINDS.load(name)) and min_frames(name) >= 1
    for name in available_backends():
        assert callable(DECODERS.load(name))


def test_a_missing_cli_module_is_an_error(monkeypatch):
    import refocus.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "no_such_command"])
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()
