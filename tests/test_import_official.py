"""`refocus policy import-official`: the authors' released layout -> a refocus policy.

The checkpoint is written here in the layout of the authors' public code (github
interlive-team/ReFoCUS): ``RefocusForFrameSelection`` = mamba_ssm's ``MambaLMHeadModel``
(``backbone.embedding``, ``backbone.layers.N.{norm,mixer.*}``, ``backbone.norm_f``, tied
``lm_head``) + LLaVA's ``mm_model`` (SigLIP tower with its last encoder layer deleted, the
``mm_projector``) + ``key_head`` / ``query_head`` / ``value_head`` / ``logit_scale``; config
fields as in ``RefocusConfig``, mamba_ssm's ``MambaConfig`` and LLaVA's ``mm_*`` fields; values
random. The reference computation below is written from those tensors following their forward
(``prepare_inputs_labels_for_multimodal``, ``get_2dPool``, mamba_ssm's ``Block`` / ``Mamba2``,
``RefocusForFrameSelection.forward``), independently of refocus and of transformers' Mamba2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

PROMPT = (
    "<|system|>You are a helpful AI assistant.<|endoftext|><|user|><image>\n{question}<|endoftext|>"
)
D_MODEL, N_LAYER, VOCAB = 32, 3, 290  # vocab padded to 296 rows by pad_vocab_size_multiple = 8
SSM = {"layer": "Mamba2", "d_state": 8, "headdim": 8, "expand": 2, "ngroups": 2, "d_conv": 4}
TOWER = {  # the tower's own config (their code loads it, then deletes the last encoder layer)
    "model_type": "siglip_vision_model",
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_channels": 3,
    "image_size": 32,
    "patch_size": 8,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
SOF_ID = 293  # a padding row of the embedding table, as `<|startofframe|>` can be
TOWER_PREFIX = "mm_model.vision_tower.vision_tower.vision_model."


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the authors' layout


def gpt_neox_style_tokenizer(out: Path) -> Path:
    """A tiny byte-level BPE saved as transformers' GPTNeoXTokenizer (`<|endoftext|>` = 0,
    `<|padding|>` = 1, as in EleutherAI/gpt-neox-20b), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPTNeoXTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["You are a helpful AI assistant.", "<|system|> <|user|>", "What color is the square?"]
    tok.train_from_iterator(corpus * 4 + ["A. red\nB. blue\nC. green"] * 4, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    GPTNeoXTokenizer(vocab=state["vocab"], merges=merges).save_pretrained(out)
    return out


def authors_config(tower_dir: Path, **overrides) -> dict:
    config = {
        # RefocusConfig / PretrainedConfig
        "architectures": ["RefocusForFrameSelection"],
        "model_type": "refocus",
        "query_frames": 64,
        "frame_generation_method": "autoregressive",
        "start_of_frame_token_id": SOF_ID,
        "logit_scale_fn": "softplus",
        "logit_scale_init": 1.0,
        "attention_scaling": False,
        "reinit_backbone_layers": 1,
        "mixer_norm_rescale": 0.1,
        "torch_dtype": "bfloat16",
        # mamba_ssm MambaConfig
        "d_model": D_MODEL,
        "d_intermediate": 0,
        "n_layer": N_LAYER,
        "vocab_size": VOCAB,
        "ssm_cfg": dict(SSM),
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
        # LLaVA multimodal fields
        "mm_vision_tower": str(tower_dir),
        "mm_hidden_size": TOWER["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat",
        "mm_spatial_pool_mode": "average",
        "mm_spatial_pool_stride": 2,
        "use_mm_proj": True,
    }
    config.update(overrides)
    return config


def _projector_shapes(kind: str, vision: int, width: int) -> dict[str, tuple[int, ...]]:
    if kind == "linear":
        return {"weight": (width, vision), "bias": (width,)}
    depth = int(kind[3 : kind.index("x")])  # mlpNx_gelu: Linear, (GELU, Linear) * (N - 1)
    shapes = {"0.weight": (width, vision), "0.bias": (width,)}
    for j in range(1, depth):
        shapes |= {f"{2 * j}.weight": (width, width), f"{2 * j}.bias": (width,)}
    return shapes


def authors_tensors(config: dict, seed: int = 0, rank_head: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as the authors' state dict (the tower already one
    layer short; `position_ids` is a non-persistent buffer, so absent)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    t: dict[str, torch.Tensor] = {}
    d, dv, di = D_MODEL, TOWER["hidden_size"], TOWER["intermediate_size"]
    patch, side = TOWER["patch_size"], TOWER["image_size"] // TOWER["patch_size"]
    t[TOWER_PREFIX + "embeddings.patch_embedding.weight"] = rnd(dv, 3, patch, patch, std=0.05)
    t[TOWER_PREFIX + "embeddings.patch_embedding.bias"] = rnd(dv)
    t[TOWER_PREFIX + "embeddings.position_embedding.weight"] = rnd(side * side, dv)
    for i in range(TOWER["num_hidden_layers"] - 1):
        p = f"{TOWER_PREFIX}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[f"{p}self_attn.{name}.weight"] = rnd(dv, dv)
            t[f"{p}self_attn.{name}.bias"] = rnd(dv, std=0.05)
        for ln in ("layer_norm1", "layer_norm2"):
            t[f"{p}{ln}.weight"] = rnd(dv, std=0.1, mean=1.0)
            t[f"{p}{ln}.bias"] = rnd(dv, std=0.1)
        t[f"{p}mlp.fc1.weight"], t[f"{p}mlp.fc1.bias"] = rnd(di, dv), rnd(di, std=0.05)
        t[f"{p}mlp.fc2.weight"], t[f"{p}mlp.fc2.bias"] = rnd(dv, di), rnd(dv, std=0.05)
    t[TOWER_PREFIX + "post_layernorm.weight"] = rnd(dv, std=0.1, mean=1.0)
    t[TOWER_PREFIX + "post_layernorm.bias"] = rnd(dv, std=0.1)
    for key, shape in _projector_shapes(config["mm_projector_type"], dv, d).items():
        t["mm_model.mm_projector." + key] = rnd(*shape, std=0.3)

    ssm = config["ssm_cfg"]
    d_inner = ssm["expand"] * d
    heads, groups, n = d_inner // ssm["headdim"], ssm["ngroups"], ssm["d_state"]
    conv_dim = d_inner + 2 * groups * n
    rows = math.ceil(VOCAB / 8) * 8
    t["backbone.embedding.weight"] = rnd(rows, d, std=0.5)
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = rnd(d, std=0.1, mean=1.0)
        t[p + "mixer.in_proj.weight"] = rnd(2 * d_inner + 2 * groups * n + heads, d, std=0.15)
        t[p + "mixer.conv1d.weight"] = rnd(conv_dim, 1, ssm["d_conv"], std=0.3)
        t[p + "mixer.conv1d.bias"] = rnd(conv_dim, std=0.1)
        dt = torch.exp(torch.rand(heads, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        t[p + "mixer.dt_bias"] = dt + torch.log(-torch.expm1(-dt))
        t[p + "mixer.A_log"] = torch.log(torch.rand(heads, generator=g) * 15 + 1)
        t[p + "mixer.D"] = rnd(heads, std=0.1, mean=1.0)
        t[p + "mixer.norm.weight"] = rnd(d_inner, std=0.1, mean=1.0)
        t[p + "mixer.out_proj.weight"] = rnd(d, d_inner, std=0.15)
    t["backbone.norm_f.weight"] = rnd(d, std=0.1, mean=1.0)
    t["lm_head.weight"] = t["backbone.embedding.weight"]  # tie_embeddings
    t["key_head.weight"], t["query_head.weight"] = rnd(d, d), rnd(d, d)
    t["value_head.weight"], t["value_head.bias"] = rnd(d, d), rnd(d, std=0.1)
    t["logit_scale"] = torch.tensor(0.7)
    if rank_head:
        t["rank_head.weight"] = rnd(1, d)
    return t


def write_authors_checkpoint(
    root: Path, fmt: str = "safetensors", seed: int = 0, rank_head: bool = False, **overrides
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint directory as `save_pretrained` of their model writes it, plus the tower's
    own directory (`mm_vision_tower` names it, as their `SigLipVisionTower` loads from it)."""
    tower_dir, src = root / "siglip-tower", root / "refocus-ckpt"
    tower_dir.mkdir(parents=True, exist_ok=True)
    src.mkdir(parents=True, exist_ok=True)
    (tower_dir / "config.json").write_text(json.dumps(TOWER))
    config = authors_config(tower_dir, **overrides)
    (src / "config.json").write_text(json.dumps(config, indent=2))
    tensors = authors_tensors(config, seed=seed, rank_head=rank_head)
    if fmt in ("safetensors", "sharded"):
        from safetensors.torch import save_file

        stored = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items() if k != "lm_head.weight"}
        if fmt == "safetensors":
            save_file(stored, src / "model.safetensors", metadata={"format": "pt"})
        else:  # two shards and an index, as save_pretrained writes large checkpoints
            keys = sorted(stored)
            weight_map = {}
            for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
                name = f"model-{i + 1:05d}-of-00002.safetensors"
                save_file({k: stored[k] for k in part}, src / name, metadata={"format": "pt"})
                weight_map |= dict.fromkeys(part, name)
            (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        stored = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
        torch.save(stored, src / "pytorch_model.bin")
    return src, {k: v.to(torch.bfloat16).double() for k, v in stored.items()}


# ------------------------------------------------------------------ their forward, from the tensors


class Reads(dict):
    """The source tensors, recording which ones the reference computation reads."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def tokenize_like_authors(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """`refocus.mm_utils.tokenizer_image_token`: each side of `<image>` tokenised on its own."""
    before, after = (tokenizer(chunk).input_ids for chunk in prompt.split("<image>"))
    assert not before or before[0] != tokenizer.bos_token_id  # no BOS offset for this prompt
    return before, after


def ref_tower(w: Reads, pixels: torch.Tensor) -> torch.Tensor:
    """SigLipVisionTower.forward: `hidden_states[-1]` of the tower whose last layer was deleted,
    i.e. the last remaining layer's output, before `post_layernorm`."""
    p, heads, eps = TOWER["patch_size"], TOWER["num_attention_heads"], TOWER["layer_norm_eps"]
    x = F.conv2d(pixels, w[TOWER_PREFIX + "embeddings.patch_embedding.weight"],
                 w[TOWER_PREFIX + "embeddings.patch_embedding.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2) + w[TOWER_PREFIX + "embeddings.position_embedding.weight"]
    n, s, dv = x.shape
    hd = dv // heads
    for i in range(TOWER["num_hidden_layers"] - 1):
        pre = f"{TOWER_PREFIX}encoder.layers.{i}."

        def lin(name, h, pre=pre):
            return h @ w[f"{pre}{name}.weight"].T + w[f"{pre}{name}.bias"]

        h = F.layer_norm(x, (dv,), w[pre + "layer_norm1.weight"], w[pre + "layer_norm1.bias"], eps)
        q, k, v = (lin(f"self_attn.{m}_proj", h).view(n, s, heads, hd).transpose(1, 2) for m in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, dim=-1)
        x = x + lin("self_attn.out_proj", (att @ v).transpose(1, 2).reshape(n, s, dv))
        h = F.layer_norm(x, (dv,), w[pre + "layer_norm2.weight"], w[pre + "layer_norm2.bias"], eps)
        x = x + lin("mlp.fc2", F.gelu(lin("mlp.fc1", h), approximate="tanh"))
    return x


def ref_pool(x: torch.Tensor, mode: str) -> torch.Tensor:
    """LlavaMetaForCausalLM.get_2dPool(stride=2)."""
    n, s, dv = x.shape
    side = math.isqrt(s)
    grid = x.view(n, side, side, dv).permute(0, 3, 1, 2)
    if mode == "average":
        grid = F.avg_pool2d(grid, 2)
    elif mode == "max":
        grid = F.max_pool2d(grid, 2)
    else:
        grid = F.interpolate(grid, size=[math.ceil(side / 2)] * 2, mode="bilinear")
    return grid.permute(0, 2, 3, 1).reshape(n, -1, dv)


def ref_projector(w: Reads, x: torch.Tensor, kind: str) -> torch.Tensor:
    """build_vision_projector: `linear` or `mlpNx_gelu` (Linear, then (GELU, Linear) * (N-1))."""
    pre = "mm_model.mm_projector."
    if kind == "linear":
        return x @ w[pre + "weight"].T + w[pre + "bias"]
    depth = int(kind[3 : kind.index("x")])
    x = x @ w[pre + "0.weight"].T + w[pre + "0.bias"]
    for j in range(1, depth):
        x = F.gelu(x) @ w[f"{pre}{2 * j}.weight"].T + w[f"{pre}{2 * j}.bias"]
    return x


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def ref_mixer(w: Reads, i: int, u: torch.Tensor) -> torch.Tensor:
    """mamba_ssm Mamba2.forward for one sequence u (L, D), written as the plain recurrence:
    h_t = exp(dt_t A) h_t-1 + dt_t x_t B_t^T, y_t = h_t C_t + D x_t, gated group RMSNorm."""
    pre = f"backbone.layers.{i}.mixer."
    d_inner, n, groups, hd = SSM["expand"] * D_MODEL, SSM["d_state"], SSM["ngroups"], SSM["headdim"]
    heads, length = d_inner // hd, u.shape[0]
    z, xbc, dt = (u @ w[pre + "in_proj.weight"].T).split([d_inner, d_inner + 2 * groups * n, heads], -1)
    kernel = w[pre + "conv1d.weight"][:, 0]  # (C, k): causal depthwise convolution
    padded = F.pad(xbc.T, (kernel.shape[1] - 1, 0))
    conv = torch.stack([(padded[:, t : t + kernel.shape[1]] * kernel).sum(-1) for t in range(length)])
    xbc = F.silu(conv + w[pre + "conv1d.bias"])
    x, b, c = xbc.split([d_inner, groups * n, groups * n], -1)
    dt = F.softplus(dt + w[pre + "dt_bias"])
    a = -torch.exp(w[pre + "A_log"])
    group_of = torch.arange(heads) // (heads // groups)
    state = torch.zeros(heads, hd, n, dtype=u.dtype)
    ys = []
    for t in range(length):
        xt = x[t].view(heads, hd)
        bt, ct = b[t].view(groups, n)[group_of], c[t].view(groups, n)[group_of]  # (H, N)
        state = torch.exp(dt[t] * a)[:, None, None] * state + dt[t][:, None, None] * xt[:, :, None] * bt[:, None, :]
        ys.append((state * ct[:, None, :]).sum(-1) + w[pre + "D"][:, None] * xt)
    y = torch.stack(ys).reshape(length, d_inner) * F.silu(z)
    y = rms(y.view(length, groups, -1), 1.0).reshape(length, d_inner) * w[pre + "norm.weight"]
    return y @ w[pre + "out_proj.weight"].T


def ref_backbone(w: Reads, embeds: torch.Tensor) -> torch.Tensor:
    """MixerModel.forward: pre-norm residual blocks (Add -> RMSNorm -> Mixer), then norm_f."""
    residual = embeds
    for i in range(N_LAYER):
        residual = residual + ref_mixer(w, i, rms(residual, w[f"backbone.layers.{i}.norm.weight"]))
    return rms(residual, w["backbone.norm_f.weight"])


def reference_logprobs(
    w: Reads, config: dict, frames: np.ndarray, before: list[int], after: list[int],
    order: list[int], temperature: float = 1.0,
) -> torch.Tensor:
    """Per-step log-probs of `order` as RefocusForFrameSelection.forward computes them
    (autoregressive, replace=False, as the authors' export runs it)."""
    pixels = (torch.as_tensor(frames).permute(0, 3, 1, 2).double() / 255 - 0.5) / 0.5
    visual = ref_projector(w, ref_pool(ref_tower(w, pixels), config["mm_spatial_pool_mode"]),
                           config["mm_projector_type"])  # (T, P, D)
    t, p = visual.shape[:2]
    table = w["backbone.embedding.weight"]
    prefix = torch.cat([table[before], visual.reshape(t * p, -1), table[after]])
    tails = [len(before) + (j + 1) * p - 1 for j in range(t)]  # visual_tails: each frame's last token
    hidden = ref_backbone(w, prefix)[tails]
    keys = hidden @ w["key_head.weight"].T
    values = hidden @ w["value_head.weight"].T + w["value_head.bias"]
    steps = torch.cat([table[config["start_of_frame_token_id"]][None], values[order[:-1]]])
    queries = ref_backbone(w, torch.cat([prefix, steps]))[len(prefix):] @ w["query_head.weight"].T
    scale = {"softplus": F.softplus, "exp": torch.exp}[config["logit_scale_fn"]](w["logit_scale"])
    scale = scale / temperature
    if config["attention_scaling"]:
        scale = scale / math.sqrt(D_MODEL)
    logits = torch.einsum("qd,fd->qf", queries, keys * scale)
    out = []
    for i, frame in enumerate(order):
        masked = logits[i].clone()
        masked[order[:i]] = -math.inf
        out.append(masked.log_softmax(-1)[frame])
    return torch.stack(out)


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def neox_tokenizer(tmp_path_factory) -> Path:
    return gpt_neox_style_tokenizer(tmp_path_factory.mktemp("gpt-neox"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, neox_tokenizer) -> Path:
    """A policy imported from the default authors'-layout checkpoint."""
    root = tmp_path_factory.mktemp("imported")
    src, _ = write_authors_checkpoint(root)
    import_official_api(src, root / "policy", tokenizer=neox_tokenizer)
    return root / "policy"


def import_official_api(*args, **kwargs):
    from refocus.policy.official import import_official

    return import_official(*args, **kwargs)


def run_cli(*argv: str, capsys=None) -> tuple[int, str]:
    from refocus.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def import_checkpoint(src: Path, out: Path, tokenizer: Path | None, capsys) -> dict:
    args = ["policy", "import-official", src, "--out", out]
    if tokenizer is not None:
        args += ["--tokenizer", tokenizer]
    code, err = run_cli(*args, capsys=capsys)
    assert code == 0, err
    return json.loads((out / "import_report.json").read_text())


def policy_inputs(selector, frames: np.ndarray, item) -> tuple:
    """Features and prompt ids exactly as `refocus select` builds them (PolicySelector)."""
    from types import SimpleNamespace

    from refocus.policy import policy_prompt

    video = SimpleNamespace(frames=frames, timestamps=np.arange(len(frames)) / 4.0)
    return selector.prepare(video, item), policy_prompt(selector.policy.config, selector.tokenizer, item)


ITEM = dict(question="Which frame shows the red square?", options=("the first", "the middle", "the last"))


def fixed_frames(num: int = 7) -> np.ndarray:
    rng = np.random.default_rng(123)
    return rng.integers(0, 256, size=(num, TOWER["image_size"], TOWER["image_size"], 3), dtype=np.uint8)


CASES = {  # projector, pooling, scaling, scale function, weight format (bf16 values), rank head
    "mlp2x-average-softplus-safetensors": dict(mm_projector_type="mlp2x_gelu", mm_spatial_pool_mode="average"),
    "linear-max-scaled-exp-bin": dict(mm_projector_type="linear", mm_spatial_pool_mode="max",
                                      attention_scaling=True, logit_scale_fn="exp", fmt="bin", rank_head=True),
    "mlp3x-bilinear-sharded": dict(mm_projector_type="mlp3x_gelu", mm_spatial_pool_mode="bilinear", fmt="sharded"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_imported_policy_computes_the_authors_logprobs(case, tmp_path, neox_tokenizer, capsys):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from refocus.policy import build_question_text
    from refocus.selectors.policy import PolicySelector

    options = dict(CASES[case])
    fmt, rank_head = options.pop("fmt", "safetensors"), options.pop("rank_head", False)
    src, source = write_authors_checkpoint(tmp_path, fmt=fmt, rank_head=rank_head, **options)
    report = import_checkpoint(src, tmp_path / "policy", neox_tokenizer, capsys)

    # Every source tensor is consumed or reported unused, with a reason.
    assert set(report["consumed"]) | set(report["unused"]) == set(source)
    assert not set(report["consumed"]) & set(report["unused"])
    expected_unused = {TOWER_PREFIX + "post_layernorm.weight", TOWER_PREFIX + "post_layernorm.bias"}
    expected_unused |= {"lm_head.weight"} if fmt == "bin" else set()
    expected_unused |= {"rank_head.weight"} if rank_head else set()
    assert set(report["unused"]) == expected_unused and all(report["unused"].values())

    # The same per-step log-probs as their forward, on a fixed video, through `refocus select`'s path.
    selector = PolicySelector.from_dir(tmp_path / "policy")
    item = SimpleNamespace(**ITEM)
    frames = fixed_frames()
    feats, ids = policy_inputs(selector, frames, item)
    order = [4, 1, 6, 0, 2]
    tok = AutoTokenizer.from_pretrained(neox_tokenizer)
    before, after = tokenize_like_authors(tok, PROMPT.format(question=build_question_text(item)))
    w = Reads(source)
    config = authors_config(tmp_path, **options)
    for temperature in (1.0, 0.5):
        expected = reference_logprobs(w, config, frames, before, after, order, temperature)
        with torch.no_grad():
            got, _ = selector.policy.replay_logprobs([feats], [ids], torch.tensor([[order]]), temperature=temperature)
        assert (got[0, 0].double() - expected).abs().max().item() < 1e-4
        assert expected.min() < -1.0  # choices the policy was far from certain of
    # The independent computation read exactly the tensors the report says were consumed.
    assert w.read == set(report["consumed"])


def _drop(key):
    def mutate(src: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(src / "model.safetensors")
        del tensors[key]
        save_file(tensors, src / "model.safetensors")
    return mutate


def _add_tensor(key):
    def mutate(src: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(src / "model.safetensors")
        tensors[key] = torch.zeros(D_MODEL)
        save_file(tensors, src / "model.safetensors")
    return mutate


def _config(**changes):
    def mutate(src: Path) -> None:
        config = json.loads((src / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        (src / "config.json").write_text(json.dumps(config))
    return mutate


def _foreign_mamba2(src: Path) -> None:  # a transformers Mamba2 language model
    (src / "config.json").write_text(json.dumps({"model_type": "mamba2", "hidden_size": 32, "num_hidden_layers": 2}))


def _refocus_policy(src: Path) -> None:
    (src / "config.json").write_text(json.dumps({"model_type": "refocus_frame_policy"}))


def _no_weights(src: Path) -> None:
    (src / "model.safetensors").unlink()


BAD = {  # mutation of a valid checkpoint -> words the one-line error must contain
    "no config": (lambda src: (src / "config.json").unlink(), "no config.json"),
    "foreign Mamba2 LM": (_foreign_mamba2, "model_type 'mamba2', no d_model, n_layer, mm_vision_tower"),
    "already ours": (_refocus_policy, "already a refocus policy"),
    "no weights": (_no_weights, "no model.safetensors or pytorch_model.bin"),
    "block method": (_config(frame_generation_method="block"), "frame_generation_method is 'block'"),
    "block by default": (_config(frame_generation_method=None), "frame_generation_method is 'block'"),
    "pooler projector": (_config(mm_projector_type="pooler"), "mm_projector_type is 'pooler'"),
    "attention layers": (_config(attn_layer_idx=[1]), "attn_layer_idx"),
    "mamba1": (_config(ssm_cfg={"layer": "Mamba1"}), "ssm_cfg.layer is not supported"),
    "mamba1 by default": (_config(ssm_cfg={"d_state": 8}), "ssm_cfg.layer is not supported"),
    "clip tower": (_config(mm_vision_tower="openai/clip-vit-large-patch14"), "mm_vision_tower"),
    "normed heads": (_config(score_head_norm="rmsnorm"), "score_head_norm is 'rmsnorm'"),
    "anyres": (_config(mm_patch_merge_type="spatial_unpad"), "mm_patch_merge_type"),
    "missing tensor": (_drop("key_head.weight"), "lacks 1 tensor(s) its config implies, e.g. 'key_head.weight'"),
    "missing tower layer": (_drop(TOWER_PREFIX + "encoder.layers.1.mlp.fc2.bias"), "lacks 1 tensor(s)"),
    "extra tensor": (_add_tensor("mm_model.image_newline"), "unexpected tensor 'mm_model.image_newline'"),
    "wrong vocab": (_config(vocab_size=300), "backbone.embedding.weight is (296, 32)"),
    "sof outside": (_config(start_of_frame_token_id=999), "start_of_frame_token_id 999"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_or_foreign_checkpoints_give_one_line_errors(case, tmp_path, neox_tokenizer, capsys):
    mutate, words = BAD[case]
    src, _ = write_authors_checkpoint(tmp_path)
    mutate(src)
    code, err = run_cli("policy", "import-official", src, "--out", tmp_path / "out",
                        "--tokenizer", neox_tokenizer, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0]
    assert not (tmp_path / "out").exists()


def test_tokenizer_comes_from_the_checkpoint_or_from_the_option(tmp_path, neox_tokenizer, capsys):
    import shutil

    src, _ = write_authors_checkpoint(tmp_path)
    code, err = run_cli("policy", "import-official", src, "--out", tmp_path / "a", capsys=capsys)
    assert code == 1 and "holds no tokenizer" in err and "--tokenizer DIR" in err
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(neox_tokenizer / name, src / name)
    import_checkpoint(src, tmp_path / "b", None, capsys)
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (neox_tokenizer / "tokenizer.json").read_text()


def test_tower_config_from_option_when_the_hub_name_is_not_local(tmp_path, neox_tokenizer, capsys):
    src, _ = write_authors_checkpoint(tmp_path)
    _config(mm_vision_tower="google/siglip-so400m-patch14-384")(src)
    # Without the tower's config their SigLipImageProcessor's 384 px would not fit 4 x 4 patches.
    code, err = run_cli("policy", "import-official", src, "--out", tmp_path / "a",
                        "--tokenizer", neox_tokenizer, capsys=capsys)
    assert code == 1 and "--vision-config" in err
    code, err = run_cli("policy", "import-official", src, "--out", tmp_path / "b", "--tokenizer", neox_tokenizer,
                        "--vision-config", tmp_path / "siglip-tower" / "config.json", capsys=capsys)
    assert code == 0, err


def test_train_fine_tunes_an_imported_policy_without_reinitialising(tmp_path, imported, capsys, monkeypatch):
    from safetensors.torch import load_file

    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.reference.small_model import SmallReferenceConfig, save_untrained_small_reference

    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    bench = make_benchmark("niah", tmp_path / "bench", videos=2, frames=(12, 14), seed=0)
    ref_cfg = SmallReferenceConfig(image_size=32, vision_hidden_sizes=(16, 32), vision_depths=(1, 1),
                                   vision_heads=(2, 2), text_hidden=32, text_layers=1, text_heads=2)
    reference = save_untrained_small_reference(tmp_path / "ref", load_questions(bench), ref_cfg)
    (tmp_path / "train.yaml").write_text(
        "num_generations: 4\nper_device_train_batch_size: 2\nselection_sizes: [3]\ncurriculum_starts: [0]\n"
        "max_steps: 2\nlearning_rate: 1.0e-5\nlearning_rate_reinit: 1.0e-4\nwarmup_ratio: 0.0\nbf16: false\n"
        "gradient_checkpointing: false\nsave_steps: 100\nseed: 0\n"
    )
    code, err = run_cli("train", "--data", bench, "--reference", reference, "--out", tmp_path / "run",
                        "--config", tmp_path / "train.yaml", "--policy", imported, capsys=capsys)
    assert code == 0, err
    before = load_file(imported / "model.safetensors")
    after = load_file(tmp_path / "run" / "policy" / "model.safetensors")
    assert set(before) == set(after)
    # Two AdamW steps move a weight by about the learning rate; a re-initialised block (fresh
    # Mamba2 init, mixer.norm = 0.1) or <start_of_frame> row would move by ~0.1-1.
    drift = {k: (after[k].float() - before[k].float()).abs().max().item() for k in before}
    assert max(drift.values()) < 1e-3, max(drift, key=drift.get)
    trained = [k for k in ("key_head.weight", "query_head.weight", "value_head.weight", "logit_scale",
                           f"backbone.layers.{N_LAYER - 1}.mixer.in_proj.weight", "projector.0.weight")]
    assert all(drift[k] > 0 for k in trained), {k: drift[k] for k in trained}
    assert all(drift[k] == 0 for k in before if k.startswith("vision_tower."))  # frozen
    config = json.loads((tmp_path / "run" / "policy" / "config.json").read_text())
    assert (config["logit_scale_fn"], config["start_of_frame_token_id"]) == ("softplus", SOF_ID)


def test_policy_options_of_the_authors_conventions():
    from refocus.policy import FramePolicy, FramePolicyConfig

    backbone = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_heads": 4, "head_dim": 8}
    for fn in ("softplus", "exp", "identity"):
        policy = FramePolicy(FramePolicyConfig(backbone_config=backbone, logit_scale_fn=fn, logit_scale_init=2.5,
                                               num_reinit_layers=0))
        keys, queries = torch.randn(1, 5, 16), torch.randn(1, 3, 16)
        expected = 2.5 * torch.einsum("bqd,btd->bqt", queries, keys) / 4.0  # scale(s) = init, / sqrt(16)
        assert torch.allclose(policy.frame_logits(keys, queries), expected, atol=1e-5)
    policy.config.attention_scaling = False
    assert torch.allclose(policy.frame_logits(keys, queries), expected * 4.0, atol=1e-5)

    policy = FramePolicy(FramePolicyConfig(backbone_config=backbone, start_of_frame_token_id=37, num_reinit_layers=0))
    assert not hasattr(policy, "start_embedding") and "start_embedding" not in dict(policy.named_parameters())
    policy.start_vector.sum().backward()
    grad = policy.backbone.embeddings.weight.grad
    assert grad[37].abs().sum() > 0 and grad[torch.arange(40) != 37].abs().sum() == 0
    assert 0 < policy.start_vector.std() < 0.1  # initialised N(0, sof_init_std) like their reinit_for_finetune

    projector = FramePolicy(FramePolicyConfig(backbone_config=backbone, projector_type="mlp4x_gelu",
                                              num_reinit_layers=0)).projector
    assert [type(m).__name__ for m in projector] == ["Linear", "GELU", "Linear", "GELU", "Linear", "GELU", "Linear"]
    from refocus.errors import ConfigError

    for bad in ({"projector_type": "mlp0x_gelu"}, {"logit_scale_fn": "sigmoid"}, {"token_pool_mode": "median"},
                {"start_of_frame_token_id": 40}):
        with pytest.raises(ConfigError):
            FramePolicyConfig(backbone_config=backbone, **bad)


def test_parity_script_select_and_official_protocol_on_the_imported_policy(tmp_path, imported, monkeypatch):
    """benchmarks/official_parity.py --side ours on CPU (their side needs their code and a GPU), then
    `refocus select` and its official protocol with the imported policy."""
    import importlib.util
    import sys
    from argparse import Namespace

    from refocus.data.questions import load_questions
    from refocus.data.synth import make_benchmark
    from refocus.policy import FramePolicy

    monkeypatch.setenv("REFOCUS_CACHE_DIR", str(tmp_path / "cache"))
    bench = make_benchmark("niah", tmp_path / "bench", videos=1, frames=(12, 12), seed=0)
    video = load_questions(bench)[0].video
    spec = importlib.util.spec_from_file_location("official_parity", Path(__file__).parents[1] / "benchmarks" / "official_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["official_parity"] = module
    spec.loader.exec_module(module)
    args = Namespace(policy=imported, video=video, question="Where?\nA. left\nB. right",
                     pairs=tmp_path / "pairs.npz", budget=4, candidates=3, fps=4.0, max_frames=16, seed=0, device="cpu")
    module.ours(args)
    data = np.load(args.pairs)
    assert data["order"].shape == (3, 4) and data["logprobs"].shape == (3, 4)
    assert data["frames"].shape[1:] == (TOWER["image_size"], TOWER["image_size"], 3)
    assert np.all(data["logprobs"] <= 0) and str(data["question"]).startswith("Where?")
    assert FramePolicy.from_pretrained(imported).config.prompt_template.startswith("<|system|>")
    # and `refocus select` runs it as any policy
    code = run_cli("select", "--policy", imported, "--data", bench, "--budget", 3, "--out", tmp_path / "sel.jsonl")[0]
    rows = [json.loads(line) for line in (tmp_path / "sel.jsonl").read_text().splitlines()]
    assert code == 0 and len(rows) == 1 and len(rows[0]["indices"]) == 3

    # --protocol official is the authors' export: uniform below 128 decoded frames, else the first
    # candidate's picks (a sample at temperature 1, without replacement) sorted.
    from refocus.policy import policy_prompt
    from refocus.seeding import item_seed
    from refocus.selectors.policy import PolicySelector
    from refocus.video import load_video

    item = load_questions(bench)[0]
    decoded = load_video(item.video, fps=4.0, max_frames=512, size=TOWER["image_size"])
    t = len(decoded.frames)
    for extra, expected in (([], np.linspace(0, t - 1, 3, dtype=int).tolist()), (["--uniform-below", 4], None)):
        code = run_cli("select", "--policy", imported, "--data", bench, "--budget", 3, "--protocol", "official",
                       "--seed", 5, "--out", tmp_path / "official.jsonl", *extra)[0]
        got = json.loads((tmp_path / "official.jsonl").read_text())["indices"]
        if expected is None:
            selector = PolicySelector.from_dir(imported)
            feats = selector.prepare(decoded, item)
            gen = torch.Generator().manual_seed(item_seed(5, item.id))
            out = selector.policy.select([feats], [policy_prompt(selector.policy.config, selector.tokenizer, item)],
                                         k=3, num_candidates=1, mode="sample", generator=gen)
            expected = sorted(out.order[0, 0].tolist())
        assert code == 0 and got == expected
