"""Reference models: the frozen vision-language models whose option-letter logits score
frame subsets (paper §3.1, Appendix B.3.1, B.6.1).

``load_reference(path)`` opens a local Hugging Face checkpoint (InternVL3-hf, Qwen2.5-VL,
LLaVA-OneVision, SmolVLM, LLaVA including the project's own small reference model, or any
other image-text-to-text model through a generic adapter) and returns a
:class:`ReferenceModel`; :func:`margin_rewards` turns its logits into rewards. Importing this
package does not import torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refocus.reference.base import ReferenceModel
from refocus.reference.prompt import SYSTEM_PROMPT, build_prompt_messages, render_prompt
from refocus.reference.reward import margin_rewards


def load_reference(
    path: str | Path,
    device: str = "cpu",
    dtype: Any = None,
    batch_size: int = 16,
    frame_reuse: bool = True,
) -> ReferenceModel:
    """Load the reference model stored in the local checkpoint directory ``path``.

    The adapter is chosen by ``config.model_type``; files are read with
    ``local_files_only=True`` (a hub id is never resolved). dtype: a torch dtype, its name, or
    None (float32 on CPU, the checkpoint's dtype elsewhere). batch_size: subsets per forward.
    frame_reuse: encode each distinct frame once per call (False: naive per-subset scoring).
    """
    from refocus.reference.adapters import adapter_class, read_model_type

    cls = adapter_class(read_model_type(path))
    return cls.from_pretrained(
        path, device=device, dtype=dtype, batch_size=batch_size, frame_reuse=frame_reuse
    )


__all__ = [
    "SYSTEM_PROMPT",
    "ReferenceModel",
    "build_prompt_messages",
    "load_reference",
    "margin_rewards",
    "render_prompt",
]
