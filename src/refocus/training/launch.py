"""The trainer's side of ``accelerate``: the Accelerator, the prepare call, per-process state.

- :func:`make_accelerator`: CPU processes (gloo) without CUDA, unless DeepSpeed was asked
  for (``accelerate launch --use_deepspeed``), which needs accelerate's DeepSpeed path.
- :func:`prepare`: ``accelerator.prepare(model, optimizer)``. The trainer feeds its own
  batches (no dataloader), so accelerate cannot infer DeepSpeed's ``"auto"`` batch fields;
  they are filled from the training config first: ``train_micro_batch_size_per_gpu`` =
  ``per_device_train_batch_size`` (questions per optimiser step per process; DeepSpeed only
  books it), ``gradient_accumulation_steps`` = 1 (micro-batching is the trainer's own, see
  ``training/replay.py``; its last backward is DeepSpeed's accumulation boundary),
  ``gradient_clipping`` = ``max_grad_norm``.
- :func:`save_process_state` / :func:`load_process_state`: what differs between processes.
  Every process writes its own file into the checkpoint: its sampler RNG, and its optimiser
  state. Under DeepSpeed the optimiser state is a ZeRO shard (each process holds 1/N of
  Adam's moments and the fp32 master weights), saved and restored by the engine's own
  ``save_checkpoint`` / ``load_checkpoint`` (one ``zero_pp_rank_R_..._optim_states.pt`` per
  process); under DDP each process saves its (replicated) optimiser state with its RNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from refocus.distributed import deepspeed_requested
from refocus.errors import RefocusError

DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


def make_accelerator():
    """The trainer's Accelerator. Under a launch the process group is set up first by
    :func:`refocus.distributed.process_state` (CPU processes without CUDA: accelerate alone
    would see a CPU DeepSpeed launch as one process), then DeepSpeed, when asked for, runs
    in it."""
    from accelerate import Accelerator

    from refocus.distributed import launched, process_state

    if launched():
        process_state()
    return Accelerator(cpu=not torch.cuda.is_available() and not deepspeed_requested())


def uses_deepspeed(accelerator) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


def fill_deepspeed_config(ds_config: dict, cfg) -> dict:
    """Replace the ``"auto"`` values the trainer knows (see the module docstring); explicit
    values are kept. Returns the same dict."""
    known = {
        "train_micro_batch_size_per_gpu": int(cfg.per_device_train_batch_size),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.max_grad_norm),
    }
    for key, value in known.items():
        if ds_config.get(key, "auto") == "auto":
            ds_config[key] = value
    return ds_config


def prepare(accelerator, model, optimizer, cfg):
    """``accelerator.prepare(model, optimizer)`` with DeepSpeed's batch fields filled in."""
    if uses_deepspeed(accelerator):
        plugin = accelerator.state.deepspeed_plugin
        fill_deepspeed_config(plugin.deepspeed_config, cfg)
        plugin.gradient_accumulation_steps = 1
    return accelerator.prepare(model, optimizer)


def _rank_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"process-{rank:05d}.pt"


def save_process_state(accelerator, model, optimizer, ckpt: Path, extra: dict[str, Any]) -> None:
    """This process's part of checkpoint ``ckpt`` (its staging directory): ``extra`` (e.g.
    the sampler RNG) and its optimiser state or ZeRO shard. Collective under DeepSpeed."""
    rank = accelerator.process_index
    state = {"num_processes": accelerator.num_processes, **extra}
    if uses_deepspeed(accelerator):
        model.save_checkpoint(str(ckpt / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)
    else:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, _rank_file(ckpt, rank))


def load_process_state(accelerator, model, optimizer, ckpt: Path) -> dict[str, Any] | None:
    """Restore this process's optimiser state (or ZeRO shard) from ``ckpt``; returns its
    ``extra`` dict, or None for a checkpoint written before per-process files existed."""
    path = _rank_file(ckpt, accelerator.process_index)
    if not path.is_file():
        if (ckpt / DEEPSPEED_DIR).exists() or any(ckpt.glob("process-*.pt")):
            raise RefocusError(
                f"{ckpt}: no state for process {accelerator.process_index}; resume with the "
                "number of processes the checkpoint was written with"
            )
        return None  # an older checkpoint: the shared trainer state holds rank 0's
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["num_processes"] != accelerator.num_processes:
        raise RefocusError(
            f"{ckpt} was written by {state['num_processes']} processes; resume it with as many "
            f"(got {accelerator.num_processes})"
        )
    if uses_deepspeed(accelerator):
        model.load_checkpoint(str(ckpt / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                              load_optimizer_states=True, load_lr_scheduler_states=False)
    else:
        optimizer.load_state_dict(state["optimizer"])
    return state
