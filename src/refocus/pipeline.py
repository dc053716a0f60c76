"""The stages of the ReFoCUS pipeline that the demo and the benchmarks run alike: filter the
training questions with the reference model (:func:`filter_split`; GRPO on the kept ones is
``refocus.training.train_policy``), and evaluate a set of selectors on held-out questions
with the reference model answering (:func:`evaluate_selectors`).

``refocus.demo`` and ``benchmarks/grpo_vs_voyager.py`` compose these; each stage is also a
command of its own (``refocus filter``, ``refocus train``, ``refocus eval``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class Laps:
    """Seconds per named stage, each measured from the end of the previous one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 1)
        self._clock = now


def filter_split(
    train_qa: Path, reference: Any, filter_cfg: Any, out: Path, *, min_train_items: int = 0, progress: bool = True,
) -> tuple[Path, dict, int]:
    """Appendix A filtering of a training split into ``out/filter/``.

    Returns (the question file to train on, the filter's report, the number of scored
    questions: the reference model scored 16 probe subsets for each). With fewer than
    ``min_train_items`` questions kept (a weak reference gives flat margins) the file holds the
    ``min_train_items`` most variable questions instead, and the report's ``fallback`` says so.
    """
    from refocus.data.questions import load_questions, write_questions
    from refocus.filtering.filter import run_filter, write_filter_outputs

    filtered = run_filter(load_questions(train_qa), reference, filter_cfg, progress=progress)
    kept_qa = out / "filter" / "train.filtered.jsonl"
    info = write_filter_outputs(filtered, kept_qa, filter_cfg)
    if info["kept"] < min_train_items:
        ranked = sorted(filtered.scored, key=lambda pair: -pair[1]["variance"])[:min_train_items]
        kept_qa = out / "filter" / "train.top_variance.jsonl"
        write_questions(kept_qa, [it for it, _ in ranked], extra=[r for _, r in ranked])
        info["fallback"] = f"only {info['kept']} items passed tau; trained on the {len(ranked)} most variable"
    return kept_qa, info, len(filtered.scored)


def evaluate_selectors(
    heldout: list, reference: Any, selectors: dict[str, Any], budget: int, seeds: int = 1,
    *, out: Path | None = None, progress: bool = True,
) -> dict[str, dict]:
    """``refocus eval`` of every selector at one budget over one shared frame store; returns
    each selector's result at that budget (written under ``out/<name>`` when given)."""
    from refocus.evaluation import evaluate, write_evaluation
    from refocus.video.stores import FrameStore

    store = FrameStore()
    results = {}
    for name, selector in selectors.items():
        result = evaluate(heldout, reference, selector, [budget], seeds, store=store, progress=progress)
        if out is not None:
            write_evaluation(result, out / name)
        results[name] = result["budgets"][budget]
    return results
