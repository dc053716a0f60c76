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
    device: Any = "auto",
    dtype: Any = "auto",
    batch_size: int = 16,
    frame_reuse: bool = True,
    attn_implementation: str | None = None,
) -> ReferenceModel:
    """Load the reference model stored in the local checkpoint directory ``path``.

    The adapter is chosen by ``config.model_type``; files are read with
    ``local_files_only=True`` (a hub id is never resolved). device: "auto" (this process's
    accelerator under ``accelerate launch``, else CUDA when there is one, else the CPU),
    "cpu", "cuda", "cuda:N" or a torch device. dtype: "auto" (bfloat16 on CUDA, float32 on
    CPU), a torch dtype or its name. batch_size: subsets per forward. frame_reuse: encode
    each distinct frame once per call (False: naive per-subset scoring).
    attn_implementation: passed to transformers ("sdpa", "eager", "flash_attention_2"; None:
    transformers' default).
    """
    from refocus.distributed import resolve_device, resolve_dtype
    from refocus.reference.adapters import adapter_class, read_model_type

    cls = adapter_class(read_model_type(path))
    device = resolve_device(device)
    return cls.from_pretrained(
        path, device=device, dtype=resolve_dtype(dtype, device), batch_size=batch_size,
        frame_reuse=frame_reuse, attn_implementation=attn_implementation,
    )


__all__ = [
    "SYSTEM_PROMPT",
    "ReferenceModel",
    "build_prompt_messages",
    "load_reference",
    "margin_rewards",
    "render_prompt",
]
