"""Query-conditioned selection: many objects, one of them named by the question.

Each video shows ``NUM_OBJECTS`` different objects (colour, shape) once each, a few frames
apiece, separated by haystack. The question names one object by one attribute and asks for
the other, alternating by video index:

- ``query_color``: "What colour is the star?" (the star is the only star in the video);
- ``query_shape``: "What shape is the red object?" (the only red object).

The four options are the right value and three values of the same attribute that other
objects in the same video have, so a frame of the wrong object points to a wrong option.
Evidence: the named object's frames only.

With 6 colours and 5 shapes, 12 objects cannot all differ in both attributes: they are 12
distinct (colour, shape) pairs, and the attribute the question names is unique in the video
(no other red object; no other star), so the question has exactly one answer.

**Known weakness: the video alone tells where the named object can be.** That uniqueness is
visible without the question: on average only 2.8 of the 12 objects have a colour or a shape
no other object has, and the named one is always among them. A selector that never reads the
question but shows one frame of each of them holds the named object 0.99 of the time at
budget 4 (uniform: 0.07; K frames among all object frames: 0.29); ``benchmarks/
query_blind_ceiling.py`` measures this. So ``query`` cannot show that a policy reads the
question until every object could be the named one, which needs more colours and shapes than
the 6 x 5 here (benchmarks/RESULTS.md, "a question-blind selector can solve query").
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from refocus.data.synth.common import (
    COLORS,
    SHAPES,
    Sample,
    SynthConfig,
    events_meta,
    pick,
    place_objects,
    shuffled_options,
)

CATEGORIES = ("query_color", "query_shape")
NUM_OBJECTS = 12
NUM_OPTIONS = 4
MIN_FRAMES = 48
"""12 events of up to 3 frames and 11 one-frame gaps fit in 47 frames."""


def plan_query(rng: np.random.Generator, num_frames: int, index: int, cfg: SynthConfig) -> Sample:
    """Draw the objects, their order and the question for video ``index``."""
    category = CATEGORIES[index % len(CATEGORIES)]
    color, shape = pick(rng, COLORS, 1)[0], pick(rng, SHAPES, 1)[0]
    # Asking for the colour names the shape, which must then be unique (and vice versa).
    asked, named = ("color", "shape") if category == "query_color" else ("shape", "color")
    target = {"color": color, "shape": shape}
    values = {"color": list(COLORS), "shape": list(SHAPES)}
    # Distractor values of the asked attribute; each is carried by at least one other object.
    distractors = pick(rng, values[asked], NUM_OPTIONS - 1, exclude=(target[asked],))
    others = _other_objects(rng, target, named, asked, distractors)
    objects = [(color, shape), *others]
    objects = [objects[i] for i in rng.permutation(len(objects))]
    events = place_objects(rng, num_frames, objects, cfg)
    evidence = [objects.index((color, shape))]
    options, answer = shuffled_options(rng, target[asked], distractors)
    question = question_text(asked, color, shape)
    meta = events_meta(num_frames, events, color=color, shape=shape, named=named, asked=asked)
    return Sample(num_frames, events, question, options, answer, category, evidence, meta)


def nameable_objects(objects: list[tuple[str, str]]) -> list[int]:
    """Indices of the (colour, shape) ``objects`` of one video that a question could name: those
    whose colour or shape no other object has. The named object is always one of them, and which
    they are is visible without the question (the module docstring's known weakness)."""
    colors = Counter(c for c, _ in objects)
    shapes = Counter(s for _, s in objects)
    return [i for i, (c, s) in enumerate(objects) if colors[c] == 1 or shapes[s] == 1]


def blind_ceiling(objects: list[tuple[str, str]], budget: int) -> float:
    """Chance that a selector which shows one frame of each of ``budget`` nameable objects (drawn
    among them when there are more) holds the named one, without reading the question."""
    return min(1.0, budget / len(nameable_objects(objects)))


def question_text(asked: str, color: str, shape: str) -> str:
    """The question asking for the ``asked`` attribute ("color" or "shape") of the object that
    is ``color`` ``shape``, naming it by the other attribute."""
    return f"What colour is the {shape}?" if asked == "color" else f"What shape is the {color} object?"


def _other_objects(rng: np.random.Generator, target: dict[str, str], named: str, asked: str,
                   distractors: list[str]) -> list[tuple[str, str]]:
    """``NUM_OBJECTS - 1`` distinct (colour, shape) pairs without the target's ``named`` value,
    the first ones carrying each distractor value of ``asked``."""
    values = {"color": list(COLORS), "shape": list(SHAPES)}
    free = [v for v in values[named] if v != target[named]]
    pairs = []
    for d in distractors:
        pairs.append({asked: d, named: free[int(rng.integers(len(free)))]})
    pool = [{asked: a, named: n} for a in values[asked] for n in free]
    pool = [p for p in pool if p not in pairs]
    pairs += [pool[i] for i in rng.permutation(len(pool))[: NUM_OBJECTS - 1 - len(pairs)]]
    return [(p["color"], p["shape"]) for p in pairs]
