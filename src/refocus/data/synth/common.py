"""Shared pieces of the synthetic benchmarks: the config, events, samples, placement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Well separated in hue and saturated, so a colour survives H.264 (4:2:0 chroma) and a
# 64 px resize; the haystack stays at saturation <= 0.5 (sparkles aside) so it never matches one of these.
BASIC_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (20, 200, 40),
    "blue": (40, 80, 235),
    "yellow": (245, 215, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 215, 225),
}
"""The colours ``niah`` and ``multi`` draw from."""
BASIC_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
"""The shapes ``niah`` and ``multi`` draw from."""
COLORS: dict[str, tuple[int, int, int]] = {
    **BASIC_COLORS,
    # The six channel orders of (205, 145, 0): the palette stays closed under RGB channel
    # permutation (the reference's augmentation), and (205, 145, 0) is the orbit that keeps every
    # pair of the 12 colours furthest apart (at least 82 levels, Euclidean).
    "orange": (205, 145, 0),
    "pink": (205, 0, 145),
    "lime": (145, 205, 0),
    "mint": (0, 205, 145),
    "purple": (145, 0, 205),
    "azure": (0, 145, 205),
}
"""Every colour an object can have: the basic six and six between them. ``query`` needs as
many colours as it shows objects, so that every object can be the one the question names."""
SHAPES: tuple[str, ...] = (*BASIC_SHAPES, "diamond", "ring", "arrow", "heart", "crescent")
"""Every shape an object can have (``query`` shows one object of each)."""


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic videos look. Defaults keep objects recognisable at 64 x 64."""

    fps: float = 4.0
    """Frame rate of the written videos; frame ``i`` is shown at ``i / fps`` seconds."""
    size: int = 96
    """Frame width and height in pixels (even, for 4:2:0 chroma)."""
    crf: int = 18
    """x264 constant rate factor: 18 keeps flat colours within a few levels."""
    needle_frames: tuple[int, int] = (3, 4)
    """niah: needle duration in frames, inclusive range (3-4 frames = 0.75-1 s at 4 fps)."""
    event_frames: tuple[int, int] = (2, 3)
    """multi and query: duration of each event (object appearance) in frames, inclusive range."""
    event_gap: int = 4
    """multi and query: minimum haystack frames between two events (fewer only if the video is short)."""
    object_scale: tuple[float, float] = (0.35, 0.5)
    """Object diameter as a fraction of the frame height."""
    clutter_items: tuple[int, int] = (12, 24)
    """Small haystack blobs / lines per clutter layer, inclusive range."""
    clutter_every: tuple[int, int] = (2, 4)
    """A new clutter layer every this many frames (drawn once per video), inclusive range."""
    clutter_scale: tuple[float, float] = (0.03, 0.12)
    """Clutter item size as a fraction of the frame height."""
    max_saturation: float = 0.5
    """Haystack colours (background and clutter) stay at or below this HSV saturation."""
    sparkles: tuple[int, int] = (0, 3)
    """Small saturated clutter items per layer, inclusive range. Their hues lie halfway
    between palette hues, so "any saturated pixel" does not give the needle away while no
    haystack pixel matches a palette colour."""
    sparkle_scale: tuple[float, float] = (0.03, 0.07)
    """Sparkle size as a fraction of the frame height."""
    tint: float = 14.0
    """Amplitude (levels) of a slow per-channel colour cast on the haystack, so the frame
    mean colour wanders about as much as a needle moves it."""
    drift: tuple[float, float] = (0.2, 0.7)
    """Background drift speed, pixels per frame along each axis."""


@dataclass(frozen=True)
class Event:
    """One object shown on consecutive frames ``start .. start + length - 1``."""

    start: int
    length: int
    color: str
    shape: str
    center: tuple[float, float]
    """(x, y) in pixels."""
    diameter: float
    """Bounding-box side in pixels."""

    @property
    def stop(self) -> int:
        """One past the last frame."""
        return self.start + self.length

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def span(self, fps: float) -> tuple[float, float]:
        """Seconds from the first frame's time to the last frame's time + one frame."""
        return (round(self.start / fps, 6), round(self.stop / fps, 6))


@dataclass
class Sample:
    """Everything needed to render one video and write its question."""

    num_frames: int
    events: list[Event]
    question: str
    options: list[str]
    answer_index: int
    category: str
    evidence: list[int]
    """Indices into ``events`` whose spans hold the answer."""
    meta: dict = field(default_factory=dict)


def place_events(
    rng: np.random.Generator, num_frames: int, lengths: list[int], gap: int
) -> list[int]:
    """Random start frames for events of ``lengths`` in this order, ``gap`` frames apart.

    The free frames are split at uniformly drawn cut points, so every position, including
    the very start and the very end of the video, can be drawn.
    """
    free = num_frames - sum(lengths) - gap * (len(lengths) - 1)
    if free < 0:
        raise ValueError(f"{len(lengths)} events of {lengths} frames do not fit in {num_frames}")
    cuts = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    starts, used = [], 0
    for j, length in enumerate(lengths):
        starts.append(int(cuts[j]) + used + j * gap)
        used += length
    return starts


def fit_gap(num_frames: int, lengths: list[int], wanted: int) -> int:
    """The wanted gap between events, shrunk (to at least 1) when the video is short."""
    slack = (num_frames - sum(lengths)) // (len(lengths) + 1)
    return max(1, min(wanted, slack))


def random_geometry(
    rng: np.random.Generator, cfg: SynthConfig
) -> tuple[tuple[float, float], float]:
    """A random centre and diameter that keep the whole object inside the frame."""
    lo, hi = cfg.object_scale
    diameter = float(rng.uniform(lo, hi)) * cfg.size
    margin = diameter / 2 + 2
    cx, cy = rng.uniform(margin, cfg.size - margin, size=2)
    return (round(float(cx), 2), round(float(cy), 2)), round(diameter, 2)


def make_event(
    rng: np.random.Generator, start: int, length: int, color: str, shape: str, cfg: SynthConfig
) -> Event:
    center, diameter = random_geometry(rng, cfg)
    return Event(start, length, color, shape, center, diameter)


def pick(rng: np.random.Generator, values, k: int, exclude=()) -> list:
    """``k`` distinct random values, none in ``exclude``."""
    pool = [v for v in values if v not in exclude]
    return [pool[i] for i in rng.permutation(len(pool))[:k]]


def shuffled_options(
    rng: np.random.Generator, correct: str, distractors: list[str]
) -> tuple[list[str], int]:
    """Options in random order and the index of the correct one."""
    options = [correct, *distractors]
    order = rng.permutation(len(options))
    options = [options[i] for i in order]
    return options, options.index(correct)


def place_objects(
    rng: np.random.Generator, num_frames: int, objects: list[tuple[str, str]], cfg: SynthConfig
) -> list[Event]:
    """One event per entry of ``objects`` (in that temporal order), placed with gaps."""
    lo, hi = cfg.event_frames
    lengths = [int(x) for x in rng.integers(lo, hi + 1, size=len(objects))]
    gap = fit_gap(num_frames, lengths, cfg.event_gap)
    starts = place_events(rng, num_frames, lengths, gap)
    return [
        make_event(rng, s, n, color, shape, cfg)
        for s, n, (color, shape) in zip(starts, lengths, objects, strict=True)
    ]


def geometry_meta(event: Event) -> dict:
    """An event's place in the frame, as its metadata records it."""
    return {"center": [float(event.center[0]), float(event.center[1])], "diameter": float(event.diameter)}


def events_meta(num_frames: int, events: list[Event], **more) -> dict:
    """``meta`` of a video with several objects: its length and every event's frames, centre and
    diameter (pixels of the written frames), so that a frame's object, and which appearance of
    it the frame shows, can be recovered from the metadata."""
    spans = [{"color": e.color, "shape": e.shape, "frames": [e.start, e.stop - 1], **geometry_meta(e)}
             for e in events]
    return {"num_frames": num_frames, "events": spans, **more}
