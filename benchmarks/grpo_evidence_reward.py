"""GRPO with the reference's margin reward replaced by an evidence reward: does the policy
learn `query` when the reward is clean? (a diagnosis; not a training mode refocus ships)

The trainer is ``refocus train``'s (:class:`refocus.training.trainer.GRPOTrainer`), with
``rewards`` overridden: 1 when a candidate's frames include a frame of an evidence span, else
0 (the reference still loads, for its frame size, and is never called). Everything else --
sampling, group advantages, the loss, the config -- is the shipped one. Evaluate the policy it
writes with ``refocus eval --selector policy:OUT/policy`` as any other.

    python benchmarks/grpo_evidence_reward.py --data FILTERED.jsonl --reference REF --out OUT \\
        --config src/refocus/configs/tiny.yaml --set max_steps=400 --set num_generations=16 \\
        --set 'selection_sizes=[4]' --set 'curriculum_starts=[0]'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refocus.data.evidence import evidence_frame_mask, hits_evidence  # noqa: E402
from refocus.training.trainer import GRPOTrainer  # noqa: E402


class EvidenceRewardTrainer(GRPOTrainer):
    """GRPO whose reward is whether a candidate holds an evidence frame."""

    def rewards(self, batch, out):
        rewards, correct = [], []
        for b, (item, frames) in enumerate(zip(batch.items, batch.reference_frames, strict=True)):
            mask = evidence_frame_mask(frames.timestamps, item.evidence)
            hits = torch.tensor([float(hits_evidence(subset, mask)) for subset in out.indices[b].tolist()])
            rewards.append(hits)
            correct.append(hits.bool())
        return torch.stack(rewards), torch.stack(correct), [0.0] * len(batch.items)


def main() -> None:
    from refocus.data.questions import load_questions
    from refocus.reference import load_reference
    from refocus.training.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML")
    args = ap.parse_args()
    sets = {}
    for entry in args.set:
        key, value = entry.split("=", 1)
        sets[key] = yaml.safe_load(value)
    cfg = load_config(args.config, sets=sets or None)
    reference = load_reference(args.reference, device="cpu", dtype="float32")
    trainer = EvidenceRewardTrainer(cfg, load_questions(args.data), reference, args.out)
    result = trainer.train()
    print(f"trained {result.steps} steps -> {result.policy_dir}; last metrics "
          f"reward/mean {result.last_metrics.get('reward/mean')}")


if __name__ == "__main__":
    main()
