"""Configuration of the frame-selection policy (paper §3.2, Appendix B.2, B.5).

One `transformers` config holds everything needed to rebuild the policy, including the
frozen vision encoder's config, so a saved checkpoint directory is self-contained. Defaults
are the paper's initialisation constants (Appendix B.2) on a "baby" architecture that runs on
a laptop CPU; the paper's scale is reached by overriding ``vision_config`` (a SigLIP tower at
384 px) and ``backbone_config`` (a pretrained Mamba2 LMM backbone).
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import PreTrainedConfig

from refocus.errors import ConfigError

# Encoders whose ``last_hidden_state`` is (frames, tokens, width): real checkpoints' towers,
# and LeViT, the conv-stem tower of the project's own small reference model.
VISION_MODEL_TYPES = ("siglip_vision_model", "clip_vision_model", "levit")

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
    """Merge a user-given (possibly partial) sub-config dict over the defaults.

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
    """transformers model type of the encoder: "siglip_vision_model", "clip_vision_model" or
    "levit" (whose config must also carry ``hidden_size``, its last stage's width)."""
    image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted from frames in [0, 1] (SigLIP's; CLIP uses 0.481, 0.458, 0.408)."""
    image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    """Per-channel std dividing frames in [0, 1] (SigLIP's; CLIP uses 0.269, 0.261, 0.276)."""
    tokens_per_frame: int | None = None
    """Average-pool each frame's encoder tokens down to this many (P) before the backbone;
    ``None`` keeps all. A departure from the paper for CPU runs: the prefix has T * P tokens
    (512 frames x 16 tokens = 8,192), and pooling to 4 makes it 2,048. Square token grids are
    pooled in 2-D, others (e.g. CLIP's CLS + grid) in 1-D."""
    projector_type: Literal["mlp", "linear"] = "mlp"
    """Projector from encoder width to backbone width: "mlp" (Linear-GELU-Linear, LLaVA style)
    or "linear"."""
    backbone_config: dict | None = None
    """Config values of the `transformers.Mamba2Config` backbone (merged over the defaults)."""
    head_dim: int = 64
    """Width d of keys and queries; scores are divided by sqrt(d) (Appendix B.2)."""
    num_reinit_layers: int = 2
    """Last backbone blocks re-initialised (fresh Mamba2 init) over a pretrained backbone (B.2)."""
    reinit_norm_weight: float = 0.1
    """RMSNorm weight (gamma) of the re-initialised blocks' residual-path norm (B.2: 0.1)."""
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

    def __post_init__(self, **kwargs):
        self.vision_config, vision_type = _merge(
            DEFAULT_VISION_CONFIG, self.vision_config, "vision_config"
        )
        if vision_type is not None:
            self.vision_model_type = vision_type
        self.backbone_config, backbone_type = _merge(
            DEFAULT_BACKBONE_CONFIG, self.backbone_config, "backbone_config"
        )
        if backbone_type not in (None, "mamba2"):
            raise ConfigError(
                f"backbone_config must describe a mamba2 model, got model_type={backbone_type!r}"
            )
        self.image_mean = [float(x) for x in self.image_mean]
        self.image_std = [float(x) for x in self.image_std]
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        if self.vision_model_type not in VISION_MODEL_TYPES:
            raise ConfigError(
                f"vision_model_type must be one of {VISION_MODEL_TYPES}, got {self.vision_model_type!r}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ConfigError("image_mean and image_std need 3 values each, and std must be > 0")
        if self.tokens_per_frame is not None and self.tokens_per_frame < 1:
            raise ConfigError(f"tokens_per_frame must be >= 1 or None, got {self.tokens_per_frame}")
        if self.projector_type not in ("mlp", "linear"):
            raise ConfigError(
                f"projector_type must be 'mlp' or 'linear', got {self.projector_type!r}"
            )
        if self.head_dim < 1:
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

    def make_vision_config(self) -> PreTrainedConfig:
        """The encoder's transformers config object."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.vision_model_type, **self.vision_config)

    def make_backbone_config(self) -> PreTrainedConfig:
        """The backbone's `Mamba2Config`."""
        from transformers import Mamba2Config

        return Mamba2Config(**self.backbone_config)
