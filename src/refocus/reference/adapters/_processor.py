"""Loading transformers processors without their video processors.

Multimodal processors such as ``Qwen2_5_VLProcessor`` or ``SmolVLMProcessor`` declare a
``video_processor`` component, and transformers refuses to build or load the processor when
that component cannot be created. Every video processor needs torchvision, which this project
does not install (there is no usable CPU build). The reward prompt feeds frames as one image
per frame (paper Appendix B.6.1), so the video processor is never used: these helpers build
the same processor class with that one component left out (``video_processor = None``).
Saved checkpoints keep the original ``processor_class`` name, so they load unchanged
wherever torchvision is installed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any


@functools.cache
def image_only(cls: type) -> type:
    """Return a subclass of the processor class ``cls`` that has no video processor.

    The subclass keeps the name of ``cls`` so that ``save_pretrained`` writes the original
    ``processor_class``. Classes without a video processor are returned unchanged.
    """
    attributes = cls.get_attributes()
    if "video_processor" not in attributes:
        return cls
    kept = [a for a in attributes if a != "video_processor"]

    def get_attributes(klass: type) -> list[str]:
        return list(kept)

    # Some processors take video_processor as a required argument, and loading passes only
    # the components listed by get_attributes(): hand it None explicitly.
    def from_args_and_dict(klass: type, args: Any, processor_dict: dict, **kwargs: Any) -> Any:
        kwargs.setdefault("video_processor", None)
        return super(sub, klass).from_args_and_dict(args, processor_dict, **kwargs)

    # transformers >= 5.2x loads through from_dict instead (from_args_and_dict is deprecated).
    def from_dict(klass: type, processor_dict: dict, **kwargs: Any) -> Any:
        kwargs.setdefault("video_processor", None)
        return super(sub, klass).from_dict(processor_dict, **kwargs)

    namespace = {
        "from_args_and_dict": classmethod(from_args_and_dict),
        "from_dict": classmethod(from_dict),
        "get_attributes": classmethod(get_attributes),
        "video_processor": None,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    sub = type(cls.__name__, (cls,), namespace)
    return sub


def processor_class_name(path: str | Path) -> str | None:
    """The ``processor_class`` recorded in a checkpoint directory, if any."""
    path = Path(path)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and data.get("processor_class"):
                return str(data["processor_class"])
    return None


def load_processor(path: str | Path, cls: type | None = None, **kwargs: Any) -> Any:
    """Load the processor of a local checkpoint, without its video processor.

    cls: the processor class; by default the ``processor_class`` recorded in the checkpoint,
    else ``AutoProcessor`` (for processors that have no video component).
    """
    import transformers

    if cls is None:
        name = processor_class_name(path)
        cls = getattr(transformers, name, None) if name else None
    if cls is None:
        return transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True, **kwargs)
    return image_only(cls).from_pretrained(str(path), local_files_only=True, **kwargs)
