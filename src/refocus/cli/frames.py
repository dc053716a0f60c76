"""``refocus frames VIDEO``: decode a video the way training and evaluation will see it."""

from __future__ import annotations

import argparse
import json
import time

from refocus.cli._common import add_decode_arguments
from refocus.video import DECODERS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "frames",
        help="decode a video by presentation time and print its sampled frame times as JSON",
        description="Decode VIDEO at --fps (at most --max-frames, spread evenly when capped), "
        "resize to --size, and print num_frames, fps, timestamps (pts seconds), duration, "
        "width, height (as displayed: the display matrix of phone videos is applied), "
        "rotation and skipped_packets as JSON. Decoded frames are cached under "
        "$REFOCUS_CACHE_DIR/frames.",
    )
    p.add_argument("video", metavar="VIDEO", help="video file (any container FFmpeg reads)")
    add_decode_arguments(p, size=True)
    p.add_argument("--backend", default="pyav", choices=DECODERS.names(),
                   help="decoder (default pyav; decord/torchcodec are optional extras)")
    p.add_argument("--no-autorotate", action="store_true",
                   help="keep the stored orientation instead of applying the display matrix "
                   "(ffmpeg's -noautorotate)")
    p.add_argument("--no-cache", action="store_true", help="decode even if cached, store nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from refocus.cli._common import summary
    from refocus.video import load_video

    start = time.perf_counter()
    video = load_video(args.video, fps=args.fps, max_frames=args.max_frames, size=args.size,
                       backend=args.backend, cache=not args.no_cache,
                       autorotate=not args.no_autorotate)
    elapsed = time.perf_counter() - start
    out = {
        "num_frames": video.num_frames,
        "fps": video.fps,
        "timestamps": [float(t) for t in video.timestamps],
        "duration": video.duration,
        "width": video.width,
        "height": video.height,
        "rotation": video.rotation,
        "skipped_packets": video.skipped_packets,
    }
    print(json.dumps(out))
    source = "cache" if video.from_cache else video.backend
    summary(f"frames: {video.num_frames} frames at {video.fps:.3g} fps from {args.video} "
            f"({video.duration:.2f} s, {video.width}x{video.height}) via {source} in {elapsed:.2f} s")
    return 0
