"""Fallback for other image-text-to-text checkpoints (``AutoModelForImageTextToText``).

Scoring uses the shared logic of :class:`~refocus.reference.base.HFReference`. Frame reuse
is attempted when the model's forward accepts precomputed image features
(``mm_encoder_outputs``) and its ``get_image_features`` output splits into one block per
image; on the first call it is checked against naive scoring of one subset, and the adapter
falls back to naive scoring (with a warning) if the two disagree or reuse fails.
"""

from __future__ import annotations

from refocus.reference.base import HFReference


class GenericReference(HFReference):
    family = "generic"
    model_class = "AutoModelForImageTextToText"
    verify_reuse = True
