"""Random sampling: ``budget`` distinct frames drawn uniformly, seeded per item."""

from __future__ import annotations

from typing import Any

import numpy as np

from refocus.seeding import item_seed
from refocus.selectors.base import BaseSelector, VideoFrames


class RandomSelector(BaseSelector):
    """``budget`` frames drawn without replacement, returned sorted.

    The generator of each item is seeded with (run seed, stable hash of the item id), so an
    item's selection is the same whatever order or subset of items is evaluated, and seeds
    0, 1, 2 give three independent draws.
    """

    name = "random"
    image_size = None
    deterministic = False

    def _select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        rng = np.random.default_rng(item_seed(self.seed, item.id))
        chosen = rng.choice(len(video.timestamps), size=budget, replace=False)
        return sorted(int(i) for i in chosen)
