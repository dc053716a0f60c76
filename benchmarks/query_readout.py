"""Can a tiny Llama learn `query`'s read-out from word frames? A self-contained study.

No videos and no vision tower: each example is the reward prompt's layout (frames, question,
options, answer position) with every frame given as words, and the data drawn like
`refocus synth query` (12 objects of distinct colour-shape pairs, the named attribute unique,
three distractor options carried by other objects; other frames show an object with
probability 0.1-0.45, else clutter). The model is the small reference's language model
(Llama, 128 wide, 3 layers, tied embeddings, option-line tokens composed from their parts).
It isolates the two choices behind the small reference's defaults (benchmarks/RESULTS.md,
"Issue 19: the option-evidence target"):

- ``--P``: visual tokens per frame: 4 (one word per slot, colour / shape alternating) or 1
  (one token, E(colour) + E(shape));
- ``--aux``: auxiliary targets, comma-separated: ``opt`` (at each option token, the other
  attribute of the shown objects that carry the option's value, or "clutter"), ``letter``
  (each option token names its own letter), ``name`` (the answer position names the correct
  option's text), ``q`` (the question's last token names the asked value of the named object).

Prints the training accuracy on positive examples as it goes, then one JSON line with
held-out accuracy on 400 fresh examples each with (pos) and without (neg) the named object,
at K = 4 and 8. One thread:

    python benchmarks/query_readout.py --P 1 --steps 2000 --aux opt,letter
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refocus.data.synth.common import COLORS as PALETTE  # noqa: E402
from refocus.data.synth.common import SHAPES as SHAPE_NAMES  # noqa: E402
from refocus.reference.small_training import option_evidence_targets  # noqa: E402

COLORS = list(PALETTE)
SHAPES = list(SHAPE_NAMES)
LETTERS = "ABCD"
ATTRIBUTES = COLORS + SHAPES
# Targets of the attribute read-outs: any attribute value, or "nothing relevant was shown".
ATTRIBUTE_TARGETS = ATTRIBUTES + ["clutter"]
N_OBJECTS = 12
WARMUP_STEPS = 60
EVAL_EXAMPLES = 400

VOCAB = [
    "<pad>", "<s>", "im_start", "user", "assistant", "im_end",
    "Options", ":", "What", "colour", "shape", "is", "the", "object", "?", "clutter",
]
VOCAB += ATTRIBUTES + list(LETTERS) + [f"Frame{i}" for i in range(1, 9)]
# Each option line is one token, like the small reference's tokenizer; its embedding is
# composed from the letter's and the value's (see build_model).
VOCAB += [f"{letter}. {value}" for letter in LETTERS for value in ATTRIBUTES]
TOKEN_ID = {word: i for i, word in enumerate(VOCAB)}
LETTER_IDS = torch.tensor([TOKEN_ID[letter] for letter in LETTERS])
ATTRIBUTE_IDS = torch.tensor([TOKEN_ID[word] for word in ATTRIBUTE_TARGETS])

Obj = tuple[str, str]  # (colour, shape)


@dataclass
class Example:
    """One question: the frames (an object or None for clutter) and its prompt parts."""

    frames: list[Obj | None]
    question: list[str]
    options: list[str]
    answer: int
    positive: bool  # the named object is shown in some frame
    objects: list[Obj]  # objects[0] is the named one
    ask_colour: bool


@dataclass
class Encoded:
    """An example's token ids and the positions its losses read from."""

    ids: list[int]
    # (position, token id or None): the shape token added to a P=1 frame token's embedding.
    extra: list[tuple[int, int | None]]
    option_pos: list[int]
    question_end: int


@dataclass
class Batch:
    """Left-padded examples, so that the answer position is the last column for every row."""

    examples: list[Example]
    ids: torch.Tensor
    attention: torch.Tensor
    extra: list[tuple[int, int, int]]  # (row, column, token id) to add to that embedding
    option_pos: list[list[int]]
    question_end: list[int]


def parse_args() -> argparse.Namespace:
    """The study's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--P", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--aux", default="")  # comma-separated: opt, letter, name, q
    parser.add_argument("--order", default="fqo")  # f frames, q question, o options
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pos", type=float, default=0.6)
    parser.add_argument("--wd", type=float, default=0.01)
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> LlamaModel:
    """The small reference's language model, option-line embeddings composed from their parts."""
    cfg = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=args.d,
        intermediate_size=2 * args.d,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaModel(cfg)
    weight = model.embed_tokens.weight
    # Only the initial value is composed; the option tokens then train freely.
    with torch.no_grad():
        for letter in LETTERS:
            for value in ATTRIBUTES:
                weight[TOKEN_ID[f"{letter}. {value}"]] = weight[TOKEN_ID[letter]] + weight[TOKEN_ID[value]]
    return model


def example(rng: np.random.Generator, k: int, pos_prob: float) -> Example:
    """Draw one K-frame example, redrawing until it has enough distractor values."""
    while True:
        drawn = _try_example(rng, k, pos_prob)
        if drawn is not None:
            return drawn


def _try_example(rng: np.random.Generator, k: int, pos_prob: float) -> Example | None:
    """One draw of `refocus synth query`'s scene and question; None if the scene has too few
    other values of the asked attribute for three distractors.

    The draw order of `rng` is part of the study's reproducibility: keep it.
    """
    ask_colour = rng.random() < 0.5
    target = (COLORS[rng.integers(6)], SHAPES[rng.integers(5)])
    objects = [target]
    # Distinct objects, and the named attribute unique, so the question names one object.
    while len(objects) < N_OBJECTS:
        colour, shape = COLORS[rng.integers(6)], SHAPES[rng.integers(5)]
        if (colour, shape) in objects:
            continue
        if ask_colour and shape == target[1]:
            continue
        if not ask_colour and colour == target[0]:
            continue
        objects.append((colour, shape))
    others = objects[1:]
    asked_index, named_index = (0, 1) if ask_colour else (1, 0)
    # Distractors are values other shown-able objects carry, so they can't be ruled out as absent.
    values = sorted({o[asked_index] for o in others} - {target[asked_index]})
    if len(values) < 3:
        return None
    distractors = [str(v) for v in rng.choice(values, 3, replace=False)]
    unshuffled = [target[asked_index], *distractors]
    perm = rng.permutation(4)
    options = [unshuffled[i] for i in perm]
    answer = int(np.flatnonzero(perm == 0)[0])
    positive = rng.random() < pos_prob
    p_object = rng.uniform(0.1, 0.45)
    frames: list[Obj | None] = []
    if positive:
        frames.append(target)
        # rng.random() is drawn first whatever k is, to keep the draw order.
        if rng.random() < 0.5 and k > 1:
            frames.append(target)
    while len(frames) < k:
        frames.append(others[rng.integers(len(others))] if rng.random() < p_object else None)
    rng.shuffle(frames)
    question = ["What", "colour" if ask_colour else "shape", "is", "the", target[named_index]]
    question += ([] if ask_colour else ["object"]) + ["?"]
    return Example(frames, question, options, answer, positive, objects, ask_colour)


def encode(ex: Example, tokens_per_frame: int, order: str) -> Encoded:
    """Lay out one example as the reward prompt does, its parts in `order`."""
    ids = [TOKEN_ID["im_start"], TOKEN_ID["user"]]
    extra: list[tuple[int, int | None]] = []
    option_pos: list[int] = []
    question_end: list[int] = []
    for part in order:
        if part == "f":
            for i, frame in enumerate(ex.frames):
                ids += [TOKEN_ID[f"Frame{i + 1}"], TOKEN_ID[":"]]
                if tokens_per_frame == 1:
                    # One token whose embedding becomes E(colour) + E(shape) in forward().
                    ids.append(TOKEN_ID["clutter"] if frame is None else TOKEN_ID[frame[0]])
                    extra.append((len(ids) - 1, None if frame is None else TOKEN_ID[frame[1]]))
                else:
                    words = ["clutter"] if frame is None else [frame[0], frame[1]]
                    ids += [TOKEN_ID[w] for w in (words * tokens_per_frame)[:tokens_per_frame]]
        elif part == "q":
            ids += [TOKEN_ID[w] for w in ex.question]
            question_end.append(len(ids) - 1)
        elif part == "o":
            ids += [TOKEN_ID["Options"], TOKEN_ID[":"]]
            for j, option in enumerate(ex.options):
                option_pos.append(len(ids))
                ids.append(TOKEN_ID[f"{LETTERS[j]}. {option}"])
        else:
            raise KeyError(part)
    ids += [TOKEN_ID["im_end"], TOKEN_ID["im_start"], TOKEN_ID["assistant"]]
    return Encoded(ids, extra, option_pos, question_end[0])


def make_batch(rng: np.random.Generator, size: int, k: int, pos_prob: float,
               args: argparse.Namespace) -> Batch:
    """Draw and encode `size` K-frame examples, left-padded to one length."""
    examples = [example(rng, k, pos_prob) for _ in range(size)]
    encoded = [encode(ex, args.P, args.order) for ex in examples]
    length = max(len(enc.ids) for enc in encoded)
    ids = torch.zeros(size, length, dtype=torch.long)
    attention = torch.zeros(size, length, dtype=torch.long)
    extra: list[tuple[int, int, int]] = []
    option_pos: list[list[int]] = []
    question_end: list[int] = []
    for row, enc in enumerate(encoded):
        offset = length - len(enc.ids)
        ids[row, offset:] = torch.tensor(enc.ids)
        attention[row, offset:] = 1
        extra += [(row, offset + pos, tok) for pos, tok in enc.extra if tok is not None]
        option_pos.append([offset + pos for pos in enc.option_pos])
        question_end.append(offset + enc.question_end)
    return Batch(examples, ids, attention, extra, option_pos, question_end)


def forward(model: LlamaModel, batch: Batch) -> torch.Tensor:
    """Hidden states, with the P=1 frame tokens' second attribute added to their embeddings."""
    embed = model.embed_tokens
    emb = embed(batch.ids)
    if batch.extra:
        rows = torch.tensor([row for row, _, _ in batch.extra])
        cols = torch.tensor([col for _, col, _ in batch.extra])
        toks = torch.tensor([tok for _, _, tok in batch.extra])
        emb = emb.index_put((rows, cols), emb[rows, cols] + embed(toks))
    return model(inputs_embeds=emb, attention_mask=batch.attention).last_hidden_state


def readout(hidden: torch.Tensor, model: LlamaModel, token_ids: torch.Tensor) -> torch.Tensor:
    """Logits over `token_ids` through the tied embeddings."""
    return hidden @ model.embed_tokens.weight[token_ids].T


def option_evidence_loss(hidden: torch.Tensor, batch: Batch, model: LlamaModel) -> torch.Tensor:
    """``opt``: at each option token, the small reference's option-evidence target
    (:func:`refocus.reference.small_training.option_evidence_targets`): the other attribute of
    the shown objects that carry the option's value (a distribution if several), or clutter."""
    rows, cols, targets = [], [], []
    for i, ex in enumerate(batch.examples):
        for j, target in option_evidence_targets(tuple(ex.options), ex.frames, ATTRIBUTE_TARGETS).items():
            rows.append(i)
            cols.append(batch.option_pos[i][j])
            targets.append(torch.from_numpy(target).float())
    logits = readout(hidden[rows, cols], model, ATTRIBUTE_IDS)
    return F.cross_entropy(logits, torch.stack(targets))


def option_letter_loss(hidden: torch.Tensor, batch: Batch, model: LlamaModel) -> torch.Tensor:
    """``letter``: each option token names its own letter."""
    rows = [i for i, positions in enumerate(batch.option_pos) for _ in positions]
    cols = [pos for positions in batch.option_pos for pos in positions]
    letters = torch.tensor([j for positions in batch.option_pos for j in range(len(positions))])
    return F.cross_entropy(readout(hidden[rows, cols], model, LETTER_IDS), letters)


def question_loss(hidden: torch.Tensor, batch: Batch, model: LlamaModel) -> torch.Tensor:
    """``q``: the question's last token names the asked value of the named object if it is
    shown, else clutter."""
    rows = list(range(len(batch.examples)))
    targets = [
        ATTRIBUTE_TARGETS.index(ex.options[ex.answer]) if ex.positive else len(ATTRIBUTE_TARGETS) - 1
        for ex in batch.examples
    ]
    logits = readout(hidden[rows, batch.question_end], model, ATTRIBUTE_IDS)
    return F.cross_entropy(logits, torch.tensor(targets))


def answer_name_loss(hidden: torch.Tensor, batch: Batch, model: LlamaModel) -> torch.Tensor:
    """``name``: on positive examples, the answer position names the correct option's text."""
    rows = [i for i, ex in enumerate(batch.examples) if ex.positive]
    targets = torch.tensor(
        [ATTRIBUTES.index(batch.examples[i].options[batch.examples[i].answer]) for i in rows])
    # Without "clutter": a positive example's answer is always a value.
    return F.cross_entropy(readout(hidden[rows, -1], model, ATTRIBUTE_IDS[:-1]), targets)


AUX_LOSSES = {
    "opt": option_evidence_loss,
    "letter": option_letter_loss,
    "q": question_loss,
    "name": answer_name_loss,
}


def answers(batch: Batch) -> torch.Tensor:
    """The correct option's index per example."""
    return torch.tensor([ex.answer for ex in batch.examples])


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)))


def train(model: LlamaModel, rng: np.random.Generator, args: argparse.Namespace,
          start: float) -> None:
    """Train on the answer letter plus the chosen auxiliary targets, printing progress."""
    aux = set(filter(None, args.aux.split(",")))
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, args.steps))
    ema = None
    for step in range(args.steps):
        k = int(rng.choice([4, 8]))
        batch = make_batch(rng, args.bs, k, args.pos, args)
        hidden = forward(model, batch)
        logits = readout(hidden[:, -1], model, LETTER_IDS)
        target = answers(batch)
        loss = F.cross_entropy(logits, target)
        # A fixed order (not the set's) keeps the sum, and so the run, reproducible.
        for name, aux_loss in AUX_LOSSES.items():
            if name in aux:
                loss = loss + aux_loss(hidden, batch, model)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # Negative examples' answers can't be read from the frames, so track positives only.
        pos_mask = torch.tensor([ex.positive for ex in batch.examples])
        acc = (logits.argmax(-1) == target)[pos_mask].float().mean().item()
        ema = acc if ema is None else 0.95 * ema + 0.05 * acc
        if step % 50 == 0 or step == args.steps - 1:
            print(step, round(loss.item(), 3), "pos_acc_ema", round(ema, 3),
                  f"{time.time() - start:.0f}s", flush=True)


@torch.no_grad()
def evaluate(model: LlamaModel, rng: np.random.Generator, args: argparse.Namespace) -> dict[str, float]:
    """Held-out accuracy on fresh examples with (pos) and without (neg) the named object."""
    model.eval()
    result = {}
    for k in (4, 8):
        for label, pos_prob in (("pos", 1.0), ("neg", 0.0)):
            batch = make_batch(rng, EVAL_EXAMPLES, k, pos_prob, args)
            logits = readout(forward(model, batch)[:, -1], model, LETTER_IDS)
            result[f"{label}@{k}"] = (logits.argmax(-1) == answers(batch)).float().mean().item()
    return result


def main() -> None:
    """Build, train and evaluate; print one JSON line."""
    args = parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(1)
    model = build_model(args)
    start = time.time()
    train(model, rng, args, start)
    result = evaluate(model, rng, args)
    print(json.dumps({"args": vars(args), "eval": result, "secs": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
