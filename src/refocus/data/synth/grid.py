"""Needle-in-a-haystack videos on a controlled grid of lengths and needle positions.

The V-NIAH heatmap (paper Fig. 5, project page Fig. 7) needs every cell of
``total frames x relative needle position`` filled with videos of exactly that length whose
needle sits exactly there. ``make_benchmark`` draws both at random, so this module plans each
video with the same ``niah`` planner (needle colour, shape, size, place in the frame,
question and options) and then moves the needle to the requested frame; rendering and
encoding are the synth package's own.

Placement: for a video of ``T`` frames and a needle of ``n`` frames, relative position
``p`` in [0, 1] puts the needle's first frame at ``round(p * (T - n))``: 0 = the first ``n``
frames, 1 = the last ``n``. This is the ``needle_position`` of ``niah`` items (start /
(T - n)), so both benchmarks read alike. Positions default to ``linspace(0, 1, 8)`` (see
``DEFAULT_POSITIONS`` for why not 5).

Every video has its own generators, seeded by ``(seed, length, position index, replicate)``,
so a cell's videos do not change when other lengths or more replicates are added. The
question category alternates (colour, shape, colour, ...) over the videos in grid order
``(length, position, replicate)``, so an even ``per_cell`` balances the categories in every
cell.

Layout of ``DIR``: ``videos/grid_L0064_p00_r0.mp4`` ..., ``qa.jsonl`` (items with
``meta = {"num_frames", "needle_position", "needle_frames", "grid_length", "grid_position",
"replicate", "color", "shape", "fps"}``) and ``grid.json`` (the parameters; a later call with
the same parameters reuses the files instead of writing them again).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refocus.data.questions import QAItem, load_questions, write_questions
from refocus.data.synth import niah
from refocus.data.synth.common import Sample, SynthConfig
from refocus.data.synth.render import render_frames
from refocus.data.synth.writer import write_video
from refocus.errors import RefocusError
from refocus.io import write_json

DEFAULT_LENGTHS: tuple[int, ...] = (64, 128, 256, 512, 1024)
"""Total frames of the paper's V-NIAH x-axis (64 to 1k frames)."""
DEFAULT_POSITIONS = 8
"""Needle positions ``linspace(0, 1, 8)`` = 0, 1/7, ..., 1. Not 5: positions 0, 1/4, 1/2, 3/4, 1
put the needle on the bin edges of uniform sampling at any budget that is a multiple of 4
(its picks are the bin midpoints), so uniform would miss every needle by construction
(recall 0.02 over the default lengths at budget 8, against ~0.17 expected for needles placed
at random); with 8 positions it is 0.20."""
MANIFEST = "grid.json"
GRID_KIND = "niah-grid"


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Which videos a V-NIAH grid holds and how they look."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    """Total frames of the videos (x-axis); each at least the longest needle."""
    positions: tuple[float, ...] = tuple(np.linspace(0.0, 1.0, DEFAULT_POSITIONS).round(6).tolist())
    """Relative needle positions in [0, 1] (y-axis), see the module docstring."""
    per_cell: int = 2
    """Videos (questions) per (length, position) cell."""
    seed: int = 0
    fps: float = SynthConfig.fps
    """Frame rate of the written videos; decode at this rate to get exactly ``length`` frames."""
    size: int = SynthConfig.size
    """Frame side in pixels, as ``refocus synth`` writes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        object.__setattr__(self, "positions", tuple(round(float(p), 6) for p in self.positions))
        longest_needle = SynthConfig().needle_frames[1]
        if not self.lengths or any(n < max(longest_needle, niah.MIN_FRAMES) for n in self.lengths):
            raise RefocusError(
                f"grid lengths must be >= {max(longest_needle, niah.MIN_FRAMES)} frames, got {list(self.lengths)}"
            )
        if len(set(self.lengths)) != len(self.lengths):
            raise RefocusError(f"grid lengths must be distinct, got {list(self.lengths)}")
        if not self.positions or any(not 0.0 <= p <= 1.0 for p in self.positions):
            raise RefocusError(f"needle positions must lie in [0, 1], got {list(self.positions)}")
        if self.per_cell < 1:
            raise RefocusError(f"per_cell must be at least 1, got {self.per_cell}")
        if self.size < 32 or self.size % 2:
            raise RefocusError(f"size must be an even number >= 32, got {self.size}")
        if not self.fps > 0:
            raise RefocusError(f"fps must be positive, got {self.fps}")

    @property
    def config(self) -> SynthConfig:
        return SynthConfig(fps=self.fps, size=self.size)

    def to_dict(self) -> dict:
        return {"kind": GRID_KIND, **dataclasses.asdict(self),
                "lengths": list(self.lengths), "positions": list(self.positions)}


def needle_positions(count: int) -> tuple[float, ...]:
    """``count`` evenly spaced relative positions from 0 (start) to 1 (end); 1 -> (0.5,)."""
    if count < 1:
        raise RefocusError(f"the number of needle positions must be at least 1, got {count}")
    if count == 1:
        return (0.5,)
    return tuple(round(float(p), 6) for p in np.linspace(0.0, 1.0, count))


def needle_start(num_frames: int, needle_frames: int, position: float) -> int:
    """First needle frame for relative ``position``: ``round(position * (T - n))``."""
    return int(round(position * (num_frames - needle_frames)))


def _rngs(spec: GridSpec, length: int, pos_index: int, replicate: int):
    seq = np.random.SeedSequence(
        [spec.seed, zlib.crc32(GRID_KIND.encode()), length, pos_index, replicate]
    )
    plan, look = seq.spawn(2)
    return np.random.default_rng(plan), np.random.default_rng(look)


def plan_grid_video(
    spec: GridSpec, length: int, pos_index: int, replicate: int, index: int
) -> Sample:
    """The ``niah`` plan for one grid video with its needle moved to the requested place.

    ``index`` is the video's position in grid order; it picks the question category.
    """
    plan_rng, _ = _rngs(spec, length, pos_index, replicate)
    sample = niah.plan_niah(plan_rng, length, index, spec.config)
    (needle,) = sample.events
    start = needle_start(length, needle.length, spec.positions[pos_index])
    needle = dataclasses.replace(needle, start=start)
    sample.events = [needle]
    sample.meta.update(
        needle_position=round(start / max(length - needle.length, 1), 6),
        needle_frames=[start, needle.stop - 1],
        grid_length=length,
        grid_position=spec.positions[pos_index],
        replicate=replicate,
    )
    return sample


def grid_cells(spec: GridSpec) -> list[tuple[int, int, int]]:
    """``(length, position index, replicate)`` of every video, in grid order."""
    return [
        (length, p, r)
        for length in spec.lengths
        for p in range(len(spec.positions))
        for r in range(spec.per_cell)
    ]


def write_niah_grid(
    out_dir: str | Path,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    positions: int | Sequence[float] = DEFAULT_POSITIONS,
    per_cell: int = 2,
    seed: int = 0,
    fps: float = SynthConfig.fps,
    size: int = SynthConfig.size,
    *,
    reuse: bool = True,
    progress: bool = False,
) -> Path:
    """Write the grid's videos and ``qa.jsonl`` under ``out_dir``; return the question file.

    ``positions``: a count (evenly spaced, :func:`needle_positions`) or the positions.
    ``reuse``: when ``out_dir/grid.json`` records the same parameters and every video is
    there, nothing is written again.
    """
    pos = needle_positions(positions) if isinstance(positions, int) else tuple(positions)
    spec = GridSpec(tuple(lengths), pos, per_cell, seed, fps, size)
    out_dir = Path(out_dir)
    qa_path = out_dir / "qa.jsonl"
    if reuse and _reusable(out_dir, spec):
        return qa_path

    from tqdm.auto import tqdm

    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # invalid until the new set is complete
    items = []
    cells = grid_cells(spec)
    total = sum(length for length, _, _ in cells)
    bar = tqdm(total=total, desc="niah grid", unit="frame", disable=not progress)
    for index, (length, p, r) in enumerate(cells):
        sample = plan_grid_video(spec, length, p, r, index)
        _, look_rng = _rngs(spec, length, p, r)
        path = video_dir / f"grid_L{length:04d}_p{p:02d}_r{r}.mp4"
        frames = render_frames(look_rng, length, sample.events, spec.config)
        write_video(path, frames, fps, spec.config.crf)
        items.append(_item(path, sample, fps, length, p, r))
        bar.update(length)
    bar.close()
    write_questions(qa_path, items)
    write_json(out_dir / MANIFEST, spec.to_dict())
    return qa_path


def _item(path: Path, sample: Sample, fps: float, length: int, p: int, r: int) -> QAItem:
    (needle,) = sample.events
    return QAItem(
        id=f"{GRID_KIND}-L{length:04d}-p{p:02d}-r{r}",
        video=path.resolve(),
        question=sample.question,
        options=tuple(sample.options),
        answer="ABCDEFGHIJKLMNOPQRSTUVWXYZ"[sample.answer_index],
        evidence=(needle.span(fps),),
        category=sample.category,
        meta={**sample.meta, "fps": fps},
    )


def _reusable(out_dir: Path, spec: GridSpec) -> bool:
    manifest = out_dir / MANIFEST
    if not manifest.is_file() or not (out_dir / "qa.jsonl").is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    if recorded != json.loads(json.dumps(spec.to_dict())):
        return False
    items = load_questions(out_dir / "qa.jsonl")
    return len(items) == len(grid_cells(spec)) and all(it.video.is_file() for it in items)


def load_grid(out_dir: str | Path) -> tuple[GridSpec, list[QAItem]]:
    """The spec and items of a grid written by :func:`write_niah_grid`."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        raise RefocusError(f"{out_dir}: not a V-NIAH grid directory (no {MANIFEST})")
    data = json.loads(manifest.read_text())
    data.pop("kind", None)
    spec = GridSpec(**{**data, "lengths": tuple(data["lengths"]), "positions": tuple(data["positions"])})
    return spec, load_questions(out_dir / "qa.jsonl")
