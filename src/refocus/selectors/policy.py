"""The trained ReFoCUS policy as a frame selector (``policy:DIR``).

``DIR`` is a policy checkpoint written by ``refocus train`` (``FramePolicy.save_pretrained``
plus the question tokenizer saved in the same directory). Frames are decoded at the policy's
image size, encoded once per video by the frozen vision tower (cached, so several budgets and
seeds reuse the features), and the policy picks ``budget`` frames autoregressively.

Modes:

- ``greedy`` (default): the most likely frame at every step. Deterministic, so one evaluation
  run suffices and the selection file is reproducible without a seed, and it costs a single
  candidate (one prefix pass + K steps). The policy is trained to put its mass on the frames
  that raise the reference margin; greedy decoding reads off those modes, where a single
  sample at temperature 1 can wander onto low-probability frames that the entropy bonus
  keeps alive during training.
- ``sample``: one candidate sampled at ``temperature``, seeded by (seed, item id): the
  training-time behaviour, to measure spread over seeds.
- ``distribution``: the top-``budget`` frames of the Appendix C selection distribution (each
  step's categorical over available frames averaged over the K steps, then over N = 64
  sampled candidates). Robust to one unlucky step, but N times the step cost.
- ``official``: the authors' export rule (github interlive-team/ReFoCUS,
  ``HF_FS_refocus.py`` + ``_database_to_frameidx.py``): candidates sampled at temperature 1,
  the first ``budget`` picks of candidate 0, sorted; a video of at most ``uniform_below``
  (128) decoded frames gets uniform indices ``linspace(0, T - 1, budget)`` instead. See
  :func:`official_export`. Seeded by (seed, item id), like ``sample``.

``refocus select --protocol {greedy,official}`` chooses between the project's default and the
authors' rule (README: which is the default and why).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from refocus.errors import RefocusError
from refocus.seeding import item_seed
from refocus.selectors.base import VideoFrames, check_budget

MODES = ("greedy", "sample", "distribution", "official")
PROTOCOLS = {"greedy": "greedy", "official": "official"}
"""``refocus select --protocol``: the selector mode each protocol runs."""


def official_export(
    candidates: np.ndarray | None, num_frames: int, budget: int, candidate: int = 0, uniform_below: int = 128
) -> list[int]:
    """The authors' export of one video's frames (``_database_to_frameidx.py``).

    ``candidates`` (G, K') sampled selection orders (K' >= budget), or None when none were
    sampled. With ``num_frames <= uniform_below`` (their ``--minframes``, 128 in their scripts)
    or no candidates: ``linspace(0, T - 1, budget)`` truncated to int (uniform). Otherwise the
    first ``budget`` picks of row ``candidate``, sorted (their ``--sort``).

    >>> official_export(np.array([[9, 2, 7, 5]]), 200, 3)
    [2, 7, 9]
    >>> official_export(np.array([[9, 2, 7, 5]]), 100, 4)
    [0, 33, 66, 99]
    """
    if candidates is None or num_frames <= uniform_below:
        return [int(i) for i in np.linspace(0, num_frames - 1, budget, dtype=int)]
    picks = np.asarray(candidates)[candidate][:budget]
    if len(picks) < budget:
        raise RefocusError(f"candidate {candidate} has {len(picks)} picks, fewer than the budget {budget}")
    return sorted(int(i) for i in picks)
DEFAULT_MODE = "greedy"


class PolicySelector:
    """Frame selection by a trained :class:`refocus.policy.FramePolicy`.

    Build with ``get_selector("policy:DIR", seed=, mode=)``, ``PolicySelector.from_dir``, or
    ``PolicySelector(policy, tokenizer)`` around objects already in memory (the demo does
    this right after training).

    policy: the FramePolicy (put in eval mode here). tokenizer: the question tokenizer saved
    with it. name: label in results (``policy:DIR``). mode: see the module docstring.
    seed: run seed, mixed with each item id for sampling. num_samples: N candidates of the
    distribution mode (Appendix C: 64). temperature: softmax temperature of sampling.
    feature_cache: videos whose encoder features are kept in memory.
    """

    deterministic: bool
    spec_arg = "dir"
    """The ``key=value`` spec option that is the bare argument: ``policy:dir=DIR``."""

    def __init__(
        self,
        policy: Any,
        tokenizer: Any,
        *,
        name: str = "policy",
        mode: str | None = None,
        seed: int = 0,
        num_samples: int = 64,
        temperature: float = 1.0,
        feature_cache: int = 8,
        candidate: int = 0,
        uniform_below: int = 128,
    ) -> None:
        mode = DEFAULT_MODE if mode is None else mode
        if mode not in MODES:
            raise RefocusError(f"policy selector mode must be one of {', '.join(MODES)}, got {mode!r}")
        if num_samples < 1:
            raise RefocusError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= candidate < num_samples or uniform_below < 0:
            raise RefocusError(f"candidate must lie in [0, {num_samples}) and uniform_below >= 0")
        self.candidate = int(candidate)
        self.uniform_below = int(uniform_below)
        self.policy = policy.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.mode = mode
        self.seed = int(seed)
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.deterministic = mode == "greedy"
        self._features: OrderedDict[tuple, Any] = OrderedDict()
        self._capacity = max(1, int(feature_cache))
        # frames are decoded at the saved policy's size, the size training decoded them at
        self.image_size: int | None = int(policy.config.image_size)

    @classmethod
    def from_dir(
        cls, path: str | Path, *, device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> PolicySelector:
        """Load the policy and its tokenizer from a checkpoint directory.

        device / dtype: "auto" or None (this process's accelerator with bfloat16, else the CPU
        with float32; see :mod:`refocus.distributed`), or explicit values.
        """
        from transformers import AutoTokenizer

        from refocus.distributed import resolve_device, resolve_dtype
        from refocus.policy import FramePolicy

        path = Path(path)
        if not (path / "config.json").is_file():
            raise RefocusError(f"{path}: not a policy checkpoint (no config.json)")
        device = resolve_device(device)
        policy = FramePolicy.from_pretrained(path).to(device, resolve_dtype(dtype, device))
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs.setdefault("name", f"policy:{path}")
        return cls(policy, tokenizer, **kwargs)

    @classmethod
    def from_spec(
        cls, arg: str | None, *, seed: int = 0, mode: str | None = None, device: Any = None,
        dtype: Any = None, num_samples: int = 64, candidate: int = 0, uniform_below: int = 128,
    ) -> PolicySelector:
        """``num_samples`` (distribution / official candidates), ``candidate`` and ``uniform_below``
        (official) are spec options: ``policy:DIR,mode=official,uniform_below=0``."""
        if not arg:
            raise RefocusError("the policy selector needs a checkpoint directory: policy:DIR")
        return cls.from_dir(arg, seed=seed, mode=mode, device=device, dtype=dtype, num_samples=int(num_samples),
                            candidate=int(candidate), uniform_below=int(uniform_below))

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)

    # ------------------------------------------------------------------ features

    def prepare(self, video: VideoFrames, item: Any) -> Any:
        """Frozen-encoder features (T, P, Dv) of ``video``, computed once and cached.

        Separate from :meth:`select` so evaluation can time the per-video encoding once and
        charge it to every budget.
        """
        import torch

        t = np.asarray(video.timestamps)
        key = (str(getattr(item, "video", "")), len(t), float(t[0]), float(t[-1]), video.frames.shape[1:])
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key]
        if video.frames.shape[1] != self.image_size:
            raise ValueError(
                f"policy selector wants frames decoded at {self.image_size} px, got {video.frames.shape[1]}"
            )
        with torch.no_grad(), warnings.catch_warnings():
            # decoded frames are read-only on purpose; the encoder only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            feats = self.policy.encode_frames(video.frames)  # (T, P, Dv)
        self._features[key] = feats
        while len(self._features) > self._capacity:
            self._features.popitem(last=False)
        return feats

    def _generator(self, item: Any):
        import torch

        return torch.Generator().manual_seed(item_seed(self.seed, item.id))

    # ------------------------------------------------------------------ selection

    def select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        """``budget`` sorted frame indices chosen in this selector's mode (all frames if T <= budget)."""
        num_frames = check_budget(video, budget)
        if num_frames <= budget:
            return list(range(num_frames))
        if self.mode == "distribution":
            dist = self.selection_distribution(video, item, budget)
            top = np.argsort(-dist, kind="stable")[:budget]  # ties: the earlier frame
            return sorted(int(i) for i in top)
        if self.mode == "official" and num_frames <= self.uniform_below:
            return official_export(None, num_frames, budget, self.candidate, self.uniform_below)
        from refocus.policy import policy_prompt

        feats = self.prepare(video, item)
        if self.mode == "official":
            # Candidates are drawn in order from per-candidate random numbers, so candidate c
            # does not depend on how many follow it: sample c + 1 of the num_samples.
            out = self.policy.select(
                [feats], [policy_prompt(self.policy.config, self.tokenizer, item)], k=budget,
                num_candidates=self.candidate + 1, mode="sample", temperature=self.temperature,
                generator=self._generator(item),
            )
            return official_export(out.order[0].cpu().numpy(), num_frames, budget, self.candidate, self.uniform_below)
        ids = policy_prompt(self.policy.config, self.tokenizer, item)
        generator = None if self.mode == "greedy" else self._generator(item)
        out = self.policy.select(
            [feats], [ids], k=budget, num_candidates=1, mode=self.mode,
            temperature=self.temperature, generator=generator,
        )
        return [int(i) for i in out.indices[0, 0].tolist()]

    def selection_distribution(
        self, video: VideoFrames, item: Any, budget: int, num_samples: int | None = None
    ) -> np.ndarray:
        """Appendix C selection distribution (T,) float64 summing to 1.

        ``num_samples`` (default: the selector's, 64) candidates of ``budget`` steps are sampled
        (seeded by seed and item id); each step's categorical over the available frames is
        averaged over steps, then over candidates. ``budget`` is capped at T.
        """
        from refocus.policy import policy_prompt

        num_frames = check_budget(video, budget)
        feats = self.prepare(video, item)
        ids = policy_prompt(self.policy.config, self.tokenizer, item)
        out = self.policy.select(
            [feats], [ids], k=min(budget, num_frames), num_candidates=num_samples or self.num_samples,
            mode="distribution", temperature=self.temperature, generator=self._generator(item),
        )
        return out.distribution[0].double().cpu().numpy()

    def __repr__(self) -> str:
        return f"PolicySelector(name={self.name!r}, mode={self.mode!r}, seed={self.seed})"
