"""Templated rationales from the synthetic benchmarks' metadata (what is seen and when).

A rationale is a list of words, each tagged ``visual`` (a colour or shape of an object in
the video), ``temporal`` (an ordinal or a count: first, then, last, one ... four) or
``answer`` (the letter), or untagged (template words and punctuation), in the answer format
of Video-R1 / Video-KTR::

    <think> first red star , then blue circle , last green square . </think> <answer> C </answer>
    <think> red circle seen three times , red square seen one times . </think> <answer> C </answer>

Words are separated by single spaces, so the small reference model's word-level tokenizer
maps each word to one token and the tags are token tags; the attribution benchmark scores
the visual-aware and temporal-aware masks against them.

Two templates (:data:`TEMPLATES`):

- ``sequence`` (default; the issue's form, "the red star appears, then the blue circle ..."):
  events in the order they happened. Its temporal words are set by their place in the
  sentence ("first" always opens it), so frame order changes the object words after them,
  not the temporal words: Video-KTR's temporal-aware signal (frames shuffled) cannot find them.
- ``scan``: a spatial scan of the evidence events, each with where it was (the third of the
  frame its centre lies in, as a compass word: visual) and what it was (colour, shape:
  visual), then, in the same order, when (the shown frames it is seen in, ``FrameN`` of the
  prompt: temporal)::

    <think> northwest cyan star centre magenta square southeast red cross ; 4 5 1 7 . </think> <answer> D </answer>

  Events are listed by place, then by name, so the visual words do not depend on frame order
  and the frame numbers carry it: shuffled frames change the frame numbers only. A scan names
  the evidence events the shown frames hold (``count``: the target's appearances; ``order``
  and ``compare``: every event), so SFT and attribution build it per example. (Ranks among the
  events, "first" / "second" ..., were tried first: the small answerer did not learn them from
  the frames, benchmarks/RESULTS.md, "a rationale whose temporal words carry the frame order".)
  ``niah`` is the same in both templates.
"""

from __future__ import annotations

from dataclasses import dataclass

from refocus.errors import RefocusError

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
ORDINALS = ("first", "then", "last")
FRAME_NUMBERS = tuple(str(i) for i in range(1, 33))
"""The shown frames (``FrameN`` in the prompt) an event is seen in; up to 32 frames."""
PLACES = ("northwest", "north", "northeast", "west", "centre", "east", "southwest", "south", "southeast")
"""Where an object's centre lies, by thirds of the frame (row-major), one word each."""
TEMPLATES = ("sequence", "scan")
TEMPLATE_WORDS = ("<think>", "</think>", "<answer>", "</answer>", "seen", "times", ",", ".",
                  *ORDINALS, *NUMBERS, *PLACES, ";", *FRAME_NUMBERS)
"""Every word a rationale can hold besides colours, shapes and letters (the SFT vocabulary)."""


@dataclass(frozen=True)
class Rationale:
    words: tuple[str, ...]
    tags: tuple[str | None, ...]
    order_bearing: tuple[bool, ...] = ()
    """Per word: does its value follow the order of the frames (shuffled frames change it)?"""

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _obj(color: str, shape: str) -> list[tuple[str, str | None]]:
    return [(color, "visual"), (shape, "visual")]


def _count(n: int) -> list[tuple[str, str | None]]:
    return [("seen", None), (NUMBERS[n], "temporal"), ("times", None)]


def _order(meta: dict) -> list[tuple[str, str | None]]:
    events = meta["events"]
    out: list[tuple[str, str | None]] = []
    for i, ev in enumerate(events):
        word = "first" if i == 0 else "last" if i == len(events) - 1 else "then"
        if i:
            out.append((",", None))
        out += [(word, "temporal"), *_obj(ev["color"], ev["shape"])]
    return out


def _counts(pairs: list[tuple[str, str, int]]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for i, (color, shape, n) in enumerate(pairs):
        if i:
            out.append((",", None))
        out += [*_obj(color, shape), *_count(n)]
    return out


def _count_pairs(meta: dict) -> list[tuple[str, str, int]]:
    color, shape = meta["target"].split()
    seen: dict[tuple[str, str], int] = {}
    for ev in meta["events"]:
        key = (ev["color"], ev["shape"])
        seen[key] = seen.get(key, 0) + 1
    pairs = [(color, shape, int(meta["count"]))]
    return pairs + [(c, s, n) for (c, s), n in seen.items() if (c, s) != (color, shape)]


def _compare_pairs(meta: dict) -> list[tuple[str, str, int]]:
    return [(*name.split(), int(n)) for name, n in meta["counts"].items()]


def _cell(center: float, diameter: float, size: float) -> int:
    """Third (0, 1, 2) of the range the generator draws a centre from (the whole object in frame)."""
    margin = diameter / 2 + 2
    return min(2, max(0, int(3 * (center - margin) / max(1e-6, size - 2 * margin))))


def _place(ev: dict, size: float) -> int:
    return 3 * _cell(ev["center"][1], ev["diameter"], size) + _cell(ev["center"][0], ev["diameter"], size)


def _scan(meta: dict, category: str, shown_events) -> list[tuple[str, str | None]]:
    events = list(enumerate(meta["events"]))
    if category == "count":
        events = [(j, ev) for j, ev in events if f"{ev['color']} {ev['shape']}" == meta["target"]]
    size = float(meta["size"])
    shown = [int(e) for e in shown_events]
    frames = {j: [i for i, e in enumerate(shown) if e == j] for j, _ in events}
    events = [(j, ev) for j, ev in events if frames[j]]  # what the shown frames hold, nothing else
    # By place, then by name: the list (and so every visual word) is the same whatever the
    # frames' order; only appearances of one object at one place fall back to time order, and
    # their words are the same.
    placed = sorted(events, key=lambda e: (_place(e[1], size), e[1]["color"], e[1]["shape"], e[1]["frames"][0]))
    seen = [w for _, ev in placed for w in ((PLACES[_place(ev, size)], "visual"), *_obj(ev["color"], ev["shape"]))]
    # The frame numbers come after every visual word, so no visual word is read after one.
    return [*seen, (";", None), *((FRAME_NUMBERS[i], "temporal") for j, _ in placed for i in frames[j])]


def check_template(template: str) -> None:
    """Raise RefocusError unless ``template`` is one of :data:`TEMPLATES`."""
    if template not in TEMPLATES:
        raise RefocusError(f"unknown rationale template {template!r}; choose from {', '.join(TEMPLATES)}")


def build_rationale(item, template: str = "sequence", shown_events=None) -> Rationale:
    """The rationale of a synthetic ``QAItem`` (categories order / count / compare of ``multi``,
    needle_color / needle_shape of ``niah``) in ``template`` (:data:`TEMPLATES`). Raises
    RefocusError for other items, or when the metadata lacks what the template needs.

    ``shown_events``: for ``scan``, per shown frame in prompt order, which event of
    ``item.meta["events"]`` it shows (-1 none; :func:`refocus.reference.small_training.frame_appearances`);
    an evidence event in none of them is left out (a scan says what the frames hold). None:
    every event shown once, in time order (the vocabulary, tests)."""
    check_template(template)
    meta, category = item.meta or {}, item.category
    try:
        if template == "scan" and category in ("order", "count", "compare"):
            body = _scan(meta, category, range(len(meta["events"])) if shown_events is None else shown_events)
        elif category == "order":
            body = _order(meta)
        elif category == "count":
            body = _counts(_count_pairs(meta))
        elif category == "compare":
            body = _counts(_compare_pairs(meta))
        elif category in ("needle_color", "needle_shape"):
            body = [("seen", None), *_obj(meta["color"], meta["shape"])]
        else:
            raise RefocusError(f"{item.id}: no rationale template for category {category!r}")
    except (KeyError, ValueError, IndexError) as err:
        raise RefocusError(f"{item.id}: synthetic metadata incomplete for a rationale ({err})") from None
    words = [("<think>", None), *body, (".", None), ("</think>", None),
             ("<answer>", None), (item.answer, "answer"), ("</answer>", None)]
    tags = tuple(t for _, t in words)
    # In a sequence rationale of an order question the object words' places follow the video's
    # order; in a scan rationale only the frame numbers do.
    objects_in_time = template == "sequence" and category == "order"
    order = tuple(t == "temporal" or (t == "visual" and objects_in_time) for t in tags)
    return Rationale(tuple(w for w, _ in words), tags, order)


def has_rationale(item, template: str = "sequence") -> bool:
    try:
        build_rationale(item, template, shown_events=None)
    except RefocusError:
        return False
    return True
