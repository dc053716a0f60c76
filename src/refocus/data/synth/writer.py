"""Write frames to a real compressed video file with PyAV.

Synthetic benchmarks go through the same decode path as real ones, so they must be real
encoded files (H.264 in MP4 here), not arrays on disk.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

X264_ASM = "MMX2,SSE,SSE2,SSE2Fast,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,FMA3,LZCNT,BMI1,BMI2,AVX2"
"""x264 CPU flags: every SIMD level up to AVX2, not AVX-512 (see ``write_video``)."""


@functools.cache
def pick_codec() -> str:
    """libx264 when PyAV's FFmpeg has it (it does in the PyPI wheels), else MPEG-4 part 2."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError
        return "mpeg4"
    return "libx264"


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
    """Encode RGB frames (each (S, S, 3) uint8) at a constant ``fps``; return the frame count.

    Frame ``i`` gets pts ``i`` in a ``1/fps`` time base, so its presentation time is exactly
    ``i / fps`` seconds. No B-frames and one encoder thread: decode order equals display
    order and the same frames give the same bytes (the benchmark is reproducible from its
    seed). Two settings make the bytes reproducible with libx264, both checked by
    ``tests/test_synth.py`` (which reads the settings x264 writes into the stream):

    - B-frames off through ``max_b_frames`` (FFmpeg's ``bf``), which libx264 applies after
      its preset. x264's own name ``bframes`` is not an FFmpeg option and was ignored
      without a word, leaving the preset's 3 B-frames (and packets out of display order).
    - x264 without its AVX-512 kernels (``X264_ASM``): they made the bytes depend on the
      process's earlier allocations (same frames, different files within one pytest run).

    The file is written under a temporary name and renamed when complete.
    """
    import av

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1000)
    time_base = 1 / rate
    codec = pick_codec()
    tmp = path.with_name(path.name + ".part")
    count = 0
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.max_b_frames = 0
        if codec == "libx264":
            stream.options = {
                "crf": str(crf),
                "preset": "veryfast",
                "threads": "1",
                # x264's AVX-512 kernels read past the end of the input frame, and what lies
                # there changed the bytes written on some runs (same frames, same process);
                # without them (AVX2 and below) the output is reproducible. Same speed here.
                "x264-params": f"asm={X264_ASM}",
            }
        else:  # mpeg4: qscale 2 is near-lossless for flat colours
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 2 * 118  # FF_QP2LAMBDA * q
            stream.options = {"threads": "1"}
        for arr in frames:
            if count == 0:
                stream.height, stream.width = arr.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = count
            frame.time_base = time_base
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode())
    tmp.replace(path)
    return count
