"""``refocus eval`` as a library: selectors x answerers x budgets, decoded once.

``evaluate(items, answerer, selector, budgets, seeds, store=...)`` runs in-process with
already-loaded objects (the demo and the analyses call it); ``write_evaluation`` writes the
``results.json`` / ``budget-K/results.json`` / ``predictions.jsonl`` layout documented in
:mod:`refocus.evaluation.evaluate`.
"""

from refocus.evaluation.evaluate import (
    check_budgets,
    evaluate,
    resolve_seeds,
    summary_line,
    write_evaluation,
)

__all__ = ["check_budgets", "evaluate", "resolve_seeds", "summary_line", "write_evaluation"]
