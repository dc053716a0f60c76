"""The margin reward of a frame subset from its reference option logits (paper Eq. 1, 4, 5).

Pure numpy; used by training (GRPO rewards), filtering (reward variance), Frame-Voyager
collection (ranking) and evaluation (the per-item margin).
"""

from __future__ import annotations

import numpy as np


def margin_rewards(logits: np.ndarray, answer_index: int, dtype: type = np.float32) -> np.ndarray:
    """Margin reward of each row: ``tanh((z_correct - max_{wrong} z) / 2)``, in [-1, 1].

    Equal to Eq. 4, (p* - p~) / (p* + p~) on softmax probabilities with p~ the most likely
    wrong option, without computing probabilities (Eq. 5). logits: (G, O) with O >= 2.
    Returns (G,) of ``dtype`` (computed in float64).
    """
    z = np.asarray(logits, dtype=np.float64)  # (G, O)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (G, O) with O >= 2, got {z.shape}")
    if not 0 <= answer_index < z.shape[1]:
        raise ValueError(f"answer_index {answer_index} out of range for {z.shape[1]} options")
    correct = z[:, answer_index]  # (G,)
    best_wrong = np.delete(z, answer_index, axis=1).max(axis=1)  # (G,)
    return np.tanh((correct - best_wrong) / 2.0).astype(dtype)
