"""LLaVA (``LlavaForConditionalGeneration``), including the project's own small reference model.

Each frame is one image, resized (and centre-cropped for CLIP processors) to the vision
tower's input size; there is no tiling in LLaVA 1.5. Features come from
``get_image_features`` (vision tower, the configured feature layer and select strategy, and
the projector), one (P, D) tensor per frame.
"""

from __future__ import annotations

from refocus.reference.base import HFReference


class LlavaReference(HFReference):
    family = "llava"
    model_class = "LlavaForConditionalGeneration"
