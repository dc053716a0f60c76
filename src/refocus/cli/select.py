"""``refocus select``: run a frame selector over a question file and write the selections."""

from __future__ import annotations

import argparse
from pathlib import Path

from refocus.cli._common import add_decode_arguments
from refocus.distributed import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="run a frame selector (the trained policy by default) and write one selection per item",
        description="Decode each item's video by pts (--fps, at most --max-frames), pick --budget "
        "frames with the selector and write SEL.jsonl, one line per item: {id, video, selector, "
        "budget, indices (sorted, into the decoded frames), timestamps (s, pts), num_frames, fps, "
        "seed, mode}. An item that cannot be selected (undecodable video, oracle without "
        "evidence, invalid question line) is written as a line with an 'error' field instead of "
        "'indices', and counted in the summary; nothing else is dropped.",
    )
    p.add_argument("--policy", metavar="DIR", help="trained policy checkpoint (selector policy:DIR)")
    p.add_argument("--selector", metavar="NAME[:ARG]",
                   help="any selector instead of --policy: uniform, random, oracle, policy:DIR, ...")
    p.add_argument("--data", required=True, metavar="QA.jsonl", help="question file (or benchmark dir)")
    p.add_argument("--budget", required=True, type=int, metavar="K", help="frames to select per item")
    p.add_argument("--out", required=True, metavar="SEL.jsonl", help="selection file to write")
    p.add_argument("--seed", type=int, default=0, help="seed of random / sampling selectors (default 0)")
    p.add_argument("--greedy", action="store_true", help="policy: greedy decoding (same as --mode greedy)")
    p.add_argument("--protocol", choices=["greedy", "official"], default=None,
                   help="how the policy's selection is read off (default greedy: the most likely frame "
                   "at each step; official: the authors' export, a sample at temperature 1 (candidate 0 "
                   "of --candidates), sorted, uniform for videos of <= --uniform-below decoded frames)")
    p.add_argument("--candidates", type=int, default=64, help="official: candidates sampled per video (default 64)")
    p.add_argument("--uniform-below", type=int, default=128, metavar="T",
                   help="official: videos of at most T decoded frames get uniform indices (default 128)")
    p.add_argument("--mode", choices=["greedy", "sample", "distribution", "official"], default=None,
                   help="policy selection mode (default greedy: deterministic, one pass; sample: "
                   "one seeded sample; distribution: top-K of the 64-sample selection distribution)")
    add_decode_arguments(p)
    add_device_arguments(p, "the policy (or another model-based selector)")
    p.set_defaults(func=run)


def resolve_spec(args: argparse.Namespace) -> tuple[str, str | None]:
    """Selector spec and mode from --policy / --selector / --greedy / --mode."""
    from refocus.errors import RefocusError

    if bool(args.policy) == bool(args.selector):
        raise RefocusError("give exactly one of --policy DIR or --selector NAME[:ARG]")
    spec = args.selector or f"policy:{args.policy}"
    mode = args.mode
    protocol = getattr(args, "protocol", None)
    if protocol is not None:
        if mode not in (None, protocol):
            raise RefocusError(f"--protocol {protocol} conflicts with --mode {mode}")
        mode = protocol
    if args.greedy:
        if mode not in (None, "greedy"):
            raise RefocusError(f"--greedy conflicts with --mode {mode}")
        mode = "greedy"
    return spec, mode


def run(args: argparse.Namespace) -> int:
    import json

    from refocus.cli._common import summary
    from refocus.cli.reference import resolve_question_file
    from refocus.data.questions import load_questions
    from refocus.errors import RefocusError
    from refocus.selectors import get_selector
    from refocus.selectors.records import selection_records

    if args.budget < 1:
        raise RefocusError(f"--budget must be >= 1, got {args.budget}")
    spec, mode = resolve_spec(args)
    errors: list = []
    items = load_questions(resolve_question_file(args.data), errors=errors)
    options = ({"num_samples": args.candidates, "uniform_below": args.uniform_below}
               if mode == "official" else None)
    selector = get_selector(spec, seed=args.seed, mode=mode, device=args.device, dtype=args.dtype, options=options)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    written = failed = 0
    first_error = errors[0] if errors else None
    with tmp.open("w") as f:
        for error in errors:
            f.write(json.dumps({"id": None, "line": error.line, "error": " ".join(str(error).split())}) + "\n")
        for record in selection_records(items, selector, args.budget, fps=args.fps,
                                        max_frames=args.max_frames):
            f.write(json.dumps(record) + "\n")
            failed += "error" in record
            first_error = first_error or record.get("error")
            written += "error" not in record
    tmp.replace(out)
    if not written:
        raise RefocusError(f"no item could be selected (first error: {first_error}); error lines in {out}")
    skipped = failed + len(errors)
    summary(f"select {selector.name}@{args.budget}: {written} selections, {skipped} skipped "
            f"({len(errors)} invalid lines, {failed} items failed) -> {out}")
    return 0
