"""Atomic training checkpoints: HF-format policy + optimiser, scheduler and every RNG state.

Layout of a run directory::

    DIR/checkpoints/step-000050/   policy (save_pretrained) + tokenizer + trainer_state.pt + config.yaml
    DIR/checkpoints/latest          text file naming the newest complete checkpoint
    DIR/policy/                     the final policy

A checkpoint is written to ``step-XXXXXX.tmp`` and renamed into place, then ``latest`` is
replaced atomically, so a crash mid-write leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if generator is not None:
        state["sampler"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if generator is not None and "sampler" in state:
        generator.set_state(state["sampler"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy,
    tokenizer,
    trainer_state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
) -> Path:
    """Write ``run_dir/checkpoints/step-XXXXXX`` atomically and point ``latest`` at it."""
    stage_checkpoint(run_dir, step, policy, tokenizer, trainer_state, config_yaml)
    return commit_checkpoint(run_dir, step, keep)


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before :func:`commit_checkpoint` renames it."""
    return run_dir / "checkpoints" / f"step-{step:06d}.tmp"


def stage_checkpoint(
    run_dir: Path, step: int, policy, tokenizer, trainer_state: dict[str, Any], config_yaml: str
) -> Path:
    """The shared part of a checkpoint (policy, tokenizer, trainer state, config) into its
    staging directory; other processes may add their own files there before the commit."""
    tmp = staging_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    (tmp / "train_config.yaml").write_text(config_yaml)
    return tmp


def commit_checkpoint(run_dir: Path, step: int, keep: int = 2) -> Path:
    """Rename the staged checkpoint into place, point ``latest`` at it, prune old ones."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging_dir(run_dir, step), final)
    latest_tmp = ckpt_root / f"{LATEST}.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, ckpt_root / LATEST)
    _prune(ckpt_root, keep, protect=final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").is_file() else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    # Our own file: it holds numpy RNG tuples and python objects, so weights_only must be off.
    return torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)


def _prune(ckpt_root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[: max(0, len(done) - keep)]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
