"""The project's own small reference model: building, training plumbing, adapter round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_small_reference_config
from transformers import LlavaForConditionalGeneration

from refocus.data.questions import load_questions
from refocus.data.synth import make_benchmark
from refocus.reference import load_reference
from refocus.reference.small_model import (
    SmallReferenceConfig,
    build_small_reference,
    train_tokenizer,
)
from refocus.reference.small_training import (
    SmallReferenceTrainConfig,
    _PromptCache,
    _pseudo_forward,
    add_distractor,
    compose_option_embeddings,
    frame_objects,
    option_evidence_targets,
    option_object_frames,
    pixel_values_from_frames,
    sample_subset,
    shuffle_options,
    train_small_reference,
)
from refocus.seeding import seed_everything
from refocus.video import load_video

TINY = tiny_small_reference_config()


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    return make_benchmark("niah", tmp_path_factory.mktemp("niah"), videos=6, frames=(16, 24), seed=0)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


def test_fast_prompt_and_pixels_equal_the_processor(qa):
    items = load_questions(qa)
    tok = train_tokenizer([it.question for it in items], [it.options for it in items])
    cfg = SmallReferenceConfig()
    model, processor = build_small_reference(tok, cfg)
    video = load_video(items[0].video, size=cfg.image_size)
    cache = _PromptCache(processor, (cfg.image_size // cfg.patch_size) ** 2)
    from refocus.reference.prompt import build_prompt_messages, render_prompt

    text = render_prompt(processor, build_prompt_messages(items[0], 3))
    enc = processor(text=[text], images=[video.frames[i] for i in range(3)], return_tensors="pt")
    ids, ends = cache.encode(items[0], 3)
    assert enc["input_ids"][0].tolist() == ids
    assert torch.equal(enc["pixel_values"], pixel_values_from_frames(video.frames[:3]))
    # each option is one line token holding its letter and text
    for j, end in enumerate(ends):
        assert tok.convert_ids_to_tokens(ids[end]) == f"{'ABCD'[j]}. {items[0].options[j]}"
    assert tok.convert_tokens_to_ids("A") != tok.unk_token_id  # letters are single tokens
    # the cache is keyed on the prompt's text: another question about the same item is its own prompt
    other = dataclasses.replace(items[0], question=items[1].question)
    assert other.question != items[0].question and cache.encode(other, 3)[0] != ids


def test_shuffle_options_keeps_the_answer_text(qa):
    item = load_questions(qa)[0]
    rng = np.random.default_rng(0)
    for _ in range(10):
        s = shuffle_options(item, rng)
        assert sorted(s.options) == sorted(item.options)
        assert s.options[s.answer_index] == item.options[item.answer_index]


def test_subsets_with_and_without_evidence(qa):
    from refocus.data.evidence import evidence_frame_mask, evidence_spans_frames
    from refocus.reference.small_training import _Video

    item = load_questions(qa)[0]
    v = load_video(item.video, size=32)
    mask = evidence_frame_mask(v.timestamps, item.evidence)
    video = _Video(v.frames, mask, evidence_spans_frames(v.timestamps, item.evidence))
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = sample_subset(rng, video, 4, "positive")
        neg = sample_subset(rng, video, 4, "negative")
        assert len(pos) == len(set(pos)) == 4 and pos == sorted(pos)
        assert mask[pos].any() and not mask[neg].any()
    # frames per covered span: 1-2 by default, up to the whole span with max_per_span
    span = len(video.spans[0])
    assert span >= 3
    default = {int(mask[sample_subset(rng, video, 8, "positive")].sum()) for _ in range(50)}
    whole = {int(mask[sample_subset(rng, video, 8, "positive", max_per_span=span)].sum()) for _ in range(50)}
    assert default == {1, 2} and whole == set(range(1, span + 1))


def test_training_saves_a_checkpoint_that_loads_as_a_reference(tmp_path, qa):
    cfg = SmallReferenceTrainConfig(steps=2, align_steps=2, vision_steps=2, batch_size=4,
                                    vision_batch_size=4, val_fraction=0.34, val_subsets=1, model=TINY)
    summary = train_small_reference(load_questions(qa), tmp_path / "ref", cfg, progress=False)
    stages = [h["stage"] for h in summary["history"]]
    assert stages.count("align") and stages.count("vision") and stages.count("joint")
    saved = json.loads((tmp_path / "ref" / "reference_train.json").read_text())
    assert "val_acc_with_evidence_k4" in saved and "val_acc_without_evidence_k8" in saved
    ref = load_reference(tmp_path / "ref")
    assert ref.image_size == 32
    item = load_questions(qa)[1]
    frames = load_video(item.video, size=32).frames
    logits = ref.option_logits(item, frames, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert logits.shape == (2, 4) and np.isfinite(logits).all()


def test_option_line_embeddings_start_as_the_sum_of_their_parts(qa):
    items = load_questions(qa)
    tokenizer = train_tokenizer([it.question for it in items], [it.options for it in items])
    model, _ = build_small_reference(tokenizer, TINY)
    count = compose_option_embeddings(model, tokenizer)
    vocab = tokenizer.get_vocab()
    lines = [t for t in vocab if len(t) > 3 and t[1:3] == ". " and t[0].isupper()]
    assert count == len(lines) > 0
    table = model.get_input_embeddings().weight
    word = items[0].options[0]
    torch.testing.assert_close(table[vocab[f"C. {word}"]], table[vocab["C"]] + table[vocab[word]])
    assert not torch.allclose(table[vocab[f"C. {word}"]], table[vocab[f"D. {word}"]])


def test_option_evidence_targets_name_the_other_attribute_of_the_shown_objects():
    words = ["clutter", "red", "blue", "green", "star", "circle", "square"]
    shown = [("red", "star"), None, ("red", "circle"), ("blue", "square"), ("red", "star")]
    targets = option_evidence_targets(("red", "green", "square", "they appeared equally often"), shown, words)
    assert set(targets) == {0, 1, 2}  # an option that is not one attribute word gets no target
    # "red": two red-star frames and one red circle -> 2/3 star, 1/3 circle
    np.testing.assert_allclose(targets[0], [0, 0, 0, 0, 2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(targets[1], [1, 0, 0, 0, 0, 0, 0])  # no green object shown
    np.testing.assert_allclose(targets[2], [0, 0, 1, 0, 0, 0, 0])  # the square is blue


def test_option_object_frames_and_add_distractor():
    """An option object is another object whose asked attribute is a wrong option; the
    distractor replaces one non-evidence frame of a subset by one of its frames."""
    from refocus.data.questions import QAItem

    item = QAItem(id="q", video="v.mp4", question="What colour is the star?",
                  options=("red", "blue", "green", "cyan"), answer="A", evidence=((0.0, 0.5),),
                  meta={"asked": "color", "named": "shape", "color": "red", "shape": "star"})
    objects = [("red", "star"), ("red", "star"), None, ("blue", "circle"), ("yellow", "cross"),
               ("green", "star"), None, ("blue", "circle")]
    np.testing.assert_array_equal(option_object_frames(item, objects), [3, 5, 7])
    assert len(option_object_frames(item, [])) == 0  # objects unknown
    niah_like = QAItem(id="n", video="v.mp4", question="?", options=("a", "b"), answer="A",
                       evidence=((0.0, 0.5),), meta={"color": "red", "shape": "star"})
    assert len(option_object_frames(niah_like, objects)) == 0  # not a query item

    evidence = np.array([True, True] + [False] * 6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = add_distractor(rng, [0, 2, 4, 6], evidence, np.array([3, 5, 7]))
        assert len(out) == 4 and 0 in out and out == sorted(out)  # the evidence frame stays
        assert len(set(out) & {3, 5, 7}) == 1 and len(set(out) & {2, 4, 6}) == 2
    assert add_distractor(rng, [0, 3, 4, 6], evidence, np.array([3, 5, 7])) == [0, 3, 4, 6]  # already shows one
    assert add_distractor(rng, [0, 1], evidence, np.array([3])) == [0, 1]  # nothing to replace


def test_word_frames_are_the_sum_of_their_words_in_every_slot(qa):
    """Stage 1 feeds a frame as E(colour) + E(shape) ("clutter" alone) in each visual-token slot."""
    items = load_questions(qa)
    tokenizer = train_tokenizer([it.question for it in items], [it.options for it in items])
    cfg = SmallReferenceConfig(image_size=64, vision_hidden_sizes=(16, 32), vision_depths=(1, 1), vision_heads=(2, 2),
                               text_hidden=32, text_layers=1, text_heads=2)  # 2 x 2 tokens per frame
    model, processor = build_small_reference(tokenizer, cfg)
    prompts = _PromptCache(processor, cfg.tokens_per_image)
    words = ["clutter", "red", "star"]
    word_ids = dict(zip(words, tokenizer.convert_tokens_to_ids(words), strict=True))
    captured = {}
    model.model.language_model.register_forward_pre_hook(
        lambda _m, args, kwargs: captured.update(kwargs), with_kwargs=True)
    _pseudo_forward(model, prompts, word_ids, [(items[0], [("red", "star"), None])], cfg.tokens_per_image)
    embeds, table = captured["inputs_embeds"][0], model.get_input_embeddings().weight
    ids = prompts.encode(items[0], 2)[0]
    slots = [i for i, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids("<image>")]
    assert len(slots) == 2 * cfg.tokens_per_image == 8
    for i in slots[:4]:
        torch.testing.assert_close(embeds[i], table[word_ids["red"]] + table[word_ids["star"]])
    for i in slots[4:]:
        torch.testing.assert_close(embeds[i], table[word_ids["clutter"]])


def test_frozen_joint_stage_leaves_the_vision_tower_untouched(tmp_path, qa):
    cfg = SmallReferenceTrainConfig(steps=3, align_steps=0, vision_steps=0, batch_size=4, joint_trains_vision=False,
                                    val_fraction=0.0, val_subsets=1, model=TINY)
    items = load_questions(qa)
    train_small_reference(items, tmp_path / "ref", cfg, progress=False)
    seed_everything(cfg.seed)  # the same initial weights as inside train_small_reference
    tokenizer = train_tokenizer([it.question for it in items], [it.options for it in items])
    initial, _ = build_small_reference(tokenizer, TINY)
    trained = LlavaForConditionalGeneration.from_pretrained(tmp_path / "ref")
    before, after = initial.state_dict(), trained.state_dict()
    tower = [k for k in before if "vision_tower" in k]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)  # batch-norm statistics included
    assert not torch.equal(before["model.multi_modal_projector.linear_1.weight"],
                           after["model.multi_modal_projector.linear_1.weight"])


def test_frame_objects_name_the_object_each_decoded_frame_shows(tmp_path, qa):
    query = load_questions(make_benchmark("query", tmp_path / "q", videos=2, frames=(48, 56), seed=0))
    for item in [*load_questions(qa), *query]:
        video = load_video(item.video, size=32)
        objects = frame_objects(item, video.timestamps)
        assert len(objects) == len(video.timestamps)
        events = item.meta.get("events") or [{"color": item.meta["color"], "shape": item.meta["shape"],
                                              "frames": item.meta["needle_frames"]}]
        for e in events:
            a, b = e["frames"]
            assert objects[a : b + 1] == [(e["color"], e["shape"])] * (b - a + 1)
        assert sum(o is not None for o in objects) == sum(e["frames"][1] - e["frames"][0] + 1 for e in events)
    assert frame_objects(query[0].__class__(**{**query[0].__dict__, "meta": {}}), video.timestamps) == []


def test_training_on_several_tasks_uses_every_tasks_objects(tmp_path, qa):
    """Stage 1 reads word frames of query and multi items too; stage 2 regresses their objects' frames."""
    items = [*load_questions(qa), *load_questions(make_benchmark("query", tmp_path / "q", 3, (48, 56), seed=1)),
             *load_questions(make_benchmark("multi", tmp_path / "m", 3, (32, 40), seed=1))]
    cfg = SmallReferenceTrainConfig(steps=2, align_steps=3, vision_steps=2, batch_size=6, vision_batch_size=8,
                                    val_fraction=0.0, val_subsets=1, model=TINY)
    summary = train_small_reference(items, tmp_path / "ref", cfg, progress=False)
    assert summary["train_questions"] == summary["described_questions"] == 12
    shown = sum(e["frames"][1] - e["frames"][0] + 1 for it in items[6:] for e in it.meta["events"])
    shown += sum(it.meta["needle_frames"][1] - it.meta["needle_frames"][0] + 1 for it in items[:6])
    assert summary["object_frames"] == shown
    ref = load_reference(tmp_path / "ref")
    video = load_video(items[-1].video, size=32)
    assert np.isfinite(ref.option_logits(items[-1], video.frames, [[0, 5, 10, 20]])).all()


def test_reference_train_set_overrides_fields_and_rejects_unknown_ones():
    from types import SimpleNamespace

    from refocus.cli.reference import train_config
    from refocus.errors import ConfigError

    def args(*sets, seed=3, steps=None):
        return SimpleNamespace(sets=list(sets), seed=seed, steps=steps, batch_size=None)

    cfg = train_config(args("distractor_fraction=0.5", "frames_per_example=[4]", "vision_steps=10",
                            "decode.fps=2", steps=7))
    assert (cfg.distractor_fraction, cfg.frames_per_example, cfg.vision_steps, cfg.seed, cfg.steps) == (
        0.5, (4,), 10, 3, 7)
    assert (cfg.decode.fps, cfg.decode.max_frames) == (2, SmallReferenceTrainConfig().decode.max_frames)
    assert train_config(args("seed=5")).seed == 5  # --set wins over --seed's default
    with pytest.raises(ConfigError, match="did you mean distractor_fraction"):
        train_config(args("distractor_fractoin=0.5"))
    with pytest.raises(ConfigError, match="decode"):
        train_config(args("decode.fsp=2"))


def test_requery_asks_about_another_object_and_moves_the_evidence_with_it(tmp_path):
    """``requery_fraction``: a `query` example asks about a random object of its video; the
    answer is that object's asked attribute, every option is a value some object of the video
    has, and the evidence frames are exactly that object's frames."""
    from refocus.data.synth.common import COLORS, SHAPES
    from refocus.reference.small_training import _decode_items, _StageSteps

    items = load_questions(make_benchmark("query", tmp_path / "q", 4, (48, 56), seed=2))
    cfg = SmallReferenceTrainConfig(requery_fraction=1.0, model=TINY)
    videos, usable, _ = _decode_items(items, cfg, False)
    # Every colour and shape as an option, as in any real split (160 videos show all 22 values);
    # an option the vocabulary lacks makes ``example`` keep the stored question.
    palette = [tuple(values[i:i + 4]) for values in (list(COLORS), list(SHAPES)) for i in range(0, len(values), 2)]
    tokenizer = train_tokenizer([it.question for it in usable], [*(it.options for it in usable), *palette])
    model, processor = build_small_reference(tokenizer, TINY)
    steps = _StageSteps(model, processor, tokenizer, cfg, np.random.default_rng(0), videos, usable)
    asked_about, changed = set(), 0
    for item in usable * 10:
        new, video = steps.example(item)
        objects = [(e["color"], e["shape"]) for e in item.meta["events"]]
        named = (new.meta["color"], new.meta["shape"])
        value = 0 if new.meta["asked"] == "color" else 1
        assert new.options[new.answer_index] == named[value]
        assert set(new.options) <= {o[value] for o in objects} and len(set(new.options)) == 4
        assert new.question == (f"What colour is the {named[1]}?" if value == 0 else f"What shape is the {named[0]} object?")
        assert video.evidence_mask.tolist() == [o == named for o in video.objects] and video.evidence_mask.any()
        asked_about.add((item.id, named))
        changed += new.question != item.question
    assert changed > 20 and len(asked_about) > 15  # many questions per video, not the stored one
    steps.cfg = SmallReferenceTrainConfig(requery_fraction=0.0, model=TINY)
    assert steps.example(usable[0]) == (usable[0], videos[str(usable[0].video)])


def test_fresh_plan_draws_a_new_multi_question_of_the_same_category_and_length(tmp_path):
    """``fresh_plan_fraction``: a stage-1 `multi` example is a new plan of the same category on
    the decoded video's frames: the objects its frames show, its evidence and its answer agree
    with the plan, and it differs from the stored question most of the time."""
    from refocus.reference.small_training import _decode_items, _StageSteps, training_tokenizer

    items = load_questions(make_benchmark("multi", tmp_path / "m", 6, (40, 48), seed=3))
    cfg = SmallReferenceTrainConfig(fresh_plan_fraction=1.0, model=TINY)
    videos, usable, _ = _decode_items(items, cfg, False)
    tokenizer = training_tokenizer(usable)  # every multi option line, as `refocus reference train` builds it
    model, processor = build_small_reference(tokenizer, TINY)
    steps = _StageSteps(model, processor, tokenizer, cfg, np.random.default_rng(0), videos, usable)
    changed = 0
    for item in usable * 5:
        stored = videos[str(item.video)]
        new, video = steps.fresh_plan(item, stored)
        assert new.category == item.category and len(video.objects) == len(stored.frames)
        events = new.meta["events"]
        objects = [o for o in video.objects if o is not None]
        assert {(e["color"], e["shape"]) for e in events} == set(objects)
        assert video.evidence_mask.sum() == sum(len(s) for s in video.spans) > 0
        answer = new.options[new.answer_index]
        if new.category == "count":
            target = tuple(new.meta["target"].split())
            assert int(answer) == sum(1 for e in events if (e["color"], e["shape"]) == target)
            assert all(video.objects[i] == target for i in np.flatnonzero(video.evidence_mask))
        elif new.category == "order":
            shown = sorted(events, key=lambda e: e["frames"][0])
            pick = shown[0] if new.meta["which"] == "first" else shown[-1]
            assert answer == f"the {pick['color']} {pick['shape']}"
        changed += new.question != item.question or new.answer != item.answer
    assert changed > len(usable)
    steps.cfg = SmallReferenceTrainConfig(fresh_plan_fraction=0.0, model=TINY)
    assert steps.fresh_plan(usable[0], videos[str(usable[0].video)])[0] is usable[0]


def test_multi_option_targets_by_hand():
    """Order: rank of each object's first shown appearance ("clutter" = index 0 when unseen);
    compare: separate appearances, consecutive shown frames of one object counting once."""
    from refocus.data.questions import QAItem
    from refocus.reference.small_training import (
        MULTI_TARGET_WORDS,
        multi_option_targets,
        shown_runs,
    )

    red, blue, cyan = ("red", "star"), ("blue", "circle"), ("cyan", "cross")
    shown = [None, blue, blue, None, red, blue, None, red]
    assert shown_runs(shown) == [blue, red, blue, red]
    order = QAItem(id="o", video="v.mp4", question="Which of these appeared first in the video?",
                   options=("the red star", "the cyan cross", "the blue circle", "the green square"),
                   answer="C", category="order")
    assert multi_option_targets(order, shown) == {0: 2, 1: 0, 2: 1, 3: 0}
    compare = QAItem(id="c", video="v.mp4", question="Which appeared more times in the video: the blue circle or "
                     "the red star?", options=("they appeared equally often", "the red star", "the blue circle"),
                     answer="A", category="compare")
    assert multi_option_targets(compare, shown) == {1: 2, 2: 2}
    assert multi_option_targets(compare, [red, red, None, cyan]) == {1: 1, 2: 0}
    count = QAItem(id="n", video="v.mp4", question="How many times does a red star appear in the video?",
                   options=("1", "2", "3", "4"), answer="B", category="count")
    assert multi_option_targets(count, shown) == {}
    assert MULTI_TARGET_WORDS[0] == "clutter"


def test_oracle_subset_fraction_trains_on_the_oracles_subsets(tmp_path):
    """``oracle_subset_fraction=1``: every subset with evidence is the oracle's (whole appearances
    first); subsets without evidence are drawn as before."""
    from refocus.reference.small_training import _decode_items, _StageSteps, training_tokenizer
    from refocus.selectors.oracle import oracle_indices

    items = load_questions(make_benchmark("multi", tmp_path / "m", 4, (40, 48), seed=5))
    cfg = SmallReferenceTrainConfig(oracle_subset_fraction=1.0, model=TINY)
    videos, usable, _ = _decode_items(items, cfg, False)
    tokenizer = training_tokenizer(usable)
    model, processor = build_small_reference(tokenizer, TINY)
    steps = _StageSteps(model, processor, tokenizer, cfg, np.random.default_rng(0), videos, usable)
    for item in usable:
        video = videos[str(item.video)]
        assert steps.subset(item, video, 8, "positive") == oracle_indices(video.timestamps, item.evidence, 8)
        assert not video.evidence_mask[steps.subset(item, video, 8, "negative")].any()
    steps.cfg = SmallReferenceTrainConfig(oracle_subset_fraction=0.0, model=TINY)
    drawn = [steps.subset(usable[0], videos[str(usable[0].video)], 8, "positive") for _ in range(8)]
    assert any(d != drawn[0] for d in drawn)


def test_multi_share_sets_the_share_of_multi_examples(tmp_path):
    """``multi_share``: that share of a batch's examples come from `multi` items, whatever the
    split sizes; None draws in proportion to the items (here 1 in 4)."""
    from refocus.data.synth.multi import CATEGORIES as MULTI_CATEGORIES
    from refocus.reference.small_training import _decode_items, _StageSteps, training_tokenizer

    items = (load_questions(make_benchmark("multi", tmp_path / "m", 2, (40, 48), seed=5))
             + load_questions(make_benchmark("niah", tmp_path / "n", 6, (40, 48), seed=5)))
    cfg = SmallReferenceTrainConfig(multi_share=0.8, batch_size=2000, model=TINY)
    videos, usable, _ = _decode_items(items, cfg, False)
    tokenizer = training_tokenizer(usable)
    model, processor = build_small_reference(tokenizer, TINY)
    steps = _StageSteps(model, processor, tokenizer, cfg, np.random.default_rng(0), videos, usable)

    def multi_share(pool):
        return np.mean([pool[i].category in MULTI_CATEGORIES for i in steps.draw_indices(pool)])

    assert abs(multi_share(usable) - 0.8) < 0.03
    steps.cfg = SmallReferenceTrainConfig(multi_share=None, batch_size=2000, model=TINY)
    assert abs(multi_share(usable) - 0.25) < 0.03
    niah_only = [it for it in usable if it.category.startswith("needle")]
    steps.cfg = SmallReferenceTrainConfig(multi_share=0.8, batch_size=100, model=TINY)
    assert multi_share(niah_only) == 0.0  # nothing to draw from: the pool as it is
    from refocus.errors import ConfigError

    with pytest.raises(ConfigError, match="multi_share"):
        SmallReferenceTrainConfig(multi_share=1.5)
