"""Label-preserving augmentation of the small reference model's vision stage."""

from __future__ import annotations

import numpy as np

from refocus.data.synth.common import COLORS, SHAPES
from refocus.reference.augment import mirror_shift, paste_objects, permute_channels


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=float)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]


def test_permute_channels_relabels_each_palette_colour_to_what_it_becomes():
    rng = np.random.default_rng(0)
    names = list(COLORS)
    frames = np.stack([np.broadcast_to(np.array(COLORS[n], np.uint8), (4, 4, 3)) for n in names] * 8)
    labels = names * 8
    out, new = permute_channels(rng, frames, labels)
    assert any(a != b for a, b in zip(labels, new, strict=True))  # some colours did change
    for frame, label in zip(out, new, strict=True):
        assert _nearest_colour(frame[0, 0].astype(float)) == label
    _, none = permute_channels(rng, frames[:2], [None, None])
    assert none == [None, None]


def test_mirror_shift_keeps_the_pixels_of_each_frame_and_turns_only_when_asked():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    for rotate in (False, True):
        out = mirror_shift(rng, frames, rotate=rotate)
        assert out.shape == frames.shape
        assert not np.array_equal(out, frames)
        for a, b in zip(frames, out, strict=True):  # a permutation of the same pixels
            assert np.array_equal(np.sort(a.reshape(-1, 3), axis=0), np.sort(b.reshape(-1, 3), axis=0))
    # without shift: upright frames stay upright (as drawn or mirrored); with rotate, some turn
    plain = mirror_shift(rng, frames, max_shift=0)
    assert all(np.array_equal(b, a) or np.array_equal(b, a[:, ::-1]) for a, b in zip(frames, plain, strict=True))
    turned = mirror_shift(np.random.default_rng(3), np.repeat(frames[:1], 32, 0), max_shift=0, rotate=True)
    assert any(not (np.array_equal(b, frames[0]) or np.array_equal(b, frames[0][:, ::-1])) for b in turned)


def test_paste_objects_draws_the_named_colour_over_the_background():
    rng = np.random.default_rng(2)
    background = np.full((5, 64, 64, 3), 128, np.uint8)
    out, colours, shapes = paste_objects(rng, background, ["red", "cyan"], ["star", "circle"])
    assert set(colours) <= {"red", "cyan"} and set(shapes) <= {"star", "circle"} and set(shapes) <= set(SHAPES)
    for frame, colour in zip(out, colours, strict=True):
        changed = np.abs(frame.astype(int) - 128).sum(-1) > 60
        assert 0.05 < changed.mean() < 0.5  # an object 35-50% of the frame side, not the whole frame
        palette = np.array([COLORS[n] for n in COLORS], dtype=float)
        near = np.linalg.norm(frame[..., None, :].astype(float) - palette, axis=-1) < 40  # (S, S, colours)
        assert list(COLORS)[int(near.sum((0, 1)).argmax())] == colour  # the fill, not the outline
