"""Query-conditioned selection: many objects, one of them named by the question.

Each video shows ``NUM_OBJECTS`` objects once each, a few frames apiece, separated by
haystack. No two of them share a colour and no two share a shape (the full palette,
``COLORS`` and ``SHAPES``), so the question can name any of them by either attribute and ask
for the other, alternating by video index:

- ``query_color``: "What colour is the star?";
- ``query_shape``: "What shape is the red object?".

The four options are the right value and three values of the same attribute that other
objects in the same video have, so a frame of the wrong object points to a wrong option.
Evidence: the named object's frames only.

Every object is equally likely to be the named one, so nothing in the video says which it is:
a selector that never reads the question holds the named object at most ``K / NUM_OBJECTS``
of the time at budget ``K`` (0.4 at the default budget of 4; ``blind_ceiling``). An earlier
version drew 12 objects from 6 colours and 5 shapes; there the named attribute had to be unique
in the video, only ~2.8 objects per video had a unique colour or shape, and showing one frame
of each held the named object 0.99 of the time at budget 4 without the question
(benchmarks/RESULTS.md, "a question-blind selector can solve query").
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
ATTRIBUTE_INDEX = {"color": 0, "shape": 1}
"""Position of each attribute in a (colour, shape) object."""
OTHER_ATTRIBUTE = {"color": "shape", "shape": "color"}
"""The attribute that names the object when the question asks for the other one."""
NUM_OBJECTS = 10
"""Objects per video; at most the number of shapes (every object has its own shape)."""
assert NUM_OBJECTS <= min(len(COLORS), len(SHAPES))
NUM_OPTIONS = 4
MIN_FRAMES = 40
"""10 events of up to 3 frames and 9 one-frame gaps fit in 39 frames."""


def plan_query(rng: np.random.Generator, num_frames: int, index: int, cfg: SynthConfig) -> Sample:
    """Draw the objects, their order and the question for video ``index``."""
    category = CATEGORIES[index % len(CATEGORIES)]
    objects = list(zip(pick(rng, COLORS, NUM_OBJECTS), pick(rng, SHAPES, NUM_OBJECTS), strict=True))
    named_index = int(rng.integers(NUM_OBJECTS))
    color, shape = objects[named_index]
    asked = "color" if category == "query_color" else "shape"
    distractors = distractor_values(rng, objects, named_index, asked)
    events = place_objects(rng, num_frames, objects, cfg)
    options, answer = shuffled_options(rng, objects[named_index][ATTRIBUTE_INDEX[asked]], distractors)
    question = question_text(asked, color, shape)
    meta = events_meta(num_frames, events, color=color, shape=shape, named=OTHER_ATTRIBUTE[asked], asked=asked)
    return Sample(num_frames, events, question, options, answer, category, [named_index], meta)


def nameable_objects(objects: list[tuple[str, str]]) -> list[int]:
    """Indices of the (colour, shape) ``objects`` of one video that a question could name: those
    whose colour or shape no other object has. Here that is every object; a generator where it is
    not lets a selector see, without the question, which objects can be the named one (the module
    docstring's earlier version)."""
    colors = Counter(c for c, _ in objects)
    shapes = Counter(s for _, s in objects)
    return [i for i, (c, s) in enumerate(objects) if colors[c] == 1 or shapes[s] == 1]


def blind_ceiling(objects: list[tuple[str, str]], budget: int) -> float:
    """Chance that a selector which shows one frame of each of ``budget`` nameable objects (drawn
    among them when there are more) holds the named one, without reading the question."""
    return min(1.0, budget / len(nameable_objects(objects)))


def distractor_values(rng: np.random.Generator, objects: list[tuple[str, str]], named_index: int,
                      asked: str) -> list[str]:
    """The wrong options of a question about ``objects[named_index]``: ``NUM_OPTIONS - 1`` values
    of the ``asked`` attribute ("color" or "shape") that other objects of the video have."""
    value = ATTRIBUTE_INDEX[asked]
    return pick(rng, [o[value] for j, o in enumerate(objects) if j != named_index], NUM_OPTIONS - 1)


def ask_about(rng: np.random.Generator, objects: list[tuple[str, str]], named_index: int,
              asked: str) -> tuple[str, list[str], int]:
    """A question about ``objects[named_index]`` of a video holding the (colour, shape)
    ``objects``: its text asking for the ``asked`` attribute, four shuffled options (the right
    value and :func:`distractor_values`) and the answer's index. Used to ask more than the one
    stored question about a video (the small reference model's ``requery_fraction``)."""
    distractors = distractor_values(rng, objects, named_index, asked)
    options, answer = shuffled_options(rng, objects[named_index][ATTRIBUTE_INDEX[asked]], distractors)
    return question_text(asked, *objects[named_index]), options, answer


def question_text(asked: str, color: str, shape: str) -> str:
    """The question asking for the ``asked`` attribute ("color" or "shape") of the object that
    is ``color`` ``shape``, naming it by the other attribute."""
    return f"What colour is the {shape}?" if asked == "color" else f"What shape is the {color} object?"
