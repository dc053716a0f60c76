"""Selector x answerer evaluation: accuracy, evidence recall and selection time per budget.

For every question: decode the video once per frame size (a shared
:class:`refocus.video.stores.FrameStore`; the answerer's size, and the selector's if it
wants another), let the selector pick frames for every budget and seed, and score all those
subsets with ONE ``answerer.option_logits`` call (identical subsets scored once). The
answer is the option with the highest letter logit. Both decodes use the same pts sampling
(fps, max_frames), so indices chosen on the selector's frames address the same moments in
the answerer's frames; this is checked per item.

Seeds: a deterministic selector (uniform, oracle, greedy policy) runs once, with the first
seed, whatever ``seeds`` says; ``results["deterministic"]`` records it. Otherwise every seed
is a full run, and ``accuracy`` / ``evidence_recall`` are means over seeds with their sample
standard deviation (ddof = 1) as ``*_std``.

Layout of one budget's results (``evaluate(...)["budgets"][K]``, written as
``DIR/budget-K/results.json``, and as ``DIR/results.json`` too when only one budget runs)::

    {"selector", "mode", "answerer", "budget",
     "accuracy", "accuracy_std",            # over seeds; 0.0 with one run
     "evidence_recall", "evidence_recall_std",   # share of items with spans whose spans hold
                                            # >= 1 selected frame; null when no item has spans
     "evidence_recall_all", "evidence_recall_all_std",   # share of items whose EVERY span holds
                                            # a selected frame (= evidence_recall with one span)
     "per_category": {cat: {"accuracy", "evidence_recall", "evidence_recall_all", "n"}},   # {} if none
     "seconds_per_item",                    # selection only: per-video preparation + select
     "n_items", "skipped": [{"id", "reason"}], "seeds": [...], "deterministic"}

With several budgets ``DIR/results.json`` is ``{"selector", "mode", "answerer", "budgets":
{"K": results, ...}}``. ``DIR/predictions.jsonl`` holds one row per (item, budget, seed):
``{"id", "category", "seed", "budget", "indices", "timestamps", "prediction", "answer",
"correct", "margin", "logits", "hit_evidence", "hit_all_evidence"}``; ``margin`` is the reward margin
``tanh((z_answer - max_wrong z) / 2)``, positive iff the answer is predicted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refocus.data.evidence import (
    evidence_frame_mask,
    evidence_spans_frames,
    hits_all_evidence,
    hits_evidence,
)
from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.selectors.base import validate_indices
from refocus.video.config import DecodeConfig

SELECTION_ONLY_SIZE = 64
"""Decode size used when neither an answerer nor the selector asks for a size."""


def resolve_seeds(seeds: int | Sequence[int], deterministic: bool) -> list[int]:
    """The seeds to run: ``seeds`` as a count (0 .. n-1) or a list; only the first when the
    selector is deterministic (its runs would be identical)."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise RefocusError(f"seeds must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise RefocusError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise RefocusError(f"seeds must be distinct, got {seeds}")
    return seeds[:1] if deterministic else seeds


def check_budgets(budgets: int | Sequence[int]) -> list[int]:
    """Budgets as a list of distinct positive ints, in the given order."""
    budgets = [budgets] if isinstance(budgets, int) else list(budgets)
    if not budgets:
        raise RefocusError("no budget given")
    for k in budgets:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise RefocusError(f"budgets must be positive integers, got {k!r}")
    if len(set(budgets)) != len(budgets):
        raise RefocusError(f"budgets must be distinct, got {budgets}")
    return [int(k) for k in budgets]


def evaluate(
    items: Sequence[QAItem],
    answerer: Any,
    selector: Any,
    budgets: int | Sequence[int],
    seeds: int | Sequence[int] = 3,
    *,
    store: Any = None,
    fps: float = DecodeConfig.fps,
    max_frames: int = DecodeConfig.max_frames,
    progress: bool = True,
    generate: Any = None,
) -> dict:
    """Evaluate ``selector`` with ``answerer`` on ``items`` at every budget; nothing decoded twice.

    answerer: a loaded reference model (``refocus.reference.load_reference``), or None for a
    selection-only run (evidence recall and timing; accuracy fields are null).
    selector: a loaded selector (``refocus.selectors.get_selector``).
    budgets: K or a list of K. seeds: a count or a list (see the module docstring).
    store: a shared ``FrameStore``; when given, its fps / max_frames apply and the ``fps`` and
    ``max_frames`` arguments are ignored. Items whose video cannot be decoded, or that the
    selector or answerer rejects with a RefocusError (e.g. the oracle without evidence),
    are skipped and listed; a selector returning a malformed selection raises ValueError.

    generate: a ``refocus.answerer.generation.GenerateConfig``: the answerer also writes a
    reasoned answer for every scored subset (``<think>...</think><answer>X</answer>``); rows
    get ``generated`` / ``generated_answer`` / ``generated_correct`` and the results
    ``generated_accuracy`` and ``format_rate`` beside the option-logit ``accuracy``.

    Returns ``{"selector", "mode", "answerer", "budgets": {K: results}, "predictions": [rows],
    "skipped": [{"id", "reason"}]}`` with the per-budget results and prediction rows
    described in the module docstring.
    """
    from tqdm.auto import tqdm

    from refocus.distributed import gather_in_order, is_main_process, shard
    from refocus.video.stores import FrameStore

    budgets = check_budgets(budgets)
    run_seeds = resolve_seeds(seeds, bool(getattr(selector, "deterministic", False)))
    store = store if store is not None else FrameStore(fps, max_frames, capacity=8)
    answer_size = None if answerer is None else int(answerer.image_size)
    select_size = selector.image_size or answer_size or SELECTION_ONLY_SIZE
    prepare = getattr(selector, "prepare", None)
    writer = None
    if generate is not None and answerer is not None:
        from refocus.answerer.generation import Answerer

        writer = Answerer.from_adapter(answerer)

    records: list[tuple[int, dict]] = []
    n_correct = n_scored = 0
    mine = shard(items)  # under accelerate launch: every N-th item; merged back in order below
    bar = tqdm(mine, desc=f"eval {selector.name}", unit="item", disable=not (progress and is_main_process()))
    for index, item in bar:
        record = _evaluate_item(item, answerer, selector, store, budgets, run_seeds, select_size,
                                answer_size, prepare, writer, generate)
        records.append((index, record))
        if answerer is not None and "rows" in record:
            n_correct += sum(bool(r["correct"]) for r in record["rows"])
            n_scored += len(record["rows"])
            bar.set_postfix(acc=f"{n_correct / n_scored:.3f}", refresh=False)
    rows: list[dict] = []
    skipped: list[dict] = []
    seconds: dict[int, list[float]] = {k: [] for k in budgets}
    for record in gather_in_order(records):
        if "skipped" in record:
            skipped.append(record["skipped"])
            continue
        rows += record["rows"]
        for k in budgets:
            seconds[k].append(record["seconds"][k])

    mode = getattr(selector, "mode", None)
    answerer_name = None if answerer is None else getattr(answerer, "name", type(answerer).__name__)
    results = {
        k: _aggregate([r for r in rows if r["budget"] == k], seconds[k], skipped, run_seeds,
                      selector=selector.name, mode=mode, answerer=answerer_name, budget=k,
                      deterministic=bool(getattr(selector, "deterministic", False)),
                      scored=answerer is not None)
        for k in budgets
    }
    return {"selector": selector.name, "mode": mode, "answerer": answerer_name, "budgets": results,
            "predictions": rows, "skipped": skipped}


def _evaluate_item(item, answerer, selector, store, budgets, run_seeds, select_size, answer_size,
                   prepare, writer, generate) -> dict:
    """One item: ``{"rows": [...], "seconds": {K: s}}``, or ``{"skipped": {"id", "reason"}}``."""
    from refocus.reference.reward import margin_rewards

    try:
        frames, selections, prep_seconds = _select_item(
            item, selector, store, budgets, run_seeds, select_size, answer_size, prepare)
        logits = None
        if answerer is not None:
            unique = list(dict.fromkeys(tuple(s[0]) for s in selections.values()))
            scored = answerer.option_logits(item, frames.frames, [list(u) for u in unique])  # (G, O)
            logits = {u: np.asarray(scored[g], dtype=np.float64) for g, u in enumerate(unique)}
            if writer is not None:
                texts = {u: writer.generate(item, [frames.frames[i] for i in u], generate).texts[0] for u in unique}
    except RefocusError as exc:
        return {"skipped": {"id": item.id, "reason": " ".join(str(exc).split())}}
    mask = evidence_frame_mask(frames.timestamps, item.evidence)
    spans = evidence_spans_frames(frames.timestamps, item.evidence)
    rows, seconds = [], {}
    for k in budgets:
        per_seed = []
        for seed in run_seeds:
            indices, took = selections[(k, seed)]
            per_seed.append(took)
            rows.append(_row(item, k, seed, indices, frames.timestamps, (mask, spans),
                             None if logits is None else logits[tuple(indices)], margin_rewards))
            if writer is not None:
                rows[-1].update(_generated(texts[tuple(indices)], item.answer))
        seconds[k] = prep_seconds + float(np.mean(per_seed))
    return {"rows": rows, "seconds": seconds}


def _select_item(item, selector, store, budgets, run_seeds, select_size, answer_size, prepare):
    """Decode (once per size), prepare and select for every (budget, seed) of one item.

    Returns the answerer's frames (or the selector's when there is no answerer), a dict
    (K, seed) -> (indices, seconds), and the preparation seconds.
    """
    select_frames = store.get(item, select_size)
    frames = select_frames if answer_size in (None, select_size) else store.get(item, answer_size)
    if len(frames.timestamps) != len(select_frames.timestamps) or not np.allclose(
        frames.timestamps, select_frames.timestamps, atol=1e-6
    ):
        raise RefocusError(
            f"{item.video}: frames decoded at {select_size} px and {answer_size} px differ in time "
            f"({len(select_frames.timestamps)} vs {len(frames.timestamps)} frames)"
        )
    num_frames = len(select_frames.timestamps)
    prep_seconds = 0.0
    if prepare is not None:
        start = time.perf_counter()
        prepare(select_frames, item)
        prep_seconds = time.perf_counter() - start
    selections = {}
    for k in budgets:
        for seed in run_seeds:
            selector.reseed(seed)
            start = time.perf_counter()
            indices = selector.select(select_frames, item, k)
            took = time.perf_counter() - start
            selections[(k, seed)] = (validate_indices(indices, num_frames, k, selector.name), took)
    return frames, selections, prep_seconds


def _row(item, budget, seed, indices, timestamps, evidence, logits, margin_rewards) -> dict:
    mask, spans = evidence
    row = {
        "id": item.id,
        "category": item.category,
        "seed": seed,
        "budget": budget,
        "indices": indices,
        "timestamps": [round(float(timestamps[i]), 6) for i in indices],
        "prediction": None,
        "answer": item.answer,
        "correct": None,
        "margin": None,
        "logits": None,
        "hit_evidence": hits_evidence(indices, mask),
        "hit_all_evidence": hits_all_evidence(indices, spans),
    }
    if logits is not None:
        prediction = item.letters[int(np.argmax(logits))]  # ties: the earlier letter
        row.update(
            prediction=prediction,
            correct=prediction == item.answer,
            margin=round(float(margin_rewards(logits[None], item.answer_index)[0]), 6),
            logits=[round(float(z), 5) for z in logits],
        )
    return row


def _generated(text: str, answer: str) -> dict:
    from refocus.answerer import ktr_math

    return {"generated": text, "generated_answer": ktr_math.parse_answer(text),
            "generated_correct": bool(ktr_math.accuracy_reward(text, answer)),
            "generated_format": bool(ktr_math.format_reward(text))}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return round(float(np.mean(values)), 6), round(std, 6)


def _aggregate(rows, seconds, skipped, run_seeds, *, selector, mode, answerer, budget, deterministic, scored) -> dict:
    """One budget's results object from its prediction rows (all seeds)."""
    acc_by_seed, recall_by_seed, all_by_seed = [], [], []
    for seed in run_seeds:
        mine = [r for r in rows if r["seed"] == seed]
        if mine and scored:
            acc_by_seed.append(float(np.mean([r["correct"] for r in mine])))
        for key, out in (("hit_evidence", recall_by_seed), ("hit_all_evidence", all_by_seed)):
            hits = [r[key] for r in mine if r[key] is not None]
            if hits:
                out.append(float(np.mean(hits)))
    accuracy, accuracy_std = _mean_std(acc_by_seed)
    recall, recall_std = _mean_std(recall_by_seed)
    recall_all, recall_all_std = _mean_std(all_by_seed)

    per_category = {}
    if any(r["category"] is not None for r in rows):
        for cat in sorted({r["category"] or "uncategorized" for r in rows}):
            mine = [r for r in rows if (r["category"] or "uncategorized") == cat]
            hits = [r["hit_evidence"] for r in mine if r["hit_evidence"] is not None]
            hits_all = [r["hit_all_evidence"] for r in mine if r["hit_all_evidence"] is not None]
            per_category[cat] = {
                # every seed scores the same items, so the mean over rows = the mean over seeds
                "accuracy": round(float(np.mean([r["correct"] for r in mine])), 6) if scored else None,
                "evidence_recall": round(float(np.mean(hits)), 6) if hits else None,
                "evidence_recall_all": round(float(np.mean(hits_all)), 6) if hits_all else None,
                "n": len({r["id"] for r in mine}),
            }
    generated = {}
    if rows and "generated_correct" in rows[0]:
        gen_acc, gen_std = _mean_std([float(np.mean([r["generated_correct"] for r in rows if r["seed"] == s]))
                                      for s in run_seeds if any(r["seed"] == s for r in rows)])
        generated = {"generated_accuracy": gen_acc, "generated_accuracy_std": gen_std,
                     "format_rate": round(float(np.mean([r["generated_format"] for r in rows])), 6)}
    return {
        "selector": selector,
        "mode": mode,
        "answerer": answerer,
        "budget": budget,
        "accuracy": accuracy,
        "accuracy_std": accuracy_std,
        **generated,
        "evidence_recall": recall,
        "evidence_recall_std": recall_std,
        "evidence_recall_all": recall_all,
        "evidence_recall_all_std": recall_all_std,
        "per_category": per_category,
        "seconds_per_item": round(float(np.mean(seconds)), 6) if seconds else None,
        "n_items": len({r["id"] for r in rows}),
        "skipped": list(skipped),
        "seeds": list(run_seeds),
        "deterministic": deterministic,
    }


def write_evaluation(result: dict, out_dir: str | Path) -> Path:
    """Write ``evaluate``'s result under ``out_dir`` (layout in the module docstring).

    Returns the path of ``DIR/results.json``.
    """
    from refocus.io import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = result["budgets"]
    for k, res in budgets.items():
        write_json(out_dir / f"budget-{k}" / "results.json", res)
    if len(budgets) == 1:
        top = next(iter(budgets.values()))
    else:
        top = {key: result[key] for key in ("selector", "mode", "answerer")}
        top["budgets"] = {str(k): res for k, res in budgets.items()}
    write_json(out_dir / "results.json", top)
    tmp = out_dir / "predictions.jsonl.tmp"
    with tmp.open("w") as f:
        for row in result["predictions"]:
            f.write(json.dumps(row) + "\n")
    tmp.replace(out_dir / "predictions.jsonl")
    return out_dir / "results.json"


def summary_line(result: dict, out: str | Path | None = None) -> str:
    """``eval uniform@8: accuracy 0.312 ± 0.000, evidence recall 0.160 (200 items, 0 skipped) -> DIR``.

    Several budgets: one ``@K accuracy ...`` clause per budget on the same line.
    """

    def fmt(x: float | None) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    budgets = result["budgets"]
    clauses = []
    for k, res in budgets.items():
        parts = []
        if res["accuracy"] is not None:
            parts.append(f"accuracy {fmt(res['accuracy'])} ± {fmt(res['accuracy_std'])}")
        if res.get("generated_accuracy") is not None:
            parts.append(f"generated accuracy {fmt(res['generated_accuracy'])} (format {fmt(res['format_rate'])})")
        parts.append(f"evidence recall {fmt(res['evidence_recall'])}")
        clauses.append((k, ", ".join(parts)))
    first = next(iter(budgets.values()))
    runs = "1 run, deterministic" if first["deterministic"] else f"{len(first['seeds'])} seeds"
    tail = f"({first['n_items']} items, {len(result['skipped'])} skipped, {runs})"
    if len(clauses) == 1:
        head = f"eval {result['selector']}@{clauses[0][0]}: {clauses[0][1]}"
    else:
        head = f"eval {result['selector']}: " + "; ".join(f"@{k} {text}" for k, text in clauses)
    return f"{head} {tail}" + (f" -> {out}" if out is not None else "")
