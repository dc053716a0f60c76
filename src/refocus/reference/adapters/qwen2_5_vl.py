"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``).

Frames go in as images (``<|vision_start|><|image_pad|><|vision_end|>`` each), never as a
video, so each frame has temporal grid 1 and its own M-RoPE block. Position ids of an
assembled subset are computed by the model's own ``get_rope_index`` from the tokenized
prompt, ``image_grid_thw`` and ``mm_token_type_ids``, which frame reuse passes through.

The processor resizes to any multiple of ``patch_size * merge_size`` within
[min_pixels, max_pixels]; :attr:`image_size` is 448 px (16 x 16 = 256 merged tokens per
frame, the per-frame budget of the paper's InternVL3 reference) brought into that range.
"""

from __future__ import annotations

import math

from refocus.reference.base import HFReference

PREFERRED_SIZE = 448


class Qwen2_5_VLReference(HFReference):
    family = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"

    @property
    def image_size(self) -> int:
        ip = self.processor.image_processor
        factor = int(ip.patch_size) * int(ip.merge_size)
        size = dict(ip.size) if ip.size is not None else {}
        lo = math.sqrt(size.get("shortest_edge") or getattr(ip, "min_pixels", None) or factor * factor)
        hi = math.sqrt(size.get("longest_edge") or getattr(ip, "max_pixels", None) or 4096 * 4096)
        side = min(max(PREFERRED_SIZE, lo), hi)
        side = max(factor, round(side / factor) * factor)
        if side * side > hi * hi:
            side -= factor
        if side * side < lo * lo:
            side += factor
        return int(side)
