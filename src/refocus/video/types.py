"""The decoded-video record every backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DecodedVideo:
    """Frames sampled from one video file by presentation time.

    ``frames`` is read-only (it may be a memory map of the on-disk cache, and decoded arrays
    are frozen too so both paths behave the same): copy before modifying in place.
    """

    path: str
    """The path as passed to :func:`refocus.video.load_video`."""
    frames: np.ndarray
    """(T, S, S, 3) uint8 RGB, each frame resized to ``size`` x ``size`` (aspect not kept)."""
    timestamps: np.ndarray
    """(T,) float64 seconds, strictly increasing: ``pts * time_base`` of the returned frames."""
    fps: float
    """Sampling rate used: the requested rate, or ``max_frames / duration`` when capped."""
    duration: float
    """Seconds of video: the video stream's own duration, else its last packet's end minus
    its first frame's time (not the container's, which may count audio or a start offset)."""
    width: int
    """Source width in pixels as the frames are oriented: the display width (after the
    stream's display matrix) with ``autorotate``, the stored width without."""
    height: int
    """Source height in pixels, oriented like ``width``."""
    backend: str
    """Decoder that produced the frames (``pyav``, ``decord``, ``torchcodec``)."""
    from_cache: bool = False
    """True when the frames were read back from the on-disk cache instead of decoded."""
    rotation: int = 0
    """Clockwise degrees (0, 90, 180, 270) the stream's display matrix turns the stored
    picture by, whether or not it was applied (``autorotate``)."""
    skipped_packets: int = 0
    """Damaged packets the decoder rejected and decoding went past (pyav backend)."""

    @property
    def num_frames(self) -> int:
        """T, the number of frames returned."""
        return int(self.timestamps.shape[0])
