"""Temporal entropy of the policy's selections over training (paper §4.3, Fig. 6).

For every checkpoint of a training run, the policy samples ``samples`` selections per item,
and the Kozachenko–Leonenko entropy (``refocus.estimators.kl_entropy``, k-NN
with ``knn`` = 1) of each selection's frame times measures how spread out it is; the curve
per selection size T' shows whether the policy narrows onto a window as it trains (the
paper: small T' falls, T' = 32 stays high).

Choices (documented because they set the numbers):

* **Time unit.** Times are relative to the video: ``(t - t_0) / (t_last - t_0 + gap)`` with
  ``gap`` the median spacing of the decoded frames, so a regularly sampled video maps frame
  ``i`` of ``T`` to ``i / T`` in [0, 1). Entropies of videos of different lengths are then
  comparable (in seconds a longer video would score ``log(duration)`` more); the estimate is
  in nats of that unit, so a selection spread evenly over the whole video scores about
  ``gamma + log 2 = 1.27`` whatever T' (the uniform reference) and concentrated ones go
  negative.
* **One run for all T'.** The policy is not told T': its first k steps are the same process
  whatever the total, so one sampled run of ``max(ks)`` steps gives every T' <= max(ks) as its
  first T' choices (exactly the distribution of a T'-step run, at a quarter of the cost for
  4, 8, 16, 32). Items with fewer than T' frames are left out of that T'.
* **Seeds.** Every checkpoint samples item ``i`` with the same generator seed (common random
  numbers), so differences between steps are the policy's, not the sampler's.
* **Uniform reference.** The entropy of uniform sampling's T' bin midpoints per item, drawn
  as a dashed line per T'.

Checkpoints: ``RUN_DIR/checkpoints/step-*`` (HF-format policy + tokenizer) by step, then
``RUN_DIR/policy`` at the run's ``max_steps`` (its ``train_config.yaml``) unless a checkpoint
already has that step. Encoder features are reused across checkpoints whose frozen vision
towers are identical.

Outputs (``out_dir``): ``entropy.json`` and ``entropy.png`` (entropy vs training step, one
line per T', uniform dashed).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refocus.data.questions import QAItem
from refocus.errors import RefocusError
from refocus.estimators import kl_entropy

JSON_NAME = "entropy.json"
PNG_NAME = "entropy.png"
STEP_DIR = re.compile(r"^step-(\d+)$")
FEATURE_CACHE_BYTES = 2 * 1024**3
"""Encoder features kept across checkpoints (tiny policies: all items; full-size towers at
T = 512 frames exceed this after a few videos and are re-encoded per checkpoint instead)."""


@dataclass
class EntropyConfig:
    """Which selection sizes are measured and how many samples each estimate uses."""

    ks: tuple[int, ...] = (4, 8, 16, 32)
    """Selection sizes T' (the paper plots 4, 8, 32)."""
    samples: int = 16
    """Sampled selections per item and checkpoint."""
    max_items: int | None = 100
    """Use the first this many items (None: all)."""
    knn: int = 1
    """k of the k-nearest-neighbour entropy estimator (needs T' > knn)."""
    seed: int = 0
    """Sampling seed, mixed with each item id; the same for every checkpoint."""

    def __post_init__(self) -> None:
        self.ks = tuple(sorted({int(k) for k in self.ks}))
        if not self.ks or self.ks[0] <= self.knn:
            raise RefocusError(f"every T' must exceed knn={self.knn}, got {list(self.ks)}")
        if self.samples < 1:
            raise RefocusError(f"samples must be >= 1, got {self.samples}")


# ---------------------------------------------------------------------------- pure functions


def relative_times(timestamps: np.ndarray | Sequence[float]) -> np.ndarray:
    """Frame times as fractions of the video, ``(t - t_0) / (t_last - t_0 + gap)``, (T,)."""
    t = np.asarray(timestamps, dtype=np.float64)
    if t.size < 2:
        return np.zeros_like(t)
    gap = float(np.median(np.diff(t)))
    return (t - t[0]) / (t[-1] - t[0] + gap)


def selection_entropies(
    times: np.ndarray, orders: np.ndarray, ks: Sequence[int], knn: int = 1
) -> dict[int, float]:
    """Mean KL entropy over candidates of each T' <= the number of steps run.

    times: (T,) relative frame times. orders: (G, K) frames in the order they were chosen.
    Returns ``{T': mean over G of kl_entropy(times[orders[g, :T']])}``.
    """
    out = {}
    for k in ks:
        if k > orders.shape[1]:
            continue
        values = [kl_entropy(times[row[:k]], knn) for row in orders]
        out[int(k)] = float(np.mean(values))
    return out


def uniform_entropy(times: np.ndarray, k: int, knn: int = 1) -> float:
    """KL entropy of uniform sampling's ``k`` bin midpoints (nan when T < k)."""
    from refocus.selectors.base import uniform_indices

    if len(times) < k:
        return float("nan")
    return kl_entropy(times[uniform_indices(len(times), k)], knn)


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every policy checkpoint of a run, by step (see module docstring)."""
    run_dir = Path(run_dir)
    found: dict[int, Path] = {}
    ckpt_root = run_dir / "checkpoints"
    if ckpt_root.is_dir():
        for path in ckpt_root.iterdir():
            match = STEP_DIR.match(path.name)
            if match and path.is_dir() and (path / "config.json").is_file():
                found[int(match.group(1))] = path
    final = run_dir / "policy"
    if (final / "config.json").is_file():
        step = _final_step(final, found)
        found.setdefault(step, final)
    if not found:
        raise RefocusError(
            f"{run_dir}: no policy checkpoints (expected checkpoints/step-*/ or policy/ with config.json)"
        )
    return sorted(found.items())


def _final_step(policy_dir: Path, found: dict[int, Path]) -> int:
    config = policy_dir / "train_config.yaml"
    if config.is_file():
        import yaml

        steps = (yaml.safe_load(config.read_text()) or {}).get("max_steps")
        if isinstance(steps, int):
            return steps
    return max(found, default=0)


# ---------------------------------------------------------------------------- the analysis


def run_entropy_analysis(
    run_dir: str | Path | None,
    items: Sequence[QAItem],
    out_dir: str | Path | None = None,
    config: EntropyConfig | None = None,
    *,
    checkpoints: Sequence[tuple[int, str | Path]] | None = None,
    store: Any = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Mean temporal entropy of sampled selections per checkpoint and T'.

    run_dir: a ``refocus train`` output directory (or None with ``checkpoints``, a list of
    ``(step, policy dir)``). store: a shared ``FrameStore`` (default: the ``DecodeConfig`` defaults).

    Returns ``{"analysis": "entropy", "run_dir", "ks", "samples", "knn", "time_unit",
    "n_items", "checkpoints": [{"step", "path", "entropy": {T': mean}, "entropy_std":
    {T': std over items}, "n": {T': items}}], "uniform": {T': mean}, "skipped", "png"}``
    (T' keys are strings in the JSON).
    """
    from tqdm.auto import tqdm

    from refocus.video.stores import FrameStore

    cfg = config or EntropyConfig()
    if checkpoints is None:
        if run_dir is None:
            raise RefocusError("give a run directory or a list of checkpoints")
        checkpoints = find_checkpoints(run_dir)
    checkpoints = [(int(s), Path(p)) for s, p in checkpoints]
    items = list(items)[: cfg.max_items] if cfg.max_items else list(items)
    if not items:
        raise RefocusError("no items to measure the entropy on")
    store = store if store is not None else FrameStore(capacity=max(8, len(items)))

    rows, skipped = [], []
    uniform: dict[int, list[float]] = {k: [] for k in cfg.ks}
    feature_cache: dict[tuple[str, str], Any] = {}
    bar = tqdm(total=len(checkpoints) * len(items), desc="entropy", unit="item", disable=not progress)
    for index, (step, path) in enumerate(checkpoints):
        selector = _load_policy(path, device)
        tower = _vision_fingerprint(selector.policy)
        per_k: dict[int, list[float]] = {k: [] for k in cfg.ks}
        for item in items:
            bar.update(1)
            try:
                video = store.get(item, selector.image_size)
            except RefocusError as exc:
                if index == 0:
                    skipped.append({"id": item.id, "reason": " ".join(str(exc).split())})
                continue
            times = relative_times(video.timestamps)
            key = (tower, item.id)
            feats = feature_cache.get(key)
            if feats is None:
                feats = _encode(selector, video)
                if any(k[0] != tower for k in feature_cache):  # a new tower: old features are stale
                    feature_cache.clear()
                cached_bytes = sum(f.numel() * f.element_size() for f in feature_cache.values())
                if cached_bytes + feats.numel() * feats.element_size() <= FEATURE_CACHE_BYTES:
                    feature_cache[key] = feats
            orders = _sample_orders(selector, feats, item, cfg, len(times))
            for k, value in selection_entropies(times, orders, cfg.ks, cfg.knn).items():
                per_k[k].append(value)
            if index == 0:
                for k in cfg.ks:
                    value = uniform_entropy(times, k, cfg.knn)
                    if np.isfinite(value):
                        uniform[k].append(value)
        rows.append({
            "step": step,
            "path": str(path),
            "entropy": {str(k): _mean(v) for k, v in per_k.items()},
            "entropy_std": {str(k): _std(v) for k, v in per_k.items()},
            "n": {str(k): len(v) for k, v in per_k.items()},
        })
    bar.close()
    out = {
        "analysis": "entropy",
        "run_dir": None if run_dir is None else str(run_dir),
        "ks": list(cfg.ks),
        "samples": cfg.samples,
        "knn": cfg.knn,
        "time_unit": "relative: fraction of the video, frame i of T at i / T",
        "n_items": len(items) - len(skipped),
        "checkpoints": rows,
        "uniform": {str(k): _mean(v) for k, v in uniform.items()},
        "skipped": skipped,
    }
    if out_dir is not None:
        from refocus.io import write_json

        out_dir = Path(out_dir)
        out["png"] = str(plot_entropy(out, out_dir / PNG_NAME))
        write_json(out_dir / JSON_NAME, out)
    return out


def _load_policy(path: Path, device: str | None):
    from refocus.selectors.policy import PolicySelector

    return PolicySelector.from_dir(path, device=device)


def _vision_fingerprint(policy: Any) -> str:
    """Hash of the frozen vision tower's weights: equal towers give equal features."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(policy.vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _encode(selector: Any, video: Any) -> Any:
    import torch

    with torch.no_grad():
        return selector.policy.encode_frames(np.asarray(video.frames))  # (T, P, Dv)


def _sample_orders(selector: Any, feats: Any, item: QAItem, cfg: EntropyConfig, num_frames: int) -> np.ndarray:
    """(G, K) selection orders of one sampled run of ``min(max(ks), T)`` steps."""
    import torch

    from refocus.policy import policy_prompt
    from refocus.seeding import item_seed

    steps = min(max(cfg.ks), num_frames)
    generator = torch.Generator().manual_seed(item_seed(cfg.seed, item.id))
    ids = policy_prompt(selector.policy.config, selector.tokenizer, item)
    out = selector.policy.select([feats], [ids], k=steps, num_candidates=cfg.samples,
                                 mode="sample", generator=generator)
    return out.order[0].cpu().numpy()


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


def _std(values: list[float]) -> float | None:
    return round(float(np.std(values, ddof=1)), 6) if len(values) > 1 else None


def summary_text(result: dict) -> str:
    """``T'=4 1.02 -> 0.41, T'=8 ... (uniform 1.27 ...), 3 checkpoints, 100 items``."""
    first, last = result["checkpoints"][0], result["checkpoints"][-1]

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    parts = [f"T'={k} {fmt(first['entropy'][str(k)])} -> {fmt(last['entropy'][str(k)])}"
             for k in result["ks"]]
    return (f"{', '.join(parts)} (steps {first['step']} -> {last['step']}; uniform "
            f"{', '.join(fmt(result['uniform'][str(k)]) for k in result['ks'])}; "
            f"{result['n_items']} items)")


# ---------------------------------------------------------------------------- the figure


def plot_entropy(result: dict, path: str | Path) -> Path:
    """Entropy vs training step, one line per T', uniform's entropy dashed in the same colour."""
    from refocus.analysis.plots import SEQUENCE, figure, save

    steps = [row["step"] for row in result["checkpoints"]]
    with figure(figsize=(6.4, 4.2), constrained_layout=True) as (fig, ax):
        for i, k in enumerate(result["ks"]):
            color = SEQUENCE[i % len(SEQUENCE)]
            values = [row["entropy"][str(k)] for row in result["checkpoints"]]
            y = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            ax.plot(steps, y, marker="o", ms=4, lw=1.6, color=color, label=f"policy T'={k}")
            reference = result["uniform"][str(k)]
            if reference is not None:
                ax.axhline(reference, color=color, ls="--", lw=1.0, alpha=0.8)
        ax.plot([], [], color="grey", ls="--", lw=1.0, label="uniform sampling (same T')")
        ax.set_xlabel("training step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("temporal entropy of selected frames\n(KL estimator, nats, time in video lengths)")
        ax.set_title(f"Temporal entropy over training ({result['samples']} samples × "
                     f"{result['n_items']} items per point)")
        if len(steps) == 1:
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3)
        return save(fig, path)
