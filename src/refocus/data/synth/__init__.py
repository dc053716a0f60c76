"""Synthetic video benchmarks with known evidence spans: ``niah``, ``query`` and ``multi``.

``make_benchmark`` writes real H.264 videos under ``DIR/videos/`` and the questions to
``DIR/qa.jsonl``. Everything is derived from ``(seed, kind, video index)``: the same
arguments give byte-identical files, and the first N videos of a larger set equal the
N-video set (each video has its own generator, so lengths and content do not depend on how
many videos are made).

Video lengths are drawn uniformly from ``frames=(MIN, MAX)`` (inclusive) per video.
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

import numpy as np

from refocus.data.questions import QAItem, write_questions
from refocus.data.synth.common import COLORS, SHAPES, Event, Sample, SynthConfig
from refocus.data.synth.render import draw_object, render_frames
from refocus.data.synth.writer import write_video
from refocus.errors import RefocusError
from refocus.registry import Registry

SYNTH_KINDS = Registry("synth_kinds", {
    "niah": "refocus.data.synth.niah:plan_niah",
    "query": "refocus.data.synth.query:plan_query",
    "multi": "refocus.data.synth.multi:plan_multi",
}, what="synthetic benchmark")
"""Kind -> its planner ``plan(rng, num_frames, index, cfg) -> Sample``, imported on first use; the
planner's module holds ``MIN_FRAMES``. Plug-ins register through the ``refocus.synth_kinds``
entry points."""
KINDS = ("niah", "query", "multi")
"""The kinds shipped with refocus."""
SYNTH_VERSION = 3
"""Raised whenever the shipped generators' output changes for the same arguments, so caches
keyed on the arguments (``refocus demo``'s splits) regenerate. 2: ``query`` shows 10 objects
that all differ in colour and in shape, drawn from 12 colours and 10 shapes; sparkle hues lie
between the 12 colours (niah and multi frames change slightly, their questions do not).
3: ``meta`` records each object's centre and diameter and the frame size (videos and
questions unchanged)."""


def min_frames(kind: str) -> int:
    """The shortest video (frames) a kind can be planned on."""
    import sys

    return int(sys.modules[SYNTH_KINDS.load(kind).__module__].MIN_FRAMES)

__all__ = [
    "COLORS",
    "KINDS",
    "SHAPES",
    "SYNTH_VERSION",
    "Event",
    "Sample",
    "SynthConfig",
    "draw_object",
    "make_benchmark",
    "plan_video",
    "render_frames",
    "video_rngs",
]


def video_rngs(kind: str, seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the plan (events, question) and the look (haystack)."""
    seq = np.random.SeedSequence([seed, zlib.crc32(kind.encode()), index])
    plan, look = seq.spawn(2)
    return np.random.default_rng(plan), np.random.default_rng(look)


def plan_video(
    kind: str, seed: int, index: int, frames: tuple[int, int], cfg: SynthConfig
) -> Sample:
    """The events and question of video ``index`` without rendering anything."""
    plan_rng, _ = video_rngs(kind, seed, index)
    num_frames = int(plan_rng.integers(frames[0], frames[1] + 1))
    return SYNTH_KINDS.load(kind)(plan_rng, num_frames, index, cfg)


def make_benchmark(
    kind: str,
    out_dir: str | Path,
    videos: int,
    frames: tuple[int, int],
    seed: int,
    fps: float = SynthConfig.fps,
    size: int = SynthConfig.size,
    *,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write ``videos`` synthetic videos and one question each; return ``DIR/qa.jsonl``.

    ``frames``: (MIN, MAX) video length in frames at ``fps``. ``progress``: show a tqdm bar.
    ``workers``: processes rendering and encoding videos side by side (each video is seeded by
    its index, so the files are the same whatever the count).
    """
    cfg = SynthConfig(fps=fps, size=size)
    _check(kind, videos, frames, cfg)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    write = functools.partial(_write_sample, kind, seed, frames, cfg, video_dir)
    bar = functools.partial(tqdm, total=videos, desc=f"synth {kind}", unit="video", disable=not progress)
    if workers == 1 or videos < 2:
        items = [write(index) for index in bar(range(videos))]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold torch's thread pools, which do not survive a fork.
        with ProcessPoolExecutor(min(workers, videos), mp_context=multiprocessing.get_context("spawn")) as pool:
            items = list(bar(pool.map(write, range(videos), chunksize=4)))
    qa_path = out_dir / "qa.jsonl"
    write_questions(qa_path, items)
    return qa_path


def _write_sample(kind: str, seed: int, frames: tuple[int, int], cfg: SynthConfig, video_dir: Path,
                  index: int) -> QAItem:
    """Render and encode video ``index``; return its question."""
    sample = plan_video(kind, seed, index, frames, cfg)
    _, look_rng = video_rngs(kind, seed, index)
    path = video_dir / f"{kind}_{index:05d}.mp4"
    write_video(path, render_frames(look_rng, sample.num_frames, sample.events, cfg), cfg.fps, cfg.crf)
    return _item(kind, index, path, sample, cfg.fps, cfg.size)


def _item(kind: str, index: int, path: Path, sample: Sample, fps: float, size: int = SynthConfig.size) -> QAItem:
    return QAItem(
        id=f"{kind}-{index:05d}",
        video=path.resolve(),
        question=sample.question,
        options=tuple(sample.options),
        answer="ABCDEFGHIJKLMNOPQRSTUVWXYZ"[sample.answer_index],
        evidence=tuple(sample.events[j].span(fps) for j in sample.evidence),
        category=sample.category,
        meta={**sample.meta, "fps": fps, "size": size},
    )


def _check(kind: str, videos: int, frames: tuple[int, int], cfg: SynthConfig) -> None:
    if kind not in SYNTH_KINDS:
        raise RefocusError(f"unknown synthetic benchmark {kind!r}; choose from {', '.join(SYNTH_KINDS.names())}")
    if videos < 1:
        raise RefocusError(f"--videos must be at least 1, got {videos}")
    lo, hi = frames
    if not min_frames(kind) <= lo <= hi:
        raise RefocusError(
            f"--frames for {kind} needs {min_frames(kind)} <= MIN <= MAX, got {lo},{hi}"
        )
    if cfg.size < 32 or cfg.size % 2:
        raise RefocusError(f"--size must be an even number >= 32, got {cfg.size}")
    if not cfg.fps > 0:
        raise RefocusError(f"fps must be positive, got {cfg.fps}")
