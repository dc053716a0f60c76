"""The oracle: evidence frames first, then uniform. Needs evidence spans (synthetic data).

It is the upper reference of the selection experiments: what an answerer scores when it is
shown the frames that hold the answer, at the same budget as every other selector.
"""

from __future__ import annotations

from typing import Any

from refocus.data.indices import oracle_indices, spread_order
from refocus.errors import RefocusError
from refocus.selectors.base import BaseSelector, VideoFrames

__all__ = ["OracleSelector", "oracle_indices", "spread_order"]


class OracleSelector(BaseSelector):
    """Evidence frames first (at least one from every span before a second from any), then
    uniform fill; see :func:`oracle_indices`. Raises RefocusError for an item without
    evidence spans (real benchmarks rarely have them: use it on synthetic data)."""

    name = "oracle"
    image_size = None
    deterministic = True

    def _select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        if not item.evidence:
            raise RefocusError(f"item {item.id}: the oracle selector needs evidence spans, this item has none")
        return oracle_indices(video.timestamps, item.evidence, budget)
