"""Visual needle in a haystack: one short, large, outlined object in a long cluttered video.

Each video gets one question about the needle, alternating by video index between its
colour (category ``needle_color``) and its shape (``needle_shape``), so both categories are
balanced in any prefix of the benchmark. Four shuffled options: the right value and three
other values of the same attribute.
"""

from __future__ import annotations

import numpy as np

from refocus.data.synth.common import (
    BASIC_COLORS,
    BASIC_SHAPES,
    Sample,
    SynthConfig,
    geometry_meta,
    make_event,
    pick,
    place_events,
    shuffled_options,
)

CATEGORIES = ("needle_color", "needle_shape")
QUESTIONS = {
    "needle_color": "What colour is the shape that briefly appears in the video?",
    "needle_shape": "What shape briefly appears in the video?",
}
NUM_OPTIONS = 4
MIN_FRAMES = 8


def plan_niah(rng: np.random.Generator, num_frames: int, index: int, cfg: SynthConfig) -> Sample:
    """Draw the needle (colour, shape, place, duration) and the question for video ``index``."""
    lo, hi = cfg.needle_frames
    length = int(rng.integers(lo, hi + 1))
    color = pick(rng, BASIC_COLORS, 1)[0]
    shape = pick(rng, BASIC_SHAPES, 1)[0]
    (start,) = place_events(rng, num_frames, [length], gap=0)
    needle = make_event(rng, start, length, color, shape, cfg)

    category = CATEGORIES[index % len(CATEGORIES)]
    values, correct = (BASIC_COLORS, color) if category == "needle_color" else (BASIC_SHAPES, shape)
    options, answer = shuffled_options(
        rng, correct, pick(rng, values, NUM_OPTIONS - 1, exclude=(correct,))
    )
    meta = {
        "num_frames": num_frames,
        # 0 = needle at the very start, 1 = needle ends on the last frame (NIAH "depth").
        "needle_position": round(start / max(num_frames - length, 1), 6),
        "needle_frames": [start, needle.stop - 1],
        "color": color,
        "shape": shape,
        **geometry_meta(needle),
    }
    return Sample(num_frames, [needle], QUESTIONS[category], options, answer, category, [0], meta)
