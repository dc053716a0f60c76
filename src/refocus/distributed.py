"""Where work runs: device and dtype defaults, and item sharding under ``accelerate launch``.

One process (``python -m refocus ...``) and several (``accelerate launch --num_processes N
-m refocus ...``) run the same code. Under a launch, accelerate's ``PartialState`` knows this
process's rank and device (``cuda:<local rank>`` on GPUs, the CPU with gloo otherwise);
:func:`resolve_device` puts each process's models there. :func:`shard` hands each process
every N-th item and :func:`gather_in_order` brings the per-item results back to input
order on every process, so a sharded ``refocus filter`` or ``refocus eval`` writes the same
file as one process.

Importing this module imports neither torch nor accelerate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

from refocus.errors import RefocusError

T = TypeVar("T")

DTYPES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
"""Accepted spellings of ``--dtype`` (besides ``auto``) -> torch dtype names."""


def launched() -> bool:
    """True inside a multi-process launch (``accelerate launch``/``torchrun`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state():
    """accelerate's ``PartialState`` (initialises the process group on first use under a launch).

    Without CUDA it is asked for CPU processes (gloo), as the trainer's ``Accelerator`` is:
    accelerate's default would treat a CPU launch as one process.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def rank_and_world() -> tuple[int, int]:
    """(this process's index, number of processes); (0, 1) outside a launch."""
    if not launched():
        return 0, 1
    state = process_state()
    return state.process_index, state.num_processes


def resolve_device(device: str | None = None):
    """The torch device for this process's models.

    ``None`` / ``"auto"``: accelerate's device for this process (``cuda:<local rank>`` under a
    GPU launch, ``cuda`` for one GPU process, else the CPU). ``"cuda"`` under a launch means
    this process's GPU; any other value (``"cpu"``, ``"cuda:1"``) is used as given.
    """
    import torch

    if device in (None, "auto"):
        if launched():
            return torch.device(process_state().device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RefocusError(f"--device: unknown device {device!r} ({exc})") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RefocusError(f"--device {device}: CUDA is not available on this machine")
        if resolved.index is None and launched():
            resolved = torch.device("cuda", process_state().local_process_index)
    return resolved


def resolve_dtype(dtype: Any = None, device: Any = "cpu"):
    """A torch dtype: ``None`` / ``"auto"`` is bfloat16 on CUDA (when the GPU supports it),
    float32 elsewhere (half-precision matmuls are slow or missing on CPUs); a torch dtype or
    one of :data:`DTYPES` is used as given."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise RefocusError(f"--dtype: unknown dtype {dtype!r}; use auto, {', '.join(sorted(set(DTYPES)))}")
    return getattr(torch, name)


def add_device_arguments(parser, what: str = "the reference model") -> None:
    """``--device`` and ``--dtype`` options of a command (defaults: auto)."""
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help=f"device of {what}: auto (default: this process's accelerator, "
                        "else the CPU), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", metavar="DTYPE",
                        help=f"dtype of {what}: auto (default: bfloat16 on CUDA, float32 on CPU), "
                        "bfloat16, float16, float32")


def shard(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[tuple[int, T]]:
    """This process's items with their input positions: every ``world``-th, from ``rank``
    (default: this process's rank and the number of processes)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    return [(i, items[i]) for i in range(rank, len(items), world)]


def gather_in_order(records: list[tuple[int, Any]]) -> list[Any]:
    """Merge every process's ``(position, record)`` pairs; the records in position order.

    Every process gets the full list (``gather_object``). One process: the records sorted.
    """
    if launched() and process_state().num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object([records])
        records = [pair for part in records for pair in part]
    return [record for _, record in sorted(records, key=lambda pair: pair[0])]


def processes_note() -> str:
    """`` on N processes`` under a multi-process launch, else empty (for summary lines)."""
    world = rank_and_world()[1]
    return f" on {world} processes" if world > 1 else ""


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def wait_for_everyone() -> None:
    if launched():
        process_state().wait_for_everyone()


def placement(reference) -> dict:
    """``{"name", "device", "dtype"}`` of a loaded reference model (for run summaries)."""
    model = getattr(reference, "model", None)
    if model is None:
        return {"name": getattr(reference, "name", None), "device": None, "dtype": None}
    param = next(model.parameters())
    return {"name": reference.name, "device": str(param.device),
            "dtype": str(param.dtype).removeprefix("torch.")}
