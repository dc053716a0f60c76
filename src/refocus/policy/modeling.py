"""The frame-selection policy as a `transformers` model (paper §3.2, Appendix B.2, B.4, B.5).

Data flow (shape letters: B questions, G candidates, T frames, P tokens per frame, L question
tokens, D backbone width, d key/query width, K frames to select)::

    frames (T, H, W, 3) uint8 --encode_frames (frozen, cached by callers)--> (T, P, Dv)
    --projector--> (T*P, D); prompt text before the frames (L0, D) ++ frames ++ question
    (L, D) = prefix (S, D) (Appendix B.6.2's prompt, ``FramePolicyConfig.prompt_template``)
    --Mamba2 backbone + final RMSNorm--> frame embedding = output at each frame's last token
    --key / value heads--> keys (T, d), values (T, D)
    selection state after the prefix --one token per step: <start_of_frame>, then the value
    vector of the frame chosen last--> query (d) --scale * K q / sqrt(d)--> logits over frames
    (d = d_model by default, B.2 / B.4)

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
from transformers import Mamba2Model, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from refocus.errors import ConfigError
from refocus.policy.configuration import FramePolicyConfig
from refocus.policy.heads import apply_logit_scale, build_projector, inverse_logit_scale
from refocus.policy.processing import PromptIds, pool_frame_tokens, preprocess_frames
from refocus.policy.sampling import replay_logprobs, select, select_recompute
from refocus.policy.state import RecurrentState, StateCache
from refocus.policy.vision import build_tower, output_width, run_tower

FeaturesLike = torch.Tensor | Sequence[torch.Tensor]
IdsLike = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[int]] | Sequence[PromptIds]


@dataclass
class PolicyReplayOutput(ModelOutput):
    """Output of :meth:`FramePolicy.forward` (the replay used for training)."""

    logprobs: torch.Tensor | None = None
    """(B, G, K) log-probability of each chosen frame at its step."""
    entropies: torch.Tensor | None = None
    """(B, G, K) entropy of each step's distribution over the still-available frames."""


def _run_block(block, hidden: torch.Tensor, conv: torch.Tensor | None, ssm: torch.Tensor | None,
               repeats: int = 1):
    """One Mamba2 block over (N, S, D) from its layer's state (each entry copied ``repeats``
    times first); (output, conv state, ssm state)."""
    if conv is not None and repeats > 1:
        conv, ssm = conv.repeat_interleave(repeats, dim=0), ssm.repeat_interleave(repeats, dim=0)
    layer, count = block.layer_idx, block.layer_idx + 1
    given = None if conv is None else RecurrentState([None] * layer + [conv], [None] * layer + [ssm])
    cache = StateCache(count, block.mixer.conv_kernel_size, given)
    out = block(hidden, cache)  # positional: transformers' wrapper drops a `cache=` keyword
    return out, cache.conv_out[layer], cache.ssm_out[layer]


def _scalar_logit_scale(path) -> torch.Tensor | None:
    """The 0-dim ``logit_scale`` of an older local checkpoint, else None."""
    import os

    file = os.path.join(os.fspath(path), "model.safetensors") if isinstance(path, str | os.PathLike) else None
    if file is None or not os.path.isfile(file):
        return None
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        if "logit_scale" in f.keys():
            tensor = f.get_tensor("logit_scale")
            return tensor if tensor.dim() == 0 else None
    return None


def _common_prefix(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """The prefix p with p + key in ``state`` for every key of ``own`` (shortest first), or None."""
    anchor = max(own, key=len)  # the most specific key: fewest accidental matches
    candidates = sorted({k[: len(k) - len(anchor)] for k in state if k.endswith(anchor)}, key=len)
    for prefix in candidates:
        if prefix and not prefix.endswith("."):
            continue
        if all(prefix + k in state for k in own):
            return prefix
    return None


class FramePolicy(PreTrainedModel):
    """Mamba2 frame-selection policy: picks K frames of a video for a question, autoregressively.

    See the module docstring for the data flow and :class:`FramePolicyConfig` for the fields.
    The vision tower is built from the config and frozen; copy trained weights into it with
    :meth:`load_vision_tower`. Start from a pretrained Mamba2 backbone with
    :meth:`init_from_pretrained_backbone` (Appendix B.2 re-initialisation); ``refocus policy
    init`` (:mod:`refocus.policy.build`) does both from checkpoint directories.
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
        self.vision_tower = build_tower(
            config.vision_model_type, config.vision_config,
            config.vision_feature_layer, config.vision_use_final_norm,
        )
        vision_width = output_width(config.vision_model_type, vision_config)
        width = config.backbone_hidden_size
        self.projector = build_projector(config.projector_type, vision_width, width)
        self.backbone = Mamba2Model(config.make_backbone_config())
        if config.start_of_frame_token_id is None:  # else: a row of the embedding table
            self.start_embedding = nn.Parameter(torch.empty(width))
        self.key_head = nn.Linear(width, config.qk_dim, bias=False)  # B.4: one linear layer each
        self.query_head = nn.Linear(width, config.qk_dim, bias=False)
        self.value_head = nn.Linear(width, width, bias=True)
        # shape (1,), not (): DeepSpeed broadcasts parameters as byte views at start-up,
        # which a 0-dim tensor cannot give (checkpoints with the old () shape still load)
        self.logit_scale = nn.Parameter(torch.empty(1))
        self._block_checkpoint = None  # set by activation_checkpointing_enable()
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
        old_scale = _scalar_logit_scale(args[0]) if args else None
        if old_scale is not None:  # a checkpoint from before logit_scale had shape (1,)
            kwargs["ignore_mismatched_sizes"] = True
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if old_scale is not None:
            with torch.no_grad():
                model.logit_scale.copy_(old_scale.reshape(1))
        model._freeze_vision()
        return loaded

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
            if cfg.start_of_frame_token_id is None:
                init.normal_(self.start_embedding, mean=0.0, std=cfg.sof_init_std)
            elif not getattr(self.backbone.embeddings.weight, "_is_hf_initialized", False):
                # as the authors' reinit_for_finetune: the <start_of_frame> row, N(0, 0.02)
                self.backbone.embeddings.weight[cfg.start_of_frame_token_id].normal_(
                    0.0, cfg.sof_init_std
                )
            init.constant_(
                self.logit_scale, inverse_logit_scale(cfg.logit_scale_init, cfg.logit_scale_fn)
            )
            for block in self._reinit_blocks():
                init.constant_(block.mixer.norm.weight, cfg.reinit_norm_weight)
            init.constant_(self.backbone.norm_f.weight, cfg.head_norm_weight)

    def _reinit_blocks(self) -> list[nn.Module]:
        n = self.config.num_reinit_layers
        return list(self.backbone.layers[len(self.backbone.layers) - n :]) if n else []

    @torch.no_grad()
    def reinitialise_last_layers(self) -> None:
        """Fresh Mamba2 init of the last ``num_reinit_layers`` blocks (Appendix B.2).

        The blocks get the same init as a newly built transformers ``Mamba2Model``; the gated
        RMSNorm on each block's residual branch (``mixer.norm``, before ``out_proj``, where the
        authors' ``reinit_for_finetune`` puts it) is then set to ``reinit_norm_weight`` (0.1),
        so the fresh blocks add a small update to the residual stream, and the final norm
        before the heads to ``head_norm_weight`` (1.0). The blocks' pre-norms keep the Mamba2
        init (1.0). Call it once, when starting from a pretrained language model.
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
            block.mixer.norm.weight.fill_(self.config.reinit_norm_weight)
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
        """Copy the weights of an existing vision tower into the policy's (frozen) tower.

        ``source``: a tower module (e.g. the reference model's) or a state dict, possibly of a
        whole checkpoint: every key of the policy's tower must appear in it under one common
        prefix (``""``, ``"vision_model."``, ``"model.vision_tower."``, ``"visual."``, ...), found
        from the keys themselves. Extra keys (layers after ``vision_feature_layer``, an unused
        final norm or pooling head, the rest of a VLM) are ignored.
        """
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        own = self.vision_tower.state_dict()
        prefix = _common_prefix(own, state)
        if prefix is None:
            sample = sorted(own)[:3]
            raise ConfigError(
                "the source has no vision tower matching the policy's vision_config "
                f"(no common prefix before its keys, e.g. {sample})"
            )
        mismatched = [k for k in own if tuple(state[prefix + k].shape) != tuple(own[k].shape)]
        if mismatched:
            k = mismatched[0]
            raise ConfigError(
                f"vision tower weight {k}: source shape {tuple(state[prefix + k].shape)}, "
                f"policy {tuple(own[k].shape)} (build the policy config from the source's vision config)"
            )
        self.vision_tower.load_state_dict({k: state[prefix + k] for k in own}, strict=True)

    def no_decay_parameter_names(self) -> set[str]:
        """Trainable parameters kept out of weight decay: the logit scale (the authors mark it
        ``_no_weight_decay``), every norm weight/bias, every bias, and Mamba2's ``A_log`` / ``D``
        (which mamba_ssm marks ``_no_weight_decay``). As transformers' Trainer, decay applies to
        the remaining matrices and embeddings."""
        names = {"logit_scale"}
        for module_name, module in self.named_modules():
            is_norm = "norm" in type(module).__name__.lower()
            for name, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if is_norm or name.endswith("bias") or name in ("A_log", "D"):
                    names.add(full)
        return names

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
        # Checkpointed here, per block, in run_backbone, with the recurrent state passed in
        # and out as tensors; transformers' own per-layer wrapper would keep the cache object
        # among the checkpoint's inputs, and with the state it records that is a reference
        # cycle through the autograd graph that Python's gc cannot free (under the prefix's
        # sequence checkpointing it leaked every segment's recomputed tensors).
        self._block_checkpoint = gradient_checkpointing_func if enable else None

    @property
    def is_activation_checkpointing(self) -> bool:
        return getattr(self, "_block_checkpoint", None) is not None

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

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

        Frames are resized to ``config.image_size`` and normalised; the tower is read at
        ``vision_feature_layer``; tokens are pooled by ``token_pool_stride`` or to
        ``tokens_per_frame`` if set. Callers cache the result per video: everything
        downstream (sampling, replay) takes these features.
        """
        cfg = self.config
        pixels = preprocess_frames(frames, int(cfg.image_size), cfg.image_mean, cfg.image_std)
        tower = self.vision_tower
        dtype = next(tower.parameters()).dtype
        if any(b.is_floating_point() and b.dtype != dtype for b in tower.buffers()):
            # DeepSpeed's bf16 casts parameters only: BatchNorm statistics (LeViT) follow here
            tower.to(dtype)
        outputs = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.freeze_vision):
            for chunk in pixels.split(batch_size):
                tokens = run_tower(
                    tower, cfg.vision_model_type, chunk.to(self.device, dtype),
                    cfg.vision_use_final_norm, cfg.vision_drop_cls,
                )  # (t, P, Dv)
                outputs.append(pool_frame_tokens(
                    tokens, cfg.tokens_per_frame, cfg.token_pool_stride, cfg.token_pool_mode
                ))
        return torch.cat(outputs, dim=0)

    def embed_prefix(
        self, features: torch.Tensor, question_ids: torch.Tensor, before_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Backbone inputs of the prefix: (N, T, P, Dv) features, (N, L) ids after the frames and
        optional (N, L0) ids before them -> (N, L0 + T*P + L, D)."""
        n, t, p, _ = features.shape
        dtype = self.projector_dtype
        frames = self.projector(features.to(self.device, dtype)).reshape(n, t * p, -1)
        parts = [frames, self.backbone.embeddings(question_ids.to(self.device)).to(frames.dtype)]
        if before_ids is not None and before_ids.shape[1] > 0:
            parts.insert(0, self.backbone.embeddings(before_ids.to(self.device)).to(frames.dtype))
        return torch.cat(parts, dim=1)

    @property
    def start_vector(self) -> torch.Tensor:
        """The ``<start_of_frame>`` input (D,): its own parameter, or the embedding-table row
        ``config.start_of_frame_token_id`` (differentiable either way)."""
        if self.config.start_of_frame_token_id is None:
            return self.start_embedding
        return self.backbone.embeddings.weight[self.config.start_of_frame_token_id]

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def run_backbone(
        self, inputs_embeds: torch.Tensor, state: RecurrentState | None = None, repeats: int = 1
    ) -> tuple[torch.Tensor, RecurrentState]:
        """Backbone over (N, S, D) inputs continuing from ``state`` (None: from scratch).

        Returns the normed outputs (N, S, D) (the final RMSNorm is the norm before the heads)
        and the state after the last token. ``repeats``: ``state`` holds N / repeats
        sequences, each continued by ``repeats`` consecutive inputs (the candidates of one
        prefix); each layer's state is copied inside that layer's block, so under
        checkpointing only one layer's copies exist at a time. Activation checkpointing, when
        enabled with ``activation_checkpointing_enable()``, applies per block.
        """
        backbone = self.backbone
        checkpointed = self.is_activation_checkpointing and self.training and torch.is_grad_enabled()
        hidden, conv, ssm = inputs_embeds, [], []
        for i, block in enumerate(backbone.layers):
            args = (block, hidden, None if state is None else state.conv[i],
                    None if state is None else state.ssm[i], repeats)
            hidden, c, h = self._block_checkpoint(_run_block, *args) if checkpointed else _run_block(*args)
            conv.append(c)
            ssm.append(h)
        # The residual stream is float32 (residual_in_fp32); in a model cast to bf16 the heads
        # need their own dtype back (under autocast this cast changes nothing).
        return backbone.norm_f(hidden).to(self.key_head.weight.dtype), RecurrentState(conv, ssm)

    def frame_logits(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product scores, float32: keys (B, T, d), queries (B, ..., d) -> (B, ..., T).

        ``fn(logit_scale) * (K q) / sqrt(d)`` (Algorithm 2; ``fn`` is ``config.logit_scale_fn``,
        and the division only with ``config.attention_scaling``); computed in float32 outside
        autocast so log-softmax and sampling stay exact under bf16.
        """
        cfg = self.config
        with torch.autocast(device_type=keys.device.type, enabled=False):
            b, d = keys.shape[0], keys.shape[-1]
            q = queries.float().reshape(b, -1, d)
            scores = torch.bmm(q, keys.float().transpose(1, 2))  # (B, *, T)
            scale = apply_logit_scale(self.logit_scale.float(), cfg.logit_scale_fn)
            if cfg.attention_scaling:
                scale = scale / math.sqrt(d)
            scores = scores * scale
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
