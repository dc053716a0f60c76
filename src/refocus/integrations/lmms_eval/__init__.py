"""lmms-eval integration: refocus-selected frames for lmms-eval's own video models, no fork.

Installing refocus registers, through lmms-eval's ``lmms_eval.models`` entry-point group
(lmms-eval >= 0.6), the models in :data:`MODELS`. lmms-eval calls :func:`manifests` when it
builds its model registry; the model classes (:mod:`.models`) import lmms-eval, and nothing
imports them unless lmms-eval asks for one, so ``import refocus`` stays free of it.

    lmms-eval --model refocus_qwen2_5_vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,policy=runs/demo/policy,budget=8 \\
        --tasks my_task --include_path tasks/
"""

from __future__ import annotations

MODELS = {
    "refocus_qwen2_5_vl": "RefocusQwen2_5_VL",
    "refocus_internvl_hf": "RefocusInternVLHf",
    "refocus_llava_hf": "RefocusLlavaHf",
}
"""lmms-eval model id -> class in :mod:`refocus.integrations.lmms_eval.models`."""


def manifests() -> list:
    """The ``ModelManifest`` of each refocus model (lmms-eval's entry-point payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, chat_class_path=f"{__name__}.models.{cls}")
            for model_id, cls in MODELS.items()]
