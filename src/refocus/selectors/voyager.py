"""The Frame-Voyager baseline as a frame selector (``voyager:DIR``).

``DIR`` is a ``refocus voyager train`` run directory (its ``policy/`` is used) or the policy
directory itself: a FramePolicy checkpoint with its tokenizer and ``voyager.json``, which says
how the ranker scores a combination (``refocus.voyager.model``). The selector returns the
highest-scoring combination of ``budget`` frames:

- ``sequence`` scoring (default): greedy decoding with the ReFoCUS sampler (mode ``greedy``),
  which approximates the best combination under the sequence score;
- ``set`` scoring: the top-``budget`` frames of the policy's first-step distribution, which is
  exactly the best combination under the set score (mode ``top-k``).

Both are deterministic. Frames are decoded at the policy's image size and encoded once per
video (cached), as in the ``policy`` selector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refocus.errors import RefocusError
from refocus.selectors.base import VideoFrames, check_budget
from refocus.selectors.policy import PolicySelector
from refocus.voyager.config import SCORINGS, VOYAGER_FILE


def resolve_policy_dir(path: str | Path) -> Path:
    """The policy directory of a voyager run directory, or ``path`` itself if it is one."""
    path = Path(path)
    for candidate in (path, path / "policy"):
        if (candidate / VOYAGER_FILE).is_file() and (candidate / "config.json").is_file():
            return candidate
    if (path / "config.json").is_file():
        raise RefocusError(f"{path}: a policy checkpoint but not a Frame-Voyager one (no {VOYAGER_FILE}); "
                           "use policy:DIR for ReFoCUS policies")
    raise RefocusError(f"{path}: not a Frame-Voyager run or policy directory (no {VOYAGER_FILE})")


class VoyagerSelector(PolicySelector):
    """Frame selection by a Frame-Voyager ranker (see the module docstring).

    Build with ``get_selector("voyager:DIR")``, :meth:`from_dir`, or
    ``VoyagerSelector(policy, tokenizer, scoring=...)`` around objects in memory.
    """

    def __init__(self, policy: Any, tokenizer: Any, *, scoring: str = "sequence", name: str = "voyager",
                 seed: int = 0, feature_cache: int = 8) -> None:
        if scoring not in SCORINGS:
            raise RefocusError(f"voyager scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        super().__init__(policy, tokenizer, name=name, mode="greedy", seed=seed, feature_cache=feature_cache)
        self.scoring = scoring
        self.mode = "top-k" if scoring == "set" else "greedy"
        self.deterministic = True

    @classmethod
    def from_dir(
        cls, path: str | Path, *, device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> VoyagerSelector:
        """Load the ranker, its tokenizer and its scoring from a run or policy directory
        (device / dtype as in :meth:`PolicySelector.from_dir`)."""
        from transformers import AutoTokenizer

        from refocus.distributed import resolve_device, resolve_dtype
        from refocus.policy import FramePolicy

        policy_dir = resolve_policy_dir(path)
        info = json.loads((policy_dir / VOYAGER_FILE).read_text())
        device = resolve_device(device)
        policy = FramePolicy.from_pretrained(policy_dir).to(device, resolve_dtype(dtype, device))
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        kwargs.setdefault("name", f"voyager:{path}")
        kwargs.setdefault("scoring", info.get("scoring", "sequence"))
        return cls(policy, tokenizer, **kwargs)

    @classmethod
    def from_spec(
        cls, arg: str | None, *, seed: int = 0, mode: str | None = None, device: Any = None,
        dtype: Any = None,
    ) -> VoyagerSelector:
        if not arg:
            raise RefocusError("the voyager selector needs a run or policy directory: voyager:DIR")
        if mode not in (None, "greedy"):
            raise RefocusError(f"the voyager selector is deterministic and has no mode {mode!r}")
        return cls.from_dir(arg, seed=seed, device=device, dtype=dtype)

    def select(self, video: VideoFrames, item: Any, budget: int) -> list[int]:
        """The ``budget`` frames of the highest-scoring combination, sorted (all frames if T <= budget)."""
        from refocus.policy import policy_prompt
        from refocus.voyager.model import best_combination

        num_frames = check_budget(video, budget)
        if num_frames <= budget:
            return list(range(num_frames))
        feats = self.prepare(video, item)
        ids = policy_prompt(self.policy.config, self.tokenizer, item)
        return best_combination(self.policy, feats, ids, budget, self.scoring)

    def selection_distribution(self, video: VideoFrames, item: Any, budget: int,
                               num_samples: int | None = None):
        raise RefocusError("the voyager selector has no selection distribution; use policy:DIR")

    def __repr__(self) -> str:
        return f"VoyagerSelector(name={self.name!r}, scoring={self.scoring!r})"
