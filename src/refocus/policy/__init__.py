"""The Mamba2 frame-selection policy (paper §3.2, Algorithm 2, Appendix B.2, B.4, B.5).

Importing this package registers ``FramePolicyConfig`` / ``FramePolicy`` with transformers'
``AutoConfig`` / ``AutoModel`` (model type ``refocus_frame_policy``), so a saved policy
directory loads with ``AutoModel.from_pretrained(path)`` as well as
``FramePolicy.from_pretrained(path)``. The question tokenizer is saved into the same
directory with ``tokenizer.save_pretrained(path)``.

Typical use::

    policy = FramePolicy(FramePolicyConfig(backbone_config={"vocab_size": len(tokenizer)}))
    feats = policy.encode_frames(video.frames)               # (T, P, Dv), cache per video
    ids = policy_prompt(policy.config, tokenizer, item)     # PromptIds (B.6.2 prompt)
    out = policy.select([feats], [ids], k=8, num_candidates=16, generator=gen)
    out.indices                                              # (1, 16, 8) sorted frame indices
    logprobs, entropies = policy.replay_logprobs([feats], [ids], out.order)  # with gradients
"""

from transformers import AutoConfig, AutoModel

from refocus.policy.configuration import (
    PAPER_PROMPT,
    QUESTION_FIRST_PROMPT,
    FramePolicyConfig,
    check_policy_keys,
)
from refocus.policy.modeling import FramePolicy, PolicyReplayOutput
from refocus.policy.processing import (
    BLIND_QUESTION,
    PromptIds,
    build_question_text,
    policy_prompt,
    pool_frame_tokens,
    preprocess_frames,
    tokenize_question,
)
from refocus.policy.sampling import SelectionOutput
from refocus.policy.state import RecurrentState

try:
    AutoConfig.register(FramePolicyConfig.model_type, FramePolicyConfig)
    AutoModel.register(FramePolicyConfig, FramePolicy)
except ValueError:  # already registered (module reloaded)
    pass

__all__ = [
    "BLIND_QUESTION",
    "PAPER_PROMPT",
    "QUESTION_FIRST_PROMPT",
    "FramePolicy",
    "FramePolicyConfig",
    "PolicyReplayOutput",
    "PromptIds",
    "RecurrentState",
    "SelectionOutput",
    "build_question_text",
    "check_policy_keys",
    "policy_prompt",
    "pool_frame_tokens",
    "preprocess_frames",
    "tokenize_question",
]
