"""Content-addressed on-disk cache of decoded frames.

Layout: ``$REFOCUS_CACHE_DIR/frames/<key[:2]>/<key>.npy`` (uncompressed, memory-mappable) and
``<key>.json`` (timestamps and metadata). The JSON is written last, so an entry counts only
once both files are complete; each file is written to a temporary name and ``os.replace``-d.

The file part of the key is a *content* fingerprint, not path + mtime: copies of a dataset,
moved folders and other machines' checkouts share entries, and re-writing a file with other
content under the same name (common when regenerating synthetic data) can never hit a stale
entry. Hashing the whole file would cost about as much as decoding it, so the fingerprint
reads the size, the first and last MiB (container headers and indexes live there) and 16
blocks of 64 KiB spread evenly through the middle: about 3 MiB per file, a few milliseconds.
An edit that changes only unread bytes and keeps the size would be missed; for compressed
video that does not happen short of deliberate tampering.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from refocus.video.types import DecodedVideo

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the decoding or sampling rule changes, so old entries stop matching."""

_EDGE = 1 << 20  # bytes hashed at each end of the file
_BLOCK = 1 << 16  # bytes per sampled middle block
_MIDDLE_BLOCKS = 16


def cache_dir() -> Path:
    """``$REFOCUS_CACHE_DIR/frames``, default ``~/.cache/refocus/frames`` (read at each call)."""
    root = os.environ.get("REFOCUS_CACHE_DIR") or Path.home() / ".cache" / "refocus"
    return Path(root) / "frames"


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's size and sampled content (see the module docstring)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE + _MIDDLE_BLOCKS * _BLOCK:
            h.update(f.read())
        else:
            span = size - 2 * _EDGE - _BLOCK  # middle blocks start in [_EDGE, size - _EDGE - _BLOCK]
            reads = [(0, _EDGE)]
            reads += [(_EDGE + span * i // (_MIDDLE_BLOCKS - 1), _BLOCK) for i in range(_MIDDLE_BLOCKS)]
            reads.append((size - _EDGE, _EDGE))
            for offset, length in reads:
                f.seek(offset)
                h.update(f.read(length))
    return h.hexdigest()


def cache_key(path: str | os.PathLike, fps: float, max_frames: int, size: int,
              backend: str, autorotate: bool = True) -> str:
    """Key of one decoding: file content + every argument that changes the frames."""
    parts = {
        "file": file_fingerprint(path),
        "fps": float(fps),
        "max_frames": int(max_frames),
        "size": int(size),
        "backend": backend,
        "autorotate": bool(autorotate),
        "version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _entry(key: str) -> tuple[Path, Path]:
    d = cache_dir() / key[:2]
    return d / f"{key}.npy", d / f"{key}.json"


def load_cached(key: str, path: str | os.PathLike) -> DecodedVideo | None:
    """The cached decoding for ``key``, or None. Frames are a read-only memory map."""
    npy, meta_path = _entry(key)
    try:
        meta = json.loads(meta_path.read_text())
        frames = np.asarray(np.load(npy, mmap_mode="r", allow_pickle=False))
        timestamps = np.asarray(meta["timestamps"], dtype=np.float64)
        if meta["version"] != FORMAT_VERSION or frames.shape[0] != timestamps.shape[0]:
            return None
        return DecodedVideo(
            path=os.fspath(path),
            frames=frames,
            timestamps=timestamps,
            fps=float(meta["fps"]),
            duration=float(meta["duration"]),
            width=int(meta["width"]),
            height=int(meta["height"]),
            backend=str(meta["backend"]),
            from_cache=True,
            rotation=int(meta["rotation"]),
            skipped_packets=int(meta["skipped_packets"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring damaged frame-cache entry %s (%s)", meta_path, exc)
        return None


def store_cached(key: str, video: DecodedVideo) -> None:
    """Write ``video`` under ``key`` atomically; a failure only logs (the cache is optional)."""
    npy, meta_path = _entry(key)
    meta = {
        "version": FORMAT_VERSION,
        "source": os.path.abspath(video.path),
        "num_frames": video.num_frames,
        "timestamps": [float(t) for t in video.timestamps],  # json floats round-trip exactly
        "fps": video.fps,
        "duration": video.duration,
        "width": video.width,
        "height": video.height,
        "backend": video.backend,
        "rotation": video.rotation,
        "skipped_packets": video.skipped_packets,
    }
    tag = f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp_npy = npy.with_name(npy.name + tag)
        with open(tmp_npy, "wb") as f:
            np.save(f, np.ascontiguousarray(video.frames), allow_pickle=False)
        os.replace(tmp_npy, npy)
        tmp_meta = meta_path.with_name(meta_path.name + tag)
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)
    except OSError as exc:
        log.warning("could not write frame cache %s (%s)", npy, exc)
        for p in npy.parent.glob(f"*{tag}"):
            p.unlink(missing_ok=True)
