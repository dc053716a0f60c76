"""Configuration of the frame-selection policy (paper §3.2, Appendix B.2, B.5).

One `transformers` config holds everything needed to rebuild the policy, including the
frozen vision encoder's config, so a saved checkpoint directory is self-contained. Defaults
are the paper's initialisation constants (Appendix B.2) on a "baby" architecture that runs on
a laptop CPU; the paper's scale is reached by overriding ``vision_config`` (a SigLIP tower at
384 px) and ``backbone_config`` (a pretrained Mamba2 LMM backbone).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from refocus.errors import ConfigError
from refocus.policy.vision import family, patch_multiple, tower_image_size

# How token_pool_stride pools (LLaVA's mm_spatial_pool_mode, read by the authors' get_2dPool).
TOKEN_POOL_MODES = ("average", "max", "bilinear")

# Appendix B.6.2's policy prompt. ``{frames}`` is where the frame tokens go (the paper's
# ``<image_1> ... <image_|v|>``), ``{question}`` the question and its "A. ..." option lines.
PAPER_PROMPT = (
    "<|system|>You are a helpful AI assistant.<|endoftext|>\n<|user|>\n{frames}\n{question}\n<|endoftext|>"
)
# The bare question after the frames (what this project's policies read before the prompt).
BARE_PROMPT = "{frames}{question}"
# The question before the frames as well (this project's option, not the paper's): the backbone
# reads each frame knowing what is asked, so a frame's key can say whether it matches.
QUESTION_FIRST_PROMPT = "{question}{frames}{question}"

# Keys of a training config's ``policy:`` section that say where the parts come from; they are
# not FramePolicyConfig fields (see refocus.policy.build).
BUILD_KEYS = (
    "vision_model", "backbone_model", "tokenizer", "vision_from_reference", "language_from_reference",
)

# A tiny SigLIP-compatible tower: 64 px frames, 16 px patches -> 4 x 4 = 16 tokens per frame.
DEFAULT_VISION_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "vision_use_head": False,
}

# A small Mamba2 backbone. `vocab_size` must equal the question tokenizer's size: pass
# `backbone_config={"vocab_size": len(tokenizer)}` (given keys are merged over these defaults).
DEFAULT_BACKBONE_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "state_size": 16,
    "expand": 2,
    "head_dim": 16,
    "num_heads": 8,
    "n_groups": 1,
    "conv_kernel": 4,
    # Block size of the chunked scan; it does not change the result (up to float error) or the
    # weights. transformers' torch scan pads every call to a multiple of it and builds
    # (chunk x chunk) blocks, so 64 instead of Mamba2's 256 makes the sampler ~2x and the
    # replay (a short chunk per candidate) ~10x faster on CPU.
    "chunk_size": 64,
    "vocab_size": 1024,
    "use_bias": False,
    "use_conv_bias": True,
    "residual_in_fp32": True,
}

# Keys of a `to_dict()` that describe the saved object rather than the architecture.
_BOOKKEEPING_KEYS = (
    "model_type",
    "transformers_version",
    "architectures",
    "_name_or_path",
    "dtype",
)


def _merge(
    defaults: dict[str, Any], given: dict[str, Any] | None, what: str
) -> tuple[dict, str | None]:
    """Merge a user-given (possibly partial) sub-config dict over the defaults (a copy).

    Returns the merged dict without bookkeeping keys, and the given ``model_type`` if any.
    """
    if given is None:
        return dict(defaults), None
    if hasattr(given, "to_dict"):  # a transformers config object
        given = given.to_dict()
    if not isinstance(given, dict):
        raise ConfigError(f"{what} must be a dict of config values, got {type(given).__name__}")
    model_type = given.get("model_type")
    merged = dict(defaults)
    merged.update({k: v for k, v in given.items() if k not in _BOOKKEEPING_KEYS})
    return merged, model_type


class FramePolicyConfig(PreTrainedConfig):
    r"""Configuration of :class:`refocus.policy.FramePolicy`.

    Architecture (paper §3.2): frozen vision encoder -> projector -> Mamba2 backbone over
    ``[frame tokens of frame 1, ..., frame T, question tokens]`` -> the backbone output at each
    frame's last token is the frame embedding (Appendix B.5) -> final RMSNorm -> linear
    key / query / value heads. Selection starts from a learned ``<start_of_frame>`` embedding
    and feeds back the chosen frame's value vector (so the value head outputs the backbone
    hidden size). Scores are ``logit_scale * (K q) / sqrt(head_dim)``.

    Sub-config dicts (``vision_config``, ``backbone_config``) are merged over the tiny defaults
    above, so ``backbone_config={"vocab_size": 500}`` changes only the vocabulary. A complete
    dict (e.g. ``reference.config.vision_config.to_dict()``) reproduces that tower exactly.
    """

    model_type = "refocus_frame_policy"

    vision_config: dict | None = None
    """Config values of the frozen frame encoder (a transformers vision model config)."""
    vision_model_type: str = "siglip_vision_model"
    """transformers model type of the encoder, one of ``refocus.policy.vision.VISION_MODEL_TYPES``
    (SigLIP, SigLIP2, CLIP, InternViT of InternVL3-hf, the Qwen2.5-VL tower, LeViT; LeViT's
    config must also carry ``hidden_size``, its last stage's width)."""
    vision_feature_layer: int = -1
    """Hidden state of the tower the policy reads, as transformers' ``vision_feature_layer``:
    0 = patch embeddings, i = output of layer i, negative from the end (-1: last layer; -2: drop
    the last layer, as the authors' SigLIP tower and LLaVA do). Later layers are not built."""
    vision_use_final_norm: bool = True
    """Pass the read hidden state through the tower's final norm (SigLIP ``post_layernorm``).
    The authors read SigLIP before it (their tower's ``hidden_states[-1]`` with the last layer
    deleted). Not applicable to Qwen2.5-VL, whose patch merger always runs."""
    vision_drop_cls: bool = True
    """Drop the CLS token of towers that have one (CLIP, InternViT), keeping patch tokens only
    (LLaVA's "patch" feature strategy; InternVL3 does the same)."""
    image_size: int | None = None
    """Side S of the square frames fed to the tower; training and selection decode frames at
    this size. None: the tower's own size (required for Qwen2.5-VL, whose tower takes any
    multiple of 28; Appendix B.1: 384 for SigLIP-so400m)."""
    image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted from frames in [0, 1] (SigLIP's; CLIP uses 0.481, 0.458, 0.408)."""
    image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel std dividing frames in [0, 1] (SigLIP's; CLIP uses 0.269, 0.261, 0.276)."""
    tokens_per_frame: int | None = None
    """Average-pool each frame's encoder tokens down to this many (P) before the backbone;
    ``None`` keeps all. A departure from the paper for CPU runs: the prefix has T * P tokens
    (512 frames x 16 tokens = 8,192), and pooling to 4 makes it 2,048. Square token grids are
    pooled in 2-D, others in 1-D. Exclusive with ``token_pool_stride``."""
    token_pool_stride: int | None = None
    """Pool s x s neighbouring patch tokens with stride s before the projector, as the
    authors' ``get_2dPool`` (torch ``avg_pool2d``: 27 x 27 -> 13 x 13 = 169 tokens per frame for
    SigLIP-so400m at 384 px, ~8.7e4 prefix tokens for 512 frames). None: no pooling."""
    token_pool_mode: str = "average"
    """How ``token_pool_stride`` pools, as ``get_2dPool`` reads the authors' (LLaVA's)
    ``mm_spatial_pool_mode``: "average" (``avg_pool2d``), "max" (``max_pool2d``) or "bilinear"
    (bilinear resize to ceil(side / s))."""
    projector_type: str = "mlp"
    """Projector from encoder width to backbone width: "mlp" (Linear-GELU-Linear, LLaVA style),
    "linear", or LLaVA's "mlpNx_gelu" (N Linear layers with GELU between; the authors'
    ``mm_projector_type``). See :mod:`refocus.policy.heads`."""
    backbone_config: dict | None = None
    """Config values of the `transformers.Mamba2Config` backbone (merged over the defaults)."""
    head_dim: int | None = None
    """Width d of keys and queries; scores are divided by sqrt(d). None: d = d_model, the
    paper's (B.2: scores divided by sqrt(d_model); B.4: each head one d_model -> d_model linear
    layer). A smaller d is this project's option for cheaper heads."""
    num_reinit_layers: int = 2
    """Last backbone blocks re-initialised (fresh Mamba2 init) over a pretrained backbone (B.2).
    Applied once, by ``refocus policy init`` / :func:`refocus.policy.build.init_policy`, never when
    a saved policy is loaded, warm-started or resumed."""
    reinit_norm_weight: float = 0.1
    """RMSNorm weight (gamma) of the re-initialised blocks' mixer norm (``mixer.norm``, the gated
    RMSNorm on the block's residual branch before ``out_proj``; B.2: 0.1, placed as in the
    authors' ``reinit_for_finetune``). On the block's pre-norm it would be cancelled by the
    mixer's own normalisation."""
    head_norm_weight: float = 1.0
    """RMSNorm weight of the norm after the last block, before the K/Q/V heads (B.2: 1.0)."""
    qk_init_gain: float = 1.0
    """Orthogonal-init gain of the query and key heads, which have no bias (B.2: 1.0)."""
    v_init_gain: float = 0.1
    """Orthogonal-init gain of the value head, whose bias starts at zero (B.2: 0.1)."""
    sof_init_std: float = 0.02
    """Std of the normal init of the <start_of_frame> embedding (B.2: 0.02)."""
    logit_scale_init: float = 1.0
    """Initial value of the learned logit scale s (B.2: 1.0)."""
    initializer_range: float = 0.02
    """Std of the normal init of the projector's linear layers."""
    question_blind: bool = False
    """Withhold the question from the policy (an ablation, not the paper's method): every item
    reads the same constant text (``refocus.policy.processing.BLIND_QUESTION``) in place of
    its question and options, so the policy can only learn which frames are salient in
    general. ``refocus demo --task query`` trains one beside the normal policy
    (``policy-blind/``) to measure how much reading the question is worth."""
    freeze_vision: bool = True
    """Keep the vision encoder frozen (no gradients, eval mode); the paper trains only the
    projector, backbone and heads."""
    logit_scale_fn: str = "identity"
    """How the learned scale s enters the scores: "identity" (Algorithm 2's s), "softplus" or
    "exp" of s (the authors' ``logit_scale_fn``, default softplus; ``refocus policy
    import-official`` sets it from their checkpoint). ``logit_scale_init`` is the value of the
    resulting multiplier."""
    attention_scaling: bool = True
    """Divide the scores by sqrt(d) (Algorithm 2's scaled dot product). The authors' code does
    so only when their ``attention_scaling`` is set (their default: false)."""
    start_of_frame_token_id: int | None = None
    """None: ``<start_of_frame>`` is a parameter of its own (``start_embedding``). An id: it is
    that row of the backbone's embedding table (the authors' ``start_of_frame_token_id``), so
    it is trained and saved with the embeddings."""
    prompt_template: str = PAPER_PROMPT
    """The policy's prompt (Appendix B.6.2), tokenised by the policy's own tokenizer:
    ``{frames}`` marks the frame tokens, ``{question}`` the question with its option lines
    (after the frames, and optionally before them too). ``"{frames}{question}"`` is the bare
    question after the frames; ``"{question}{frames}{question}"`` (``QUESTION_FIRST_PROMPT``)
    also puts it before them, so each frame's key can depend on the question."""

    def __post_init__(self, **kwargs):
        given = self.vision_config
        if hasattr(given, "to_dict"):  # a transformers config object
            given = given.to_dict()
        if isinstance(given, dict) and given.get("model_type"):
            self.vision_model_type = given["model_type"]
        # the tiny defaults describe a SigLIP tower; another family's dict stands alone
        defaults = DEFAULT_VISION_CONFIG if self.vision_model_type == "siglip_vision_model" else {}
        self.vision_config, _ = _merge(defaults, given, "vision_config")
        self.backbone_config, backbone_type = _merge(
            DEFAULT_BACKBONE_CONFIG, self.backbone_config, "backbone_config"
        )
        if backbone_type not in (None, "mamba2"):
            raise ConfigError(
                f"backbone_config must describe a mamba2 model, got model_type={backbone_type!r}"
            )
        fam = family(self.vision_model_type)
        if fam.drop_head is not None:  # the pooling head is never read
            self.vision_config[fam.drop_head] = False
        if self.image_size is None:
            self.image_size = tower_image_size(self.vision_model_type, self.vision_config)
        self.image_mean = [float(x) for x in self.image_mean]
        self.image_std = [float(x) for x in self.image_std]
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        family(self.vision_model_type)
        if self.image_size is None:
            raise ConfigError(f"a {self.vision_model_type} tower takes any frame size: set image_size")
        multiple = patch_multiple(self.vision_model_type, self.vision_config)
        if self.image_size < 1 or self.image_size % multiple:
            raise ConfigError(f"image_size={self.image_size} must be a positive multiple of {multiple}")
        if "{frames}" not in self.prompt_template or "{question}" not in self.prompt_template:
            raise ConfigError("prompt_template needs both {frames} and {question}")
        if "{question}" not in self.prompt_template.split("{frames}", 1)[1]:
            # the selection starts from the state after the prompt, which must have read the question
            raise ConfigError("prompt_template: {question} must come after {frames} (it may also come before)")
        if self.token_pool_stride is not None and (self.token_pool_stride < 1 or self.tokens_per_frame):
            raise ConfigError("token_pool_stride must be >= 1, and not set together with tokens_per_frame")
        if self.token_pool_mode not in TOKEN_POOL_MODES:
            raise ConfigError(
                f"token_pool_mode must be one of {TOKEN_POOL_MODES}, got {self.token_pool_mode!r}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ConfigError("image_mean and image_std need 3 values each, and std must be > 0")
        if self.tokens_per_frame is not None and self.tokens_per_frame < 1:
            raise ConfigError(f"tokens_per_frame must be >= 1 or None, got {self.tokens_per_frame}")
        from refocus.policy.heads import check_logit_scale_fn, projector_depth

        projector_depth(self.projector_type)
        check_logit_scale_fn(self.logit_scale_fn)
        vocab = int(self.backbone_config["vocab_size"])
        if self.start_of_frame_token_id is not None and not 0 <= self.start_of_frame_token_id < vocab:
            raise ConfigError(
                f"start_of_frame_token_id={self.start_of_frame_token_id} is outside the backbone "
                f"vocabulary (0..{vocab - 1})"
            )
        if self.head_dim is not None and self.head_dim < 1:
            raise ConfigError(f"head_dim must be >= 1, got {self.head_dim}")
        layers = int(self.backbone_config["num_hidden_layers"])
        if not 0 <= self.num_reinit_layers <= layers:
            raise ConfigError(
                f"num_reinit_layers={self.num_reinit_layers} must lie in [0, {layers}] "
                "(the backbone's num_hidden_layers)"
            )
        hidden, expand = self.backbone_config["hidden_size"], self.backbone_config["expand"]
        heads, head = self.backbone_config["num_heads"], self.backbone_config["head_dim"]
        if hidden * expand != heads * head:
            raise ConfigError(
                f"backbone_config: hidden_size * expand ({hidden * expand}) must equal "
                f"num_heads * head_dim ({heads * head})"
            )

    @property
    def backbone_hidden_size(self) -> int:
        """Backbone width D (also the width of the value vectors fed back as inputs)."""
        return int(self.backbone_config["hidden_size"])

    @property
    def qk_dim(self) -> int:
        """Width d of keys and queries (``head_dim``, or d_model when it is None)."""
        return self.backbone_hidden_size if self.head_dim is None else int(self.head_dim)

    def make_vision_config(self) -> PreTrainedConfig:
        """The encoder's transformers config object."""
        from refocus.policy.vision import make_config

        return make_config(self.vision_model_type, self.vision_config)

    def make_backbone_config(self) -> PreTrainedConfig:
        """The backbone's `Mamba2Config`."""
        from transformers import Mamba2Config

        return Mamba2Config(**self.backbone_config)


def _unknown(key: str, known: set[str], where: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {where}{close[0]}?)" if close else ""
    return ConfigError(f"unknown key {where}{key}{hint}")


def policy_field_names() -> set[str]:
    """The fields FramePolicyConfig itself declares (not transformers' generic config fields)."""
    names: set[str] = set()
    for cls in FramePolicyConfig.__mro__:
        if cls is PreTrainedConfig:
            break
        names |= set(getattr(cls, "__annotations__", {}))
    return names - {"model_type"}


def check_policy_keys(values: dict[str, Any], where: str = "policy.") -> None:
    """Raise a ConfigError naming the first unknown key of a ``policy:`` section, at any level.

    Top-level keys must be FramePolicyConfig fields or BUILD_KEYS; ``backbone_config`` keys
    must be `transformers.Mamba2Config` fields; ``vision_config`` keys must be fields of the
    config class of ``vision_model_type``.
    """
    from transformers import Mamba2Config

    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.')} must be a mapping of policy fields")
    known = policy_field_names() | set(BUILD_KEYS)
    for key in values:
        if key not in known:
            raise _unknown(key, known, where)
    nested = {"backbone_config": lambda: set(Mamba2Config().to_dict())}
    vision_type = values.get("vision_model_type", FramePolicyConfig.vision_model_type)
    family(vision_type)  # a bad type is named before its fields are looked up

    def vision_fields() -> set[str]:
        from refocus.policy.vision import make_config

        return set(make_config(vision_type, {}).to_dict())

    nested["vision_config"] = vision_fields
    for name, fields_of in nested.items():
        sub = values.get(name)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"{where}{name} must be a mapping")
        known_sub = fields_of() | {"model_type"}
        for key in sub:
            if key not in known_sub:
                raise _unknown(key, known_sub, f"{where}{name}.")


MISSING = "???"
"""A config value that must be filled in (OmegaConf's convention): ``"??? what to put here"``."""


def missing_values(values: Any, prefix: str = "") -> list[str]:
    """One line per value still marked :data:`MISSING`, at any depth: ``"policy.vision_model: hint"``."""
    lines: list[str] = []
    if isinstance(values, dict):
        for key, value in values.items():
            lines += missing_values(value, f"{prefix}{key}.")
    elif isinstance(values, str) and values.startswith(MISSING):
        hint = values[len(MISSING):].strip()
        lines.append(f"{prefix.rstrip('.')} is not set" + (f" ({hint})" if hint else ""))
    return lines


def raise_if_missing(values: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> None:
    """ConfigError with one ``error:`` line per missing value (fields under ``skip`` are ignored)."""
    lines = [line for line in missing_values(values) if not line.startswith(skip)]
    if lines:
        raise ConfigError("\nerror: ".join(f"{where}: {line}" for line in lines))
