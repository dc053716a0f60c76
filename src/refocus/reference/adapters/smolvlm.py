"""SmolVLM (``SmolVLMForConditionalGeneration``, Idefics3 style).

Reward setting: ``do_image_splitting=False``, so each frame is one image resized to
``max_image_size`` (its global view) instead of a grid of sub-images plus the global view.
The processor pads a prompt's images into a (1, N, C, H, W) batch; for frame reuse the union
is reshaped to (N, 1, C, H, W) so that the model returns one feature block per frame.
The SmolVLM processor needs the ``num2words`` package even for images.
"""

from __future__ import annotations

from typing import Any

from refocus.reference.base import HFReference


class SmolVLMReference(HFReference):
    family = "smolvlm"
    model_class = "SmolVLMForConditionalGeneration"
    processor_kwargs = {"do_image_splitting": False}

    @property
    def image_size(self) -> int:
        return int(dict(self.processor.image_processor.max_image_size)["longest_edge"])

    def _feature_inputs(self, inputs: Any, n: int) -> dict[str, Any]:
        features = super()._feature_inputs(inputs, n)
        pixels = features["pixel_values"]  # (1, N, C, H, W)
        features["pixel_values"] = pixels.reshape(n, 1, *pixels.shape[2:])
        mask = features.get("pixel_attention_mask")
        if mask is not None:  # (1, N, H, W)
            features["pixel_attention_mask"] = mask.reshape(n, 1, *mask.shape[2:])
        return features
