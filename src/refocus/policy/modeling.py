"""The frame-selection policy as a `transformers` model (paper §3.2, Appendix B.2, B.4, B.5).

Data flow (shape letters: B questions, G candidates, T frames, P tokens per frame, L question
tokens, D backbone width, d key/query width, K frames to select)::

    frames (T, H, W, 3) uint8 --encode_frames (frozen, cached by callers)--> (T, P, Dv)
    --projector--> (T*P, D) ++ question embeddings (L, D) = prefix (S, D)
    --Mamba2 backbone + final RMSNorm--> frame embedding = output at each frame's last token
    --key / value heads--> keys (T, d), values (T, D)
    selection state after the prefix --one token per step: <start_of_frame>, then the value
    vector of the frame chosen last--> query (d) --scale * K q / sqrt(d)--> logits over frames

The heavy lifting of sampling and replay lives in :mod:`refocus.policy.sampling`; this module
holds the parameters, their initialisation, and the backbone driver that carries the Mamba2
recurrent state explicitly (:class:`RecurrentState`), so a prefix can be run once and
continued by many candidates, one token at a time or as a chunk, with gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel, Mamba2Model, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from refocus.errors import ConfigError
from refocus.policy.configuration import FramePolicyConfig
from refocus.policy.processing import pool_frame_tokens, preprocess_frames
from refocus.policy.sampling import replay_logprobs, select, select_recompute
from refocus.policy.state import RecurrentState, StateCache

FeaturesLike = torch.Tensor | Sequence[torch.Tensor]
IdsLike = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[int]]


@dataclass
class PolicyReplayOutput(ModelOutput):
    """Output of :meth:`FramePolicy.forward` (the replay used for training)."""

    logprobs: torch.Tensor | None = None
    """(B, G, K) log-probability of each chosen frame at its step."""
    entropies: torch.Tensor | None = None
    """(B, G, K) entropy of each step's distribution over the still-available frames."""


class FramePolicy(PreTrainedModel):
    """Mamba2 frame-selection policy: picks K frames of a video for a question, autoregressively.

    See the module docstring for the data flow and :class:`FramePolicyConfig` for the fields.
    The vision tower is built from the config and frozen; copy trained weights into it with
    :meth:`load_vision_tower`. Start from a pretrained Mamba2 backbone with
    :meth:`init_from_pretrained_backbone` (Appendix B.2 re-initialisation).
    """

    config_class = FramePolicyConfig
    config: FramePolicyConfig
    base_model_prefix = "policy"
    main_input_name = "features"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Mamba2Block"]

    def __init__(self, config: FramePolicyConfig) -> None:
        super().__init__(config)
        vision_config = config.make_vision_config()
        self.vision_tower = AutoModel.from_config(vision_config)
        vision_width, width = int(vision_config.hidden_size), config.backbone_hidden_size
        if config.projector_type == "linear":
            self.projector = nn.Linear(vision_width, width)
        else:
            self.projector = nn.Sequential(
                nn.Linear(vision_width, width), nn.GELU(), nn.Linear(width, width)
            )
        self.backbone = Mamba2Model(config.make_backbone_config())
        self.start_embedding = nn.Parameter(torch.empty(width))
        self.key_head = nn.Linear(width, config.head_dim, bias=False)
        self.query_head = nn.Linear(width, config.head_dim, bias=False)
        self.value_head = nn.Linear(width, width, bias=True)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.prefix_segment_frames: int | None = None
        """Run the prefix in segments of this many frames, checkpointed along the sequence
        under gradient checkpointing (:mod:`refocus.policy.prefix`); a runtime memory knob
        set by the trainer, not part of the saved config. None: one pass."""
        self._freeze_vision()
        self.post_init()

    def _freeze_vision(self) -> None:
        if self.config.freeze_vision:
            self.vision_tower.requires_grad_(False)
            self.vision_tower.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> FramePolicy:
        """transformers' loader, then the vision tower frozen again (loading replaces parameters)."""
        model = super().from_pretrained(*args, **kwargs)
        model._freeze_vision()
        return model

    # ------------------------------------------------------------------ initialisation (B.2)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        cfg = self.config
        if module is self.key_head or module is self.query_head:
            init.orthogonal_(module.weight, gain=cfg.qk_init_gain)
        elif module is self.value_head:
            init.orthogonal_(module.weight, gain=cfg.v_init_gain)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):  # the projector
            init.normal_(module.weight, mean=0.0, std=cfg.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif module is self:  # runs last, after the backbone's own init
            init.normal_(self.start_embedding, mean=0.0, std=cfg.sof_init_std)
            init.constant_(self.logit_scale, cfg.logit_scale_init)
            for block in self._reinit_blocks():
                init.constant_(block.norm.weight, cfg.reinit_norm_weight)
            init.constant_(self.backbone.norm_f.weight, cfg.head_norm_weight)

    def _reinit_blocks(self) -> list[nn.Module]:
        n = self.config.num_reinit_layers
        return list(self.backbone.layers[len(self.backbone.layers) - n :]) if n else []

    @torch.no_grad()
    def reinitialise_last_layers(self) -> None:
        """Fresh Mamba2 init of the last ``num_reinit_layers`` blocks (Appendix B.2).

        The blocks get the same init as a newly built transformers ``Mamba2Model``; the
        residual-path RMSNorm of each (the block's pre-mixer norm, which reads the residual
        stream) is then set to ``reinit_norm_weight`` (0.1), and the final norm before the
        heads to ``head_norm_weight`` (1.0).
        """
        for block in self._reinit_blocks():
            modules = list(block.modules())
            for module in modules:
                module.__dict__.pop("_is_hf_initialized", None)
                for tensor in module.parameters(recurse=False):
                    if hasattr(tensor, "_is_hf_initialized"):
                        del tensor._is_hf_initialized
            for module in reversed(modules):  # children before parents, as transformers does
                self.backbone._init_weights(module)
            block.norm.weight.fill_(self.config.reinit_norm_weight)
        self.backbone.norm_f.weight.fill_(self.config.head_norm_weight)

    def init_from_pretrained_backbone(
        self, backbone: nn.Module | Mapping[str, torch.Tensor] | str | None = None
    ) -> None:
        """Start from a pretrained Mamba2 backbone, then re-initialise its last layers (B.2).

        ``backbone``: a ``Mamba2Model`` / ``Mamba2ForCausalLM`` module, its state dict, or a
        checkpoint directory; ``None`` keeps the current backbone weights. Its config must
        match ``config.backbone_config`` (build the policy config from the pretrained one).
        """
        if isinstance(backbone, str):
            backbone = Mamba2Model.from_pretrained(backbone)
        if backbone is not None:
            state = backbone.state_dict() if isinstance(backbone, nn.Module) else dict(backbone)
            if any(k.startswith("backbone.") for k in state):  # a Mamba2ForCausalLM
                state = {
                    k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")
                }
            self.backbone.load_state_dict(state, strict=True)
        self.reinitialise_last_layers()

    def load_vision_tower(self, source: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Copy the weights of an existing vision tower (e.g. the reference model's) into the policy.

        The tower must have the architecture described by ``config.vision_config`` (build the
        policy config from the same vision config). A ``vision_model.`` key prefix present on
        one side only is adapted.
        """
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        own = self.vision_tower.state_dict()
        prefix = "vision_model."
        if not set(state) & set(own):
            if all(k.startswith(prefix) for k in own):
                state = {prefix + k: v for k, v in state.items()}
            elif all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
        self.vision_tower.load_state_dict(state, strict=True)

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Trainable parameters split for the two learning rates of the trainer.

        ``"reinitialised"`` (higher LR, 1e-4 in the paper): projector, K/Q/V heads,
        ``<start_of_frame>``, logit scale, the re-initialised backbone blocks and the final
        norm. ``"pretrained"`` (1e-5): the rest of the backbone (embeddings, earlier blocks),
        and the vision tower only if it is not frozen. Frozen parameters are left out.
        """
        num_layers = len(self.backbone.layers)
        fresh = ("projector.", "key_head.", "query_head.", "value_head.", "backbone.norm_f.")
        fresh += tuple(
            f"backbone.layers.{i}."
            for i in range(num_layers - self.config.num_reinit_layers, num_layers)
        )
        groups: dict[str, dict[str, nn.Parameter]] = {"pretrained": {}, "reinitialised": {}}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_fresh = name.startswith(fresh) or name in ("start_embedding", "logit_scale")
            groups["reinitialised" if is_fresh else "pretrained"][name] = param
        return groups

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=None, **kwargs
    ) -> None:
        # The Mamba2 state leaves each checkpointed block as a side output (RecurrentState);
        # reentrant checkpointing would run blocks under no_grad and silently cut the gradient
        # from the candidates' steps back through the prefix state.
        keywords = getattr(gradient_checkpointing_func, "keywords", {}) or {}
        if enable and keywords.get("use_reentrant", False):
            raise ConfigError(
                "FramePolicy needs non-reentrant checkpointing: pass {'use_reentrant': False}"
            )
        if gradient_checkpointing_func is None:
            gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, **kwargs)

    def train(self, mode: bool = True) -> FramePolicy:
        super().train(mode)
        if self.config.freeze_vision:  # a frozen encoder keeps eval behaviour (dropout off)
            self.vision_tower.eval()
        return self

    # ------------------------------------------------------------------ building blocks

    def encode_frames(
        self, frames: np.ndarray | torch.Tensor, batch_size: int = 64
    ) -> torch.Tensor:
        """Frozen encoder features of one video: uint8 (T, H, W, 3) -> (T, P, Dv).

        Frames are resized to the encoder's image size and normalised; tokens are pooled to
        ``tokens_per_frame`` if set. Callers cache the result per video: everything
        downstream (sampling, replay) takes these features.
        """
        cfg = self.config
        pixels = preprocess_frames(
            frames, int(cfg.vision_config["image_size"]), cfg.image_mean, cfg.image_std
        )
        tower = self.vision_tower
        dtype = next(tower.parameters()).dtype
        outputs = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.freeze_vision):
            for chunk in pixels.split(batch_size):
                tokens = tower(
                    pixel_values=chunk.to(self.device, dtype)
                ).last_hidden_state  # (t, P, Dv)
                outputs.append(pool_frame_tokens(tokens, cfg.tokens_per_frame))
        return torch.cat(outputs, dim=0)

    def embed_prefix(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """Backbone inputs of the prefix: (N, T, P, Dv) features, (N, L) ids -> (N, T*P + L, D)."""
        n, t, p, _ = features.shape
        dtype = self.projector_dtype
        frames = self.projector(features.to(self.device, dtype)).reshape(n, t * p, -1)
        text = self.backbone.embeddings(question_ids.to(self.device))
        return torch.cat([frames, text.to(frames.dtype)], dim=1)

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def run_backbone(
        self, inputs_embeds: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, RecurrentState]:
        """Backbone over (N, S, D) inputs continuing from ``state`` (None: from scratch).

        Returns the normed outputs (N, S, D) (the final RMSNorm is the norm before the heads)
        and the state after the last token. Gradient checkpointing, when enabled with
        transformers' ``gradient_checkpointing_enable()``, applies per block.
        """
        backbone = self.backbone
        cache = StateCache(len(backbone.layers), backbone.config.conv_kernel, state)
        hidden = inputs_embeds
        for block in backbone.layers:
            # positional: transformers' checkpointing wrapper drops a `cache=` keyword
            hidden = block(hidden, cache)
        # The residual stream is float32 (residual_in_fp32); in a model cast to bf16 the heads
        # need their own dtype back (under autocast this cast changes nothing).
        return backbone.norm_f(hidden).to(self.key_head.weight.dtype), cache.result()

    def frame_logits(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product scores, float32: keys (B, T, d), queries (B, ..., d) -> (B, ..., T).

        ``logit_scale * (K q) / sqrt(d)`` (Algorithm 2); computed in float32 outside autocast
        so log-softmax and sampling stay exact under bf16.
        """
        with torch.autocast(device_type=keys.device.type, enabled=False):
            b, d = keys.shape[0], keys.shape[-1]
            q = queries.float().reshape(b, -1, d)
            scores = torch.bmm(q, keys.float().transpose(1, 2))  # (B, *, T)
            scores = scores * (self.logit_scale.float() / math.sqrt(d))
            return scores.reshape(*queries.shape[:-1], keys.shape[1])

    # ------------------------------------------------------------------ public API

    # Sampling and replay live in refocus.policy.sampling as functions of the policy; bound
    # here as methods so that ``policy.select(...)`` reads like the rest of the model's API.
    select = select
    select_recompute = select_recompute
    replay_logprobs = replay_logprobs

    def forward(
        self,
        features: FeaturesLike,
        question_ids: IdsLike,
        order: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> PolicyReplayOutput:
        """Training forward pass: the replay of :meth:`replay_logprobs` as a model output."""
        logprobs, entropies = self.replay_logprobs(
            features, question_ids, order, frame_mask, temperature
        )
        return PolicyReplayOutput(logprobs=logprobs, entropies=entropies)
