"""Training the small reference model on synthetic benchmarks (``refocus reference train``).

Each training example is one question with a random frame subset of K frames that either
holds evidence (one or more frames from every evidence span, the rest random) or holds none.
The target is always the true answer; over subsets without evidence the answer letters are
uniformly shuffled, so the model learns to be uncertain there and confident only when it
sees the evidence. That is what makes its margins a reward for frame selection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refocus.data.evidence import evidence_frame_mask, evidence_spans_frames
from refocus.data.indices import oracle_indices
from refocus.data.questions import LETTERS, QAItem
from refocus.data.synth.common import BASIC_COLORS, BASIC_SHAPES, COLORS, SHAPES, SynthConfig
from refocus.data.synth.multi import CATEGORIES as MULTI_CATEGORIES
from refocus.data.synth.multi import EQUAL, plan_multi
from refocus.data.synth.query import ATTRIBUTE_INDEX, OTHER_ATTRIBUTE, ask_about, nameable_objects
from refocus.io import write_json
from refocus.reference.appearance import appearance_codes, event_geometry, moved_geometry
from refocus.reference.augment import mirror_shift, paste_objects, permute_channels
from refocus.reference.prompt import build_prompt_messages, render_prompt
from refocus.reference.small_model import SmallReferenceConfig, option_line
from refocus.video.config import DecodeConfig


@dataclass
class SmallReferenceTrainConfig:
    """Optimisation settings for the small reference model (CPU-sized)."""

    steps: int = 300
    """Stage 3: optimiser steps on real frames (projector and language model, see
    ``joint_trains_vision``)."""
    batch_size: int = 32
    """Examples (question + frame subset) per step of stages 1 and 3; 16 learns stage 1 much less
    well (benchmarks/RESULTS.md, "Small reference model: measurements behind the defaults")."""
    lr: float = 1e-3
    """Peak learning rate of stage 1 (the language model on word frames); higher rates learn
    stage 1 less well (benchmarks/RESULTS.md)."""
    vision_lr: float = 2e-3
    """Peak learning rate of stage 2 (vision tower and projector)."""
    joint_lr: float = 2e-4
    """Peak learning rate of stage 3: the answering circuit exists by then, and a high rate
    wipes it out before the model adapts to real frames."""
    weight_decay: float = 0.01
    """AdamW weight decay of every stage (not of norms and biases)."""
    warmup_steps: int = 60
    """Linear warm-up steps at the start of each stage."""
    frames_per_example: tuple[int, ...] = (4, 8)
    """Subset sizes K drawn per step: the budgets the policy and evaluation use."""
    positive_fraction: float = 0.6
    """Share of examples whose subset covers every evidence span."""
    partial_fraction: float = 0.1
    """Share of examples covering only some spans (multi-evidence questions)."""
    max_frames_per_span: int = 2
    """A training subset holds 1 .. this many frames of each evidence span it covers. The
    oracle's subsets hold whole events (up to 4 frames): a model trained at 2 counts a `multi`
    object's frames instead of its appearances there, 0.70-0.80 from training-style subsets
    against 0.30 from the oracle's. At 4, count from the oracle's 8 frames rises 0.25 -> 0.50 but
    order falls 1.00 -> 0.70 (benchmarks/RESULTS.md, "`multi` becomes learnable")."""
    distractor_fraction: float = 0.0
    """Share of the subsets with evidence of a `query` question in which one non-evidence frame
    is replaced by a frame of an *option object* (another object whose asked attribute is one of
    the wrong options), so the model learns to answer from the named object's frame while an
    object pointing to a wrong option is in view. At 0.5 that case's accuracy goes 0.64 -> 0.78,
    but a policy trained by GRPO on it finds the named object no more often (benchmarks/RESULTS.md,
    "training the reference with option objects in view"). 0 = off: random non-evidence frames only."""
    align_steps: int = 2000
    """Stage 1 (language model): steps on prompts whose frames are word embeddings standing in
    for images ("red star" for the needle frame, "clutter" for the others). The end-to-end
    accuracy can be no better than this stage's, which is still rising at 1,000 steps
    (benchmarks/RESULTS.md)."""
    vision_steps: int = 3500
    """Stage 2 (vision tower + projector): steps regressing each frame's visual tokens onto the
    words that stage 1 read, so real frames then look to the language model like those words.
    Shapes need them: with the 10 shapes of ``SYNTH_VERSION`` 2, held-out shape accuracy of the
    tower's tokens is 0.87 after 2,500 steps and 0.99 after 3,500 (benchmarks/RESULTS.md,
    "query v2")."""
    vision_batch_size: int = 64
    joint_trains_vision: bool = False
    """Stage 3 trains the vision tower too. Off by default: the language model then adapts to
    the tower's actual visual tokens without the tower forgetting the shapes stage 2 taught it
    (benchmarks/RESULTS.md)."""
    requery_fraction: float = 0.75
    """Share of the `query` examples of stages 1 and 3 that ask about another object of the same
    video (a random object and attribute, ``refocus.data.synth.query.ask_about``) instead of the
    stored question; the subset's evidence follows the new object. Every object of a
    ``SYNTH_VERSION`` 2 video can be named, so a video holds up to 20 questions. Stage 1 on the
    demo's 160 `query` videos memorises their stored questions: held-out 0.80 / 0.72 (K = 4 / 8)
    with 0, 0.97 / 0.87 with 0.75 (benchmarks/RESULTS.md, "query v2"). 0 = the stored questions
    only."""
    fresh_plan_fraction: float = 0.0
    """Share of the stage-1 examples of `multi` items (order / count / compare) that replace the
    item by a freshly planned video of the same length and category: events and question drawn
    anew by ``refocus synth multi``'s planner and never rendered, since stage 1 reads frames as
    words. Stage 1 memorises a split's stored `multi` questions instead of learning the task
    (benchmarks/RESULTS.md, "`multi` becomes learnable"). 0 = the stored questions only."""
    multi_option_targets: bool = False
    """Add the `multi` counterpart of the option-evidence target (weighted by
    ``option_evidence_weight``): at each object option of an `order` question, the rank of its
    first appearance among the shown objects; of a `compare` question, how many separate
    appearances the shown frames hold (:func:`multi_option_targets`)."""
    appearance_codes: bool = False
    """A frame of an object stands in stage 1 for its words plus a code of where the object is and
    how large (:mod:`refocus.reference.appearance`), and stage 2 teaches the tower to produce it,
    so that two frames of one appearance can be told from two appearances (`multi`'s count and
    compare; counted by appearance, not by runs of shown frames, in ``multi_option_targets``).
    Needs the geometry in the items' metadata (``SYNTH_VERSION`` 3); not with
    ``augment_rotations``."""
    oracle_subset_fraction: float = 0.0
    """Share of the subsets with evidence that are the oracle's (evidence frames first, every
    span in turn, then uniform: :func:`refocus.data.indices.oracle_indices`), so that whole
    appearances shown one after another are trained on, as the oracle and a good policy show
    them; the rest hold 1 .. ``max_frames_per_span`` frames per span among haystack frames.
    0 = never."""
    frame_ordinal_weight: float = 0.0
    """Weight of a stage-1 target at every shown frame of a `multi` item: which appearance of its
    object it is among the shown frames ("1" its first, "2" its second, ...; "clutter" for
    haystack; appearances told apart as in :func:`shown_runs`). The first hop of counting, which
    no other loss supervises for `count` (:func:`frame_ordinals`). 0 = off."""
    multi_share: float | None = None
    """Share of the examples of stages 1 and 3 drawn from `multi` items when the training set
    mixes them with other tasks (None: in proportion to the items, a third with three equal
    splits). `query` and `niah` are learnt in a fraction of stage 1's steps; `multi`'s counting
    is still improving when they are (benchmarks/RESULTS.md, "Issue 19: `multi`'s share of
    stage 1")."""
    appearance_code_weight: float = 1.0
    """Norm of an appearance code relative to the mean norm of the colour and shape word embeddings."""
    augment_rotations: bool = False
    """Also turn the vision stage's frames by random multiples of 90 degrees (besides the mirror
    and shift, ``refocus.reference.augment``). Off: objects are always drawn upright, and with
    the 10 shapes of ``SYNTH_VERSION`` 2 turned frames cost shape accuracy (benchmarks/RESULTS.md,
    "query v2")."""
    paste_fraction: float = 0.5
    """Share of the vision stage's needle frames that are freshly drawn objects pasted over
    training haystack frames (``refocus.reference.augment``); the rest are the videos' own."""
    compose_option_embeddings: bool = True
    """Start each option-line token ("B. red") at the sum of its letter's and words' embeddings:
    stage 1 learns faster (benchmarks/RESULTS.md)."""
    aux_weight: float = 1.0
    """Weight of the two auxiliary losses that break the "binding" plateau: at each option's
    last token, predict that option's letter; at the answer position, predict the correct
    option's text (single-token options, subsets with evidence). Without them a model trained
    from scratch sits at chance for thousands of steps before it links what it sees to a letter."""
    option_evidence_weight: float = 1.0
    """Weight of the option-evidence target: at each option that is one attribute word (a colour
    or a shape), predict what the shown frames say about it, the other attribute of the shown
    objects that carry it ("B. red" -> "star" when a red star is shown), or "clutter" when no
    shown object does. It is the first hop of `query`'s conditional read-out (find the object
    the question names, name its other attribute, pick that option), which no other loss
    supervises: without it stage 1 stays at chance on `query` (benchmarks/RESULTS.md, "Issue 19:
    the option-evidence target"). It needs to know each frame's object (synthetic items); 0 = off."""
    val_fraction: float = 0.1
    """Share of questions held out (by a hash of the id) to measure accuracy."""
    val_subsets: int = 4
    """Subsets per held-out question for each of the with/without-evidence accuracies."""
    seed: int = 0
    """Seed of the model's initialisation and of every training draw."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How videos are decoded (rate and frame cap; the size is the model's)."""
    model: SmallReferenceConfig = field(default_factory=SmallReferenceConfig)

    def __post_init__(self) -> None:
        from refocus.errors import ConfigError

        if self.max_frames_per_span < 1:
            raise ConfigError(f"max_frames_per_span must be >= 1, got {self.max_frames_per_span}")
        if self.multi_share is not None and not 0.0 <= self.multi_share <= 1.0:
            raise ConfigError(f"multi_share must be in [0, 1] or None, got {self.multi_share}")
        if self.appearance_codes and self.augment_rotations:
            raise ConfigError("appearance_codes does not follow the turned frames of augment_rotations; "
                              "set one of them to false")


@dataclass
class _Video:
    frames: np.ndarray  # (T, S, S, 3) uint8
    evidence_mask: np.ndarray  # (T,) bool
    spans: list[np.ndarray]  # frame indices per evidence span
    objects: list[tuple[str, str] | None] = field(default_factory=list)
    """Per decoded frame, the (colour, shape) of the object shown, or None (haystack only);
    empty when the item does not describe its objects (real benchmarks)."""
    timestamps: np.ndarray | None = None
    """Seconds of each decoded frame (where a fresh plan's events must be placed)."""
    appearances: np.ndarray | None = None
    """(T,) per decoded frame, which event (appearance of an object) it shows, -1 none; None when
    the item does not describe its objects."""
    geometry: np.ndarray | None = None
    """(T, 3) per decoded frame, its object's normalised centre and diameter (NaN where none, or
    where the metadata does not record them); None when unknown."""


def video_for(item: QAItem, frames: np.ndarray, timestamps: np.ndarray) -> _Video:
    """The training view of ``item`` on decoded ``frames``: its evidence mask and spans and the
    object each frame shows, placed by ``timestamps``."""
    timestamps = np.asarray(timestamps)
    mask = evidence_frame_mask(timestamps, item.evidence)
    if mask is None:
        mask = np.zeros(len(frames), dtype=bool)
    appearances = frame_appearances(item, timestamps)
    geometry = None
    if appearances is not None:
        events = event_geometry(item.meta)
        geometry = np.full((len(appearances), 3), np.nan)
        if events is not None:
            geometry[appearances >= 0] = events[appearances[appearances >= 0]]
    return _Video(frames, mask, evidence_spans_frames(timestamps, item.evidence),
                  _objects_shown(item, appearances), timestamps, appearances, geometry)


def _events(meta: dict) -> list[tuple[tuple[str, str], list[int]]] | None:
    """A synthetic item's events as (object, [first, last source frame]); None if not described.

    ``query`` and ``multi`` items list their events (``meta["events"]``), ``niah`` items their
    needle (``needle_frames``, ``color``, ``shape``)."""
    if "events" in meta:
        return [((e["color"], e["shape"]), e["frames"]) for e in meta["events"]]
    if {"needle_frames", "color", "shape"} <= set(meta):
        return [((meta["color"], meta["shape"]), meta["needle_frames"])]
    return None


def frame_appearances(item: QAItem, timestamps: np.ndarray) -> np.ndarray | None:
    """(T,) which event of a synthetic item each decoded frame shows (-1: none); None if the item
    does not describe its events. A decoded frame at time t is source frame
    ``round(t * meta["fps"])``."""
    events = _events(item.meta)
    if events is None:
        return None
    fps = float(item.meta.get("fps", SynthConfig.fps))
    source = np.rint(np.asarray(timestamps, dtype=np.float64) * fps).astype(int)
    out = np.full(len(source), -1, dtype=np.int64)
    for j, (_, (first, last)) in enumerate(events):
        out[(source >= first) & (source <= last)] = j
    return out


def frame_objects(item: QAItem, timestamps: np.ndarray) -> list[tuple[str, str] | None]:
    """The object each decoded frame shows, from a synthetic item's ``meta``; [] if unknown
    (see :func:`frame_appearances`)."""
    return _objects_shown(item, frame_appearances(item, timestamps))


def _objects_shown(item: QAItem, appearances: np.ndarray | None) -> list[tuple[str, str] | None]:
    """The object of each frame given which event it shows (:func:`frame_appearances`)."""
    if appearances is None:
        return []
    objects = [obj for obj, _ in _events(item.meta)]
    return [None if j < 0 else objects[j] for j in appearances]


def multi_option_palette() -> list[tuple[str, ...]]:
    """Every option text a `multi` question can have (each object, "they appeared equally
    often", the counts), in option lists for :func:`train_tokenizer`: the vocabulary then holds
    every option line of a held-out or freshly planned question, not only the split's."""
    objects = [f"the {c} {s}" for c in BASIC_COLORS for s in BASIC_SHAPES]
    return [tuple(objects[i:i + 4]) for i in range(0, len(objects), 4)] + [(EQUAL, "1", "2", "3", "4")]


def training_tokenizer(items: list[QAItem]):
    """The word-level tokenizer of a small reference trained on ``items``: their questions and
    option lines, and every `multi` option line when any item is a `multi` question."""
    from refocus.reference.small_model import train_tokenizer

    palette = multi_option_palette() if any(it.category in MULTI_CATEGORIES for it in items) else []
    return train_tokenizer([it.question for it in items], [*(it.options for it in items), *palette])


def pixel_values_from_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) normalised like the SigLIP processor (mean=std=0.5).

    Frames must already be decoded at the model's image size (equality with the processor is
    tested), which avoids a PIL round trip per frame in the training loop.
    """
    x = torch.from_numpy(np.array(frames, dtype=np.float32)).permute(0, 3, 1, 2)
    return (x / 255.0 - 0.5) / 0.5


def is_held_out(item_id: str, fraction: float) -> bool:
    """Deterministic split by a stable hash of the id (independent of file order)."""
    import hashlib

    h = int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


def sample_subset(
    rng: np.random.Generator, video: _Video, k: int, kind: str, max_per_span: int = 2
) -> list[int]:
    """A sorted subset of k frames: 'positive' covers every span, 'partial' some, 'negative' none.

    A covered span gives 1 .. ``max_per_span`` of its frames (fewer where k is short)."""
    T = len(video.frames)
    k = min(k, T)
    chosen: set[int] = set()
    spans = [s for s in video.spans if len(s)]
    if kind in ("positive", "partial") and spans:
        if kind == "partial" and len(spans) > 1:
            keep = rng.choice(len(spans), size=rng.integers(1, len(spans)), replace=False)
            spans = [spans[i] for i in keep]
        for span in spans:
            n = min(len(span), int(rng.integers(1, max_per_span + 1)), max(1, k // len(spans)))
            chosen.update(int(i) for i in rng.choice(span, size=n, replace=False))
    pool = np.flatnonzero(~video.evidence_mask)
    pool = np.setdiff1d(pool, np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    need = k - len(chosen)
    if need > 0:
        if len(pool) < need:  # tiny video: top up from anything not yet chosen
            pool = np.setdiff1d(np.arange(T), np.fromiter(chosen, dtype=np.int64))
        chosen.update(int(i) for i in rng.choice(pool, size=min(need, len(pool)), replace=False))
    return sorted(chosen)[:k] if len(chosen) > k else sorted(chosen)


def option_object_frames(item: QAItem, objects: list[tuple[str, str] | None]) -> np.ndarray:
    """Frames showing an *option object* of a `query` item: an object other than the named one
    whose asked attribute is one of the options. Empty for other items or unknown objects."""
    meta = item.meta or {}
    asked = meta.get("asked")
    if asked not in ("color", "shape") or not objects or "color" not in meta or "shape" not in meta:
        return np.zeros(0, dtype=np.int64)
    named, position = (meta["color"], meta["shape"]), 0 if asked == "color" else 1
    return np.array([i for i, obj in enumerate(objects)
                     if obj is not None and obj != named and obj[position] in item.options], dtype=np.int64)


def add_distractor(rng: np.random.Generator, chosen: list[int], evidence_mask: np.ndarray,
                   distractors: np.ndarray) -> list[int]:
    """``chosen`` with one of its non-evidence frames replaced by a random frame of
    ``distractors``; unchanged when it already holds one, or has no non-evidence frame, or there
    is no distractor frame. Sorted."""
    free = [i for i in chosen if not evidence_mask[i]]
    pool = np.setdiff1d(distractors, np.asarray(chosen, dtype=np.int64))
    if not free or not len(pool) or np.isin(distractors, chosen).any():
        return chosen
    out = set(chosen)
    out.discard(int(rng.choice(free)))
    out.add(int(rng.choice(pool)))
    return sorted(out)


class _PromptCache:
    """Token ids of the reward prompt per (question, options order, K).

    The chat template gives the text; each image placeholder is expanded to the model's
    tokens-per-image, exactly as the processor does (checked in the tests), without a PIL
    round trip per frame.
    """

    def __init__(self, processor, tokens_per_image: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokens_per_image = tokens_per_image
        self._ids: dict[tuple, list[int]] = {}

    def encode(self, item: QAItem, k: int) -> tuple[list[int], list[int]]:
        """Token ids and, per option, the index of its last text token."""
        key = (item.question, item.options, k)  # what the prompt is built from (not the id:
        # ``requery_fraction`` asks several questions about one item)
        if key not in self._ids:
            text = render_prompt(self.processor, build_prompt_messages(item, k))
            text = text.replace("<image>", "<image>" * self.tokens_per_image)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._ids[key] = (ids, self._option_ends(ids, item.options))
        return self._ids[key]

    def _option_ends(self, ids: list[int], options: tuple[str, ...]) -> list[int]:
        """Position of each option's line token ("B. red") in the prompt."""
        lines = self.tokenizer.convert_tokens_to_ids([option_line(LETTERS[j], o) for j, o in enumerate(options)])
        return [max(i for i, t in enumerate(ids) if t == line) for line in lines]


def shuffle_options(item: QAItem, rng: np.random.Generator) -> QAItem:
    """The same question with its options in a random order (the answer letter follows).

    Training on reshuffled options stops the model from memorising question -> letter and
    forces it to match what it sees to the option text.
    """
    perm = rng.permutation(len(item.options))
    options = tuple(item.options[i] for i in perm)
    answer = LETTERS[int(np.flatnonzero(perm == item.answer_index)[0])]
    return replace(item, options=options, answer=answer)


def _letter_ids(tokenizer) -> torch.Tensor:
    return torch.tensor(tokenizer.convert_tokens_to_ids(list(LETTERS)))


def _batch_forward(model, prompt_cache, batch, dtype=torch.float32):
    """batch: list of (item, frames (k, S, S, 3)).

    Returns the last hidden states (B, L, D), the left-padding offsets (B,) and the option
    end positions per example (already shifted by the offsets).
    """
    tok = prompt_cache.tokenizer
    encoded = [prompt_cache.encode(item, len(frames)) for item, frames in batch]
    L = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), L), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), L), dtype=torch.long)
    option_pos = []
    for i, (ids, ends) in enumerate(encoded):  # left padding: the answer position is the last one
        off = L - len(ids)
        input_ids[i, off:] = torch.tensor(ids)
        attention[i, off:] = 1
        option_pos.append([off + e for e in ends])
    pixels = pixel_values_from_frames(np.concatenate([f for _, f in batch]))
    hidden = model.model(input_ids=input_ids, attention_mask=attention, pixel_values=pixels.to(dtype)).last_hidden_state
    return hidden, option_pos


def _batch_logits(model, prompt_cache, letter_ids, batch, dtype=torch.float32):
    """Option-letter logits (B, 26) at the answer position."""
    hidden, _ = _batch_forward(model, prompt_cache, batch, dtype)
    return model.lm_head(hidden[:, -1]).float()[:, letter_ids]


@dataclass
class _AnswerVocab:
    """Option texts that are one token (colours, shapes, counts): the auxiliary answer targets."""

    index: dict[str, int]
    token_ids: list[int]

    @classmethod
    def from_items(cls, items: list[QAItem], tokenizer) -> _AnswerVocab:
        vocab = sorted({o for it in items for o in it.options if len(tokenizer.tokenize(o)) == 1})
        return cls({o: i for i, o in enumerate(vocab)}, tokenizer.convert_tokens_to_ids(vocab))


def _aux_losses(model, hidden, option_pos, items, kinds, letter_ids, answer_vocab) -> torch.Tensor:
    """Letter of each option at its last token + the correct option's text at the answer position."""
    rows = [i for i, pos in enumerate(option_pos) for _ in pos]
    cols = [p for pos in option_pos for p in pos]
    letters = torch.tensor([j for pos in option_pos for j in range(len(pos))])
    read = F.cross_entropy(model.lm_head(hidden[rows, cols]).float()[:, letter_ids], letters)
    seen = [i for i, (it, kind) in enumerate(zip(items, kinds, strict=True))
            if kind == "positive" and it.options[it.answer_index] in answer_vocab.index]
    if not seen:
        return read
    vocab_ids = torch.tensor(answer_vocab.token_ids)
    target = torch.tensor([answer_vocab.index[items[i].options[items[i].answer_index]] for i in seen])
    name = F.cross_entropy(model.lm_head(hidden[seen, -1]).float()[:, vocab_ids], target)
    return read + name


def option_evidence_targets(options: tuple[str, ...], shown: list[tuple[str, str] | None],
                            words: list[str]) -> dict[int, np.ndarray]:
    """What the shown frames say about each one-attribute option: {option index: distribution
    over ``words``}.

    An option that is a colour gets the shapes of the shown objects of that colour (one count per
    shown frame), a shape the colours of the shown objects of that shape; "clutter" (which must
    be in ``words``) when no shown object carries it. Options of any other text get no target.
    """
    index = {w: i for i, w in enumerate(words)}
    out: dict[int, np.ndarray] = {}
    for j, text in enumerate(options):
        if text in COLORS:
            other = [o[1] for o in shown if o is not None and o[0] == text]
        elif text in SHAPES:
            other = [o[0] for o in shown if o is not None and o[1] == text]
        else:
            continue
        target = np.zeros(len(words))
        for w in other or ["clutter"]:
            target[index[w]] += 1
        out[j] = target / target.sum()
    return out


def _option_evidence_loss(model, hidden, option_pos, items, shown, word_ids: dict[str, int]) -> torch.Tensor | None:
    """Cross-entropy of the option tokens' read-out against :func:`option_evidence_targets`."""
    words = list(word_ids)
    rows, cols, targets = [], [], []
    for i, (item, objs) in enumerate(zip(items, shown, strict=True)):
        if not objs:
            continue
        for j, target in option_evidence_targets(item.options, objs, words).items():
            rows.append(i)
            cols.append(option_pos[i][j])
            targets.append(target)
    if not rows:
        return None
    logits = model.lm_head(hidden[rows, cols]).float()[:, torch.tensor(list(word_ids.values()))]
    return F.cross_entropy(logits, torch.from_numpy(np.stack(targets)).float())


MULTI_TARGET_WORDS = ("clutter", "1", "2", "3", "4")
"""Read-out words of the `multi` option targets (:func:`multi_option_targets`)."""


def shown_runs(shown: list[tuple[str, str] | None], appearances: Sequence[int] | None = None) -> list[tuple[str, str]]:
    """The objects of the shown frames with consecutive repeats merged: what the frames, in
    order, can tell apart as separate appearances. With ``appearances`` (which event each shown
    frame is, as :func:`frame_appearances`; frames that can be told apart by their appearance
    codes) a new run starts wherever the event changes."""
    return [obj for obj, new in zip(shown, _appearance_starts(shown, appearances), strict=True) if new]


def _appearance_starts(shown: list[tuple[str, str] | None], appearances: Sequence[int] | None) -> list[bool]:
    """Per shown frame, whether it starts a new appearance of its object (never for haystack):
    where the object changes, or with ``appearances`` where the event changes."""
    starts: list[bool] = []
    prev = None
    for i, obj in enumerate(shown):
        key = obj if appearances is None else (obj, int(appearances[i]))
        starts.append(obj is not None and key != prev)
        prev = key
    return starts


def multi_option_targets(item: QAItem, shown: list[tuple[str, str] | None],
                         appearances: Sequence[int] | None = None) -> dict[int, int]:
    """What the shown frames say about each object option of an `order` or `compare` question:
    {option index: index into :data:`MULTI_TARGET_WORDS`}.

    ``order``: the rank of the object's first appearance among the shown objects ("1" first);
    ``compare``: how many separate appearances of it the frames show (at most 4; by
    :func:`shown_runs`, with ``appearances`` when given); "clutter" when none. The counterpart
    of :func:`option_evidence_targets` for questions that need several frames: the first hop
    (what the frames say about each option), supervised where the answer alone is a hard
    target to reach (benchmarks/RESULTS.md, "`multi` becomes learnable")."""
    if item.category not in ("order", "compare") or not shown:
        return {}
    runs = shown_runs(shown, appearances)
    firsts = list(dict.fromkeys(runs))  # the shown objects in order of first appearance
    out: dict[int, int] = {}
    for j, text in enumerate(item.options):
        parts = text.split()
        if len(parts) != 3 or parts[0] != "the":
            continue
        obj = (parts[1], parts[2])
        if item.category == "order":
            out[j] = firsts.index(obj) + 1 if obj in firsts else 0
        else:
            out[j] = min(runs.count(obj), 4)
    return out


def frame_ordinals(shown: list[tuple[str, str] | None], appearances: Sequence[int] | None = None) -> list[int]:
    """Per shown frame, the index into :data:`MULTI_TARGET_WORDS` of which appearance of its
    object it is so far (1 = first, at most 4; 0 = no object). Appearances are told apart as
    in :func:`shown_runs`: by event with ``appearances``, else by runs of consecutive frames."""
    seen: dict = {}
    out: list[int] = []
    for obj, new in zip(shown, _appearance_starts(shown, appearances), strict=True):
        if new:
            seen[obj] = seen.get(obj, 0) + 1
        out.append(0 if obj is None else min(seen[obj], 4))
    return out


def _frame_ordinal_loss(model, hidden, slots, items, shown, vocab: dict[str, int],
                        appearances: list | None = None) -> torch.Tensor | None:
    """Cross-entropy of each `multi` frame slot's read-out against :func:`frame_ordinals`;
    ``slots``: (B, L) bool, the frame slots in frame order (one token per frame)."""
    rows, targets = [], []
    for i, (item, objs) in enumerate(zip(items, shown, strict=True)):
        if item.category not in MULTI_CATEGORIES or not objs:
            continue
        positions = torch.nonzero(slots[i]).flatten()
        if len(positions) != len(objs):
            continue
        rows += [hidden[i, positions]]
        targets += frame_ordinals(objs, appearances[i] if appearances is not None else None)
    if not rows:
        return None
    logits = model.lm_head(torch.cat(rows)).float()[:, torch.tensor([vocab[w] for w in MULTI_TARGET_WORDS])]
    return F.cross_entropy(logits, torch.tensor(targets))


def _multi_option_loss(model, hidden, option_pos, items, shown, vocab: dict[str, int],
                       appearances: list | None = None) -> torch.Tensor | None:
    """Cross-entropy of the object options' read-out against :func:`multi_option_targets`."""
    rows, cols, targets = [], [], []
    for i, (item, objs) in enumerate(zip(items, shown, strict=True)):
        ids = appearances[i] if appearances is not None else None
        for j, target in multi_option_targets(item, objs, ids).items():
            rows.append(i)
            cols.append(option_pos[i][j])
            targets.append(target)
    if not rows or not all(w in vocab for w in MULTI_TARGET_WORDS):
        return None
    logits = model.lm_head(hidden[rows, cols]).float()[:, torch.tensor([vocab[w] for w in MULTI_TARGET_WORDS])]
    return F.cross_entropy(logits, torch.tensor(targets))


def _frame_words(obj: tuple[str, str] | None) -> list[str]:
    """The words a frame stands for in stage 1: its object's colour and shape, or "clutter"."""
    return ["clutter"] if obj is None else [obj[0], obj[1]]


def _frame_word_pair(word_ids: dict[str, int], words: list[str]) -> tuple[int, int]:
    """The ids of a frame's one or two words, the second -1 when there is one ("clutter")."""
    return word_ids[words[0]], word_ids[words[1]] if len(words) > 1 else -1


def _word_frame_embeddings(model, word_ids: dict[str, int], frames_words: list[list[str]], tokens: int) -> torch.Tensor:
    """(N, P, D): for each of N frames, the sum of the embeddings of its ``words`` (colour + shape,
    or "clutter") in each of its P visual-token slots. A sum, not one word per slot: one token
    then says the whole object, which is what lets stage 1 bind the colour to the shape in one
    attention hop."""
    first, second = zip(*(_frame_word_pair(word_ids, words) for words in frames_words), strict=True)
    pairs = _pair_embeddings(model, torch.tensor(first), torch.tensor(second))
    return pairs.unsqueeze(1).expand(-1, tokens, -1)


def _pair_embeddings(model, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """E[first] + E[second] where ``second`` >= 0, else E[first]; shapes (N,) -> (N, D)."""
    embed = model.get_input_embeddings()
    return embed(first) + embed(second.clamp(min=0)) * (second >= 0).unsqueeze(-1).to(embed.weight.dtype)


@torch.no_grad()
def compose_option_embeddings(model, tokenizer) -> int:
    """Set each option-line token's input embedding to the sum of its parts' embeddings.

    "B. red" starts as E("B") + E("red"): the needle word a frame shows and the option naming it
    are then similar from the first step, so the language model only has to learn to copy the
    letter of the most similar option. Returns the number of tokens set.
    """
    import re

    table = model.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    count = 0
    for token, index in vocab.items():
        match = re.fullmatch(r"([A-Z])\. (.+)", token)
        if not match:
            continue
        parts = [match.group(1), *match.group(2).split()]
        if all(p in vocab for p in parts):
            table[index] = sum(table[vocab[p]] for p in parts)
            count += 1
    return count


def _describable(item: QAItem, video: _Video) -> bool:
    """Whether stage 1 and 2 can use the item: its frames' objects are known."""
    return any(o is not None for o in video.objects)


def _pseudo_forward(model, prompts, word_ids, batch, tokens: int, codes: list | None = None,
                    return_slots: bool = False):
    """Language-model forward where each frame's image tokens are word tokens (stage 1).

    ``batch``: (item, the objects of its K chosen frames). Each image slot holds the summed
    embeddings of its frame's words (:func:`_word_frame_embeddings`), plus, with ``codes``
    (per example a (K, D) array or None), its frame's appearance code. ``return_slots``: also
    return the (B, L) bool mask of the image slots.
    """
    encoded = [prompts.encode(item, len(objs)) for item, objs in batch]
    L = max(len(ids) for ids, _ in encoded)
    tok = prompts.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    input_ids = torch.full((len(batch), L), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(batch), L), dtype=torch.long)
    option_pos, pairs = [], []
    for i, ((_, objs), (ids, ends)) in enumerate(zip(batch, encoded, strict=True)):
        off = L - len(ids)
        input_ids[i, off:] = torch.tensor(ids)
        attention[i, off:] = 1
        option_pos.append([off + e for e in ends])
        pairs += [_frame_word_pair(word_ids, _frame_words(o)) for o in objs for _ in range(tokens)]
    embeds = model.get_input_embeddings()(input_ids)
    slots = input_ids == image_id  # row-major order: frame by frame, slot by slot, as ``pairs``
    pair = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    frame_embeds = _pair_embeddings(model, pair[:, 0], pair[:, 1])
    if codes is not None and any(c is not None for c in codes):
        width = frame_embeds.shape[-1]
        extra = np.concatenate([np.zeros((len(objs), width), np.float32) if c is None else c
                                for (_, objs), c in zip(batch, codes, strict=True)])
        frame_embeds = frame_embeds + torch.from_numpy(np.repeat(extra, tokens, axis=0)).to(frame_embeds.dtype)
    embeds[slots] = frame_embeds
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
    return (hidden, option_pos, slots) if return_slots else (hidden, option_pos)


def _image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """Projected visual tokens (N, P, D) exactly as LLaVA's forward computes them."""
    cfg = model.config
    out = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=cfg.vision_feature_layer,
                                         vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def _masked_option_logits(logits: torch.Tensor, items: list[QAItem]) -> torch.Tensor:
    n_opt = torch.tensor([len(it.options) for it in items])
    invalid = torch.arange(26)[None, :] >= n_opt[:, None]
    return logits.masked_fill(invalid, float("-inf"))


@dataclass(frozen=True)
class Stage:
    """One stage of the small reference model's training."""

    name: str
    step: Callable[[], tuple[torch.Tensor, float]]
    """One optimiser step's loss and training accuracy (nan where there is none)."""
    steps: int
    lr: float
    vision_only: bool = False
    """Train only the vision tower and the projector."""
    tower_frozen: bool = False
    """Freeze the vision tower (eval mode, no gradients) from this stage on."""


def _decode_items(items: list[QAItem], cfg: SmallReferenceTrainConfig, progress: bool):
    """Decoded videos by path, the questions usable for training (decodable, with evidence), skipped."""
    from tqdm.auto import tqdm

    from refocus.video import load_video

    videos: dict[str, _Video] = {}
    usable: list[QAItem] = []
    skipped: list[dict] = []
    for item in tqdm(items, desc="decode", disable=not progress):
        key = str(item.video)
        if key not in videos:
            try:
                dv = load_video(item.video, fps=cfg.decode.fps, max_frames=cfg.decode.max_frames,
                                size=cfg.model.image_size)
            except Exception as exc:  # noqa: BLE001 - reported per item, never fatal
                skipped.append({"id": item.id, "reason": str(exc)})
                continue
            videos[key] = video_for(item, dv.frames, dv.timestamps)
        if not item.evidence:
            skipped.append({"id": item.id, "reason": "no evidence spans"})
            continue
        usable.append(item)
    if not usable:
        from refocus.errors import RefocusError

        raise RefocusError("no usable training questions (need decodable videos with evidence spans)")
    return videos, usable, skipped


class _StageSteps:
    """The model, data and random state the three stages share; one method per stage."""

    KINDS = ("positive", "partial", "negative")

    def __init__(self, model, processor, tokenizer, cfg: SmallReferenceTrainConfig, rng: np.random.Generator,
                 videos: dict[str, _Video], train_items: list[QAItem]) -> None:
        self.model, self.cfg, self.rng, self.videos, self.train_items = model, cfg, rng, videos, train_items
        self.prompts = _PromptCache(processor, cfg.model.tokens_per_image)
        self.letter_ids = _letter_ids(tokenizer)
        self.vocab = tokenizer.get_vocab()
        self.answer_vocab = _AnswerVocab.from_items(train_items, tokenizer)
        p_neg = max(0.0, 1 - cfg.positive_fraction - cfg.partial_fraction)
        kind_p = np.array([cfg.positive_fraction, cfg.partial_fraction, p_neg])
        self.kind_p = kind_p / kind_p.sum()
        self.tokens = self.prompts.tokens_per_image
        self.described = [it for it in train_items if _describable(it, videos[str(it.video)])]
        words = ["clutter", *sorted({w for it in self.described for o in videos[str(it.video)].objects if o for w in o}
                                    | {w for w in (*COLORS, *SHAPES) if w in tokenizer.get_vocab()})]
        self.word_ids = dict(zip(words, tokenizer.convert_tokens_to_ids(words), strict=True))
        self.paste_colours = [c for c in COLORS if c in self.word_ids]
        self.paste_shapes = [s for s in SHAPES if s in self.word_ids]
        self.object_frames = [(str(it.video), i) for it in self.described
                              for i, o in enumerate(videos[str(it.video)].objects) if o is not None]

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        return [
            Stage("align", self.align_step, cfg.align_steps if self.described else 0, cfg.lr),
            Stage("vision", self.vision_step, cfg.vision_steps if self.object_frames else 0, cfg.vision_lr,
                  vision_only=True),
            Stage("joint", self.joint_step, cfg.steps, cfg.joint_lr, tower_frozen=not cfg.joint_trains_vision),
        ]

    def draw_batch(self, pool: list[QAItem]) -> tuple[int, list[QAItem], list[str]]:
        rng, cfg = self.rng, self.cfg
        k = int(rng.choice(cfg.frames_per_example))
        items_ = [shuffle_options(pool[i], rng) for i in self.draw_indices(pool)]
        return k, items_, [self.KINDS[int(rng.choice(3, p=self.kind_p))] for _ in items_]

    def draw_indices(self, pool: list[QAItem]) -> np.ndarray:
        """``batch_size`` indices into ``pool``: uniform, or ``multi_share`` of them among its
        `multi` items when it also holds others."""
        rng, n, share = self.rng, self.cfg.batch_size, self.cfg.multi_share
        if share is None:
            return rng.integers(0, len(pool), n)
        multi = np.array([it.category in MULTI_CATEGORIES for it in pool])
        if multi.all() or not multi.any():
            return rng.integers(0, len(pool), n)
        groups = np.flatnonzero(multi), np.flatnonzero(~multi)
        from_multi = rng.random(n) < share
        return np.where(from_multi, rng.choice(groups[0], n), rng.choice(groups[1], n))

    def example(self, item: QAItem) -> tuple[QAItem, _Video]:
        """The item and its decoded video; for a `query` item, ``requery_fraction`` of the time a
        question about another of its objects, with that object's frames as the evidence."""
        video = self.videos[str(item.video)]
        events = item.meta.get("events") if item.category in ("query_color", "query_shape") else None
        if not (events and video.objects and self.cfg.requery_fraction
                and self.rng.random() < self.cfg.requery_fraction):
            return item, video
        objects = [(e["color"], e["shape"]) for e in events]
        named = int(self.rng.choice(nameable_objects(objects)))
        asked = "color" if self.rng.random() < 0.5 else "shape"
        by = ATTRIBUTE_INDEX[OTHER_ATTRIBUTE[asked]]
        if sum(o[by] == objects[named][by] for o in objects) > 1:  # the naming value must be unique
            return item, video
        question, options, answer = ask_about(self.rng, objects, named, asked)
        mask = np.array([o == objects[named] for o in video.objects])
        if not mask.any() or any(option_line(LETTERS[j], t) not in self.vocab for j, t in enumerate(options)):
            return item, video
        fps = float(item.meta.get("fps", SynthConfig.fps))
        first, last = events[named]["frames"]
        color, shape = objects[named]
        asked_item = replace(
            item, question=question, options=tuple(options), answer=LETTERS[answer],
            evidence=((first / fps, (last + 1) / fps),), category=f"query_{asked}",
            meta={**item.meta, "color": color, "shape": shape, "named": OTHER_ATTRIBUTE[asked], "asked": asked})
        return asked_item, replace(video, evidence_mask=mask, spans=[np.flatnonzero(mask)])

    def fresh_plan(self, item: QAItem, video: _Video) -> tuple[QAItem, _Video]:
        """For a `multi` item, ``fresh_plan_fraction`` of the time a new video of the same length
        and category (:func:`refocus.data.synth.multi.plan_multi`), as stage 1 sees it: the
        objects of the decoded frames, the evidence and a new question. Otherwise, or when an
        option line of the new question is not in the vocabulary, the item as it is."""
        fraction = self.cfg.fresh_plan_fraction
        if not (item.category in MULTI_CATEGORIES and video.timestamps is not None and "num_frames" in item.meta
                and fraction and self.rng.random() < fraction):
            return item, video
        fps = float(item.meta.get("fps", SynthConfig.fps))
        sample = plan_multi(self.rng, int(item.meta["num_frames"]), MULTI_CATEGORIES.index(item.category),
                            SynthConfig(fps=fps))
        if any(option_line(LETTERS[j], t) not in self.vocab for j, t in enumerate(sample.options)):
            return item, video
        fresh = replace(item, question=sample.question, options=tuple(sample.options),
                        answer=LETTERS[sample.answer_index],
                        evidence=tuple(sample.events[j].span(fps) for j in sample.evidence),
                        meta={**sample.meta, "fps": fps})
        return fresh, video_for(fresh, video.frames, video.timestamps)

    def subset(self, item: QAItem, video: _Video, k: int, kind: str) -> list[int]:
        """A training subset (:func:`sample_subset`, or ``oracle_subset_fraction`` of the time the
        oracle's); with evidence, ``distractor_fraction`` of the time one of its other frames shows
        an option object (:func:`add_distractor`)."""
        if (kind == "positive" and self.cfg.oracle_subset_fraction and video.timestamps is not None
                and self.rng.random() < self.cfg.oracle_subset_fraction):
            return oracle_indices(video.timestamps, item.evidence, k)
        chosen = sample_subset(self.rng, video, k, kind, self.cfg.max_frames_per_span)
        if kind != "negative" and self.cfg.distractor_fraction and self.rng.random() < self.cfg.distractor_fraction:
            chosen = add_distractor(self.rng, chosen, video.evidence_mask, option_object_frames(item, video.objects))
        return chosen

    def answer_loss(self, hidden, option_pos, items_, kinds_, shown, appearances=None) -> tuple[torch.Tensor, float]:
        """shown: per example, the object of each shown frame (``[]`` where unknown);
        appearances: per example, which event each shown frame is (with appearance codes)."""
        logits = _masked_option_logits(self.model.lm_head(hidden[:, -1]).float()[:, self.letter_ids], items_)
        target = torch.tensor([it.answer_index for it in items_])
        loss = F.cross_entropy(logits, target)
        if self.cfg.aux_weight:
            loss = loss + self.cfg.aux_weight * _aux_losses(self.model, hidden, option_pos, items_, kinds_,
                                                           self.letter_ids, self.answer_vocab)
        if self.cfg.option_evidence_weight:
            evidence = _option_evidence_loss(self.model, hidden, option_pos, items_, shown, self.word_ids)
            if self.cfg.multi_option_targets:
                multi = _multi_option_loss(self.model, hidden, option_pos, items_, shown, self.vocab, appearances)
                if multi is not None:
                    evidence = multi if evidence is None else evidence + multi
            if evidence is not None:
                loss = loss + self.cfg.option_evidence_weight * evidence
        return loss, (logits.argmax(-1) == target).float().mean().item()

    def shown_appearances(self, video: _Video, chosen: list[int]) -> list[int] | None:
        """Which event each chosen frame is, when appearance codes tell them apart."""
        if not self.cfg.appearance_codes or video.appearances is None:
            return None
        return [int(video.appearances[i]) for i in chosen]

    def code_scale(self) -> float:
        """Norm of an appearance code now: ``appearance_code_weight`` x the mean norm of the
        colour and shape word embeddings (it follows them as they train)."""
        ids = [i for w, i in self.word_ids.items() if w != "clutter"]
        with torch.no_grad():
            weights = self.model.get_input_embeddings().weight[ids]
            return self.cfg.appearance_code_weight * float(weights.norm(dim=-1).mean())

    def frame_codes(self, video: _Video, chosen: list[int], scale: float) -> np.ndarray | None:
        """(K, D) appearance codes of the chosen frames at norm ``scale`` (zeros where no
        object), or None without appearance codes."""
        if not self.cfg.appearance_codes or video.geometry is None:
            return None
        return scale * appearance_codes(video.geometry[chosen], self.model.config.text_config.hidden_size)

    def align_step(self) -> tuple[torch.Tensor, float]:
        """Stage 1: the language model learns to answer from frames given as words."""
        k, drawn, kinds_ = self.draw_batch(self.described)
        batch, items_, codes, appearances = [], [], [], []
        scale = self.code_scale() if self.cfg.appearance_codes else 0.0
        for it, kind in zip(drawn, kinds_, strict=True):
            it, v = self.fresh_plan(*self.example(it))
            items_.append(it)
            chosen = self.subset(it, v, k, kind)
            batch.append((it, [v.objects[i] for i in chosen]))
            codes.append(self.frame_codes(v, chosen, scale))
            appearances.append(self.shown_appearances(v, chosen))
        hidden, option_pos, slots = _pseudo_forward(self.model, self.prompts, self.word_ids, batch, self.tokens,
                                                    codes, return_slots=True)
        shown = [objs for _, objs in batch]
        loss, acc = self.answer_loss(hidden, option_pos, items_, kinds_, shown, appearances)
        if self.cfg.frame_ordinal_weight and self.tokens == 1 and all(w in self.vocab for w in MULTI_TARGET_WORDS):
            ordinal = _frame_ordinal_loss(self.model, hidden, slots, items_, shown, self.vocab, appearances)
            if ordinal is not None:
                loss = loss + self.cfg.frame_ordinal_weight * ordinal
        return loss, acc

    def vision_step(self) -> tuple[torch.Tensor, float]:
        """Stage 2: the vision tower and projector learn to say those words from pixels."""
        rng, cfg, videos = self.rng, self.cfg, self.videos
        n_hay = cfg.vision_batch_size // 4
        n_needle = cfg.vision_batch_size - n_hay
        n_paste = int(round(cfg.paste_fraction * n_needle)) if self.paste_colours and self.paste_shapes else 0
        picks = [self.object_frames[i] for i in rng.integers(0, len(self.object_frames), n_needle - n_paste)]
        hay = []
        for i in rng.integers(0, len(self.described), n_hay + n_paste):
            v = videos[str(self.described[i].video)]
            pool = [j for j, o in enumerate(v.objects) if o is None]
            hay.append(v.frames[int(rng.choice(pool)) if pool else 0])
        p_geometry: list = []
        pasted, p_colours, p_shapes = paste_objects(rng, np.stack(hay[n_hay:]), self.paste_colours, self.paste_shapes,
                                                    p_geometry) \
            if n_paste else (np.zeros((0, *hay[0].shape), np.uint8), [], [])
        frames = np.concatenate([np.stack([videos[key].frames[i] for key, i in picks]), pasted,
                                 np.stack(hay[:n_hay])])
        colours = [videos[key].objects[i][0] for key, i in picks] + p_colours + [None] * n_hay
        shapes = [videos[key].objects[i][1] for key, i in picks] + p_shapes + [None] * n_hay
        moves: dict = {}
        frames = mirror_shift(rng, frames, rotate=cfg.augment_rotations, moves=moves)
        frames, colours = permute_channels(rng, frames, colours)
        with torch.no_grad():
            target = _word_frame_embeddings(self.model, self.word_ids, [
                ["clutter"] if c is None else [c, s] for c, s in zip(colours, shapes, strict=True)], self.tokens)
            if cfg.appearance_codes:
                unknown = (np.nan, np.nan, np.nan)
                rows = [videos[key].geometry[i] if videos[key].geometry is not None else unknown for key, i in picks]
                geometry = np.array(rows + p_geometry + [unknown] * n_hay, dtype=np.float64).reshape(-1, 3)
                geometry = moved_geometry(geometry, moves["mirrored"], moves["shifts"], frames.shape[1])
                codes = self.code_scale() * appearance_codes(geometry, target.shape[-1])
                target = target + torch.from_numpy(codes).to(target.dtype).unsqueeze(1)
        pred = _image_tokens(self.model, pixel_values_from_frames(frames))
        return F.mse_loss(pred, target) / target.pow(2).mean(), float("nan")

    def joint_step(self) -> tuple[torch.Tensor, float]:
        """Stage 3: real frames; the projector and language model (and the tower if joint_trains_vision)."""
        k, drawn, kinds_ = self.draw_batch(self.train_items)
        batch, shown, items_, appearances = [], [], [], []
        for it, kind in zip(drawn, kinds_, strict=True):
            it, v = self.example(it)
            items_.append(it)
            chosen = self.subset(it, v, k, kind)
            batch.append((it, v.frames[chosen]))
            shown.append([v.objects[i] for i in chosen] if v.objects else [])
            appearances.append(self.shown_appearances(v, chosen))
        hidden, option_pos = _batch_forward(self.model, self.prompts, batch)
        return self.answer_loss(hidden, option_pos, items_, kinds_, shown, appearances)


def _run_stage(model, stage: Stage, cfg: SmallReferenceTrainConfig, history: list[dict], progress: bool) -> None:
    if stage.tower_frozen:
        # Batch norm keeps its running statistics, and no gradients flow into the tower
        # (LeViT caches its attention biases in eval mode; with gradients on, that cache
        # would tie every step's graph to the first one's).
        model.model.vision_tower.eval().requires_grad_(False)
    params = [p for n, p in model.named_parameters() if p.requires_grad
              and (not stage.vision_only or "vision_tower" in n or "multi_modal_projector" in n)]
    _optimise(stage.name, stage.step, params, stage.steps, stage.lr, cfg, history, progress)


def train_small_reference(
    items: list[QAItem],
    out_dir: str | Path,
    config: SmallReferenceTrainConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train, evaluate on held-out questions, save an HF checkpoint to ``out_dir``.

    Returns the summary written to ``out_dir/reference_train.json``.
    """
    from refocus.reference.small_model import build_small_reference
    from refocus.seeding import seed_everything

    cfg = config or SmallReferenceTrainConfig()
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(out_dir)
    t0 = time.time()
    videos, usable, skipped = _decode_items(items, cfg, progress)
    train_items = [it for it in usable if not is_held_out(it.id, cfg.val_fraction)]
    val_items = [it for it in usable if is_held_out(it.id, cfg.val_fraction)]

    tokenizer = training_tokenizer(usable)
    model, processor = build_small_reference(tokenizer, cfg.model)
    if cfg.compose_option_embeddings:
        compose_option_embeddings(model, tokenizer)
    model.train()
    steps = _StageSteps(model, processor, tokenizer, cfg, rng, videos, train_items)
    history: list[dict] = []
    stage_seconds = {"setup": round(time.time() - t0, 1)}  # decoding, tokenizer, model build
    for stage in steps.stages():
        if stage.steps > 0:
            started = time.time()
            _run_stage(model, stage, cfg, history, progress)
            stage_seconds[stage.name] = round(time.time() - started, 1)
    model.eval()
    val = evaluate_small_reference(model, steps.prompts, steps.letter_ids, val_items, videos, cfg, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary = {
        "train_questions": len(train_items),
        "val_questions": len(val_items),
        "skipped": skipped,
        "seconds": round(time.time() - t0, 1),
        "stage_seconds": stage_seconds,
        # questions whose frames' objects are known (stages 1-2) and the object frames of stage 2
        "described_questions": len(steps.described),
        "object_frames": len(steps.object_frames),
        **val,
        "config": asdict(cfg),
        "history": history,
    }
    write_json(out_dir / "reference_train.json", summary)
    return summary


def _optimise(stage: str, step_fn, params, steps: int, lr: float, cfg: SmallReferenceTrainConfig,
              history: list[dict], progress: bool) -> None:
    """AdamW with warm-up and cosine decay over one stage; appends smoothed loss/accuracy to history."""
    from tqdm.auto import tqdm

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warmup = min(cfg.warmup_steps, max(1, steps // 5))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema_loss = ema_acc = None
    bar = tqdm(range(steps), desc=f"reference: {stage}", disable=not progress)
    for step in bar:
        loss, acc = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if not math.isnan(acc):
            ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{ema_loss:.3f}", acc="-" if ema_acc is None else f"{ema_acc:.2f}")
            history.append({"stage": stage, "step": step, "loss": ema_loss, "acc": ema_acc})


@torch.no_grad()
def evaluate_small_reference(model, prompts, letter_ids, items, videos, cfg, rng) -> dict:
    """Held-out accuracy from subsets with all evidence and from subsets with none, per K."""
    result: dict = {}
    for k in cfg.frames_per_example:
        for kind in ("positive", "negative"):
            correct, total = 0, 0
            for start in range(0, len(items), 16):
                chunk = items[start : start + 16]
                batch, targets, its = [], [], []
                for it in chunk:
                    v = videos[str(it.video)]
                    for _ in range(cfg.val_subsets):
                        batch.append((it, v.frames[sample_subset(rng, v, k, kind)]))
                        targets.append(it.answer_index)
                        its.append(it)
                if not batch:
                    continue
                logits = _masked_option_logits(_batch_logits(model, prompts, letter_ids, batch), its)
                correct += int((logits.argmax(-1) == torch.tensor(targets)).sum())
                total += len(batch)
            name = "with_evidence" if kind == "positive" else "without_evidence"
            result[f"val_acc_{name}_k{k}"] = correct / total if total else float("nan")
    return result
