"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``).

With two or more images in a prompt the model runs in its multi-image mode: each image is
one base crop at the vision tower's size plus a newline embedding, no anyres tiling, which
is the reward setting (one image per frame). A one-frame prompt switches the model to its
single-image anyres mode (base crop plus grid tiles), whose features differ, so one-frame
subsets are scored naively and the union of the others is always encoded in multi-image
mode (a lone frame is encoded next to a copy of itself).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from refocus.reference.base import HFReference


class LlavaOnevisionReference(HFReference):
    family = "llava_onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    single_frame_reuse = False

    def _encode_frames(self, images: list[np.ndarray]) -> list[Any]:
        if len(images) == 1:
            return super()._encode_frames(images * 2)[:1]
        return super()._encode_frames(images)
