"""``refocus data convert``: published benchmark layouts -> question files;
``refocus data lmms-task``: a question file -> a local lmms-eval task."""

from __future__ import annotations

import argparse
import sys

BENCHMARKS = ("videomme", "longvideobench", "mlvu", "nextqa", "videommmu")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="convert published benchmarks to question files")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    conv = sub.add_parser(
        "convert",
        help="convert a benchmark's published layout into a question file (JSONL)",
        description=(
            "Convert a benchmark's published annotation file into the refocus question-file "
            "format. Rows whose video is missing, that are malformed or not multiple-choice "
            "are skipped and listed in OUT with suffix .skipped.jsonl."
        ),
    )
    conv.add_argument("benchmark", choices=BENCHMARKS)
    conv.add_argument(
        "--src",
        required=True,
        help="annotation file (videomme/videommmu: parquet; longvideobench/mlvu: json; "
        "nextqa: csv) or a directory of them",
    )
    conv.add_argument("--videos", required=True, help="directory holding the benchmark's videos")
    conv.add_argument("--out", required=True, help="question file to write (JSONL)")
    conv.set_defaults(func=run_convert)
    task = sub.add_parser(
        "lmms-task",
        help="write a question file as a local lmms-eval task (YAML + data file, no hub)",
        description=(
            "Write DIR/NAME.yaml and DIR/NAME.jsonl: an lmms-eval generate_until task over the "
            "questions (video paths made absolute), prompting with the question and its lettered "
            "options and scoring exact match of the answer letter. Run it with "
            "`lmms-eval --include_path DIR --tasks NAME ...`."
        ),
    )
    task.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or benchmark dir)")
    task.add_argument("--out", required=True, metavar="DIR", help="directory for the task files")
    task.add_argument("--name", default="refocus_qa", help="task name (default refocus_qa)")
    task.add_argument("--max-new-tokens", type=int, default=16, help="generation budget (default 16)")
    task.set_defaults(func=run_lmms_task)


def run_convert(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.data.convert import convert
    from refocus.errors import RefocusError

    report = convert(args.benchmark, args.src, args.videos, args.out, progress=True)
    if report.renamed:
        print(
            f"warning: {len(report.renamed)} repeated ids renamed with a #N suffix "
            f"(original id in meta.source_id), e.g. {report.renamed[0][0]} -> "
            f"{report.renamed[0][1]}",
            file=sys.stderr,
        )
    if report.skipped:
        print(f"skipped rows listed in {report.skipped_path}", file=sys.stderr)
    if report.converted == 0:
        raise RefocusError(
            f"no items converted from {args.src}: {report.summary()}"
            + (f"; see {report.skipped_path}" if report.skipped else "; the source has no rows")
        )
    summary(report.summary())
    return 0


def run_lmms_task(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.integrations.lmms_eval.task import write_task

    path = write_task(resolve_question_file(args.data), args.out, args.name, args.max_new_tokens)
    summary(f"lmms-task {args.name}: {path} (run: lmms-eval --include_path {path.parent} --tasks {args.name})")
    return 0
