"""Video ingest on the file shapes real datasets contain (issue 18): display rotation, AVI with
B-frames, damaged packets, files cut short, Matroska/WebM start offsets and long audio, raw
H.264/HEVC elementary streams.

Every file is written here with PyAV (no ffmpeg binary). Frame ``i`` of a clip is a flat colour
that encodes ``i`` (plus a red marker in the stored top-left corner), shown at ``i / RATE``
seconds, so a returned frame can be checked against its timestamp: the frame a viewer sees at
time ``t`` is frame ``round(t * RATE)``, within one frame interval as the issue asks (AVI has
no presentation times; FFmpeg's invented ``pts = dts + 1`` shifts some AVI streams by one).
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from refocus.cli import main
from refocus.errors import VideoError
from refocus.video import available_backends, load_video

RATE = 25
N = 100  # 4 s at 25 fps, like the testsrc clips
W, H = 64, 48
BACKENDS = [b for b in ("pyav", "decord", "torchcodec") if b in available_backends()]
OPTIONAL = [pytest.param(b, marks=pytest.mark.skipif(b not in BACKENDS, reason=f"{b} not installed"))
            for b in ("pyav", "decord", "torchcodec")]


def unsupported(backend: str, path: Path) -> bool:
    """decord / torchcodec cannot time or decode this file: they must say so (VideoError naming
    the pyav backend), not return wrong frames."""
    if backend == "pyav":
        return False
    with pytest.raises(VideoError, match="pyav"):
        load_video(path, fps=RATE, size=16, backend=backend, cache=False)
    return True


def color(i: int) -> tuple[int, int, int]:
    """A flat colour that identifies frame i (< 100) after lossy coding: 50 levels apart."""
    return (20 + (i % 5) * 50, 20 + (i // 5) % 5 * 50, 20 + (i // 25) % 4 * 50)


def picture(i: int, w: int = W, h: int = H) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = color(i)
    img[: h // 4, : w // 4] = (255, 0, 0)  # stored top-left corner
    return img


def index_of(frame: np.ndarray) -> int:
    """Which frame a decoded (S, S, 3) picture shows, from the colour of its centre."""
    s = frame.shape[0]
    mean = frame[s // 3 : 2 * s // 3, s // 3 : 2 * s // 3].reshape(-1, 3).mean(0)
    r, g, b = (int(np.clip(round((v - 20) / 50), 0, 4)) for v in mean)
    return r + 5 * g + 25 * min(b, 3)


def write(path: Path, fmt: str | None = None, codec: str = "libx264", n: int = N,
          start: int = 0, bframes: int | None = None, options: dict | None = None,
          rotation: tuple | None = None, audio_seconds: int = 0,
          container_options: dict | None = None) -> Path:
    """Frame i at pts ``start + i`` in a 1/RATE time base; optional Opus audio track."""
    tb = Fraction(1, RATE)
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = tb
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        stream.options = options or {}
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        audio = out.add_stream("libopus", rate=48000) if audio_seconds else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = start + i, tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio is not None:
            for k in range(audio_seconds * 50):
                chunk = av.AudioFrame(format=audio.codec_context.format.name, layout="mono", samples=960)
                for plane in chunk.planes:
                    plane.update(bytes(plane.buffer_size))
                chunk.sample_rate, chunk.pts = 48000, k * 960
                out.mux(audio.encode(chunk))
            out.mux(audio.encode())
    return path


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))


def video_packets(path: Path) -> list:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


def assert_shown_at_their_times(video, first: int = 0, last: int = N - 1, offset: float = 0.0):
    """Each returned frame is the one on screen at its timestamp (within one frame interval),
    times increase, and the frames cover ``first..last`` (as indices of the written clip)."""
    ts = video.timestamps
    assert np.all(np.diff(ts) > 0)
    shown = [index_of(f) for f in video.frames]
    for t, i in zip(ts, shown, strict=True):
        assert abs((t - offset) - i / RATE) <= 1 / RATE + 1e-6, (t, i)
    assert shown[0] == first and shown[-1] == last, (shown[0], shown[-1])


# ---------------------------------------------------------------------------------------------
# 1. rotation


def ffmpeg_autorotated(stored) -> tuple[np.ndarray, int]:
    """What ``ffmpeg`` shows for a decoded PyAV frame, and the clockwise angle it reads: its
    own transpose/hflip/vflip filters (run through PyAV), chosen from the frame's display
    matrix by fftools' rule (``get_rotation`` and the autorotate branch, restated)."""
    side = stored.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    m = np.frombuffer(bytes(side)[:36], "=i4").astype(float) if side else np.array([65536.0, 0, 0, 0, 65536, 0, 0, 0, 1])
    rot = -np.degrees(np.arctan2(m[1] / np.hypot(m[1], m[4]), m[0] / np.hypot(m[0], m[3])))
    theta = -float(round(rot))  # fftools get_rotation
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    steps = {90: [("transpose", "cclock_flip" if m[3] > 0 else "clock")],
             180: [(f, None) for f, on in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if on],
             270: [("transpose", "clock_flip" if m[3] < 0 else "cclock")],
             0: [("vflip", None)] if m[4] < 0 else []}[int(theta)]
    stored = stored.to_ndarray(format="rgb24")
    graph = av.filter.Graph()
    node = src = graph.add_buffer(width=stored.shape[1], height=stored.shape[0], format="rgb24",
                                  time_base=Fraction(1, RATE))
    for name, arg in steps:
        nxt = graph.add(name, arg) if arg else graph.add(name)
        node.link_to(nxt)
        node = nxt
    sink = graph.add("buffersink")
    node.link_to(sink)
    graph.configure()
    frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
    frame.pts, frame.time_base = 0, Fraction(1, RATE)
    src.push(frame)
    return graph.pull().to_ndarray(format="rgb24"), int(theta)


ORIENTATIONS = [(r, h, v) for r in (0, 90, 180, 270) for h, v in ((False, False), (True, False), (False, True))]


@pytest.mark.parametrize("backend", OPTIONAL)
@pytest.mark.parametrize("rotation,hflip,vflip", ORIENTATIONS)
def test_display_matrix_applied_like_ffmpeg(tmp_path, backend, rotation, hflip, vflip):
    path = write(tmp_path / "rot.mp4", n=10, rotation=(rotation, hflip, vflip))
    video = load_video(path, fps=RATE, size=32, backend=backend, cache=False)
    with av.open(str(path)) as container:
        want, theta = ffmpeg_autorotated(next(container.decode(video=0)))
    assert (video.width, video.height) == (want.shape[1], want.shape[0])
    from PIL import Image

    want = np.asarray(Image.fromarray(want).resize((32, 32), Image.BILINEAR)).astype(int)
    assert np.abs(video.frames[0].astype(int) - want).mean() < 6
    kept = load_video(path, fps=RATE, size=32, backend=backend, cache=False, autorotate=False)
    assert (kept.width, kept.height) == (W, H) and kept.frames[0][2, 2, 0] > 200  # marker top-left
    assert video.rotation == kept.rotation == theta


PHONE_PORTRAIT = (0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
"""The tkhd matrix a phone writes for a portrait recording: display = stored turned 90 deg
clockwise (a=0, b=1, c=-1, d=0 in 16.16; w=1 in 2.30). Translation is ignored by FFmpeg."""


def patch_tkhd(path: Path, matrix: tuple[int, ...]) -> Path:
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4
    version = data[at]
    at += 4 + (32 if version == 1 else 20) + 8 + 8  # flags, times/id/duration, reserved, layer..
    data[at : at + 36] = np.asarray(matrix, ">i4").tobytes()
    path.write_bytes(bytes(data))
    return path


def test_phone_portrait_video_comes_out_upright(tmp_path, capsys):
    path = patch_tkhd(write(tmp_path / "phone.mp4", n=10), PHONE_PORTRAIT)
    video = load_video(path, fps=RATE, size=32)
    assert (video.width, video.height, video.rotation) == (H, W, 90)
    # stored top-left marker is top-right once turned clockwise, as ffmpeg shows it
    frame = video.frames[0]
    assert frame[2, -3, 0] > 200 and frame[2, 2, 0] < 200 and frame[-3, -3, 0] < 200
    stored = load_video(path, fps=RATE, size=32, autorotate=False)  # cached separately
    assert not stored.from_cache and (stored.width, stored.height) == (W, H)
    assert stored.frames[0][2, 2, 0] > 200 and stored.frames[0][2, -3, 0] < 200
    assert load_video(path, fps=RATE, size=32).from_cache
    assert load_video(path, fps=RATE, size=32, autorotate=False).from_cache

    capsys.readouterr()
    assert main(["frames", str(path), "--size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["width"], out["height"], out["rotation"]) == (H, W, 90)
    assert main(["frames", str(path), "--size", "32", "--no-autorotate"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["width"], out["height"], out["rotation"]) == (W, H, 90)


# ---------------------------------------------------------------------------------------------
# 2. AVI with B-frames


AVI = {
    "h264": dict(codec="libx264", bframes=3),  # H.264 in AVI (ffmpeg $T $X bf.avi)
    "mpeg4_bf2": dict(codec="mpeg4", bframes=2, options={"qscale": "2"}),  # the xvid -bf 2 case
}


@pytest.mark.parametrize("backend", OPTIONAL)
@pytest.mark.parametrize("kind", sorted(AVI))
def test_avi_with_b_frames_keeps_every_frame_at_its_time(tmp_path, backend, kind):
    path = write(tmp_path / f"{kind}.avi", fmt="avi", **AVI[kind])
    if unsupported(backend, path):
        return
    video = load_video(path, fps=RATE, size=16, backend=backend, cache=False)
    assert video.num_frames == N
    assert_shown_at_their_times(video)
    sampled = load_video(path, fps=4.0, size=16, backend=backend, cache=False)
    assert sampled.num_frames == 16
    assert_shown_at_their_times(sampled, last=index_of(sampled.frames[-1]))
    assert index_of(sampled.frames[-1]) >= 93  # the 16th target is 3.75 s


def test_mp4_configured_for_b_frames_without_any_keeps_its_pts(tmp_path):
    # flat frames: x264 chooses no B-frames although the stream allows them (has_b_frames),
    # so packet pts increase in decode order; they are real and must stay
    path = write(tmp_path / "flat.mp4", n=20)
    video = load_video(path, fps=RATE, size=16, cache=False)
    assert video.timestamps.tolist() == pytest.approx([i / RATE for i in range(20)])


# ---------------------------------------------------------------------------------------------
# 3. damaged packets and files cut short


@pytest.mark.parametrize("backend", OPTIONAL)
def test_damaged_packet_is_skipped_like_ffmpeg(tmp_path, backend, caplog):
    path = write(tmp_path / "bad.mp4", options={"g": "25"})  # keyframes at 0, 1, 2, 3 s
    packet = video_packets(path)[50]  # the 51st video packet
    lost = round(packet.pts * packet.time_base * RATE)
    data = bytearray(path.read_bytes())
    data[packet.pos : packet.pos + 4] = b"\xff" * 4  # its NAL length: the decoder rejects it
    path.write_bytes(bytes(data))
    if unsupported(backend, path):
        return
    with caplog.at_level(logging.WARNING):
        video = load_video(path, fps=RATE, size=16, backend=backend, cache=False)
    assert video.num_frames == N - 1  # ffmpeg: 99 of 100, decoding goes on to the end
    want = [i / RATE for i in range(N) if i != lost]
    assert video.timestamps.tolist() == pytest.approx(want)
    # frames outside the damaged GOP show their own picture (inside it, concealment)
    clean = [k for k, t in enumerate(video.timestamps) if t < 2.0 or t >= 3.0]
    assert [index_of(video.frames[k]) for k in clean] == [round(video.timestamps[k] * RATE) for k in clean]
    if backend == "pyav":
        assert video.skipped_packets == 1 and "skipped 1 damaged packet" in caplog.text


CUT = {  # containers a download or copy can cut short; each still opens
    "mkv": dict(fmt="matroska"),
    "mp4": dict(container_options={"movflags": "faststart"}),  # index first, as on the web
    "avi": dict(fmt="avi"),
    "ts": dict(fmt="mpegts"),
}


@pytest.mark.parametrize("kind", sorted(CUT))
def test_truncated_file_keeps_the_frames_still_in_the_decoder(tmp_path, kind):
    full = write(tmp_path / f"full.{kind}", **CUT[kind])  # B-frames: frames wait in the decoder
    packets = video_packets(full)
    cut_at = packets[60].pos + packets[60].size // 2  # inside the 61st packet
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(full.read_bytes()[:cut_at])
    complete = sum(p.pos + p.size <= cut_at for p in packets)
    video = load_video(cut, fps=RATE, size=16, cache=False)
    assert video.num_frames == complete  # every complete packet's frame, none lost in the flush
    shown = [index_of(f) for f in video.frames]
    assert shown == sorted(shown) and len(set(shown)) == complete
    start = min(p.pts for p in packets) * float(packets[0].time_base)  # TS muxing adds 0.08 s
    assert_shown_at_their_times(video, last=shown[-1], offset=start)


# ---------------------------------------------------------------------------------------------
# 4. Matroska / WebM durations


def remux(src: Path, dst: Path, fmt: str) -> Path:
    """``ffmpeg -copyts -i src -c copy dst``: packets and their timestamps unchanged."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    return dst


@pytest.mark.parametrize("backend", OPTIONAL)
def test_mkv_copied_from_ts_starting_late(tmp_path, backend, caplog):
    ts = write(tmp_path / "a.ts", fmt="mpegts", start=37)  # ffmpeg's TS output starts at 1.48 s
    mkv = remux(ts, tmp_path / "a.mkv", "matroska")
    offset = video_packets(mkv)[0].pts * float(video_packets(mkv)[0].time_base)
    assert offset > 1  # mpegts starts at 1.4 s, like ffmpeg's output
    with caplog.at_level(logging.WARNING):
        video = load_video(mkv, max_frames=8, size=16, backend=backend, cache=False)
    assert video.duration == pytest.approx(N / RATE, abs=1 / RATE)
    assert video.num_frames == 8 and "truncated" not in caplog.text
    assert_shown_at_their_times(video, first=0, last=index_of(video.frames[-1]), offset=offset)
    assert index_of(video.frames[-1]) >= 85  # spread over the whole 4 s: last at 3.5 s


@pytest.mark.parametrize("backend", OPTIONAL)
def test_webm_starting_before_zero(tmp_path, backend):
    path = write(tmp_path / "neg.webm", fmt="webm", codec="libvpx-vp9", start=-RATE,
                 container_options={"avoid_negative_ts": "disabled"})
    assert video_packets(path)[0].pts < 0
    if unsupported(backend, path):
        return
    video = load_video(path, fps=4.0, size=16, backend=backend, cache=False)
    assert video.duration == pytest.approx(N / RATE, abs=1 / RATE)
    assert video.num_frames == 16 and video.timestamps[0] == pytest.approx(-1.0)
    assert_shown_at_their_times(video, last=index_of(video.frames[-1]), offset=-1.0)
    assert index_of(video.frames[-1]) >= 93  # the last 1.3 s are sampled too


@pytest.mark.parametrize("backend", OPTIONAL)
def test_webm_with_audio_longer_than_video(tmp_path, backend):
    path = write(tmp_path / "long_audio.webm", fmt="webm", codec="libvpx-vp9", audio_seconds=30)
    with av.open(str(path)) as container:
        assert container.duration / av.time_base > 29  # the container counts the audio
    video = load_video(path, max_frames=8, size=16, backend=backend, cache=False)
    assert video.duration == pytest.approx(N / RATE, abs=1 / RATE)
    assert video.num_frames == 8  # spread over the video's 4 s, not 30
    assert_shown_at_their_times(video, last=index_of(video.frames[-1]))
    assert index_of(video.frames[-1]) >= 85


# ---------------------------------------------------------------------------------------------
# 5. raw elementary streams


RAW = {
    "h264": dict(fmt="h264", codec="libx264"),
    "hevc": dict(fmt="hevc", codec="libx265", options={"x265-params": "log-level=none"}),
}


@pytest.mark.parametrize("backend", OPTIONAL)
@pytest.mark.parametrize("kind", sorted(RAW))
def test_raw_elementary_stream_decodes_at_its_frame_rate(tmp_path, backend, kind, capsys):
    path = write(tmp_path / f"r.{kind}", **RAW[kind])
    assert all(p.pts is None and p.dts is None for p in video_packets(path))
    if unsupported(backend, path):
        return
    video = load_video(path, fps=RATE, size=16, backend=backend, cache=False)
    assert video.num_frames == N and video.duration == pytest.approx(N / RATE)
    assert video.timestamps.tolist() == pytest.approx([i / RATE for i in range(N)])
    assert_shown_at_their_times(video)
    if backend == "pyav":
        assert main(["frames", str(path), "--no-cache"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["num_frames"] == 16 and out["duration"] == pytest.approx(4.0)
