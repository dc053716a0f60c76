"""Training the small reference model on synthetic benchmarks (``refocus reference train``).

Each training example is one question with a random frame subset of K frames that either
holds evidence (one or more frames from every evidence span, the rest random) or holds none.
The target is always the true answer; over subsets without evidence the answer letters are
uniformly shuffled, so the model learns to be uncertain there and confident only when it
sees the evidence. That is what makes its margins a reward for frame selection.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refocus.data.evidence import evidence_frame_mask, evidence_spans_frames
from refocus.data.questions import QAItem
from refocus.reference.prompt import build_prompt_messages, render_prompt
from refocus.reference.small_model import LETTERS, SmallReferenceConfig


@dataclass
class SmallReferenceTrainConfig:
    """Optimisation settings for the small reference model (CPU-sized)."""

    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 32
    """Examples (question + frame subset) per step."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    frames_per_example: tuple[int, ...] = (4, 8)
    """Subset sizes K drawn per step: the budgets the policy and evaluation use."""
    positive_fraction: float = 0.6
    """Share of examples whose subset covers every evidence span."""
    partial_fraction: float = 0.1
    """Share of examples covering only some spans (multi-evidence questions)."""
    val_fraction: float = 0.1
    """Share of questions held out (by a hash of the id) to measure accuracy."""
    val_subsets: int = 4
    """Subsets per held-out question for each of the with/without-evidence accuracies."""
    seed: int = 0
    fps: float = 4.0
    max_frames: int = 512
    model: SmallReferenceConfig = field(default_factory=SmallReferenceConfig)


@dataclass
class _Video:
    frames: np.ndarray  # (T, S, S, 3) uint8
    evidence_mask: np.ndarray  # (T,) bool
    spans: list[np.ndarray]  # frame indices per evidence span


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
    rng: np.random.Generator, video: _Video, k: int, kind: str
) -> list[int]:
    """A sorted subset of k frames: 'positive' covers every span, 'partial' some, 'negative' none."""
    T = len(video.frames)
    k = min(k, T)
    chosen: set[int] = set()
    spans = [s for s in video.spans if len(s)]
    if kind in ("positive", "partial") and spans:
        if kind == "partial" and len(spans) > 1:
            keep = rng.choice(len(spans), size=rng.integers(1, len(spans)), replace=False)
            spans = [spans[i] for i in keep]
        for span in spans:
            n = min(len(span), int(rng.integers(1, 3)), max(1, k // len(spans)))
            chosen.update(int(i) for i in rng.choice(span, size=n, replace=False))
    pool = np.flatnonzero(~video.evidence_mask)
    pool = np.setdiff1d(pool, np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    need = k - len(chosen)
    if need > 0:
        if len(pool) < need:  # tiny video: top up from anything not yet chosen
            pool = np.setdiff1d(np.arange(T), np.fromiter(chosen, dtype=np.int64))
        chosen.update(int(i) for i in rng.choice(pool, size=min(need, len(pool)), replace=False))
    return sorted(chosen)[:k] if len(chosen) > k else sorted(chosen)


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

    def ids(self, item: QAItem, k: int) -> list[int]:
        key = (item.id, item.options, k)
        if key not in self._ids:
            text = render_prompt(self.processor, build_prompt_messages(item, k))
            text = text.replace("<image>", "<image>" * self.tokens_per_image)
            self._ids[key] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._ids[key]


def shuffle_options(item: QAItem, rng: np.random.Generator) -> QAItem:
    """The same question with its options in a random order (the answer letter follows).

    Training on reshuffled options stops the model from memorising question -> letter and
    forces it to match what it sees to the option text.
    """
    import dataclasses

    perm = rng.permutation(len(item.options))
    options = tuple(item.options[i] for i in perm)
    answer = LETTERS[int(np.flatnonzero(perm == item.answer_index)[0])]
    return dataclasses.replace(item, options=options, answer=answer)


def _letter_ids(tokenizer) -> torch.Tensor:
    return torch.tensor(tokenizer.convert_tokens_to_ids(LETTERS))


def _batch_logits(model, prompt_cache, letter_ids, batch, dtype=torch.float32):
    """batch: list of (item, frames (k, S, S, 3)). Returns option-letter logits (B, 26)."""
    tok = prompt_cache.tokenizer
    seqs = [prompt_cache.ids(item, len(frames)) for item, frames in batch]
    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):  # left padding: the answer position is the last one
        input_ids[i, L - len(s):] = torch.tensor(s)
        attention[i, L - len(s):] = 1
    pixels = pixel_values_from_frames(np.concatenate([f for _, f in batch]))
    out = model(input_ids=input_ids, attention_mask=attention, pixel_values=pixels.to(dtype), logits_to_keep=1)
    return out.logits[:, -1, :].float()[:, letter_ids]  # (B, 26)


def _masked_option_logits(logits: torch.Tensor, items: list[QAItem]) -> torch.Tensor:
    n_opt = torch.tensor([len(it.options) for it in items])
    invalid = torch.arange(26)[None, :] >= n_opt[:, None]
    return logits.masked_fill(invalid, float("-inf"))


def train_small_reference(
    items: list[QAItem],
    out_dir: str | Path,
    config: SmallReferenceTrainConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train, evaluate on held-out questions, save an HF checkpoint to ``out_dir``.

    Returns the summary written to ``out_dir/reference_train.json``.
    """
    from tqdm.auto import tqdm

    from refocus.reference.small_model import build_small_reference, train_tokenizer
    from refocus.seeding import seed_everything
    from refocus.video import load_video

    cfg = config or SmallReferenceTrainConfig()
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(out_dir)
    t0 = time.time()

    videos: dict[str, _Video] = {}
    usable: list[QAItem] = []
    skipped: list[dict] = []
    size = cfg.model.image_size
    for item in tqdm(items, desc="decode", disable=not progress):
        key = str(item.video)
        if key not in videos:
            try:
                dv = load_video(item.video, fps=cfg.fps, max_frames=cfg.max_frames, size=size)
            except Exception as exc:  # noqa: BLE001 - reported per item, never fatal
                skipped.append({"id": item.id, "reason": str(exc)})
                continue
            mask = evidence_frame_mask(dv.timestamps, item.evidence)
            if mask is None:
                mask = np.zeros(len(dv.frames), dtype=bool)
            videos[key] = _Video(dv.frames, mask, evidence_spans_frames(dv.timestamps, item.evidence))
        if not item.evidence:
            skipped.append({"id": item.id, "reason": "no evidence spans"})
            continue
        usable.append(item)
    if not usable:
        from refocus.errors import RefocusError

        raise RefocusError("no usable training questions (need decodable videos with evidence spans)")
    train_items = [it for it in usable if not is_held_out(it.id, cfg.val_fraction)]
    val_items = [it for it in usable if is_held_out(it.id, cfg.val_fraction)]

    texts = [f"{it.question} " + " ".join(it.options) for it in usable]
    tokenizer = train_tokenizer(texts)
    model, processor = build_small_reference(tokenizer, cfg.model)
    model.train()
    prompts = _PromptCache(processor, (cfg.model.image_size // cfg.model.patch_size) ** 2)
    letter_ids = _letter_ids(tokenizer)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    kinds = ["positive", "partial", "negative"]
    p_neg = max(0.0, 1 - cfg.positive_fraction - cfg.partial_fraction)
    kind_p = np.array([cfg.positive_fraction, cfg.partial_fraction, p_neg])
    kind_p = kind_p / kind_p.sum()

    history = []
    bar = tqdm(range(cfg.steps), desc="train reference", disable=not progress)
    ema_loss, ema_acc = None, None
    for step in bar:
        k = int(rng.choice(cfg.frames_per_example))
        batch_items = [
            shuffle_options(train_items[i], rng) for i in rng.integers(0, len(train_items), cfg.batch_size)
        ]
        batch = []
        for it in batch_items:
            v = videos[str(it.video)]
            kind = kinds[int(rng.choice(3, p=kind_p))]
            idx = sample_subset(rng, v, k, kind)
            batch.append((it, v.frames[idx]))
        # Examples of one step share K; pad-free grouping keeps the prompt cache simple.
        logits = _masked_option_logits(_batch_logits(model, prompts, letter_ids, batch), batch_items)
        target = torch.tensor([it.answer_index for it in batch_items])
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = (logits.argmax(-1) == target).float().mean().item()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.2f}")
            history.append({"step": step, "loss": ema_loss, "acc": ema_acc})

    model.eval()
    val = evaluate_small_reference(model, prompts, letter_ids, val_items, videos, cfg, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary = {
        "train_questions": len(train_items),
        "val_questions": len(val_items),
        "skipped": skipped,
        "seconds": round(time.time() - t0, 1),
        **val,
        "config": asdict(cfg),
        "history": history,
    }
    (out_dir / "reference_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
