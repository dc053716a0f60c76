"""Video ingest: decode frames by presentation time, with pluggable backends and a disk cache.

``load_video(path)`` samples at the rate of :class:`refocus.video.config.DecodeConfig` (at
most its ``max_frames``, evenly spread when capped), resizes to its square ``size`` RGB and returns a :class:`DecodedVideo` whose ``timestamps`` are the real
``pts * time_base`` of the frames returned. The exact sampling rule is in
:mod:`refocus.video.sampling`. Backends are imported lazily, so ``import refocus.video`` does
not load PyAV, decord or torch.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Callable

from refocus.errors import ConfigError
from refocus.registry import Registry
from refocus.video.config import DecodeConfig
from refocus.video.types import DecodedVideo

__all__ = ["BACKENDS", "DECODERS", "DecodedVideo", "available_backends", "load_video"]

BACKENDS: dict[str, tuple[str, str, str]] = {
    # name: (module to import, decode function in refocus.video.<name>_backend, pip extra)
    "pyav": ("av", "decode_pyav", "pip install av"),
    "decord": ("decord", "decode_decord", "pip install 'refocus[decord]'"),
    "torchcodec": (
        "torchcodec.decoders",
        "decode_torchcodec",
        "pip install 'refocus[torchcodec]' (it also needs FFmpeg's shared libraries on the system)",
    ),
}
"""The shipped decoders: the third-party module each needs, its function, how to install it."""
DECODERS = Registry("decoders", {name: f"refocus.video.{name}_backend:{fn}" for name, (_, fn, _) in BACKENDS.items()},
                    what="video backend")
"""Backend name -> decode function, imported on first use; plug-ins register through the
``refocus.decoders`` entry points."""


@functools.cache
def _import_error(backend: str) -> str | None:
    """Why ``backend`` cannot be used here (None when it can); the import is tried once."""
    if backend not in BACKENDS:  # a plug-in: its own import is its check
        return None
    module = BACKENDS[backend][0]
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install (e.g. no FFmpeg libs) is "missing" too
        return f"{type(exc).__name__}: {exc}"
    return None


def available_backends() -> list[str]:
    """Names of the backends that import on this machine (``pyav`` always, it is required)."""
    return [name for name in DECODERS.names() if _import_error(name) is None]


def _backend(name: str) -> Callable[..., DecodedVideo]:
    """The decode function of an installed backend, or a ConfigError saying how to install it."""
    reason = _import_error(name)
    if reason is not None:
        hint = BACKENDS[name][2]
        raise ConfigError(f"video backend {name!r} is not available ({reason}); {hint}")
    return DECODERS.load(name)


def load_video(path: str | os.PathLike, fps: float = DecodeConfig.fps, max_frames: int = DecodeConfig.max_frames,
               size: int = DecodeConfig.size, backend: str = "pyav", cache: bool = True,
               autorotate: bool = True) -> DecodedVideo:
    """Decode ``path`` into at most ``max_frames`` frames sampled at ``fps`` by presentation time.

    Sampling (every backend): targets ``t_j = start + j / fps`` while ``j / fps < duration``
    (``start`` = first frame's pts); if that exceeds ``max_frames``, ``max_frames`` targets
    ``start + j * duration / max_frames`` instead (returned ``fps`` = ``max_frames / duration``).
    Each target takes the last frame with pts at or before it (the frame on screen then), each
    frame is returned once, and ``timestamps`` are those frames' real ``pts * time_base``. So a
    variable-frame-rate file or a timeline gap never yields invented or repeated frames, and a
    video with fewer frames than targets returns all its frames.

    Frames are ``(T, size, size, 3)`` uint8 RGB, read-only, shown as a viewer shows them:
    with ``autorotate`` (the default, like ffmpeg's ``-autorotate``) the stream's display
    matrix is applied (a portrait phone video comes out upright, ``width``/``height`` are the
    display size, ``rotation`` says by how much); ``autorotate=False`` keeps the stored
    orientation. Frame times are the presentation times the container carries, also for AVI
    with B-frames and raw H.264/HEVC streams (see ``pyav_backend.FrameClock``); ``duration``
    is the video stream's own, whatever the container says.

    With ``cache=True`` the result is stored under ``$REFOCUS_CACHE_DIR/frames`` keyed by file
    content and all arguments, and read back as a memory map next time (``from_cache=True``).

    Raises :class:`refocus.errors.VideoError` naming the file for missing, empty, unreadable,
    audio-only or undecodable files. Damaged packets are skipped as ffmpeg skips them
    (``skipped_packets`` counts them, with a logged warning) and a file cut short returns every
    frame decodable before the cut. :class:`refocus.errors.ConfigError` for bad arguments or a
    backend that is not installed.
    """
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    if int(max_frames) != max_frames or max_frames < 1:
        raise ConfigError(f"max_frames must be a positive integer, got {max_frames!r}")
    if int(size) != size or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    if backend not in DECODERS:
        raise ConfigError(f"unknown video backend {backend!r}; choose one of {', '.join(DECODERS.names())}")

    from refocus.video.probe import check_path

    check_path(path)
    key = None
    if cache:
        from refocus.video.cache import cache_key, load_cached

        key = cache_key(path, fps, int(max_frames), int(size), backend, bool(autorotate))
        hit = load_cached(key, path)
        if hit is not None:
            return hit
    decode = _backend(backend)  # imported only on a miss: a cache hit needs no decoder
    video = decode(path, float(fps), int(max_frames), int(size), autorotate=bool(autorotate))
    video.frames.flags.writeable = False
    if key is not None:
        from refocus.video.cache import store_cached

        store_cached(key, video)
    return video
