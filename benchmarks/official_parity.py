"""Parity of an imported policy with the authors' own model on real weights (needs a GPU).

`refocus policy import-official` is verified on checkpoints written in the authors' layout
(tests/test_import_official.py); this script is the check on the released weights. The two
models cannot share a process: the authors' package is also called ``refocus`` and pins other
versions (transformers 4.57, their mamba_ssm fork, flash-attn). So it runs twice:

1. ``--side ours`` (this project's environment): decodes the video at the policy's frame size,
   samples G candidate orders with the imported policy, and writes the frames, the orders and
   the policy's per-step log-probabilities (replay, float32) to ``--pairs FILE.npz``.
2. ``--side theirs`` (the authors' environment, their repository on PYTHONPATH): runs their
   ``RefocusForFrameSelection`` on the same frames with the same orders forced
   (``forced_idx``), replace=False as their export, and prints the differences.

Their tower runs flash-attention (bf16 only), so expect bf16-sized differences (about 1e-2 in a
log-probability); a conversion error shows up as differences of order 1 and disagreeing argmax.
See README, "Using the released ReFoCUS-1.3B", for the commands.
"""

from __future__ import annotations

import argparse

import numpy as np


def ours(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer

    from refocus.policy import FramePolicy, policy_prompt
    from refocus.video import load_video

    policy = FramePolicy.from_pretrained(args.policy).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    video = load_video(args.video, fps=args.fps, max_frames=args.max_frames, size=policy.config.image_size)
    ids = policy_prompt(policy.config, tokenizer, args.question)
    with torch.no_grad():
        feats = policy.encode_frames(video.frames)
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        out = policy.select([feats], [ids], k=args.budget, num_candidates=args.candidates, generator=gen)
        logprobs, _ = policy.replay_logprobs([feats], [ids], out.order)
    np.savez_compressed(
        args.pairs, frames=video.frames, order=out.order[0].cpu().numpy(),
        logprobs=logprobs[0].float().cpu().numpy(), question=np.array(args.question),
    )
    print(f"wrote {args.pairs}: {len(video.frames)} frames, {args.candidates} orders of {args.budget}")


def theirs(args: argparse.Namespace) -> None:
    import torch
    from refocus.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX  # the authors' package
    from refocus.conversation import conv_templates
    from refocus.mm_utils import tokenizer_image_token
    from refocus.model.language_model.modeling_refocus import RefocusForFrameSelection
    from transformers import AutoTokenizer

    data = np.load(args.pairs)
    order = torch.as_tensor(data["order"], device="cuda")  # (G, K)
    model = RefocusForFrameSelection.from_pretrained(args.official, torch_dtype=torch.bfloat16, device_map="cuda")
    model.config.query_frames = order.shape[1]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    processor = model.get_model().get_vision_tower().image_processor
    pixels = processor.preprocess(list(data["frames"]), return_tensors="pt")["pixel_values"]
    conv = conv_templates["fpo"].copy()  # as eval/refocus_eval/models/HF_FS_refocus.py
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + str(data["question"]))
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(input_ids=[ids.cuda()], visual_clips=[pixels.to("cuda", torch.bfloat16)],
                        num_candidates=order.shape[0], replace=False, forced_idx=order[None])
    candidates, selection_logp = outputs[0], outputs[1]
    assert torch.equal(candidates.cpu(), order.cpu()), "forced orders were not followed"
    diff = (selection_logp.float().cpu().numpy() - data["logprobs"])
    print(f"per-step log-prob |theirs - ours|: max {np.abs(diff).max():.4f}, mean {np.abs(diff).mean():.4f} "
          f"over {diff.size} steps (theirs bf16, ours float32)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=("ours", "theirs"), required=True)
    p.add_argument("--pairs", required=True, help=".npz written by --side ours, read by --side theirs")
    p.add_argument("--policy", help="(ours) the imported policy directory")
    p.add_argument("--video", help="(ours) a video file")
    p.add_argument("--question", help="(ours) the question text, options included")
    p.add_argument("--official", help="(theirs) the authors' checkpoint directory")
    p.add_argument("--tokenizer", help="(theirs) EleutherAI/gpt-neox-20b tokenizer directory")
    p.add_argument("--budget", type=int, default=32)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--max-frames", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    (ours if args.side == "ours" else theirs)(args)


if __name__ == "__main__":
    main()
