"""Appearance codes (SmallReferenceTrainConfig.appearance_codes): which event each frame shows,
where its object is, the code of that place, and how the vision stage's augmentation moves it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_small_reference_config

from refocus.data.questions import QAItem, load_questions
from refocus.data.synth import make_benchmark
from refocus.reference.appearance import appearance_codes, event_geometry, moved_geometry
from refocus.reference.augment import mirror_shift, paste_objects
from refocus.reference.small_training import (
    SmallReferenceTrainConfig,
    frame_appearances,
    multi_option_targets,
    shown_runs,
    train_small_reference,
)

TINY = tiny_small_reference_config()


def test_codes_are_unit_norm_equal_for_one_place_and_far_apart_for_two():
    g = np.array([[0.3, 0.4, 0.40], [0.3, 0.4, 0.40], [0.55, 0.4, 0.40], [0.3, 0.75, 0.48], [np.nan] * 3,
                  [1.3, 0.4, 0.40]])
    c = appearance_codes(g, 64)
    assert c.shape == (6, 64) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c[:4], axis=1), 1.0, atol=1e-6)
    assert np.array_equal(c[0], c[1])
    assert abs(c[0] @ c[2]) < 0.35 and abs(c[0] @ c[3]) < 0.35  # a quarter / a third of the frame away
    assert not c[4].any()  # no object, no code
    np.testing.assert_allclose(c[5], c[0], atol=1e-5)  # periodic in the centre, like a circular shift
    with pytest.raises(ValueError, match="width"):
        appearance_codes(g, 16)


def test_event_geometry_and_frame_appearances_from_the_metadata():
    meta = {"num_frames": 20, "fps": 4.0, "size": 100, "events": [
        {"color": "red", "shape": "star", "frames": [2, 3], "center": [50.0, 25.0], "diameter": 40.0},
        {"color": "red", "shape": "star", "frames": [10, 12], "center": [10.0, 90.0], "diameter": 35.0}]}
    item = QAItem(id="c", video="v.mp4", question="q", options=("1", "2"), answer="B", category="count", meta=meta)
    np.testing.assert_allclose(event_geometry(meta), [[0.5, 0.25, 0.4], [0.1, 0.9, 0.35]])
    timestamps = np.arange(0, 20, 2) / 4.0  # every other source frame: 0, 2, 4, ..., 18
    assert frame_appearances(item, timestamps).tolist() == [-1, 0, -1, -1, -1, 1, 1, -1, -1, -1]
    assert event_geometry({"events": [{"color": "red", "shape": "star", "frames": [1, 2]}]}) is None
    assert frame_appearances(QAItem(id="x", video="v.mp4", question="q", options=("a",), answer="A"),
                             timestamps) is None


def test_runs_by_appearance_count_two_adjacent_appearances_twice():
    red, blue = ("red", "star"), ("blue", "circle")
    shown = [red, red, red, None, blue]
    assert shown_runs(shown) == [red, blue]
    assert shown_runs(shown, [0, 0, 1, -1, 2]) == [red, red, blue]
    compare = QAItem(id="c", video="v.mp4", question="Which appeared more times in the video: the blue circle or "
                     "the red star?", options=("they appeared equally often", "the red star", "the blue circle"),
                     answer="B", category="compare")
    assert multi_option_targets(compare, shown) == {1: 1, 2: 1}
    assert multi_option_targets(compare, shown, [0, 0, 1, -1, 2]) == {1: 2, 2: 1}


def test_mirror_shift_reports_where_a_pixel_went():
    side = 16
    frames = np.zeros((40, side, side, 3), np.uint8)
    y, x = 3, 5
    frames[:, y, x] = 255
    moves: dict = {}
    out = mirror_shift(np.random.default_rng(0), frames, moves=moves)
    assert moves["mirrored"].any() and not moves["mirrored"].all() and np.abs(moves["shifts"]).max() > 0
    g = np.tile([[(x + 0.5) / side, (y + 0.5) / side, 0.4]], (40, 1))
    moved = moved_geometry(g, moves["mirrored"], moves["shifts"], side)
    for frame, (cx, cy, _) in zip(out, moved, strict=True):
        yy, xx = np.argwhere(frame[..., 0] == 255)[0]
        assert (xx + 0.5) / side == pytest.approx(cx) and (yy + 0.5) / side == pytest.approx(cy)


def test_pasted_objects_report_their_place():
    geometry: list = []
    frames, _, _ = paste_objects(np.random.default_rng(1), np.zeros((6, 96, 96, 3), np.uint8), ["red"], ["circle"],
                                 geometry)
    for frame, (cx, cy, d) in zip(frames, geometry, strict=True):
        ys, xs = np.nonzero(frame[..., 0] > 128)
        assert xs.mean() / 96 == pytest.approx(cx, abs=0.03) and ys.mean() / 96 == pytest.approx(cy, abs=0.03)
        assert (xs.max() - xs.min()) / 96 == pytest.approx(d, abs=0.05)


def test_synthetic_metadata_records_each_objects_place(tmp_path):
    for kind in ("multi", "niah"):
        item = load_questions(make_benchmark(kind, tmp_path / kind, 2, (40, 48), seed=0))[0]
        geometry = event_geometry(item.meta)
        assert item.meta["size"] == 96 and geometry is not None
        assert ((geometry[:, :2] > 0) & (geometry[:, :2] < 1)).all() and ((geometry[:, 2] >= 0.35) & (geometry[:, 2] <= 0.5)).all()


def test_training_with_appearance_codes_runs_every_stage(tmp_path):
    torch.set_num_threads(1)
    items = load_questions(make_benchmark("multi", tmp_path / "m", 6, (40, 48), seed=3))
    cfg = SmallReferenceTrainConfig(steps=2, align_steps=2, vision_steps=2, batch_size=4, vision_batch_size=8,
                                    val_fraction=0.34, val_subsets=1, fresh_plan_fraction=0.5,
                                    multi_option_targets=True, appearance_codes=True, frame_ordinal_weight=1.0,
                                    oracle_subset_fraction=0.3, model=TINY)
    summary = train_small_reference(items, tmp_path / "ref", cfg, progress=False)
    assert [h["stage"] for h in summary["history"]].count("vision") == 2
    assert all(np.isfinite(h["loss"]) for h in summary["history"])


def test_appearance_codes_refuse_turned_frames():
    from refocus.errors import ConfigError

    with pytest.raises(ConfigError, match="augment_rotations"):
        SmallReferenceTrainConfig(appearance_codes=True, augment_rotations=True)


def test_frame_ordinals_by_hand():
    from refocus.reference.small_training import frame_ordinals

    red, blue = ("red", "star"), ("blue", "circle")
    shown = [red, red, None, blue, red, red, blue]
    assert frame_ordinals(shown) == [1, 1, 0, 1, 2, 2, 2]
    assert frame_ordinals(shown, [0, 1, -1, 2, 3, 3, 4]) == [1, 2, 0, 1, 3, 3, 2]
    assert frame_ordinals([red] * 6, [0, 1, 2, 3, 4, 5]) == [1, 2, 3, 4, 4, 4]
