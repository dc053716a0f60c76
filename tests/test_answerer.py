"""Answerer side: rationales, reasoning generation and scoring, `refocus answerer sft / train`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import build_tiny

from refocus.answerer.generation import Answerer, GenerateConfig, token_logprobs
from refocus.answerer.rationale import build_rationale
from refocus.cli import main
from refocus.data.questions import load_questions
from refocus.data.synth import make_benchmark
from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    return make_benchmark("multi", tmp_path_factory.mktemp("multi"), videos=12, frames=(32, 36), seed=0)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, multi) -> Path:
    cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1), vision_heads=(2, 2),
                               text_hidden=32, text_layers=1, text_heads=2)
    return save_untrained_small_reference(tmp_path_factory.mktemp("small"), load_questions(multi), cfg)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "q")


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, multi, small_dir) -> Path:
    out = tmp_path_factory.mktemp("sft") / "a"
    assert main(["answerer", "sft", "--data", str(multi), "--answerer", str(small_dir), "--out", str(out),
                 "--steps", "3", "--batch-size", "4", "--frames", "4"]) == 0
    return out


def test_rationale_words_and_tags(multi):
    items = {it.category: it for it in load_questions(multi)}
    order = build_rationale(items["order"])
    ev = items["order"].meta["events"]
    assert order.words[:4] == ("<think>", "first", ev[0]["color"], ev[0]["shape"])
    assert order.words[-3:] == ("<answer>", items["order"].answer, "</answer>")
    assert order.tags[1] == "temporal" and order.tags[2] == order.tags[3] == "visual"
    count = build_rationale(items["count"])
    n = items["count"].meta["count"]
    assert ["zero", "one", "two", "three", "four"][n] in count.words
    assert len(order.words) == len(order.tags)


def test_scan_rationale_lists_what_and_where_by_place_then_the_frame_each_is_seen_in(multi):
    from refocus.answerer.rationale import PLACES
    from refocus.errors import RefocusError

    def third(c, d, size):  # of the range the generator draws a centre from
        m = d / 2 + 2
        return min(2, int(3 * (c - m) / (size - 2 * m)))

    items = {it.category: it for it in load_questions(multi)}
    for category, item in items.items():
        events = list(enumerate(item.meta["events"]))
        if category == "count":
            events = [(j, ev) for j, ev in events if f"{ev['color']} {ev['shape']}" == item.meta["target"]]
        n_all = len(item.meta["events"])
        shown = [-1] + [j for j in reversed(range(n_all)) for _ in range(2)]  # haystack, then each event twice
        rat = build_rationale(item, "scan", shown)
        body = list(rat.words[1:rat.words.index(".")])
        cut = body.index(";")  # what and where per event, ";", then when (each event is in two shown frames)
        assert cut == 3 * len(events) and len(body) == cut + 1 + 2 * len(events)
        numbers = [int(w) for w in body[cut + 1:]]
        listed = [(*body[3 * i:3 * i + 3], numbers[2 * i:2 * i + 2]) for i in range(len(events))]
        assert len(listed) == len(events)
        keys = [(PLACES.index(p), c, s) for p, c, s, _ in listed]
        assert keys == sorted(keys)  # a spatial scan, then by name: no visual word follows frame order
        size = item.meta["size"]
        matched = set()
        for place, color, shape, numbers in listed:
            j = shown[numbers[0] - 1]  # the numbers name the shown frames (Frame1 = 1) the event is in
            assert numbers == [i + 1 for i, e in enumerate(shown) if e == j]
            ev = item.meta["events"][j]
            assert (ev["color"], ev["shape"]) == (color, shape)
            row, col = third(ev["center"][1], ev["diameter"], size), third(ev["center"][0], ev["diameter"], size)
            assert PLACES[3 * row + col] == place
            matched.add(j)
        assert matched == {j for j, _ in events}
        assert rat.tags[1:4] == ("visual",) * 3 and rat.tags[-6] == "temporal"
        assert max(i for i, t in enumerate(rat.tags) if t == "visual") < min(
            i for i, t in enumerate(rat.tags) if t == "temporal")  # no visual word after a frame number
        assert rat.order_bearing == tuple(t == "temporal" for t in rat.tags)  # only the numbers follow frame order
        assert rat.words[-2] == item.answer
        unseen = build_rationale(item, "scan", [-1, -1])  # a scan says what the frames hold: nothing
        assert "visual" not in unseen.tags and "temporal" not in unseen.tags
        first_only = [j for j, _ in events[:1]]
        assert sum(t == "visual" for t in build_rationale(item, "scan", first_only).tags) == 3
    seq = build_rationale(items["order"])
    assert seq.order_bearing[2] and seq.order_bearing[3]  # sequence: the objects follow the order
    with pytest.raises(RefocusError, match="template"):
        build_rationale(items["order"], "story")


def test_sft_extends_vocabulary_and_saves_a_reasoning_answerer(sft_dir, multi):
    summary = json.loads((sft_dir / "sft.json").read_text())
    assert "<think>" in summary["added_tokens"] and "then" in summary["added_tokens"]
    assert {"generated_accuracy", "format_rate"} <= set(summary["after"])
    assert "option_logit_accuracy" in summary["before"]
    a = Answerer.load(sft_dir)
    item = load_questions(multi)[0]
    ids = a.tokenizer(build_rationale(item).text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(build_rationale(item).words)  # one token per word: tags are token tags
    assert a.tokenizer.unk_token_id not in ids


def test_sft_scan_template_is_saved_with_the_answerer(tmp_path, multi, small_dir):
    from refocus.answerer.sft import rationale_template, target_ids

    out = tmp_path / "scan"
    assert main(["answerer", "sft", "--data", str(multi), "--answerer", str(small_dir), "--out", str(out),
                 "--steps", "1", "--batch-size", "2", "--frames", "4", "--rationale", "scan"]) == 0
    a = Answerer.load(out)
    assert rationale_template(a) == "scan"
    item = next(it for it in load_questions(multi) if it.category == "compare")
    rat = build_rationale(item, "scan")
    ids = target_ids(a, item)
    assert len(ids) == len(rat.words) + 1 and a.tokenizer.unk_token_id not in ids
    assert a.tokenizer.decode(ids[:-1]).split() == list(rat.words)
    # attribution builds each scan from the frames it shows: the temporal words are the frame numbers
    from refocus.answerer.attribution import attribution_precision
    from refocus.answerer.data import EvidenceVideos
    from refocus.answerer.rationale import FRAME_NUMBERS

    items = load_questions(multi)[:6]
    res = attribution_precision(a, items, EvidenceVideos(a.image_size), k=4, ratio=0.2)
    visual = round(res["visual_base_rate"] * res["tokens"])
    numbers = round(res["temporal_base_rate"] * res["tokens"])
    assert visual > 0 and visual % 3 == 0  # place, colour, shape per event in view
    assert visual // 3 <= numbers <= 4 * len(items)  # each event in view is in >= 1 of the 4 shown frames
    assert res["tokens"] - visual - numbers == 8 * len(items)  # <think> ; . </think> <answer> X </answer> stop
    assert res["order_bearing_base_rate"] == res["temporal_base_rate"]
    assert len(FRAME_NUMBERS) >= 8


@pytest.mark.parametrize("family", ["small", "qwen"])
def test_greedy_generation_matches_scoring_and_masking_hides_pixels(family, small_dir, qwen_dir, multi):
    a = Answerer.load(small_dir if family == "small" else qwen_dir)
    item = load_questions(multi)[0]
    rng = np.random.default_rng(0)
    s = a.image_size
    frames = [rng.integers(0, 255, (s, s, 3), dtype=np.uint8) for _ in range(3)]
    out = a.generate(item, frames, GenerateConfig(max_new_tokens=6, do_sample=False))
    enc = a.encode(item, frames)
    with torch.no_grad():
        logits = a.completion_logits(enc, out.ids)
        assert torch.equal(logits.argmax(-1)[out.valid], out.ids[out.valid])  # the scored tokens are the generated ones
        masked = a.completion_logits(enc, out.ids, visual_masked=True)
        other = a.encode(item, [255 - f for f in frames])
        masked_other = a.completion_logits(other, out.ids, visual_masked=True)
        full_other = a.completion_logits(other, out.ids)
    assert torch.allclose(masked, masked_other, atol=1e-5)  # visual tokens removed: pixels no longer matter
    assert not torch.allclose(logits, full_other, atol=1e-5)  # ... while they do with the full mask
    assert a.visual_token_ids()
    sampled = a.generate(item, frames, GenerateConfig(max_new_tokens=5), num=3, seed=0)
    assert sampled.ids.shape[0] == 3 and sampled.valid[:, 0].all()
    assert token_logprobs(logits, out.ids).shape == out.ids.shape


def test_answerer_train_ktr_end_to_end_with_resume(tmp_path, sft_dir, multi):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_generations: 3\nper_device_train_batch_size: 2\nmax_new_tokens: 8\nframes: 4\n"
                   "save_steps: 1\nlearning_rate: 1.0e-4\n")
    out = tmp_path / "run"
    args = ["answerer", "train", "--method", "ktr", "--data", str(multi), "--answerer", str(sft_dir),
            "--selector", "uniform", "--out", str(out), "--config", str(cfg)]
    assert main(args + ["--max-steps", "1"]) == 0
    assert main(args + ["--max-steps", "2", "--resume"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("ktr/visual_ratio", "ktr/temporal_ratio", "ktr/entropy_ratio", "ktr/kept_ratio", "train/kl"):
        assert all(r[key] is not None for r in rows), key
    assert all(0.19 <= r["ktr/visual_ratio"] <= 1.0 and r["ktr/kept_ratio"] >= r["ktr/visual_ratio"] for r in rows)
    assert (out / "answerer" / "config.json").is_file()
    assert (out / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()


def test_answerer_resume_equals_uninterrupted_and_refuses_another_config(tmp_path, sft_dir, multi):
    """Resume goes through the shared trainer core: every weight is loaded (the small
    answerer saves under renamed keys; loading those non-strictly used to load none) and the
    RNG and optimiser continue, so 1 + 1 steps end where 2 steps do. (This barely trained
    answerer earns no reward yet; AdamW's decoupled weight decay still moves every weight.)"""
    from safetensors.torch import load_file

    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_generations: 3\nper_device_train_batch_size: 2\nmax_new_tokens: 6\nframes: 4\n"
                   "save_steps: 1\nlearning_rate: 1.0e-2\nweight_decay: 0.1\nbeta: 0.0\n")

    def run(out, *extra):
        args = ["answerer", "train", "--method", "grpo", "--data", str(multi), "--answerer", str(sft_dir),
                "--selector", "uniform",
                "--out", str(out), "--config", str(cfg), *extra]
        return main(args)

    assert run(tmp_path / "full", "--max-steps", "2") == 0
    assert run(tmp_path / "split", "--max-steps", "1") == 0
    assert run(tmp_path / "split", "--max-steps", "2", "--resume") == 0
    full = load_file(tmp_path / "full" / "answerer" / "model.safetensors")
    split = load_file(tmp_path / "split" / "answerer" / "model.safetensors")
    start = load_file(sft_dir / "model.safetensors")
    assert full.keys() == split.keys()
    assert any(not torch.equal(full[k], start[k]) for k in full if k in start)  # it trained
    assert all(torch.allclose(full[k], split[k], atol=1e-6) for k in full)
    cfg.write_text(cfg.read_text().replace("learning_rate: 1.0e-2", "learning_rate: 2.0e-2"))
    assert run(tmp_path / "split", "--max-steps", "3", "--resume") == 1  # a one-line error


def test_answerer_train_grpo_and_ktr_with_tiny_qwen(tmp_path, qwen_dir, multi):
    """A Hugging Face VLM as the answerer: SFT, then KTR (visual tokens masked in attention,
    frames shuffled before the processor) and GRPO steps."""
    sft = tmp_path / "sft"
    assert main(["answerer", "sft", "--data", str(multi), "--answerer", str(qwen_dir), "--out", str(sft),
                 "--steps", "2", "--batch-size", "2", "--frames", "2"]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_generations: 2\nmax_new_tokens: 6\nframes: 2\nsave_steps: 5\n")
    for method in ("ktr", "grpo"):
        out = tmp_path / method
        assert main(["answerer", "train", "--method", method, "--data", str(multi), "--answerer", str(sft),
                     "--out", str(out), "--config", str(cfg), "--max-steps", "1"]) == 0
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert row["train/loss"] is not None
        assert ("ktr/temporal_ratio" in row) == (method == "ktr")
        if method == "grpo":
            assert row["ktr/kept_ratio"] == 1.0


def test_bad_method_config_is_one_line_error(tmp_path, capsys, multi, small_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("signals: [visual, colour]\n")
    code = main(["answerer", "train", "--method", "ktr", "--data", str(multi), "--answerer", str(small_dir),
                 "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert code == 1
    err = capsys.readouterr().err  # one line naming the file, then the field
    assert err.startswith("error: ") and "c.yaml: signals must be" in err and err.count("\n") == 1


def test_eval_generate_scores_parsed_answers_beside_option_logits(tmp_path, sft_dir, multi, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--data", str(multi), "--answerer", str(sft_dir), "--selector", "uniform",
                 "--budget", "4", "--out", str(out), "--generate", "--max-new-tokens", "12"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["generated_accuracy"] <= 1.0 and 0.0 <= res["format_rate"] <= 1.0
    assert res["accuracy"] is not None  # the option-logit score stays beside it
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        assert isinstance(r["generated"], str)
        assert r["generated_correct"] == (r["generated_answer"] == r["answer"])
    captured = capsys.readouterr()
    assert "generated accuracy" in captured.out + captured.err


def test_attribution_precision_against_template_tags(sft_dir, qwen_dir, multi):
    from refocus.answerer.attribution import attribution_precision
    from refocus.answerer.data import EvidenceVideos
    from refocus.errors import RefocusError

    a = Answerer.load(sft_dir)
    items = load_questions(multi)[:6]
    res = attribution_precision(a, items, EvidenceVideos(a.image_size), k=4, ratio=0.2)
    assert res["questions"] == 6
    total = sum(len(build_rationale(it).words) + 1 for it in items)  # + the stop token
    assert res["tokens"] == total
    visual_words = sum(t == "visual" for it in items for t in build_rationale(it).tags)
    assert res["visual_base_rate"] == pytest.approx(visual_words / total)
    for key in ("visual_precision", "temporal_precision", "entropy_mask_visual_precision"):
        assert 0.0 <= res[key] <= 1.0
    q = Answerer.load(qwen_dir)
    with pytest.raises(RefocusError, match="word-level"):
        attribution_precision(q, items[:1], EvidenceVideos(q.image_size), k=2)


def test_frozen_vision_tower_stays_in_eval_mode_through_generation(small_dir, multi):
    from refocus.answerer.generation import set_train_mode, vision_module

    a = Answerer.load(small_dir)
    set_train_mode(a.model, train_vision=False)
    tower = vision_module(a.model)
    assert a.model.training and not tower.training
    s = a.image_size
    a.generate(load_questions(multi)[0], [np.zeros((s, s, 3), np.uint8)] * 2, GenerateConfig(max_new_tokens=2))
    assert a.model.training and not any(m.training for m in tower.modules())
