"""Several pieces of evidence: questions that need two or more separated events.

Categories rotate with the video index (``order``, ``count``, ``compare``):

- ``order``: three different objects appear once each; "Which of these appeared first?"
  (or last). Options: the three objects and one that never appears, shuffled.
- ``count``: one object appears 1-4 times, plus one look-alike (same colour or same shape)
  once; "How many times does a red circle appear?" Options "1".."4" in order.
  Evidence: the target's appearances only (the look-alike is not needed to answer).
- ``compare``: two objects appear 1-3 times each, interleaved at random; "Which appeared
  more times ...?" Options: either object or "they appeared equally often", shuffled.

Objects within a video have distinct colours and shapes (except the count look-alike), and
every event is a few frames separated by haystack, so one frame never answers the question.
"""

from __future__ import annotations

import numpy as np

from refocus.data.synth.common import (
    BASIC_COLORS,
    BASIC_SHAPES,
    Sample,
    SynthConfig,
    events_meta,
    pick,
    place_objects,
    shuffled_options,
)

CATEGORIES = ("order", "count", "compare")
EQUAL = "they appeared equally often"
MIN_FRAMES = 32


def plan_multi(rng: np.random.Generator, num_frames: int, index: int, cfg: SynthConfig) -> Sample:
    """Draw the events and the question for video ``index``."""
    category = CATEGORIES[index % len(CATEGORIES)]
    return {"order": _order, "count": _count, "compare": _compare}[category](rng, num_frames, cfg)


def _objects(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """``n`` (colour, shape) pairs with all colours distinct and all shapes distinct."""
    return list(zip(pick(rng, BASIC_COLORS, n), pick(rng, BASIC_SHAPES, n), strict=True))


def _the(obj: tuple[str, str]) -> str:
    return f"the {obj[0]} {obj[1]}"


def _order(rng: np.random.Generator, num_frames: int, cfg: SynthConfig) -> Sample:
    *shown, unseen_color = pick(rng, BASIC_COLORS, 4)
    shapes = pick(rng, BASIC_SHAPES, 4)
    objects = list(zip(shown, shapes[:3], strict=True))
    unseen = (unseen_color, shapes[3])
    events = place_objects(rng, num_frames, objects, cfg)
    which = "first" if rng.random() < 0.5 else "last"
    target = objects[0] if which == "first" else objects[-1]
    options, answer = shuffled_options(
        rng, _the(target), [_the(o) for o in objects if o != target] + [_the(unseen)]
    )
    question = f"Which of these appeared {which} in the video?"
    meta = events_meta(num_frames, events, which=which)
    return Sample(num_frames, events, question, options, answer, "order", [0, 1, 2], meta)


def _count(rng: np.random.Generator, num_frames: int, cfg: SynthConfig) -> Sample:
    (target,) = _objects(rng, 1)
    if rng.random() < 0.5:  # look-alike of the same colour, other shape
        decoy = (target[0], pick(rng, BASIC_SHAPES, 1, exclude=(target[1],))[0])
    else:
        decoy = (pick(rng, BASIC_COLORS, 1, exclude=(target[0],))[0], target[1])
    count = int(rng.integers(1, 5))
    objects = [target] * count + [decoy]
    objects = [objects[i] for i in rng.permutation(len(objects))]
    events = place_objects(rng, num_frames, objects, cfg)
    evidence = [j for j, o in enumerate(objects) if o == target]
    options = ["1", "2", "3", "4"]
    question = f"How many times does a {target[0]} {target[1]} appear in the video?"
    meta = events_meta(num_frames, events, target=f"{target[0]} {target[1]}", count=count)
    return Sample(num_frames, events, question, options, count - 1, "count", evidence, meta)


def _compare(rng: np.random.Generator, num_frames: int, cfg: SynthConfig) -> Sample:
    x, y = _objects(rng, 2)
    nx, ny = (int(v) for v in rng.integers(1, 4, size=2))
    objects = [x] * nx + [y] * ny
    objects = [objects[i] for i in rng.permutation(len(objects))]
    events = place_objects(rng, num_frames, objects, cfg)
    correct = _the(x) if nx > ny else _the(y) if ny > nx else EQUAL
    others = [o for o in (_the(x), _the(y), EQUAL) if o != correct]
    options, answer = shuffled_options(rng, correct, others)
    question = f"Which appeared more times in the video: {_the(x)} or {_the(y)}?"
    meta = events_meta(num_frames, events, counts={_the(x)[4:]: nx, _the(y)[4:]: ny})
    evidence = list(range(len(events)))
    return Sample(num_frames, events, question, options, answer, "compare", evidence, meta)
