"""Uniform sampling: the usual fixed-stride baseline of video-LLMs."""

from __future__ import annotations

from typing import Any

from refocus.selectors.base import BaseSelector, VideoFrames, uniform_indices


class UniformSelector(BaseSelector):
    """The midpoints of ``budget`` equal bins over the T decoded frames.

    Rule: ``index_j = floor((j + 0.5) * T / budget)`` for j = 0 .. budget - 1 (all T frames
    when T <= budget); e.g. T = 10, budget = 4 -> [1, 3, 6, 8]. Bin midpoints rather than
    ``linspace(0, T - 1, K)`` so the first and last frames (often fades or titles) are not
    always chosen and every frame stands for an equal share of the video. Ignores the
    question and the pixels.
    """

    name = "uniform"
    image_size = None
    deterministic = True

    def _select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        return uniform_indices(len(video.timestamps), budget)
