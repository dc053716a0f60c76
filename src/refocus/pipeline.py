"""The stages of the ReFoCUS pipeline that the demo and the benchmarks run alike: filter the
training questions with the reference model, train a policy with GRPO on the kept ones, and
evaluate a set of selectors on held-out questions with the reference model answering.

``refocus.demo`` and ``benchmarks/grpo_vs_voyager.py`` compose these; each stage is also a
command of its own (``refocus filter``, ``refocus train``, ``refocus eval``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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


@dataclass
class TrainedPolicy:
    """What :func:`filter_and_train` leaves: the filter's report and the GRPO run."""

    train_qa: Path
    """The question file the policy was trained on (kept questions, or the fallback)."""
    filter_info: dict
    filter_calls: int
    """Subsets the reference model scored while filtering (16 probes per scored question)."""
    run: Any
    """The :class:`refocus.training.trainer.TrainResult`."""
    scored: list = field(default_factory=list)

    @property
    def reference_calls(self) -> int:
        """Filter probes plus GRPO rewards."""
        return self.filter_calls + self.run.reference_calls


def filter_and_train(
    train_qa: Path, reference: Any, reference_dir: Path, out: Path, filter_cfg: Any, train_cfg: Any,
    *, min_train_items: int = 0, train_dir: Path | None = None, laps: Laps | None = None,
    progress: bool = True,
) -> TrainedPolicy:
    """Appendix A filtering into ``out/filter/``, then GRPO into ``train_dir`` (default ``out/train``).

    With fewer than ``min_train_items`` questions kept (a weak reference gives flat margins),
    the policy trains on the ``min_train_items`` most variable questions instead, and
    ``filter_info["fallback"]`` says so.
    """
    from refocus.data.questions import load_questions, write_questions
    from refocus.filtering.filter import run_filter, write_filter_outputs
    from refocus.training.train import train_policy

    filtered = run_filter(load_questions(train_qa), reference, filter_cfg, progress=progress)
    kept_qa = out / "filter" / "train.filtered.jsonl"
    info = write_filter_outputs(filtered, kept_qa, filter_cfg)
    if info["kept"] < min_train_items:
        ranked = sorted(filtered.scored, key=lambda pair: -pair[1]["variance"])[:min_train_items]
        kept_qa = out / "filter" / "train.top_variance.jsonl"
        write_questions(kept_qa, [it for it, _ in ranked], extra=[r for _, r in ranked])
        info["fallback"] = f"only {info['kept']} items passed tau; trained on the {len(ranked)} most variable"
    if laps is not None:
        laps("filter")
    run = train_policy(kept_qa, reference_dir, train_dir or out / "train", config=train_cfg, progress=progress)
    return TrainedPolicy(kept_qa, info, 16 * len(filtered.scored), run, filtered.scored)


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
