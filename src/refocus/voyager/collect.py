"""Frame-Voyager data collection: rank T-frame combinations by the reference model's loss.

For each question the video is decoded (``CollectConfig.decode``, at the reference model's image
size) and cut into clips of ``clip_length`` consecutive frames; combinations of T frames are
drawn inside clips (all of them when the clips hold at most ``max_combinations``, otherwise
round robin over the clips in a random order, distinct combinations each), and ALL of a
question's combinations are scored by one ``option_logits`` call, so each distinct frame goes
through the reference vision tower once (frame reuse). A combination's label is the
cross-entropy of the correct letter over the option logits; lower is better.

Output directory::

    DIR/qa.jsonl              the questions that got a ranking (video paths relative to DIR)
    DIR/rankings.jsonl        one line per question, combinations in rank order (see below)
    DIR/collect_summary.json  config, reference, counts, reference_calls, skipped items

A rankings line: ``{"id", "video", "num_frames", "combination_size", "combinations": [{"rank",
"indices" (sorted), "clip", "loss", "margin", "logits"}, ...]}`` sorted by ascending loss
(rank 0 first); ``margin`` is the ReFoCUS margin reward of the same logits, for comparison.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations as all_combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.io import write_json
from refocus.voyager.config import CollectConfig
from refocus.voyager.ranking import loss_ranks, reference_losses

RANKINGS = "rankings.jsonl"
QUESTIONS = "qa.jsonl"
SUMMARY = "collect_summary.json"
_ENUMERATE_UP_TO = 4096
"""Clips with at most this many combinations are enumerated and shuffled; larger ones are
sampled with rejection of repeats (a repeat is then rare)."""


class Combination(NamedTuple):
    clip: int
    """Index of the clip the frames come from."""
    indices: tuple[int, ...]
    """Sorted frame indices into the decoded video."""


@dataclass
class CollectResult:
    out_dir: Path
    questions: int
    """Questions with a ranking (written to ``rankings.jsonl``)."""
    combinations: int
    reference_calls: int
    """Subsets scored by the reference model (here equal to ``combinations``)."""
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------- pure functions


def clip_bounds(num_frames: int, clip_length: int, combination_size: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive clips of ``clip_length`` frames covering T frames.

    A last clip with fewer than ``combination_size`` frames is merged into the previous one
    (it could hold no combination). A video shorter than one clip is one clip.
    Example: T = 70, L = 32, size 4 -> [(0, 32), (32, 64), (64, 70)]; size 8 -> [(0, 32), (32, 70)].
    """
    if num_frames < 1 or clip_length < 1:
        raise ValueError(f"num_frames and clip_length must be >= 1, got {num_frames}, {clip_length}")
    bounds = [(s, min(s + clip_length, num_frames)) for s in range(0, num_frames, clip_length)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < combination_size:
        bounds[-2:] = [(bounds[-2][0], num_frames)]
    return bounds


def _clip_draws(start: int, stop: int, size: int, rng: np.random.Generator) -> Iterator[tuple[int, ...]]:
    """Distinct sorted combinations of ``size`` frames of [start, stop), in random order, all of them."""
    total = math.comb(stop - start, size)
    if total <= _ENUMERATE_UP_TO:
        pool = list(all_combinations(range(start, stop), size))
        for i in rng.permutation(len(pool)):
            yield pool[int(i)]
        return
    seen: set[tuple[int, ...]] = set()
    while len(seen) < total:
        combo = tuple(sorted(int(x) for x in rng.choice(np.arange(start, stop), size, replace=False)))
        if combo not in seen:
            seen.add(combo)
            yield combo


def sample_combinations(
    num_frames: int,
    combination_size: int,
    clip_length: int,
    max_count: int,
    rng: np.random.Generator,
) -> list[Combination]:
    """Up to ``max_count`` distinct T-frame combinations drawn inside clips of a T-frame video.

    If the clips hold at most ``max_count`` combinations in all, every one is returned (clip
    by clip, in order). Otherwise clips take turns in a random order, each contributing one
    new random combination per turn until ``max_count`` are drawn, so the combinations spread
    evenly over the video. Returns [] when the video has fewer than T frames.
    """
    if combination_size > num_frames or max_count < 1:
        return []
    clips = clip_bounds(num_frames, clip_length, combination_size)
    sizes = [math.comb(stop - start, combination_size) for start, stop in clips]
    if sum(sizes) <= max_count:
        return [Combination(c, combo) for c, (start, stop) in enumerate(clips)
                for combo in all_combinations(range(start, stop), combination_size)]
    draws = {c: _clip_draws(start, stop, combination_size, rng) for c, (start, stop) in enumerate(clips)}
    turn = [int(c) for c in rng.permutation(len(clips))]
    out: list[Combination] = []
    while len(out) < max_count and turn:
        for c in list(turn):
            combo = next(draws[c], None)
            if combo is None:
                turn.remove(c)
                continue
            out.append(Combination(c, combo))
            if len(out) == max_count:
                break
    return out


def question_quota(max_combinations: int, remaining_calls: int | None, remaining_questions: int) -> int:
    """Combinations to label for the next question under an optional call budget.

    Without a budget: ``max_combinations``. With one: the remaining calls shared evenly over
    the remaining questions (at least 2, a pair, while 2 calls are left; 0 after that), capped
    at ``max_combinations``. Calls a question does not use (short video) go to later ones.
    """
    if remaining_calls is None:
        return max_combinations
    if remaining_calls < 2:
        return 0
    share = remaining_calls // max(1, remaining_questions)
    return min(max_combinations, max(2, share), remaining_calls)


# ---------------------------------------------------------------------------- collection


def rank_question(
    item: QAItem, frames: np.ndarray, combos: Sequence[Combination], reference: Any
) -> dict:
    """Score ``combos`` with one reference call and return the question's rankings line."""
    from refocus.reference.reward import margin_rewards

    logits = np.asarray(reference.option_logits(item, frames, [list(c.indices) for c in combos]))  # (G, O)
    losses = reference_losses(logits, item.answer_index)  # (G,)
    margins = margin_rewards(logits, item.answer_index)  # (G,)
    ranks = loss_ranks(losses)
    rows = [
        {"rank": int(ranks[g]), "indices": list(combos[g].indices), "clip": combos[g].clip,
         "loss": float(losses[g]), "margin": float(margins[g]),
         "logits": [float(x) for x in logits[g]]}
        for g in range(len(combos))
    ]
    rows.sort(key=lambda r: r["rank"])
    return {"id": item.id, "video": str(item.video), "num_frames": int(frames.shape[0]),
            "combination_size": len(combos[0].indices), "combinations": rows}


def collect_rankings(
    items: Sequence[QAItem],
    reference: Any,
    out_dir: str | Path,
    cfg: CollectConfig | None = None,
    *,
    max_reference_calls: int | None = None,
    reference_path: str | Path | None = None,
    progress: bool = True,
) -> CollectResult:
    """Label combinations of every question and write ``out_dir`` (see the module docstring).

    reference: a loaded reference model (``refocus.reference.load_reference``).
    max_reference_calls: cap on subsets scored in all (None: ``max_combinations`` per
    question); see :func:`question_quota`. Questions left without calls are skipped and
    listed. reference_path: recorded in the summary so ``voyager train`` can rebuild the
    policy from the same reference model. Undecodable videos and questions whose video has
    at most T frames (no pair to rank) are skipped and listed.
    """
    from tqdm.auto import tqdm

    from refocus.data.questions import write_questions
    from refocus.seeding import item_seed
    from refocus.video.stores import FrameStore

    cfg = cfg or CollectConfig()
    if max_reference_calls is not None and max_reference_calls < 2:
        raise RefocusError(f"max_reference_calls must be >= 2 (one pair), got {max_reference_calls}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start_time = time.perf_counter()
    store = FrameStore(cfg.decode.fps, cfg.decode.max_frames, capacity=4)
    size = int(reference.image_size)
    kept: list[QAItem] = []
    skipped: list[dict] = []
    calls = 0
    tmp = out / (RANKINGS + ".tmp")
    bar = tqdm(items, desc="voyager collect", unit="question", disable=not progress)
    with tmp.open("w") as f:
        for pos, item in enumerate(bar):
            remaining = None if max_reference_calls is None else max_reference_calls - calls
            quota = question_quota(cfg.max_combinations, remaining, len(items) - pos)
            if quota < 2:
                skipped.append({"id": item.id, "reason": "reference-call budget exhausted"})
                continue
            try:
                decoded = store.get(item, size)
                num_frames = len(decoded.timestamps)
                rng = np.random.default_rng(item_seed(cfg.seed, item.id))
                combos = sample_combinations(num_frames, cfg.combination_size, cfg.clip_length, quota, rng)
                if len(combos) < 2:
                    raise RefocusError(
                        f"{num_frames} decoded frames give {len(combos)} combination(s) of "
                        f"{cfg.combination_size}; a ranking needs 2"
                    )
                row = rank_question(item, decoded.frames, combos, reference)
            except RefocusError as exc:
                skipped.append({"id": item.id, "reason": " ".join(str(exc).split())})
                continue
            calls += len(combos)
            kept.append(item)
            f.write(json.dumps(row) + "\n")
            bar.set_postfix(calls=calls, skipped=len(skipped), refresh=False)
    tmp.replace(out / RANKINGS)
    write_questions(out / QUESTIONS, kept)
    seconds = time.perf_counter() - start_time
    summary = {
        "config": cfg.to_dict(),
        "reference": None if reference_path is None else str(Path(reference_path).resolve()),
        "reference_name": getattr(reference, "name", type(reference).__name__),
        "image_size": size,
        "questions": len(kept),
        "combinations": calls,
        "reference_calls": calls,
        "max_reference_calls": max_reference_calls,
        "skipped": skipped,
        "seconds": round(seconds, 2),
    }
    write_json(out / SUMMARY, summary)
    return CollectResult(out, len(kept), calls, calls, skipped, seconds)


def run_collect(
    data: str | Path,
    reference: str | Path,
    out_dir: str | Path,
    cfg: CollectConfig | None = None,
    *,
    max_reference_calls: int | None = None,
    progress: bool = True,
) -> CollectResult:
    """Load the question file and the reference model, then :func:`collect_rankings`.

    Invalid question lines are skipped and listed with the skipped items.
    """
    from refocus.data.questions import load_questions
    from refocus.reference import load_reference

    cfg = cfg or CollectConfig()
    errors: list = []
    items = load_questions(data, errors=errors)
    if not items:
        raise RefocusError(f"{data}: no valid questions to collect rankings for")
    ref = load_reference(reference, batch_size=cfg.reference_batch_size)
    result = collect_rankings(items, ref, out_dir, cfg, max_reference_calls=max_reference_calls,
                              reference_path=reference, progress=progress)
    if errors:
        result.skipped[:0] = [{"id": None, "reason": str(e)} for e in errors]
        path = Path(out_dir) / SUMMARY
        summary = json.loads(path.read_text())
        summary["skipped"] = result.skipped
        write_json(path, summary)
    return result


def load_rankings(data_dir: str | Path) -> tuple[list[QAItem], list[dict], dict]:
    """(questions, rankings lines in the same order, collect summary) of a collection directory."""
    from refocus.data.questions import load_questions

    data_dir = Path(data_dir)
    for name in (RANKINGS, QUESTIONS, SUMMARY):
        if not (data_dir / name).is_file():
            raise RefocusError(f"{data_dir}: not a voyager collection (no {name}); run `refocus voyager collect`")
    items = {it.id: it for it in load_questions(data_dir / QUESTIONS)}
    rankings = []
    for n, line in enumerate((data_dir / RANKINGS).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RefocusError(f"{data_dir / RANKINGS}:{n}: invalid JSON ({exc.msg})") from None
        if row.get("id") not in items:
            raise RefocusError(f"{data_dir / RANKINGS}:{n}: question {row.get('id')!r} not in {QUESTIONS}")
        rankings.append(row)
    summary = json.loads((data_dir / SUMMARY).read_text())
    return [items[r["id"]] for r in rankings], rankings, summary
