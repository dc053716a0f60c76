"""What the small reference model's vision tower says about each held-out object frame.

Stage 2 of ``refocus reference train`` regresses every frame's visual token onto the word
embeddings of the object it shows (E(colour) + E(shape), or E("clutter")). This reads that
token back: for every decoded frame of the given synthetic benchmarks that shows an object
(and a sample of haystack frames), the nearest of all colour-shape word pairs and "clutter"
(Euclidean, in the language model's embedding space). Prints the share of object frames whose
nearest pair has the right colour / the right shape, the share of haystack frames read as
clutter, the most frequent confusions, then JSON as the last line.

    PYTHONPATH=src python benchmarks/reference_tower.py --reference REF \\
        --data runs/held/query --data runs/held/niah
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from refocus.data.questions import load_questions
    from refocus.data.synth.common import COLORS, SHAPES
    from refocus.reference.small_training import (
        _image_tokens,
        frame_objects,
        pixel_values_from_frames,
    )
    from refocus.video import load_video

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="a small reference model directory")
    ap.add_argument("--data", action="append", required=True, help="synthetic benchmark dir or qa.jsonl")
    ap.add_argument("--haystack-per-video", type=int, default=8)
    args = ap.parse_args()

    model = LlavaForConditionalGeneration.from_pretrained(args.reference).eval()
    vocab = AutoTokenizer.from_pretrained(args.reference).get_vocab()
    table = model.get_input_embeddings().weight.detach()
    pairs = [(c, s) for c in COLORS for s in SHAPES if c in vocab and s in vocab]
    words = torch.stack([table[vocab[c]] + table[vocab[s]] for c, s in pairs] + [table[vocab["clutter"]]])
    size = model.config.refocus_small_reference["image_size"]

    right = Counter()
    confusions = {"colour": Counter(), "shape": Counter()}
    for data in args.data:
        path = Path(data)
        for item in load_questions(path / "qa.jsonl" if path.is_dir() else path):
            video = load_video(item.video, size=size)
            shown = frame_objects(item, video.timestamps)
            objects = [i for i, o in enumerate(shown) if o is not None]
            haystack = [i for i, o in enumerate(shown) if o is None]
            haystack = haystack[:: max(1, len(haystack) // args.haystack_per_video)][: args.haystack_per_video]
            with torch.no_grad():
                tokens = _image_tokens(model, pixel_values_from_frames(video.frames[objects + haystack]))[:, 0]
            nearest = torch.cdist(tokens, words).argmin(1).tolist()
            for j, i in enumerate(objects):
                colour, shape = shown[i]
                right["objects"] += 1
                if nearest[j] == len(pairs):
                    confusions["shape"][f"{shape} -> clutter"] += 1
                    continue
                got_colour, got_shape = pairs[nearest[j]]
                right["colour"] += got_colour == colour
                right["shape"] += got_shape == shape
                if got_colour != colour:
                    confusions["colour"][f"{colour} -> {got_colour}"] += 1
                if got_shape != shape:
                    confusions["shape"][f"{shape} -> {got_shape}"] += 1
            right["haystack"] += len(haystack)
            right["clutter"] += sum(n == len(pairs) for n in nearest[len(objects):])
    n = right["objects"]
    result = {
        "object_frames": n,
        "colour": round(right["colour"] / n, 4),
        "shape": round(right["shape"] / n, 4),
        "haystack_frames": right["haystack"],
        "haystack_as_clutter": round(right["clutter"] / max(1, right["haystack"]), 4),
        "confusions": {k: dict(c.most_common(8)) for k, c in confusions.items()},
    }
    print(f"{n} object frames: colour {result['colour']:.3f}, shape {result['shape']:.3f}; "
          f"{right['haystack']} haystack frames read as clutter {result['haystack_as_clutter']:.3f}")
    for kind, counter in confusions.items():
        if counter:
            print(f"{kind} confusions: " + ", ".join(f"{k} {v}" for k, v in counter.most_common(8)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
