"""Drawing synthetic frames: a cluttered, drifting haystack and large outlined objects.

The haystack is built so that its frames look alike in colour statistics and change all the
time (drifting texture, clutter that changes every few frames): finding the object needs
looking at the frame, not at a global colour average. Everything is numpy plus PIL drawing.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from refocus.data.synth.common import COLORS, Event, SynthConfig

OUTLINE = (0, 0, 0)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] to RGB uint8, elementwise; output shape ``h.shape + (3,)``."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ]
    )
    rgb = np.take_along_axis(table, i[None, ..., None].repeat(3, -1), axis=0)[0]
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def _palette_gap_hues() -> np.ndarray:
    """Hues (in [0, 1)) halfway between neighbouring palette hues, for sparkles."""
    hues = np.sort([colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for rgb in COLORS.values()])
    nxt = np.append(hues[1:], hues[0] + 1)
    return ((hues + nxt) / 2) % 1


SPARKLE_HUES = _palette_gap_hues()


def _haystack_colors(rng: np.random.Generator, n: int, cfg: SynthConfig) -> np.ndarray:
    """``n`` random low-to-medium saturation colours, (n, 3) uint8."""
    return hsv_to_rgb(
        rng.random(n), rng.uniform(0.1, cfg.max_saturation, n), rng.uniform(0.3, 0.9, n)
    )


class Haystack:
    """The background of one video: ``frame(i)`` for any frame index, deterministic.

    A texture twice the frame size (smooth colour field + fixed grain + faint stripes) is
    viewed through a window that drifts and bounces off the edges, and a fresh layer of
    small blobs and lines is laid over it every few frames.
    """

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig) -> None:
        self.cfg = cfg
        size = cfg.size
        side = 2 * size
        cells = int(rng.integers(3, 7))
        field = _haystack_colors(rng, cells * cells, cfg).reshape(cells, cells, 3)
        texture = np.asarray(
            Image.fromarray(field).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32
        )
        yy, xx = np.mgrid[0:side, 0:side]
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 14)
        stripes = 8 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        grain = rng.normal(0, 6, (side, side))
        texture += (stripes + grain)[..., None]
        self.texture = np.clip(texture, 0, 255).astype(np.uint8)  # (2S, 2S, 3)
        self.origin = rng.uniform(0, size, 2)
        self.velocity = rng.uniform(*cfg.drift, 2) * rng.choice([-1, 1], 2)
        # (3 channels, 2 sinusoids): periods 16-96 frames, random phases.
        self.tint_freq = 2 * np.pi / rng.uniform(16, 96, (3, 2))
        self.tint_phase = rng.uniform(0, 2 * np.pi, (3, 2))
        self.every = int(rng.integers(cfg.clutter_every[0], cfg.clutter_every[1] + 1))
        # Clutter layers are drawn lazily from one seed per layer, so frame(i) does not
        # depend on which frames were drawn before.
        self.layer_seed = int(rng.integers(2**63))
        self._layer: tuple[int, np.ndarray, np.ndarray] | None = None

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` of the haystack, (S, S, 3) uint8."""
        size = self.cfg.size
        x, y = (_bounce(p, size) for p in self.origin + self.velocity * i)
        tint = self.cfg.tint / 2 * np.sin(self.tint_freq * i + self.tint_phase).sum(1)  # (3,)
        out = np.clip(self.texture[y : y + size, x : x + size] + tint, 0, 255).astype(np.uint8)
        rgb, mask = self._clutter(i // self.every)
        out[mask] = rgb[mask]
        return out

    def _clutter(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        if self._layer is None or self._layer[0] != layer:
            rng = np.random.default_rng([self.layer_seed, layer])
            self._layer = (layer, *_draw_clutter(rng, self.cfg))
        return self._layer[1], self._layer[2]


def _bounce(p: float, span: int) -> int:
    """Position ``p`` folded into ``[0, span]`` like a ball between two walls."""
    p = abs(p) % (2 * span)
    return int(2 * span - p if p > span else p)


def _draw_clutter(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """A layer of small blobs and lines: RGB (S, S, 3) uint8 and its mask (S, S) bool."""
    size = cfg.size
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(cfg.clutter_items[0], cfg.clutter_items[1] + 1))
    colors = _haystack_colors(rng, n, cfg)
    for k in range(n):
        color = (*(int(c) for c in colors[k]), 255)
        w, h = rng.uniform(*cfg.clutter_scale, 2) * size
        x, y = rng.uniform(0, size, 2)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x, y, x + w, y + h], fill=color)
        elif kind == 1:
            draw.rectangle([x, y, x + w, y + h], fill=color)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            length = 2 * max(w, h)
            end = (x + length * np.cos(angle), y + length * np.sin(angle))
            draw.line([(x, y), end], fill=color, width=max(1, size // 48))
    n = int(rng.integers(cfg.sparkles[0], cfg.sparkles[1] + 1))
    hues = (rng.choice(SPARKLE_HUES, n) + rng.uniform(-0.02, 0.02, n)) % 1
    colors = hsv_to_rgb(hues, rng.uniform(0.75, 1.0, n), rng.uniform(0.75, 1.0, n))
    for k in range(n):
        w, h = rng.uniform(*cfg.sparkle_scale, 2) * size
        x, y = rng.uniform(0, size, 2)
        draw.ellipse([x, y, x + w, y + h], fill=(*(int(c) for c in colors[k]), 255))
    arr = np.asarray(img)
    return arr[..., :3], arr[..., 3] > 0


def shape_polygon(
    shape: str, center: tuple[float, float], diameter: float
) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape inside a ``diameter`` box, or None for the circle (and the
    ring, a circle whose hole ``draw_object`` punches)."""
    cx, cy = center
    r = diameter / 2
    if shape == "circle":
        return None
    if shape == "square":
        a = r * 0.86  # area close to the circle's
        pts = [(-a, -a), (a, -a), (a, a), (-a, a)]
    elif shape == "triangle":
        pts = [(0, -r), (r * 0.95, r * 0.75), (-r * 0.95, r * 0.75)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            theta = -np.pi / 2 + k * np.pi / 5
            pts.append((rad * np.cos(theta), rad * np.sin(theta)))
    elif shape == "cross":
        a, b = r, r * 0.34
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
               (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]  # fmt: skip
    elif shape == "diamond":  # narrower than a square turned 45 degrees
        pts = [(0, -r), (r * 0.72, 0), (0, r), (-r * 0.72, 0)]
    elif shape == "arrow":
        head, shaft = r * 0.05, r * 0.3
        pts = [(-r, -shaft), (head, -shaft), (head, -r * 0.85), (r, 0), (head, r * 0.85), (head, shaft),
               (-r, shaft)]  # fmt: skip
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        scale = r / 17  # the curve spans x in [-16, 16], y in [-12, 17]
        pts = list(zip(x * scale, (y - 2.5) * scale, strict=True))
    elif shape == "crescent":
        pts = _crescent(r)
    elif shape == "ring":
        return shape_polygon("circle", center, diameter)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(cx + x, cy + y) for x, y in pts]


RING_HOLE = 0.5
"""Radius of a ring's hole as a fraction of its outer radius."""


def _crescent(r: float, n: int = 24) -> list[tuple[float, float]]:
    """A crescent opening to the right: the disc of radius ``r`` minus a disc of radius 0.8 r
    whose centre is 0.45 r to the right; the outer arc, then the inner arc back."""
    d, r1 = 0.45 * r, 0.8 * r
    x = (r * r - r1 * r1 + d * d) / (2 * d)  # where the two circles cross
    y = float(np.sqrt(r * r - x * x))
    outer = np.linspace(np.arctan2(y, x), 2 * np.pi - np.arctan2(y, x), n)
    a = np.arctan2(y, x - d)
    inner = np.linspace(2 * np.pi - a, a, n)
    return ([(r * np.cos(t), -r * np.sin(t)) for t in outer]
            + [(d + r1 * np.cos(t), -r1 * np.sin(t)) for t in inner])


def draw_object(event: Event, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The event's object on a transparent layer: RGB (S, S, 3) uint8 and mask (S, S) bool.

    Filled with the pure palette colour and outlined in black, so it stands out from the
    low-saturation haystack and keeps a crisp contour after compression and resizing.
    """
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    fill = (*COLORS[event.color], 255)
    outline = (*OUTLINE, 255)
    width = max(2, size // 40)
    poly = shape_polygon(event.shape, event.center, event.diameter)
    (cx, cy), r = event.center, event.diameter / 2
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(poly, fill=fill, outline=outline, width=width)
    if event.shape == "ring":  # punch the hole (drawing on RGBA sets pixels, it does not blend)
        h = r * RING_HOLE
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=(0, 0, 0, 0), outline=outline, width=width)
    arr = np.asarray(img)
    return arr[..., :3], arr[..., 3] > 0


def render_frames(
    rng: np.random.Generator, num_frames: int, events: list[Event], cfg: SynthConfig
) -> Iterator[np.ndarray]:
    """Yield the ``num_frames`` frames of a video, (S, S, 3) uint8 each, events drawn on top."""
    haystack = Haystack(rng, cfg)
    layers = [draw_object(e, cfg.size) for e in events]
    for i in range(num_frames):
        frame = haystack.frame(i)
        for event, (rgb, mask) in zip(events, layers, strict=True):
            if event.start <= i < event.stop:
                frame[mask] = rgb[mask]
        yield frame
