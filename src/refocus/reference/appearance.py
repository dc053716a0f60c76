"""Appearance codes: what tells two frames of one appearance of an object from two appearances.

`multi`'s count and compare questions ask how many times an object appears. Given frames of
the object, a viewer tells one appearance from two by where the object is and how large it is:
each appearance of a synthetic object has its own centre and diameter, kept for its 2-3 frames.
The small reference model's first stage reads frames as the words of their object, which say
nothing of that, so the language model learns to count *runs* of the object in the shown frames.
On the oracle's frames (whole appearances, one after another) that is the wrong count
(benchmarks/RESULTS.md, "`multi` becomes learnable").

With ``SmallReferenceTrainConfig.appearance_codes`` a frame of an object stands in stage 1 for
its words *plus* a code of its geometry, and stage 2 teaches the vision tower to produce that
code from the pixels. The code is a fixed random projection of low-frequency Fourier features
of the centre (integer frequencies, so it is periodic under the circular shift of the vision
stage's augmentation) and of the diameter, scaled to unit norm: two frames of one appearance
get the same code, two appearances codes whose dot product falls with the distance between
them (about 0.1 for centres a quarter of the frame apart). The tower only has to place the
object roughly: frames of one appearance have the same object pixels, so whatever it outputs,
it outputs for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

XY_FREQUENCIES: tuple[tuple[int, int], ...] = tuple(
    (nx, ny) for ny in range(3) for nx in range(-2, 3) if ny > 0 or nx > 0
)
"""Integer frequencies (cycles per frame side) of the centre features: half of the plane
|n| <= 2, so a frequency and its negative are not both used."""
DIAMETER_RANGE: tuple[float, float] = (0.35, 0.5)
"""Diameters (fraction of the frame side) the generators draw (``SynthConfig.object_scale``)."""
DIAMETER_WEIGHT = 0.25
"""Share of a code's squared norm carried by the diameter features; the rest by the centre."""
CODE_SEED = 20261207
"""Seed of the fixed projection into the model width (the same for every model)."""


def geometry_features(geometry: np.ndarray) -> np.ndarray:
    """(N, 3) normalised (centre x, centre y, diameter) -> (N, F) unit-norm Fourier features."""
    g = np.asarray(geometry, dtype=np.float64).reshape(-1, 3)
    freqs = 2 * np.pi * np.asarray(XY_FREQUENCIES, dtype=np.float64)  # (K, 2)
    phase = g[:, :2] @ freqs.T  # (N, K)
    xy = np.concatenate([np.cos(phase), np.sin(phase)], axis=1) / np.sqrt(len(XY_FREQUENCIES))
    lo, hi = DIAMETER_RANGE
    d = (g[:, 2:3] - lo) / (hi - lo) * np.pi * np.array([1.0, 2.0])  # (N, 2)
    dia = np.concatenate([np.cos(d), np.sin(d)], axis=1) / np.sqrt(2)
    return np.concatenate([np.sqrt(1 - DIAMETER_WEIGHT) * xy, np.sqrt(DIAMETER_WEIGHT) * dia], axis=1)


@cache
def _projection(width: int) -> np.ndarray:
    """(F, width) orthonormal rows: features into the model's embedding space."""
    n = 2 * len(XY_FREQUENCIES) + 4
    if width < n:
        raise ValueError(f"appearance codes need a model width of at least {n}, got {width}")
    q, _ = np.linalg.qr(np.random.default_rng(CODE_SEED).standard_normal((width, n)))
    return q.T


def appearance_codes(geometry: np.ndarray, width: int) -> np.ndarray:
    """(N, width) float32 unit-norm codes of (N, 3) geometries; rows with a NaN (a frame without
    an object) get zeros."""
    g = np.asarray(geometry, dtype=np.float64).reshape(-1, 3)
    known = ~np.isnan(g).any(axis=1)
    out = np.zeros((len(g), width), dtype=np.float32)
    if known.any():
        out[known] = geometry_features(g[known]) @ _projection(width)
    return out


def event_geometry(meta: dict) -> np.ndarray | None:
    """(E, 3) normalised geometry of a synthetic item's events (``meta["events"]``, or the
    needle of a `niah` item), in the order :func:`refocus.reference.small_training.frame_objects`
    lists them; None when the metadata does not record it (splits written before
    ``SYNTH_VERSION`` 3, real benchmarks)."""
    from refocus.data.synth.common import SynthConfig

    size = float(meta.get("size", SynthConfig.size))
    events: Sequence[dict] = meta["events"] if "events" in meta else [meta]
    if not events or not all("center" in e and "diameter" in e for e in events):
        return None
    return np.array([[e["center"][0] / size, e["center"][1] / size, e["diameter"] / size] for e in events])


def moved_geometry(geometry: np.ndarray, mirrored: np.ndarray, shifts: np.ndarray, side: int) -> np.ndarray:
    """Geometry of frames after :func:`refocus.reference.augment.mirror_shift`: ``mirrored`` (N,)
    bool (left-right), ``shifts`` (N, 2) pixels (rows, columns) of the circular shift of
    frames ``side`` pixels wide. The centre wraps around like the pixels."""
    g = np.array(geometry, dtype=np.float64).reshape(-1, 3)
    g[:, 0] = np.where(mirrored, 1.0 - g[:, 0], g[:, 0])
    g[:, 0] = (g[:, 0] + shifts[:, 1] / side) % 1.0
    g[:, 1] = (g[:, 1] + shifts[:, 0] / side) % 1.0
    return g
