"""How frames are decoded: the one place the project's decode defaults are written.

Every config that decodes video nests a :class:`DecodeConfig` (``decode:`` in YAML), and the
functions that decode (``load_video``, ``FrameStore``, ``evaluate``) and the commands' flags
take their defaults from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refocus.errors import ConfigError


@dataclass(frozen=True)
class DecodeConfig:
    fps: float = 4.0
    """Sampling rate in frames per second; a video longer than ``max_frames / fps`` seconds is
    sampled at the lower rate that gives ``max_frames`` (paper B.1: min(4 fps, 512 frames))."""
    max_frames: int = 512
    """Cap on the frames decoded from one video, evenly spread when it applies (paper B.1)."""
    size: int = 224
    """Side in pixels of the square RGB frames, where no model fixes it (``refocus frames``,
    ``refocus select``); trainers and evaluation decode at their models' own image sizes."""

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(f"decode.fps must be > 0 frames per second, got {self.fps}")
        if self.max_frames < 1:
            raise ConfigError(f"decode.max_frames must be >= 1, got {self.max_frames}")
        if self.size < 1:
            raise ConfigError(f"decode.size must be >= 1 pixel, got {self.size}")

    @classmethod
    def coerce(cls, value: DecodeConfig | dict[str, Any] | None) -> DecodeConfig:
        """A DecodeConfig from itself, a YAML mapping of its fields, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"fps", "max_frames", "size"})
            if unknown:
                raise ConfigError(f"decode: unknown field(s) {', '.join(unknown)} (fps, max_frames, size)")
            return cls(**value)
        raise ConfigError(f"decode must be a mapping of fps / max_frames / size, got {value!r}")
