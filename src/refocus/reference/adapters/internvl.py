"""InternVL3 in the transformers ``-hf`` layout (``InternVLForConditionalGeneration``).

Reward setting: one 448 px tile per frame (``crop_to_patches=False``): the processor's
default dynamic tiling would split every frame into up to 12 tiles plus a thumbnail, while
the paper feeds one image per frame (``Frame{i}: <img><IMG_CONTEXT>...</img>``). The model
takes its image features back as one (N, P, D) tensor, hence ``stack_features``.
Original (remote-code, ``internvl_chat``) checkpoints must be converted to the -hf layout.
"""

from __future__ import annotations

from refocus.reference.base import HFReference


class InternVLReference(HFReference):
    family = "internvl"
    model_class = "InternVLForConditionalGeneration"
    processor_kwargs = {"crop_to_patches": False}
    stack_features = True
