"""Decoding speed: each installed backend at 4 fps / 224 px, and cold decode vs cache re-read.

Writes a realistic clip (default 60 s, 30 fps, 256x256, libx264 with B-frames, moving
texture) into a temporary directory, then times ``load_video(..., cache=False)`` per backend
(median of --repeats) and a cache re-read (median of --cache-repeats; the re-read copies every
frame into memory, so the lazy memory map does not flatter it). The last line of stdout is a
JSON dict: ``{"backends": {name: seconds}, "cache_speedup": x, "fastest_ratio": {name: t/t_min}}``.

``--baseline SRC`` (the ``src`` folder of another checkout, e.g. from ``git worktree add``) also
times the default backend of that code against this one on the same clip: ``--rounds`` pairs of
fresh processes, alternating, each the median of 3 decodes, wall and process CPU time (all
threads), so both versions see the same machine load; the JSON gains ``"baseline"`` with the
median of each and the ratios this / baseline.

    python benchmarks/decode.py [--seconds 60] [--fps 30] [--side 256] [--codec libx264]
                                [--baseline ../old/src --rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_clip(path: Path, seconds: float, fps: int, side: int, codec: str) -> int:
    """A moving texture with some noise, so the encoder does real work; returns frame count."""
    import av

    n = int(seconds * fps)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    noise = rng.integers(0, 24, (side, side, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            phase = i / fps
            img = np.empty((side, side, 3), np.uint8)
            img[..., 0] = (127 + 100 * np.sin(xx / 17 + 2 * phase)).astype(np.uint8)
            img[..., 1] = (127 + 100 * np.sin(yy / 23 - 3 * phase)).astype(np.uint8)
            img[..., 2] = ((xx + yy + 40 * i) % 256).astype(np.uint8)
            img += np.roll(noise, i, axis=0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the written clip")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--codec", default="libx264")
    parser.add_argument("--sample-fps", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-repeats", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="src folder of the code to compare with")
    parser.add_argument("--rounds", type=int, default=6, help="alternating pairs for --baseline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REFOCUS_CACHE_DIR"] = str(Path(tmp) / "cache")
        from refocus.video import available_backends, load_video

        clip = Path(tmp) / "clip.mp4"
        start = time.perf_counter()
        n = write_clip(clip, args.seconds, args.fps, args.side, args.codec)
        print(f"wrote {n} frames ({args.seconds:g} s, {args.fps} fps, {args.side}px, {args.codec}, "
              f"{clip.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")

        def decode(backend: str):
            return load_video(clip, fps=args.sample_fps, size=args.size, backend=backend,
                              cache=False)

        backends: dict[str, float] = {}
        reference = None
        for backend in available_backends():
            video = decode(backend)  # warm-up: imports, page cache, and a result to compare
            if reference is None:
                reference = video
            same = video.timestamps.tolist() == reference.timestamps.tolist()
            backends[backend] = median_time(lambda b=backend: decode(b), args.repeats)
            print(f"{backend:>10}: {backends[backend]:.3f} s for {video.num_frames} frames "
                  f"at {args.sample_fps:g} fps ({n / backends[backend]:.0f} source frames/s), "
                  f"timestamps {'identical to' if same else 'DIFFER from'} {reference.backend}")
        fastest = min(backends.values())
        ratios = {b: t / fastest for b, t in backends.items()}
        print("ratio to fastest: " + ", ".join(f"{b} {r:.2f}x" for b, r in ratios.items()))

        load = lambda: load_video(clip, fps=args.sample_fps, size=args.size)  # noqa: E731
        cold = median_time(lambda: (_clear_cache(), load()), args.repeats)
        load()  # store
        assert load().from_cache
        lazy = median_time(load, args.cache_repeats)
        full = median_time(lambda: np.array(load().frames), args.cache_repeats)
        speedup = cold / full
        print(f"cold decode + store {cold:.3f} s; cache re-read {full * 1e3:.1f} ms with a full "
              f"copy ({lazy * 1e3:.1f} ms memory-mapped): {speedup:.0f}x faster")

        result = {
            "backends": {b: round(t, 4) for b, t in backends.items()},
            "cache_speedup": round(speedup, 1),
            "fastest_ratio": {b: round(r, 3) for b, r in ratios.items()},
        }
        if args.baseline is not None:
            result["baseline"] = compare(clip, args.baseline, args.rounds, args.sample_fps, args.size)
    print(json.dumps(result))


_TIMER = """
import statistics, sys, time
from refocus.video import load_video
clip, fps, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
load_video(clip, fps=fps, size=size, cache=False)
wall, cpu = [], []
for _ in range(3):
    w, c = time.perf_counter(), time.process_time()
    load_video(clip, fps=fps, size=size, cache=False)
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
print(statistics.median(wall), statistics.median(cpu))
"""


def compare(clip: Path, baseline: Path, rounds: int, fps: float, size: int) -> dict:
    """Median wall / CPU seconds of this code's and ``baseline``'s pyav decode, alternating."""
    here = Path(__file__).resolve().parents[1] / "src"
    runs: dict[str, list[tuple[float, float]]] = {"this": [], "baseline": []}
    for _ in range(rounds):
        for name, src in (("baseline", baseline.resolve()), ("this", here)):
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run([sys.executable, "-c", _TIMER, str(clip), str(fps), str(size)],
                                 env=env, capture_output=True, text=True, check=True)
            wall, cpu = map(float, out.stdout.split()[-2:])
            runs[name].append((wall, cpu))
    med = {name: [statistics.median(v[i] for v in r) for i in (0, 1)] for name, r in runs.items()}
    ratio_wall, ratio_cpu = (med["this"][i] / med["baseline"][i] for i in (0, 1))
    print(f"pyav vs baseline ({rounds} alternating rounds): wall {med['this'][0]:.3f} / "
          f"{med['baseline'][0]:.3f} s = {ratio_wall:.2f}x, CPU {med['this'][1]:.3f} / "
          f"{med['baseline'][1]:.3f} s = {ratio_cpu:.2f}x")
    return {"this_wall": round(med["this"][0], 4), "baseline_wall": round(med["baseline"][0], 4),
            "this_cpu": round(med["this"][1], 4), "baseline_cpu": round(med["baseline"][1], 4),
            "ratio_wall": round(ratio_wall, 3), "ratio_cpu": round(ratio_cpu, 3)}


def _clear_cache() -> None:
    import shutil

    from refocus.video.cache import cache_dir

    shutil.rmtree(cache_dir(), ignore_errors=True)


if __name__ == "__main__":
    main()
