"""Label-preserving augmentation of synthetic frames for the small reference model's vision stage.

A few hundred training videos hold a few hundred needles (3-4 frames each): too few for a
vision tower trained from scratch to learn shapes rather than those frames. Three transforms
multiply them, each keeping the (colour, shape) label computable:

* ``mirror_shift``: a left-right mirror and a circular shift. Every synthetic shape maps to
  itself under them (a mirrored arrow still is an arrow). Turning frames by 90 degrees too is
  an option (``SmallReferenceTrainConfig.augment_rotations``), off by default: the benchmarks
  draw every object upright, and with 10 shapes the turned ones cost the tower shape accuracy
  (a turned heart looks like a triangle, a turned arrow like a crescent; benchmarks/RESULTS.md);
* ``permute_channels``: a permutation of the RGB channels. The palette is closed under it up
  to rounding (red -> green -> blue, yellow -> magenta -> cyan, within 70 levels; the six
  extra colours of ``query`` exactly), so the colour label follows the nearest palette colour
  of the permuted one;
* ``paste_objects``: a freshly drawn object (the synthetic generator's own renderer, any
  colour and shape, random size and place) over a haystack frame of the training videos,
  drawn at the benchmark's frame size and resized like a decoded frame.
"""

from __future__ import annotations

from functools import cache

import numpy as np

CHANNEL_PERMUTATIONS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0),
)


def mirror_shift(rng: np.random.Generator, frames: np.ndarray, max_shift: float = 0.25,
                 rotate: bool = False, moves: dict | None = None) -> np.ndarray:
    """(N, S, S, 3) frames, each mirrored left-right at random and circularly shifted; with
    ``rotate`` also turned by a random multiple of 90 degrees (the 8 symmetries of the square).

    ``moves``: a dict that receives what was done to each frame, ``"mirrored"`` (N,) bool and
    ``"shifts"`` (N, 2) pixels (rows, columns), ``"turns"`` (N,) quarter turns, so that where
    an object went can be computed (:func:`refocus.reference.appearance.moved_geometry`)."""
    out = np.empty_like(frames)
    size = frames.shape[1]
    reach = int(max_shift * size)
    turns, mirrored, shifts = np.zeros(len(frames), int), np.zeros(len(frames), bool), np.zeros((len(frames), 2), int)
    for i, frame in enumerate(frames):
        if rotate:
            turns[i] = int(rng.integers(4))
        f = np.rot90(frame, turns[i]) if rotate else frame
        mirrored[i] = rng.random() < 0.5
        if mirrored[i]:
            f = f[:, ::-1]
        shifts[i] = rng.integers(-reach, reach + 1, 2)
        out[i] = np.roll(f, tuple(int(s) for s in shifts[i]), axis=(0, 1))
    if moves is not None:
        moves.update(mirrored=mirrored, shifts=shifts, turns=turns)
    return out


@cache
def _colour_remap(names: tuple[str, ...]) -> np.ndarray:
    """(6 permutations, len(names)) index of the palette colour each colour becomes."""
    from refocus.data.synth.common import COLORS

    palette = np.array([COLORS[n] for n in names], dtype=np.float64)
    return np.array([[int(np.argmin(((palette - palette[c][list(p)]) ** 2).sum(1))) for c in range(len(names))]
                     for p in CHANNEL_PERMUTATIONS])


def permute_channels(rng: np.random.Generator, frames: np.ndarray, colours: list[str | None]) -> tuple[np.ndarray, list]:
    """Permute each frame's RGB channels at random; returns the frames and their new colour names.

    ``colours``: the palette colour shown in each frame, or None (haystack) which stays None.
    """
    from refocus.data.synth.common import COLORS

    names = tuple(COLORS)
    remap = _colour_remap(names)
    picks = rng.integers(len(CHANNEL_PERMUTATIONS), size=len(frames))
    out = np.stack([f[..., list(CHANNEL_PERMUTATIONS[p])] for f, p in zip(frames, picks, strict=True)])
    new = [None if c is None else names[remap[p, names.index(c)]] for c, p in zip(colours, picks, strict=True)]
    return out, new


def paste_objects(rng: np.random.Generator, backgrounds: np.ndarray, colours_from: list[str],
                  shapes_from: list[str], geometry: list | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """One random object (colour from ``colours_from``, shape from ``shapes_from``) drawn over
    each (N, S, S, 3) background; returns the frames, their colours and their shapes.
    ``geometry``: a list that receives each object's (centre x, centre y, diameter) as
    fractions of the frame side."""
    from PIL import Image

    from refocus.data.synth.common import SynthConfig, make_event
    from refocus.data.synth.render import draw_object

    synth = SynthConfig()
    size = backgrounds.shape[1]
    out = np.empty_like(backgrounds)
    colours, shapes = [], []
    for i, bg in enumerate(backgrounds):
        colour = colours_from[int(rng.integers(len(colours_from)))]
        shape = shapes_from[int(rng.integers(len(shapes_from)))]
        event = make_event(rng, 0, 1, colour, shape, synth)
        rgb, mask = draw_object(event, synth.size)
        layer = Image.fromarray(np.dstack([rgb, mask.astype(np.uint8) * 255]), "RGBA")
        layer = np.asarray(layer.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        alpha = layer[..., 3:] / 255.0
        out[i] = np.clip(np.rint(bg * (1 - alpha) + layer[..., :3] * alpha), 0, 255).astype(np.uint8)
        colours.append(colour)
        shapes.append(shape)
        if geometry is not None:
            geometry.append((event.center[0] / synth.size, event.center[1] / synth.size, event.diameter / synth.size))
    return out, colours, shapes
