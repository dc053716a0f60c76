"""Benchmark converters on small fixtures written in each benchmark's published layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refocus.cli import main
from refocus.data.convert import CONVERTERS, convert, skipped_path_for
from refocus.data.convert._common import strip_option_prefixes
from refocus.data.questions import load_questions
from refocus.errors import RefocusError


def touch(path: Path) -> Path:
    """A stand-in video: converters check existence only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_skipped(out: Path) -> list[dict]:
    return [json.loads(line) for line in skipped_path_for(out).read_text().splitlines()]


def by_id(out: Path) -> dict:
    return {item.id: item for item in load_questions(out)}


# --- option prefixes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, expected",
    [
        (["A. foo", "B. bar"], ["foo", "bar"]),
        (["(A) foo", "(B) bar", "(C) baz"], ["foo", "bar", "baz"]),
        (["A: foo", "B:bar"], ["foo", "bar"]),
        (["A) foo", "B) bar"], ["foo", "bar"]),
        # Not every option prefixed with its own letter: the texts are left alone.
        (["A. Lincoln", "George Washington"], ["A. Lincoln", "George Washington"]),
        (["B. foo", "A. bar"], ["B. foo", "A. bar"]),
        ([" plain ", "text"], ["plain", "text"]),
    ],
)
def test_strip_option_prefixes(options, expected):
    assert strip_option_prefixes(options) == expected


# --- Video-MME ----------------------------------------------------------------------------------


def videomme_fixture(tmp_path: Path) -> tuple[Path, Path]:
    videos = tmp_path / "videomme" / "videos"
    touch(videos / "fFjv93ACGo8.mp4")
    touch(videos / "data" / "JxnaaN9Bbyg.mp4")  # nested as the zip unpacks; found by name
    opts = ["A. Apples.", "B. Pears.", "C. Plums.", "D. Figs."]
    rows = [
        dict(
            video_id="001",
            duration="short",
            domain="Knowledge",
            sub_category="Humanity",
            url="https://x/1",
            videoID="fFjv93ACGo8",
            question_id="001-1",
            task_type="Counting Problem",
            question="How many fruits?",
            options=opts,
            answer="C",
        ),
        dict(
            video_id="002",
            duration="long",
            domain="Sports",
            sub_category="Football",
            url="https://x/2",
            videoID="JxnaaN9Bbyg",
            question_id="002-1",
            task_type="Object Recognition",
            question="Which fruit?",
            options=opts,
            answer="A",
        ),
        dict(
            video_id="003",
            duration="medium",
            domain="Life",
            sub_category="Pets",
            url="https://x/3",
            videoID="notOnDisk00",
            question_id="003-1",
            task_type="OCR Problems",
            question="What text?",
            options=opts,
            answer="B",
        ),
        # Malformed: answer letter outside the four options.
        dict(
            video_id="001",
            duration="short",
            domain="Knowledge",
            sub_category="Humanity",
            url="https://x/1",
            videoID="fFjv93ACGo8",
            question_id="001-2",
            task_type="Counting Problem",
            question="Broken?",
            options=opts,
            answer="E",
        ),
    ]
    src = write_parquet(tmp_path / "videomme" / "videomme" / "test-00000-of-00001.parquet", rows)
    return src, videos


def test_videomme(tmp_path):
    src, videos = videomme_fixture(tmp_path)
    out = tmp_path / "out" / "videomme.jsonl"
    report = convert("videomme", src, videos, out)

    assert report.converted == 2
    assert report.counts() == {"missing video": 1, "invalid": 1, "not multiple-choice": 0}
    items = by_id(out)
    assert sorted(items) == ["001-1", "002-1"]
    first = items["001-1"]
    assert first.options == ("Apples.", "Pears.", "Plums.", "Figs.")
    assert first.answer == "C"
    assert first.category == "Counting Problem"
    assert first.meta == {
        "benchmark": "videomme",
        "question_id": "001-1",
        "video_id": "001",
        "videoID": "fFjv93ACGo8",
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity",
    }
    assert first.video == (videos / "fFjv93ACGo8.mp4").resolve()
    assert items["002-1"].video == (videos / "data" / "JxnaaN9Bbyg.mp4").resolve()
    # Paths in the file are relative to its directory.
    line = json.loads(out.read_text().splitlines()[0])
    assert line["video"] == "../videomme/videos/fFjv93ACGo8.mp4"

    skipped = {s["id"]: s for s in read_skipped(out)}
    assert skipped["003-1"]["reason"] == "missing video"
    assert "notOnDisk00.mp4" in skipped["003-1"]["detail"]
    assert skipped["001-2"]["reason"] == "invalid"
    assert "answer" in skipped["001-2"]["detail"]
    assert skipped["001-2"]["row"] == 3


def test_videomme_directory_src(tmp_path):
    src, videos = videomme_fixture(tmp_path)
    out = tmp_path / "qa.jsonl"
    report = convert("videomme", src.parent, videos, out)
    assert report.converted == 2


# --- LongVideoBench -----------------------------------------------------------------------------


def test_longvideobench(tmp_path):
    videos = tmp_path / "lvb" / "videos"
    touch(videos / "86CxyhFV9MI.mp4")
    touch(videos / "oq6xNdo2kvA.mp4")
    common = dict(
        duration_group=600,
        duration=512.3,
        topic_category="NP-News-Programs",
        level="L2-Relation",
        starting_timestamp_for_subtitles=0,
        view_count=1234,
        position=[10, 20],
        subtitle_path="x_en.json",
    )
    rows = [
        dict(
            video_id="86CxyhFV9MI",
            video_path="86CxyhFV9MI.mp4",
            id="86CxyhFV9MI_0",
            question="Which subtitle appears with the red car?",
            candidates=["hello", "goodbye", "thanks", "sorry"],
            correct_choice=2,
            question_category="S2E",
            **common,
        ),
        dict(
            video_id="oq6xNdo2kvA",
            video_path="oq6xNdo2kvA.mp4",
            id="oq6xNdo2kvA_1",
            question="What is on the table?",
            candidates=["(A) a cup", "(B) a pen"],
            correct_choice=0,
            question_category="O2E",
            **common,
        ),
        dict(
            video_id="missing",
            video_path="missing.mp4",
            id="missing_0",
            question="Q?",
            candidates=["x", "y"],
            correct_choice=1,
            question_category="T3O",
            **common,
        ),
        # Test-split style row: no correct_choice.
        dict(
            video_id="86CxyhFV9MI",
            video_path="86CxyhFV9MI.mp4",
            id="86CxyhFV9MI_9",
            question="Q?",
            candidates=["x", "y"],
            question_category="S2E",
            **common,
        ),
        ["not", "an", "object"],
    ]
    src = tmp_path / "lvb" / "lvb_val.json"
    src.write_text(json.dumps(rows))
    out = tmp_path / "lvb.jsonl"
    report = convert("longvideobench", src, videos, out)

    assert report.converted == 2
    assert report.counts() == {"missing video": 1, "invalid": 2, "not multiple-choice": 0}
    items = by_id(out)
    a, b = items["86CxyhFV9MI_0"], items["oq6xNdo2kvA_1"]
    assert a.answer == "C" and a.options == ("hello", "goodbye", "thanks", "sorry")
    assert a.category == "S2E"
    assert a.meta["duration_group"] == 600 and a.meta["topic_category"] == "NP-News-Programs"
    assert b.options == ("a cup", "a pen") and b.answer == "A"
    assert b.video == (videos / "oq6xNdo2kvA.mp4").resolve()
    reasons = {(s["row"], s["reason"]) for s in read_skipped(out)}
    assert reasons == {(2, "missing video"), (3, "invalid"), (4, "invalid")}
    assert any("correct_choice" in s["detail"] for s in read_skipped(out))


# --- MLVU ---------------------------------------------------------------------------------------


def test_mlvu_directory_with_task_folders(tmp_path):
    root = tmp_path / "MLVU"
    videos = root / "video"
    touch(videos / "1_plotQA" / "movie101_66.mp4")  # per-task folder, as released
    touch(videos / "needle_32.mp4")  # flat copy
    plot = [
        dict(
            video="movie101_66.mp4",
            duration=246,
            question="What colour is the car?",
            candidates=["Red", "Blue", "Green", "White"],
            answer="Blue",
            question_type="plotQA",
        ),
        dict(
            video="movie101_66.mp4",
            duration=246,
            question="Who drives?",
            candidates=["A man", "A woman"],
            answer="a  WOMAN",
            question_type="plotQA",
        ),
        dict(
            video="movie101_66.mp4",
            duration=246,
            question="Bad answer?",
            candidates=["Red", "Blue"],
            answer="Purple",
            question_type="plotQA",
        ),
    ]
    needle = [
        dict(
            video="needle_32.mp4",
            duration=467,
            question="What was inserted?",
            candidates=["A cat", "A dog", "A bird"],
            answer="A bird",
            question_type="findNeedle",
        ),
        dict(
            video="needle_99.mp4",
            duration=100,
            question="Gone?",
            candidates=["yes", "no"],
            answer="no",
            question_type="findNeedle",
        ),
    ]
    summary = [
        dict(
            video="surv_1.mp4",
            duration=500,
            question="Summarise the video.",
            answer="A man walks.",
            question_type="summary",
        )
    ]
    json_dir = root / "json"
    json_dir.mkdir(parents=True)
    (json_dir / "1_plotQA.json").write_text(json.dumps(plot))
    (json_dir / "2_needle.json").write_text(json.dumps(needle))
    (json_dir / "9_summary.json").write_text(json.dumps(summary))

    out = tmp_path / "mlvu.jsonl"
    report = convert("mlvu", json_dir, videos, out)

    assert report.converted == 3
    assert report.counts() == {"missing video": 1, "invalid": 1, "not multiple-choice": 1}
    items = by_id(out)
    assert sorted(items) == ["1_plotQA_0", "1_plotQA_1", "2_needle_0"]
    assert items["1_plotQA_0"].answer == "B"
    assert items["1_plotQA_1"].answer == "B"  # matched case- and space-insensitively
    assert items["1_plotQA_0"].video == (videos / "1_plotQA" / "movie101_66.mp4").resolve()
    assert items["2_needle_0"].answer == "C"
    assert items["2_needle_0"].category == "findNeedle"
    assert items["2_needle_0"].video == (videos / "needle_32.mp4").resolve()
    assert items["2_needle_0"].meta["task"] == "2_needle"
    skipped = {(Path(s["source"]).name, s["row"]): s for s in read_skipped(out)}
    assert skipped[("1_plotQA.json", 2)]["reason"] == "invalid"
    assert "Purple" in skipped[("1_plotQA.json", 2)]["detail"]
    assert skipped[("2_needle.json", 1)]["reason"] == "missing video"
    assert skipped[("9_summary.json", 0)]["reason"] == "not multiple-choice"


def test_mlvu_single_file(tmp_path):
    videos = tmp_path / "video"
    touch(videos / "3_ego" / "ego_1.mp4")
    src = tmp_path / "3_ego.json"
    src.write_text(
        json.dumps(
            [
                dict(
                    video="ego_1.mp4",
                    question="Where?",
                    candidates=["x", "y"],
                    answer="y",
                    question_type="ego",
                )
            ]
        )
    )
    report = convert("mlvu", src, videos, tmp_path / "qa.jsonl")
    assert report.converted == 1
    assert load_questions(tmp_path / "qa.jsonl")[0].answer == "B"


# --- NExT-QA ------------------------------------------------------------------------------------

NEXTQA_HEADER = [
    "video",
    "frame_count",
    "width",
    "height",
    "question",
    "answer",
    "qid",
    "type",
    "a0",
    "a1",
    "a2",
    "a3",
    "a4",
]


def nextqa_rows() -> list[list]:
    return [
        [
            "4010069381",
            1523,
            640,
            480,
            "why did the boy fall",
            3,
            6,
            "CW",
            "slipped",
            "jumped",
            "pushed",
            "tripped over toy",
            "sat",
        ],
        [
            "4010069381",
            1523,
            640,
            480,
            "what does the dog do",
            0,
            7,
            "TN",
            "barks",
            "runs",
            "sleeps",
            "eats",
            "sits",
        ],
        ["5555555555", 900, 640, 480, "missing video", 1, 0, "DC", "a", "b", "c", "d", "e"],
        ["4882821564", 700, 640, 480, "bad answer index", 7, 2, "DO", "a", "b", "c", "d", "e"],
        ["4882821564", 700, 640, 480, "empty option", 1, 3, "DO", "a", "", "c", "d", "e"],
    ]


def write_nextqa(tmp_path: Path) -> Path:
    src = tmp_path / "nextqa" / "val.csv"
    src.parent.mkdir(parents=True)
    with open(src, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(NEXTQA_HEADER)
        writer.writerows(nextqa_rows())
    return src


@pytest.mark.parametrize("with_map", [True, False])
def test_nextqa(tmp_path, with_map):
    src = write_nextqa(tmp_path)
    videos = tmp_path / "NExTVideo"
    touch(videos / "1001" / "4010069381.mp4")
    touch(videos / "1002" / "4882821564.mp4")
    if with_map:
        (videos / "map_vid_vidorid.json").write_text(
            json.dumps({"4010069381": "1001/4010069381", "4882821564": "1002/4882821564"})
        )
    out = tmp_path / "nextqa.jsonl"
    report = convert("nextqa", src, videos, out)

    assert report.converted == 2
    assert report.counts() == {"missing video": 1, "invalid": 2, "not multiple-choice": 0}
    items = by_id(out)
    boy = items["4010069381_6"]
    assert boy.answer == "D" and boy.options[3] == "tripped over toy" and len(boy.options) == 5
    assert boy.category == "CW"
    assert boy.video == (videos / "1001" / "4010069381.mp4").resolve()
    assert boy.meta["frame_count"] == 1523 and boy.meta["qid"] == "6"
    assert items["4010069381_7"].answer == "A"
    reasons = sorted((s["row"], s["reason"]) for s in read_skipped(out))
    assert reasons == [(2, "missing video"), (3, "invalid"), (4, "invalid")]


# --- Video-MMMU ---------------------------------------------------------------------------------


def test_videommmu_tracks_and_duplicate_ids(tmp_path):
    root = tmp_path / "VideoMMMU"
    videos = tmp_path / "videos"
    touch(videos / "Art" / "validation_Art_Theory_1.mp4")
    touch(videos / "Science" / "validation_Physics_2.mp4")
    write_parquet(
        root / "Perception" / "test-00000-of-00001.parquet",
        [
            dict(
                id="validation_Art_Theory_1",
                question="Which painter?",
                options=["A. Monet", "B. Manet", "C. Degas"],
                answer="B",
                question_type="multiple-choice",
                image=None,
            ),
            dict(
                id="validation_Physics_2",
                question="What force?",
                options=["gravity", "friction"],
                answer="A",
                question_type="perception",
                image=None,
            ),
        ],
    )
    write_parquet(
        root / "Comprehension" / "test-00000-of-00001.parquet",
        [
            dict(
                id="validation_Art_Theory_1",
                question="Why that style?",
                options=["(A) light", "(B) colour", "(C) form", "(D) line"],
                answer="D",
                question_type="multiple-choice",
                image=None,
            ),
            dict(
                id="validation_Physics_2",
                question="Compute the speed.",
                options=[],
                answer="12",
                question_type="open",
                image=None,
            ),
            dict(
                id="validation_Math_3",
                question="Which?",
                options=["x", "y"],
                answer="A",
                question_type="multiple-choice",
                image=None,
            ),
            dict(
                id="validation_Physics_2",
                question="Broken answer",
                options=["x", "y"],
                answer="Z",
                question_type="multiple-choice",
                image=None,
            ),
        ],
    )
    out = tmp_path / "vmmmu.jsonl"
    report = convert("videommmu", root, videos, out)

    assert report.converted == 3
    assert report.counts() == {"missing video": 1, "invalid": 1, "not multiple-choice": 1}
    assert report.renamed == [("validation_Art_Theory_1", "validation_Art_Theory_1#2")]
    items = by_id(out)
    first, second = items["validation_Art_Theory_1"], items["validation_Art_Theory_1#2"]
    assert first.options == ("Monet", "Manet", "Degas") and first.answer == "B"
    assert first.category == "Perception" and second.category == "Comprehension"
    assert second.options == ("light", "colour", "form", "line") and second.answer == "D"
    assert second.meta["source_id"] == "validation_Art_Theory_1"
    assert first.meta["subject"] == "Art_Theory"
    assert first.video == second.video == (videos / "Art" / "validation_Art_Theory_1.mp4").resolve()
    physics = items["validation_Physics_2"]
    assert (
        physics.options == ("gravity", "friction") and physics.meta["question_type"] == "perception"
    )
    skipped = {(s["id"], s["reason"]) for s in read_skipped(out)}
    assert skipped == {
        ("validation_Physics_2", "not multiple-choice"),
        ("validation_Math_3", "missing video"),
        ("validation_Physics_2", "invalid"),
    }


# --- registry, errors, CLI ----------------------------------------------------------------------


def test_registry_names():
    assert set(CONVERTERS) == {"videomme", "longvideobench", "mlvu", "nextqa", "videommmu"}


def test_missing_src_names_the_file(tmp_path):
    with pytest.raises(RefocusError, match="nope.parquet"):
        convert("videomme", tmp_path / "nope.parquet", tmp_path, tmp_path / "qa.jsonl")


def test_cli_convert(tmp_path, capsys):
    src, videos = videomme_fixture(tmp_path)
    out = tmp_path / "qa.jsonl"
    code = main(
        [
            "data",
            "convert",
            "videomme",
            "--src",
            str(src),
            "--videos",
            str(videos),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"converted 2 items, skipped 2 (missing video: 1, invalid: 1, "
        f"not multiple-choice: 0) -> {out}"
    )
    assert len(load_questions(out)) == 2
    assert len(read_skipped(out)) == 2


def test_cli_missing_src_is_one_line_error(tmp_path, capsys):
    code = main(
        [
            "data",
            "convert",
            "nextqa",
            "--src",
            str(tmp_path / "val.csv"),
            "--videos",
            str(tmp_path),
            "--out",
            str(tmp_path / "qa.jsonl"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "val.csv" in err[0]


def test_cli_nothing_converted_is_an_error(tmp_path, capsys):
    src, _ = videomme_fixture(tmp_path)
    empty = tmp_path / "empty_videos"
    empty.mkdir()
    code = main(
        [
            "data",
            "convert",
            "videomme",
            "--src",
            str(src),
            "--videos",
            str(empty),
            "--out",
            str(tmp_path / "qa.jsonl"),
        ]
    )
    assert code == 1
    assert "no items converted" in capsys.readouterr().err
    assert len(read_skipped(tmp_path / "qa.jsonl")) == 4
