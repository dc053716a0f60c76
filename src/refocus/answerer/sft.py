"""``refocus answerer sft``: teach an answerer to reason in the Video-R1 format before RL.

Each example is one synthetic question (options reshuffled, the answer letter follows), a
K-frame subset covering every evidence span (the rest haystack), and as target its templated
rationale (:mod:`refocus.answerer.rationale`) ending with the turn's stop token. Cross-entropy
on the target tokens only; the vision tower stays frozen by default (the small reference
model's stage 3 does the same). Held-out questions (by a hash of the id) are answered greedily
from evidence frames and compared with the starting model's option-logit accuracy on the
same frames, so a user sees whether reasoning cost accuracy.

The small reference model's word-level tokenizer has no ``<think>``, ``then`` or ``times``:
its vocabulary is extended with the rationale words (appended ids, existing ids unchanged)
and the embeddings are resized. Sub-word tokenizers (Qwen, LLaVA) need no change.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from refocus.answerer.data import EvidenceVideos, evidence_frames
from refocus.answerer.rationale import (
    TEMPLATE_WORDS,
    build_rationale,
    check_template,
    has_rationale,
)
from refocus.errors import RefocusError
from refocus.io import write_json
from refocus.video.config import DecodeConfig


@dataclass
class SFTConfig:
    steps: int = 2000
    """On 883 `multi` training questions (benchmarks/ktr.py), 2,000 steps (5 minutes on 2 cores)
    reach held-out generated accuracy 0.63 / 0.60 (two seeds) against the starting model's
    option-logit 0.62 from the same frames; 300 steps on 212 questions left the format half
    learnt (0.46) and accuracy at 0.25 (benchmarks/RESULTS.md, "Answerer side")."""
    batch_size: int = 16
    lr: float = 3e-4
    """Peak LR (AdamW, linear warm-up then cosine); the reference model's stage 3 uses 2e-4."""
    warmup_steps: int = 20
    weight_decay: float = 0.0
    frames: int = 8
    """K frames per example (evidence-covering)."""
    train_vision: bool = False
    val_fraction: float = 0.1
    max_val_questions: int = 60
    max_new_tokens: int = 64
    """Greedy budget of the held-out answers (templated rationales: 10-25 tokens, a scan up to 34 at 8 frames)."""
    rationale: str = "sequence"
    """Rationale template (:data:`refocus.answerer.rationale.TEMPLATES`): ``sequence`` (the
    issue's "first ..., then ..."), or ``scan`` (where / what / when per event, whose temporal
    words carry the frame order). Saved in the checkpoint's config (``refocus_rationale``)."""
    seed: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How videos are decoded (rate and frame cap; the size is the model's)."""


def extend_vocabulary(model, processor, words: list[str]) -> list[str]:
    """Add ``words`` missing from a word-level tokenizer; resize the embeddings. Returns the added words."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = processor.tokenizer
    state = json.loads(tok.backend_tokenizer.to_str())
    if state["model"]["type"] != "WordLevel":
        return []
    vocab = state["model"]["vocab"]
    added = [w for w in dict.fromkeys(words) if w not in vocab and w not in tok.get_vocab()]
    if not added:
        return []
    start = max(max(vocab.values()), len(tok) - 1) + 1
    for i, w in enumerate(added):
        vocab[w] = start + i
    new = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        **{k: getattr(tok, k) for k in ("pad_token", "unk_token", "bos_token", "eos_token")},
        extra_special_tokens={"image_token": processor.image_token} if hasattr(processor, "image_token") else None,
    )
    new.chat_template, new.padding_side = tok.chat_template, tok.padding_side
    processor.tokenizer = new
    model.resize_token_embeddings(len(new))
    return added


def rationale_words(items, template: str = "sequence") -> list[str]:
    from refocus.data.synth.common import COLORS, SHAPES
    from refocus.reference.small_model import LETTERS

    return [*TEMPLATE_WORDS, *COLORS, *SHAPES, *LETTERS[:26]] + [
        w for it in items for w in build_rationale(it, template).words
    ]


def shown_events(video, subset) -> list[int] | None:
    """Which event each frame of ``subset`` shows (-1 none), or None when the video's events are unknown."""
    return None if video.appearances is None else [int(video.appearances[i]) for i in subset]


def rationale_template(answerer) -> str:
    """The template ``answerer`` was taught (``sequence`` for a model no SFT run has touched)."""
    return getattr(answerer.model.config, "refocus_rationale", None) or "sequence"


def target_ids(answerer, item, shown_events=None) -> list[int]:
    """Token ids of the rationale (in the answerer's template; ``shown_events``: see
    :func:`~refocus.answerer.rationale.build_rationale`) followed by the stop token."""
    return rationale_ids(answerer, build_rationale(item, rationale_template(answerer), shown_events))


def rationale_ids(answerer, rationale) -> list[int]:
    """Token ids of a built rationale followed by the stop token."""
    ids = answerer.tokenizer(rationale.text, add_special_tokens=False)["input_ids"]
    return list(ids) + [answerer.stop_ids[-1]]


def sft_batch(answerer, examples):
    """examples: (item, frames list, shown events or None). Right-padded batch with labels on the
    targets only."""
    import torch

    rows, labels, pixels = [], [], []
    extra: dict[str, list] = {}
    for item, frames, shown in examples:
        enc = answerer.processor(text=[answerer.prompt(item, len(frames))], images=[list(frames)],
                                 return_tensors="pt")
        prompt = enc["input_ids"][0].tolist()
        target = target_ids(answerer, item, shown)
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
        pixels.append(enc["pixel_values"])
        for key in ("image_grid_thw",):
            if key in enc:
                extra.setdefault(key, []).append(enc[key])
        if "mm_token_type_ids" in enc:
            extra.setdefault("mm_token_type_ids", []).append(enc["mm_token_type_ids"][0].tolist() + [0] * len(target))
    n = max(len(r) for r in rows)
    pad = answerer.pad_id
    batch = {
        "input_ids": torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]),
        "pixel_values": torch.cat(pixels),
    }
    if "image_grid_thw" in extra:
        batch["image_grid_thw"] = torch.cat(extra["image_grid_thw"])
    if "mm_token_type_ids" in extra:
        batch["mm_token_type_ids"] = torch.tensor([r + [0] * (n - len(r)) for r in extra["mm_token_type_ids"]])
    lab = torch.tensor([r + [-100] * (n - len(r)) for r in labels])
    return answerer._to_device(batch), lab.to(answerer.device)


def heldout_accuracy(answerer, items, videos: EvidenceVideos, k: int, max_new_tokens: int,
                     seed: int, adapter=None, progress: bool = False) -> dict:
    """On one evidence-covering K-frame subset per question (drawn from ``seed``): the greedy
    generated accuracy and format rate of ``answerer`` (None: skipped) and, with ``adapter``,
    its option-logit accuracy."""
    from tqdm.auto import tqdm

    from refocus.answerer import ktr_math
    from refocus.answerer.generation import GenerateConfig

    rng = np.random.default_rng(seed)
    gen_cfg = GenerateConfig(max_new_tokens=max_new_tokens, do_sample=False)
    correct = formatted = logit_correct = 0
    for item in tqdm(items, desc="held-out", disable=not progress):
        v = videos.get(item)
        subset = evidence_frames(v, k, rng)
        if answerer is not None:
            out = answerer.generate(item, [v.frames[i] for i in subset], gen_cfg)
            correct += ktr_math.accuracy_reward(out.texts[0], item.answer) > 0
            formatted += ktr_math.format_reward(out.texts[0]) > 0
        if adapter is not None:
            logits = adapter.option_logits(item, v.frames, [subset])
            logit_correct += int(np.argmax(logits[0]) == item.answer_index)
    n = max(1, len(items))
    result: dict = {"questions": len(items)}
    if answerer is not None:
        result |= {"generated_accuracy": correct / n, "format_rate": formatted / n}
    if adapter is not None:
        result["option_logit_accuracy"] = logit_correct / n
    return result


def train_sft(data, answerer_dir, out_dir, cfg: SFTConfig | None = None, progress: bool = True) -> dict:
    """SFT ``answerer_dir`` on the templated rationales of ``data`` (a question file or
    benchmark dir); saves an HF checkpoint and ``sft.json`` to ``out_dir``. Returns the summary."""
    import torch
    from tqdm.auto import tqdm

    from refocus.answerer.data import load_items
    from refocus.answerer.generation import Answerer, set_train_mode
    from refocus.reference import load_reference
    from refocus.reference.small_training import is_held_out, shuffle_options
    from refocus.seeding import seed_everything

    cfg = cfg or SFTConfig()
    check_template(cfg.rationale)  # before anything loads: has_rationale would hide the reason
    seed_everything(cfg.seed)
    t0 = time.time()
    skipped: list[dict] = []
    items = [it for it in load_items(data) if it.evidence and has_rationale(it, cfg.rationale)]
    if not items:
        raise RefocusError(f"{data}: no questions with evidence spans and a rationale template (synthetic niah/multi)")
    adapter = load_reference(answerer_dir)
    videos = EvidenceVideos(int(adapter.image_size), cfg.decode.fps, cfg.decode.max_frames)
    items = videos.usable(items, skipped)
    val = [it for it in items if is_held_out(it.id, cfg.val_fraction)][: cfg.max_val_questions]
    train = [it for it in items if not is_held_out(it.id, cfg.val_fraction)]
    if not train:
        raise RefocusError("no training questions left after the held-out split")
    answerer = Answerer.from_adapter(adapter)
    val_seed = cfg.seed + 1000  # the same held-out subsets before and after
    before = heldout_accuracy(None, val, videos, cfg.frames, cfg.max_new_tokens, val_seed, adapter=adapter)
    added = extend_vocabulary(answerer.model, answerer.processor, rationale_words(items, cfg.rationale))
    answerer = Answerer(answerer.model, answerer.processor, name=adapter.name, image_size=answerer.image_size)
    model = answerer.model
    model.config.refocus_rationale = cfg.rationale
    set_train_mode(model, cfg.train_vision)
    for name, p in model.named_parameters():
        p.requires_grad_(cfg.train_vision or "vision_tower" not in name and "visual" not in name.split(".")[:3])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    rng = np.random.default_rng(cfg.seed)
    history = []
    bar = tqdm(range(cfg.steps), desc="answerer sft", disable=not progress)
    for _ in bar:
        picks = [shuffle_options(train[int(i)], rng) for i in rng.integers(0, len(train), cfg.batch_size)]
        examples = []
        for it in picks:
            v = videos.get(it)
            subset = evidence_frames(v, cfg.frames, rng)
            examples.append((it, [v.frames[i] for i in subset], shown_events(v, subset)))
        batch, labels = sft_batch(answerer, examples)
        logits = model(**batch, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}")
    model.eval()
    after = heldout_accuracy(answerer, val, videos, cfg.frames, cfg.max_new_tokens, val_seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    answerer.processor.save_pretrained(out)
    summary = {
        "answerer": str(answerer_dir), "data": str(data), "train_questions": len(train),
        "val_questions": len(val), "added_tokens": added, "config": asdict(cfg),
        "before": before, "after": after, "final_loss": float(np.mean(history[-20:])),
        "seconds": time.time() - t0, "skipped": skipped,
    }
    write_json(out / "sft.json", summary)
    return summary


def _lr_factor(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
