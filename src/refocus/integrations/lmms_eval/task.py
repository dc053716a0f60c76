"""A refocus question file as a local lmms-eval task (``refocus data lmms-task``).

Writes ``DIR/NAME.jsonl`` (the questions, each video path made absolute, since lmms-eval reads
``doc_to_visual`` as a document field) and ``DIR/NAME.yaml``: a ``generate_until`` task over
that file (``dataset_path: json``, ``dataset_kwargs: {data_files: ...}``, no hub), whose prompt
is the question and its lettered options, scored by exact match of the first option letter in
the answer. ``lmms-eval --include_path DIR --tasks NAME`` then runs it. Nothing here imports
lmms-eval; the YAML is written as text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from refocus.errors import RefocusError

PROMPT = (
    "{{ question }}\n"
    "{% for option in options %}{{ 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[loop.index0] }}. {{ option }}\n{% endfor %}"
    "Answer with the option's letter from the given choices directly."
)
"""lmms-eval's usual multiple-choice video prompt (Video-MME's wording), as a Jinja template."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def task_yaml(name: str, data_file: Path, max_new_tokens: int = 16) -> str:
    """The task YAML (JSON is valid YAML, so values are written with ``json.dumps``)."""
    letters = json.dumps(r"\b([A-Z])\b")
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        f"  data_files: {json.dumps(str(data_file))}",
        "test_split: train",
        "output_type: generate_until",
        "doc_to_visual: video",
        f"doc_to_text: {json.dumps(PROMPT)}",
        "doc_to_target: answer",
        "generation_kwargs:",
        f"  max_new_tokens: {int(max_new_tokens)}",
        "  temperature: 0",
        "  do_sample: false",
        "filter_list:",
        "  - name: letter",
        "    filter:",
        "      - function: regex",
        f"        regex_pattern: {letters}",
        "      - function: take_first",
        "metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    higher_is_better: true",
        "",
    ])


def task_record(item) -> dict:
    """One task document: the fields the prompt, the metric and the refocus models read.

    ``meta`` and ``extra`` are left out: their shapes vary between items, and the ``json``
    loader of ``datasets`` needs one schema per file.
    """
    record = {"id": item.id, "video": str(Path(item.video).resolve()), "question": item.question,
              "options": list(item.options), "answer": item.answer}
    if item.category is not None:
        record["category"] = item.category
    return record


def write_task(data: str | Path, out: str | Path, name: str, max_new_tokens: int = 16) -> Path:
    """Write the task ``name`` for question file ``data`` into directory ``out``; returns the YAML path."""
    from refocus.data.questions import load_questions

    if not _NAME.match(name):
        raise RefocusError(f"task name must be a letter then letters, digits or '_', got {name!r}")
    items = load_questions(data)
    if not items:
        raise RefocusError(f"{data}: no questions")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / f"{name}.jsonl"
    with data_file.open("w") as f:
        for item in items:
            f.write(json.dumps(task_record(item)) + "\n")
    yaml_file = out / f"{name}.yaml"
    yaml_file.write_text(task_yaml(name, data_file, max_new_tokens))
    return yaml_file
