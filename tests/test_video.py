"""Video ingest: sampling by presentation time, bad files, the frame cache, ``refocus frames``.

Every video here is written by PyAV into ``tmp_path`` with known pts, so the expected frames
are computed independently from the written timestamps (brute force, not the library's rule
code) and compared exactly.
"""

from __future__ import annotations

import json
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from refocus.cli import main
from refocus.errors import ConfigError, VideoError
from refocus.video import available_backends, load_video
from refocus.video.cache import cache_dir, cache_key
from refocus.video.sampling import OnlineSelector, sampling_plan, select_frames, target_times

MS = Fraction(1, 1000)


# ---------------------------------------------------------------------------------------------
# helpers


def frame_color(i: int) -> tuple[int, int, int]:
    """A flat colour that identifies frame i (< 100) after lossy coding: 24 levels apart."""
    return (20 + (i % 10) * 24, 20 + (i // 10) % 10 * 24, 128)


def write_video(path: Path, pts_ms: list[int], size: int = 32, codec: str = "mpeg4",
                options: dict[str, str] | None = None) -> Path:
    """Write one flat-coloured frame per entry of ``pts_ms`` (presentation times in ms)."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000  # near-lossless, so colours identify frames
        stream.codec_context.time_base = MS
        for i, pts in enumerate(pts_ms):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = frame_color(i)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts
            frame.time_base = MS
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio(path: Path, codec: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=44100)
        stream.layout = "mono"
        fmt = stream.codec_context.format.name
        for i in range(8):
            frame = av.AudioFrame(format=fmt, layout="mono", samples=1152)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = 44100
            frame.pts = i * 1152
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def expected(pts_ms: list[int], duration: float, fps: float, max_frames: int) -> list[float]:
    """Brute force of the documented rule: for each target, the last frame at or before it."""
    times = [p / 1000 for p in pts_ms]
    n = int(np.ceil((duration - 1e-3) * fps - 1e-6))  # end exclusive, 1 ms slack
    if n > max_frames:
        targets = [times[0] + j * duration / max_frames for j in range(max_frames)]
    else:
        targets = [times[0] + j / fps for j in range(max(n, 1))]
    chosen = []
    for t in targets:
        on_screen = max((x for x in times if x <= t + 1e-6), default=times[0])
        if on_screen not in chosen:
            chosen.append(on_screen)
    return chosen


def assert_real_frames(video, pts_ms: list[int]) -> None:
    """Timestamps are written pts, strictly increasing, and each frame shows that pts' colour."""
    written = [p / 1000 for p in pts_ms]
    ts = video.timestamps
    assert ts.dtype == np.float64
    assert np.all(np.diff(ts) > 0)
    for k, t in enumerate(ts):
        i = int(np.argmin(np.abs(np.asarray(written) - t)))
        assert abs(written[i] - t) < 1e-9, f"timestamp {t} is not a written pts"
        mean = video.frames[k].reshape(-1, 3).mean(0)
        assert np.abs(mean - frame_color(i)).max() < 10, (k, t, mean, frame_color(i))


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))


CFR_30 = [round(i * 1000 / 30) for i in range(90)]  # 3 s at 30 fps
VFR = [0, 40, 50, 130, 400, 410, 420, 700, 1130, 1140, 1500, 1520, 1990, 2300, 2310, 2900]
GAP = [i * 100 for i in range(20)] + [8000 + i * 100 for i in range(20)]  # 2 s, 6 s hole, 2 s


# ---------------------------------------------------------------------------------------------
# the sampling rule as pure functions


def test_sampling_plan_counts_and_cap():
    assert sampling_plan(10.0, 4.0, 512) == (40, 4.0)  # end exclusive: 0, 0.25, ..., 9.75
    assert sampling_plan(10.1, 4.0, 512) == (41, 4.0)
    assert sampling_plan(3.0003, 4.0, 512) == (12, 4.0)  # container rounding earns no target
    assert sampling_plan(0.01, 4.0, 512) == (1, 4.0)
    n, rate = sampling_plan(300.0, 4.0, 512)
    assert (n, rate) == (512, 512 / 300.0)
    t = target_times(1.5, 300.0, 4.0, 512)
    assert t[0] == 1.5 and t[-1] == pytest.approx(1.5 + 300.0 * 511 / 512)


def test_select_frames_at_or_before_and_deduped():
    times = np.array([0.0, 0.1, 0.35, 5.0, 5.2])
    targets = np.arange(0, 5.5, 0.25)
    # 0->0.0, 0.25->0.1, 0.5..4.75->0.35 (the frame on screen through the gap), 5.0, 5.25->5.2
    assert select_frames(times, targets).tolist() == [0, 1, 2, 3, 4]
    assert select_frames(times, np.array([0.34999999, 4.999])).tolist() == [2]  # EPS tie: "at"


def test_online_selector_matches_vectorised_rule():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        times = np.cumsum(rng.exponential(rng.choice([0.03, 0.3, 2.0]), n))
        times[0] = rng.uniform(0, 3)
        times = np.sort(times)
        duration = float(times[-1] - times[0] + rng.uniform(0.01, 1.0))
        fps, cap = float(rng.choice([1.0, 4.0, 30.0])), int(rng.integers(1, 40))
        want = select_frames(times, target_times(times[0], duration, fps, cap))
        sel, got = OnlineSelector(duration, fps, cap), []
        for i, t in enumerate(times):
            if sel.push(float(t)):
                got.append(i - 1)
            if sel.done:
                break
        else:
            if sel.finish():
                got.append(n - 1)
        assert got == want.tolist()


# ---------------------------------------------------------------------------------------------
# decoding real files


def test_constant_rate_video_sampled_at_4fps(tmp_path):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    video = load_video(path, size=32, cache=False)
    assert video.frames.shape == (12, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.timestamps.tolist() == expected(CFR_30, video.duration, 4.0, 512)
    assert video.fps == 4.0 and video.backend == "pyav"
    assert (video.width, video.height) == (32, 32)
    assert video.duration == pytest.approx(3.0, abs=0.05)
    assert_real_frames(video, CFR_30)


def test_variable_frame_rate_uses_presentation_time(tmp_path):
    path = write_video(tmp_path / "vfr.mp4", VFR)
    video = load_video(path, fps=4.0, size=32, cache=False)
    want = expected(VFR, video.duration, 4.0, 512)
    assert video.timestamps.tolist() == want
    # index x nominal fps would claim frame 7 sits at 7/30 s; its real pts is 0.7 s
    assert 0.7 in want and 0.13 in want and 0.05 not in want
    assert_real_frames(video, VFR)


def test_timeline_gap_invents_no_frames(tmp_path):
    path = write_video(tmp_path / "gap.mkv", GAP)
    video = load_video(path, fps=4.0, size=32, cache=False)
    ts = video.timestamps
    assert ts.tolist() == expected(GAP, video.duration, 4.0, 512)
    # the 24 targets inside the 6 s hole all show the last frame before it: returned once
    assert not np.any((ts > 1.9) & (ts < 8.0))
    assert 1.9 in ts.tolist() and ts[ts >= 8.0][0] == 8.0
    assert_real_frames(video, GAP)
    # sampling faster than the material returns every real frame exactly once
    dense = load_video(path, fps=30.0, size=32, cache=False)
    assert dense.timestamps.tolist() == [p / 1000 for p in GAP]


def test_max_frames_spreads_over_whole_video(tmp_path):
    path = write_video(tmp_path / "cap.mp4", CFR_30)
    video = load_video(path, fps=30.0, max_frames=10, size=32, cache=False)
    assert video.num_frames == 10
    assert video.fps == pytest.approx(10 / video.duration)
    assert video.timestamps[0] == 0.0 and video.timestamps[-1] >= 2.6
    assert video.timestamps.tolist() == expected(CFR_30, video.duration, 30.0, 10)
    assert_real_frames(video, CFR_30)


def test_one_frame_video(tmp_path):
    path = write_video(tmp_path / "one.mp4", [0])
    video = load_video(path, size=16, cache=False)
    assert video.frames.shape == (1, 16, 16, 3) and video.timestamps.tolist() == [0.0]


def test_b_frames_reordered_to_presentation_order(tmp_path):
    pts = CFR_30[:45]
    path = write_video(tmp_path / "x264.mp4", pts, codec="libx264")
    video = load_video(path, fps=10.0, size=32, cache=False)
    assert video.timestamps.tolist() == expected(pts, video.duration, 10.0, 512)
    assert_real_frames(video, pts)


def test_resizes_to_square(tmp_path):
    path = write_video(tmp_path / "v.mp4", CFR_30[:8], size=48)
    video = load_video(path, size=20, cache=False)
    assert video.frames.shape[1:] == (20, 20, 3) and (video.width, video.height) == (48, 48)
    assert not video.frames.flags.writeable


# ---------------------------------------------------------------------------------------------
# bad input


def _truncated(tmp_path: Path) -> Path:
    full = write_video(tmp_path / "full.mp4", CFR_30)  # moov index written at the end
    data = full.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_FILES = {
    "missing": lambda d: d / "missing.mp4",
    "empty": lambda d: _file(d / "empty.mp4", b""),
    "text": lambda d: _file(d / "notes.mp4", b"not a video\n" * 50),
    "truncated": _truncated,
    "audio_wav": lambda d: write_audio(d / "sound.wav", "pcm_s16le"),
    "audio_mkv": lambda d: write_audio(d / "sound.mkv", "mp2"),
    "directory": lambda d: (d / "clips.mp4").mkdir() or d / "clips.mp4",
}
REASONS = {
    "missing": "not found", "empty": "empty", "text": "cannot open", "truncated": "cannot open",
    "audio_wav": "no video stream", "audio_mkv": "no video stream", "directory": "directory",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_raises_video_error(tmp_path, kind):
    path = BAD_FILES[kind](tmp_path)
    with pytest.raises(VideoError) as info:
        load_video(path)
    assert info.value.path == str(path) and path.name in str(info.value)
    assert REASONS[kind] in info.value.reason


@pytest.mark.parametrize("kind", ["text", "audio_wav", "truncated"])
def test_bad_file_cli_prints_one_error_line(tmp_path, kind, capsys):
    path = BAD_FILES[kind](tmp_path)
    assert main(["frames", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and path.name in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    with pytest.raises(VideoError):
        main(["--debug", "frames", str(path)])


def test_truncated_container_that_still_opens_returns_decoded_prefix(tmp_path):
    full = write_video(tmp_path / "full.mkv", CFR_30)  # matroska: header first, frames after
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])
    video = load_video(cut, size=32, cache=False)
    assert 1 <= video.num_frames < 12
    assert_real_frames(video, CFR_30)
    cut.write_bytes(data[:60])  # header only: opens, or not, but never yields frames
    with pytest.raises(VideoError, match="cut.mkv"):
        load_video(cut, cache=False)


def test_bad_arguments_and_backends(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", CFR_30[:4])
    with pytest.raises(ConfigError, match="fps"):
        load_video(path, fps=0)
    with pytest.raises(ConfigError, match="max_frames"):
        load_video(path, max_frames=0)
    with pytest.raises(ConfigError, match="unknown video backend"):
        load_video(path, backend="opencv")
    import refocus.video as video_module

    video_module._import_error.cache_clear()
    monkeypatch.setitem(sys.modules, "decord", None)  # as if decord were not installed
    try:
        assert "decord" not in available_backends() and "pyav" in available_backends()
        with pytest.raises(ConfigError, match=r"pip install 'refocus\[decord\]'"):
            load_video(path, backend="decord", cache=False)
    finally:
        video_module._import_error.cache_clear()


# ---------------------------------------------------------------------------------------------
# cache


def test_cache_hit_returns_identical_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", VFR)
    first = load_video(path, size=32)
    assert not first.from_cache
    entries = sorted(p.suffix for p in cache_dir().rglob("*") if p.is_file())
    assert entries == [".json", ".npy"]
    second = load_video(path, size=32)
    assert second.from_cache and second.path == str(path)
    np.testing.assert_array_equal(second.frames, first.frames)
    assert second.timestamps.tolist() == first.timestamps.tolist()
    assert (second.fps, second.duration, second.width, second.height, second.backend) == (
        first.fps, first.duration, first.width, first.height, first.backend)
    assert isinstance(second.frames.base, np.memmap) or not second.frames.flags.owndata
    # a copy elsewhere has the same content, so it shares the entry
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(path.read_bytes())
    assert load_video(copy, size=32).from_cache


def test_cache_key_covers_arguments_and_content(tmp_path):
    path = write_video(tmp_path / "v.mp4", VFR)
    base = cache_key(path, 4.0, 512, 224, "pyav")
    others = {cache_key(path, 2.0, 512, 224, "pyav"), cache_key(path, 4.0, 64, 224, "pyav"),
              cache_key(path, 4.0, 512, 112, "pyav"), cache_key(path, 4.0, 512, 224, "decord")}
    assert base not in others and len(others) == 4
    assert cache_key(path, 4, 512, 224, "pyav") == base
    load_video(path, size=32)
    write_video(path, GAP)  # same name, new content
    assert cache_key(path, 4.0, 512, 224, "pyav") != base
    again = load_video(path, size=32)
    assert not again.from_cache
    assert again.timestamps.tolist() == expected(GAP, again.duration, 4.0, 512)


def test_cache_disabled_writes_nothing(tmp_path):
    path = write_video(tmp_path / "v.mp4", CFR_30[:10])
    load_video(path, cache=False)
    assert not cache_dir().exists()


def test_damaged_cache_entry_is_ignored(tmp_path):
    path = write_video(tmp_path / "v.mp4", CFR_30[:10])
    first = load_video(path, size=32)
    for npy in cache_dir().rglob("*.npy"):
        npy.write_bytes(b"garbage")
    again = load_video(path, size=32)
    assert not again.from_cache
    np.testing.assert_array_equal(again.frames, first.frames)


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_frames_prints_json(tmp_path, capsys):
    path = write_video(tmp_path / "gap.mkv", GAP)
    assert main(["frames", str(path), "--fps", "4", "--size", "32"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert set(out) == {"num_frames", "fps", "timestamps", "duration", "width", "height",
                        "rotation", "skipped_packets"}
    assert out["rotation"] == 0 and out["skipped_packets"] == 0
    assert out["timestamps"] == load_video(path, size=32).timestamps.tolist()
    assert out["num_frames"] == len(out["timestamps"]) and out["fps"] == 4.0
    assert (out["width"], out["height"]) == (32, 32)
    assert len(captured.err.strip().splitlines()) == 1 and "frames" in captured.err
    assert main(["frames", str(path), "--size", "32", "--no-cache", "--max-frames", "5"]) == 0
    capped = json.loads(capsys.readouterr().out)
    # 5 targets spread over 9.9 s: those inside the hole all show the 1.9 s frame, once
    assert capped["timestamps"] == expected(GAP, out["duration"], 4.0, 5)
    assert capped["timestamps"][:2] == [0.0, 1.9] and capped["num_frames"] < 5


# ---------------------------------------------------------------------------------------------
# optional backends: same frames, same timestamps


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
@pytest.mark.parametrize("pts,name", [(VFR, "vfr.mp4"), (GAP, "gap.mkv"), (CFR_30, "cfr.mp4")])
def test_optional_backend_matches_pyav(tmp_path, backend, pts, name):
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    path = write_video(tmp_path / name, pts)
    ref = load_video(path, size=32, cache=False)
    for max_frames in (512, 5):
        video = load_video(path, size=32, max_frames=max_frames, backend=backend, cache=False)
        want = ref if max_frames == 512 else load_video(path, size=32, max_frames=5, cache=False)
        assert video.backend == backend
        assert video.timestamps.tolist() == want.timestamps.tolist()
        assert video.frames.shape == want.frames.shape
        assert np.abs(video.frames.astype(int) - want.frames.astype(int)).mean() < 4
        assert_real_frames(video, pts)


def test_decord_odd_output_size(tmp_path):
    if "decord" not in available_backends():
        pytest.skip("decord not installed")
    path = write_video(tmp_path / "v.mp4", CFR_30[:8])
    video = load_video(path, size=16, backend="decord", cache=False)  # decord's scaler fails here
    assert video.frames.shape == (2, 16, 16, 3)


def test_env_var_sets_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere" / "frames"
    monkeypatch.delenv("REFOCUS_CACHE_DIR")
    assert cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "refocus" / "frames"
