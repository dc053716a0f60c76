"""Question files: every validation rule, error messages, and load -> write round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refocus.data.questions import QAItem, item_to_dict, load_questions, write_questions
from refocus.errors import QuestionFileError, RefocusError


def _row(**over) -> dict:
    row = {
        "id": "q1",
        "video": "videos/a.mp4",
        "question": "What colour?",
        "options": ["red", "green", "blue", "yellow"],
        "answer": "C",
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()


def _write(path: Path, *lines) -> Path:
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    path.write_text(text)
    return path


def test_minimal_item_loads_with_absolute_video(tmp_path):
    qa = _write(tmp_path / "qa.jsonl", _row())
    (item,) = load_questions(qa)
    assert item.id == "q1"
    assert item.video == (tmp_path / "videos" / "a.mp4").resolve()
    assert item.video.is_absolute()
    assert item.options == ("red", "green", "blue", "yellow")
    assert item.answer == "C" and item.answer_index == 2
    assert item.letters == ("A", "B", "C", "D")
    assert item.evidence is None and item.category is None
    assert item.meta == {} and item.extra == {}


def test_optional_fields_and_blank_lines(tmp_path):
    row = _row(evidence=[[1, 2.5], [3.0, 3.0]], category="needle_color", meta={"k": 1})
    qa = _write(tmp_path / "qa.jsonl", "", row, "   ", _row(id="q2", category=None, meta=None))
    items = load_questions(qa)
    assert [it.id for it in items] == ["q1", "q2"]
    assert items[0].evidence == ((1.0, 2.5), (3.0, 3.0))
    assert items[0].category == "needle_color" and items[0].meta == {"k": 1}
    assert items[1].category is None and items[1].meta == {}


def test_video_need_not_exist(tmp_path):
    qa = _write(tmp_path / "qa.jsonl", _row(video="../elsewhere/missing.mp4"))
    (item,) = load_questions(qa)
    assert item.video == (tmp_path.parent / "elsewhere" / "missing.mp4").resolve()
    assert not item.video.exists()


BAD_LINES = [
    ("not json", None, "invalid JSON"),
    ("[1, 2]", None, "JSON object"),
    (_row(id=_DROP), "id", "missing"),
    (_row(id=""), "id", "non-empty"),
    (_row(id=7), "id", "non-empty string"),
    (_row(video=_DROP), "video", "missing"),
    (_row(video=3), "video", "path"),
    (_row(question=""), "question", "non-empty"),
    (_row(question=None), "question", "non-empty"),
    (_row(options="a,b"), "options", "list"),
    (_row(options=["only"], answer="A"), "options", "2-26"),
    (_row(options=[str(i) for i in range(27)], answer="A"), "options", "2-26"),
    (_row(options=["a", ""]), "options", "entry 1"),
    (_row(options=["a", 2]), "options", "entry 1"),
    (_row(answer="E"), "answer", "A..D"),
    (_row(answer="c"), "answer", "one letter"),
    (_row(answer="AB"), "answer", "one letter"),
    (_row(answer=2), "answer", "one letter"),
    (_row(evidence="0-1"), "evidence", "list"),
    (_row(evidence=[[1]]), "evidence", "entry 0"),
    (_row(evidence=[[0, "1"]]), "evidence", "entry 0"),
    (_row(evidence=[[0, True]]), "evidence", "entry 0"),
    (_row(evidence=[[0, 1], [2, 1]]), "evidence", "entry 1"),
    (_row(evidence=[[-1, 1]]), "evidence", "0 <= start"),
    (_row(category=3), "category", "string"),
    (_row(meta=[1]), "meta", "object"),
]


@pytest.mark.parametrize("line,field,reason", BAD_LINES)
def test_invalid_line_names_file_line_and_field(tmp_path, line, field, reason):
    qa = _write(tmp_path / "qa.jsonl", _row(id="ok"), "", line)
    with pytest.raises(QuestionFileError) as info:
        load_questions(qa)
    err = info.value
    assert isinstance(err, RefocusError)
    assert err.line == 3 and err.field == field
    assert reason in err.reason
    assert str(err).startswith(f"{qa}:3:")
    if field:
        assert f"'{field}'" in str(err)


def test_nan_evidence_rejected(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps(_row())[:-1] + ', "evidence": [[0, NaN]]}\n')
    with pytest.raises(QuestionFileError, match="evidence"):
        load_questions(qa)


def test_duplicate_id(tmp_path):
    qa = _write(tmp_path / "qa.jsonl", _row(), _row(question="again?"))
    with pytest.raises(QuestionFileError) as info:
        load_questions(qa)
    assert info.value.line == 2 and info.value.field == "id"
    assert "first on line 1" in info.value.reason


def test_error_list_skips_bad_lines_and_keeps_going(tmp_path):
    qa = _write(
        tmp_path / "qa.jsonl",
        _row(id="a"),
        "{oops",
        _row(id="b", answer="Z"),
        _row(id="a"),
        _row(id="c"),
    )
    errors: list[QuestionFileError] = []
    items = load_questions(qa, errors=errors)
    assert [it.id for it in items] == ["a", "c"]
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "answer"), (4, "id")]


def test_invalid_utf8_line(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_bytes(json.dumps(_row()).encode() + b"\n\xff\xfe\n")
    errors: list[QuestionFileError] = []
    assert len(load_questions(qa, errors=errors)) == 1
    assert errors[0].line == 2 and "UTF-8" in errors[0].reason


def test_missing_file_is_a_question_file_error(tmp_path):
    with pytest.raises(QuestionFileError, match="not found"):
        load_questions(tmp_path / "nope.jsonl")


def test_unknown_keys_survive_round_trip(tmp_path):
    row = _row(
        evidence=[[0.5, 1.25]],
        category="count",
        meta={"num_frames": 64, "nested": {"x": [1, 2]}},
        variance=0.3,
        margins=[0.1, -0.2],
    )
    src = _write(tmp_path / "qa.jsonl", row)
    (item,) = load_questions(src)
    assert item.extra == {"variance": 0.3, "margins": [0.1, -0.2]}
    out = tmp_path / "out.jsonl"
    write_questions(out, [item])
    assert json.loads(out.read_text()) == row
    assert load_questions(out) == [item]


def test_write_relative_to_new_directory(tmp_path):
    src = _write(tmp_path / "qa.jsonl", _row())
    items = load_questions(src)
    out = tmp_path / "sub" / "deeper" / "qa.jsonl"
    write_questions(out, items)
    line = json.loads(out.read_text())
    assert line["video"] == "../../videos/a.mp4"
    assert load_questions(out)[0].video == items[0].video
    assert not list(out.parent.glob("*.tmp"))


def test_write_extra_per_item(tmp_path):
    items = load_questions(_write(tmp_path / "qa.jsonl", _row(id="a"), _row(id="b", variance=0.0)))
    out = tmp_path / "f.jsonl"
    write_questions(out, items, extra=[{"variance": 0.5}, {"variance": 0.25, "subsets": [[0, 1]]}])
    back = load_questions(out)
    assert [it.extra for it in back] == [{"variance": 0.5}, {"variance": 0.25, "subsets": [[0, 1]]}]
    with pytest.raises(ValueError, match="entries"):
        write_questions(out, items, extra=[{}])
    with pytest.raises(ValueError, match="reserved"):
        write_questions(out, items, extra=[{"answer": "A"}, {}])


def test_item_to_dict_omits_empty_optionals(tmp_path):
    item = QAItem(id="x", video=tmp_path / "v.mp4", question="q?", options=("a", "b"), answer="B")
    assert item_to_dict(item, tmp_path) == {
        "id": "x",
        "video": "v.mp4",
        "question": "q?",
        "options": ["a", "b"],
        "answer": "B",
    }
    assert hash(item) == hash(
        QAItem(
            id="x",
            video=tmp_path / "v.mp4",
            question="q?",
            options=("a", "b"),
            answer="B",
            meta={"m": 1},
        )
    )


def test_errors_cross_a_process_boundary_intact():
    """Workers of a process pool (synthetic data, the demo's second policy) send their errors
    back pickled: every field and the message must survive, else the pool dies instead."""
    import pickle

    from refocus.errors import ConfigError, QuestionFileError, VideoError

    for err in (QuestionFileError("q.jsonl", 3, "evidence", "must be a list"), QuestionFileError("q.jsonl", None, None, "empty"),
                VideoError("v.mp4", "no video stream"), ConfigError("bad option")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
