"""``refocus synth {niah,query,multi}``: write a synthetic benchmark (videos + qa.jsonl)."""

from __future__ import annotations

import argparse
import time

from refocus.cli._common import parse_int_pair, summary
from refocus.data.synth.common import SynthConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic benchmark: real videos under DIR/videos/ and DIR/qa.jsonl",
        description="Write a synthetic benchmark with known evidence spans. niah: one short "
        "needle object in a cluttered haystack, questions about its colour or shape. query: 10 objects "
        "of distinct colours and shapes at separate times, the question names one by its colour or shape and asks the other. multi: "
        "2-6 separated events, questions about their order, count and comparison.",
    )
    parser.add_argument("kind", choices=["niah", "query", "multi"], help="which benchmark")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--videos", type=int, default=100, help="number of videos (default 100)")
    parser.add_argument(
        "--frames",
        default="64,256",
        help="MIN,MAX video length in frames at --fps, drawn uniformly per video (default 64,256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=SynthConfig.size,
                        help=f"frame side in pixels (default {SynthConfig.size})")
    parser.add_argument("--fps", type=float, default=SynthConfig.fps,
                        help=f"frame rate of the written videos (default {SynthConfig.fps:g})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark

    frames = parse_int_pair(args.frames, "--frames")
    start = time.perf_counter()
    qa_path = make_benchmark(
        args.kind,
        args.out,
        videos=args.videos,
        frames=frames,
        seed=args.seed,
        fps=args.fps,
        size=args.size,
        progress=True,
    )
    questions = len(load_questions(qa_path))
    seconds = time.perf_counter() - start
    summary(
        f"synth {args.kind}: {args.videos} videos, {questions} questions -> {qa_path} "
        f"({seconds:.1f} s)"
    )
    return 0
