"""Library entry point of ``refocus train``: load data and reference, run the GRPO trainer."""

from __future__ import annotations

from pathlib import Path

import yaml

from refocus.errors import RefocusError
from refocus.io import write_json
from refocus.training.config import GRPOConfig, load_config, resolve_config
from refocus.training.trainer import GRPOTrainer, TrainResult


def train_policy(
    data: str | Path,
    reference: str | Path,
    out_dir: str | Path,
    config: str | Path | GRPOConfig | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    sets: dict | None = None,
    device: str | None = "auto",
    dtype: str | None = "auto",
    init_policy: str | Path | None = None,
) -> TrainResult:
    """Train a policy on ``data`` against the reference checkpoint ``reference``.

    device / dtype: where the reference model runs (see :func:`refocus.reference.load_reference`;
    "auto": this process's accelerator with bfloat16 under ``accelerate launch`` or on a GPU,
    the CPU with float32 otherwise). init_policy: start from this saved policy as it is
    (``refocus train --policy DIR``), overriding the config's.
    """
    from refocus.data.questions import load_questions
    from refocus.distributed import placement
    from refocus.reference import load_reference

    cfg = resolve_config(config, load_config, GRPOConfig, sets, max_steps=max_steps, seed=seed,
                         init_policy=None if init_policy is None else str(init_policy))
    out_dir = Path(out_dir)
    errors: list = []
    items = load_questions(data, errors=errors)
    if not items:
        raise RefocusError(f"{data}: no valid questions to train on")
    ref = load_reference(reference, device=device, dtype=dtype, batch_size=cfg.reference_batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = GRPOTrainer(cfg, items, ref, out_dir, resume=resume, progress=progress)
    result = trainer.train()
    result.skipped[:0] = [{"id": None, "reason": str(e)} for e in errors]
    if trainer.accelerator.is_main_process:
        write_json(out_dir / "train_summary.json", {
            "steps": result.steps, "policy": str(result.policy_dir), "skipped": result.skipped,
            "nonfinite_steps": result.nonfinite_steps, "reference_calls": result.reference_calls,
            "reference": placement(ref), "num_processes": result.num_processes, "replica_max_abs_diff": result.replica_max_abs_diff,
            "last_metrics": result.last_metrics,
        })
    return result
