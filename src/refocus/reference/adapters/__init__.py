"""Reference-model adapters, registered by ``config.model_type`` and imported lazily.

Each adapter module holds one family; importing this package imports none of them (nor
torch or transformers), so a broken optional dependency affects only its own family.
"""

from __future__ import annotations

import json
from pathlib import Path

from refocus.errors import RefocusError
from refocus.registry import Registry, load_target

ADAPTERS = Registry("reference_adapters", {
    "llava": "refocus.reference.adapters.llava:LlavaReference",
    "internvl": "refocus.reference.adapters.internvl:InternVLReference",
    "qwen2_5_vl": "refocus.reference.adapters.qwen2_5_vl:Qwen2_5_VLReference",
    "llava_onevision": "refocus.reference.adapters.llava_onevision:LlavaOnevisionReference",
    "smolvlm": "refocus.reference.adapters.smolvlm:SmolVLMReference",
}, what="reference adapter")
"""config.model_type -> adapter class; other model types use the generic adapter. Plug-ins
register through the ``refocus.reference_adapters`` entry points."""
GENERIC = "refocus.reference.adapters.generic:GenericReference"
UNSUPPORTED = {
    "internvl_chat": "original InternVL checkpoints need remote code; use the transformers "
    "'-hf' conversion (e.g. OpenGVLab/InternVL3-8B-hf)",
}


def adapter_class(model_type: str) -> type:
    """The adapter class for a ``config.model_type`` (generic fallback for unknown types)."""
    if model_type in UNSUPPORTED:
        raise RefocusError(f"model_type {model_type!r} is not supported: {UNSUPPORTED[model_type]}")
    return ADAPTERS.load(model_type) if model_type in ADAPTERS else load_target(GENERIC)


def read_model_type(path: str | Path) -> str:
    """``model_type`` of a local checkpoint directory (from its config.json)."""
    path = Path(path)
    config = path / "config.json"
    if not path.is_dir():
        raise RefocusError(f"{path}: reference checkpoint directory not found")
    if not config.is_file():
        raise RefocusError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as err:
        raise RefocusError(f"{config}: cannot read ({err})") from None
    if not model_type:
        raise RefocusError(f"{config}: no model_type")
    return str(model_type)
