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
"""

from __future__ import annotations

from dataclasses import dataclass

from refocus.errors import RefocusError

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
ORDINALS = ("first", "then", "last")
TEMPLATE_WORDS = ("<think>", "</think>", "<answer>", "</answer>", "seen", "times", ",", ".",
                  *ORDINALS, *NUMBERS)
"""Every word a rationale can hold besides colours, shapes and letters (the SFT vocabulary)."""


@dataclass(frozen=True)
class Rationale:
    words: tuple[str, ...]
    tags: tuple[str | None, ...]

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


def build_rationale(item) -> Rationale:
    """The rationale of a synthetic ``QAItem`` (categories order / count / compare of ``multi``,
    needle_color / needle_shape of ``niah``). Raises RefocusError for other items."""
    meta, category = item.meta or {}, item.category
    try:
        if category == "order":
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
    return Rationale(tuple(w for w, _ in words), tuple(t for _, t in words))


def has_rationale(item) -> bool:
    try:
        build_rationale(item)
    except RefocusError:
        return False
    return True
