"""Display orientation: the stream's display matrix applied to decoded frames, as ffmpeg does.

Phones store a portrait video as landscape pictures plus a display matrix (the MP4/MOV
``tkhd`` matrix, Matroska's projection, ...) that tells players to rotate them. FFmpeg reads
it into ``AV_FRAME_DATA_DISPLAYMATRIX`` side data on every decoded frame; the ``ffmpeg``
command (``-autorotate``, on by default) and ``ffplay`` turn it into filters with one rule,
restated here from fftools (``get_rotation`` and the display-matrix branch of the video
filter setup):

- ``theta = -round(av_display_rotation_get(m))`` folded into [0, 360): clockwise degrees;
- theta 90: ``transpose=clock`` (``transpose=cclock_flip`` when ``m[3] > 0``, a mirrored matrix);
- theta 180: ``hflip`` if ``m[0] < 0``, then ``vflip`` if ``m[4] < 0``;
- theta 270: ``transpose=cclock`` (``transpose=clock_flip`` when ``m[3] < 0``);
- theta 0: ``vflip`` if ``m[4] < 0``.

Other angles (``rotate`` filter with borders) are left alone and logged: no camera writes
them. The transforms act on the already-resized square frames (rotating a picture and then
resizing it to S x S equals resizing and then rotating, up to resampling rounding).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Orientation:
    """How to turn stored pictures into displayed ones."""

    rotation: int = 0
    """Clockwise degrees (0, 90, 180, 270) the display matrix rotates the stored picture by."""
    ops: tuple[str, ...] = ()
    """FFmpeg filter steps in order: ``clock``, ``cclock``, ``cclock_flip``, ``clock_flip``
    (``transpose`` directions), ``hflip``, ``vflip``."""

    @property
    def swaps_axes(self) -> bool:
        """True when display width/height are the stored height/width."""
        return any(op in _TRANSPOSES for op in self.ops)

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) as displayed, from the stored size."""
        return (height, width) if self.swaps_axes else (width, height)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """One (H, W, C) picture as displayed (a view when possible; copy before writing)."""
        for op in self.ops:
            frame = _OPS[op](frame)
        return frame


IDENTITY = Orientation()

_TRANSPOSES = {"clock", "cclock", "cclock_flip", "clock_flip"}
_OPS = {
    # vf_transpose: cclock_flip = rotate counter-clockwise, then flip vertically (a transpose)
    "clock": lambda a: np.rot90(a, k=-1),
    "cclock": lambda a: np.rot90(a, k=1),
    "cclock_flip": lambda a: np.rot90(a, k=1)[::-1],
    "clock_flip": lambda a: np.rot90(a, k=-1)[::-1],
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
}


def rotation_degrees(matrix: tuple[int, ...]) -> float:
    """fftools' ``get_rotation``: clockwise degrees in [0, 360) of a 3x3 display matrix
    (9 int32 in FFmpeg's layout, 16.16 fixed point except the last column); NaN if degenerate."""
    a, b, _, c, d = (v / 65536 for v in matrix[:5])
    scale0, scale1 = math.hypot(a, c), math.hypot(b, d)
    if scale0 == 0 or scale1 == 0:
        return math.nan
    ccw = -math.degrees(math.atan2(b / scale1, a / scale0))  # av_display_rotation_get
    theta = -float(round(ccw))
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


def orientation_from_matrix(matrix: tuple[int, ...] | None) -> Orientation:
    """The filter steps ffmpeg inserts for ``matrix`` (None: no display matrix)."""
    if matrix is None:
        return IDENTITY
    theta = rotation_degrees(matrix)
    if math.isnan(theta):
        return IDENTITY
    m0, m3, m4 = matrix[0], matrix[3], matrix[4]
    if abs(theta - 90) < 1:
        return Orientation(90, ("cclock_flip",) if m3 > 0 else ("clock",))
    if abs(theta - 180) < 1:
        return Orientation(180, tuple(op for op, on in (("hflip", m0 < 0), ("vflip", m4 < 0)) if on))
    if abs(theta - 270) < 1:
        return Orientation(270, ("clock_flip",) if m3 < 0 else ("cclock",))
    if abs(theta) > 1:
        import logging

        logging.getLogger(__name__).warning(
            "display matrix rotates by %.0f degrees, not a multiple of 90: frames kept as stored",
            theta)
        return IDENTITY
    return Orientation(0, ("vflip",) if m4 < 0 else ())


def reorient_turned(frames: np.ndarray, orient: Orientation, autorotate: bool) -> np.ndarray:
    """Frames (T, S, S, 3) that a decoder already turned by the display matrix' angle alone
    (decord 0.6 and torchcodec 0.13 do, ignoring its mirroring): undo that clockwise turn,
    then apply the matrix as ffmpeg does, or keep the stored pictures (``autorotate=False``)."""
    if not orient.rotation and not (autorotate and orient.ops):
        return frames
    out = []
    for frame in frames:
        stored = np.rot90(frame, k=orient.rotation // 90)  # counter-clockwise: the undo
        out.append(orient.apply(stored) if autorotate else stored)
    return np.ascontiguousarray(np.stack(out))


def frame_orientation(frame) -> Orientation:
    """The orientation of one decoded PyAV frame (its DISPLAYMATRIX side data)."""
    from av.sidedata.sidedata import Type

    data = frame.side_data.get(Type.DISPLAYMATRIX)
    if data is None:
        return IDENTITY
    raw = bytes(data)
    if len(raw) < 36:
        return IDENTITY
    return orientation_from_matrix(struct.unpack("=9i", raw[:36]))
