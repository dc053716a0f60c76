"""The project's own small reference model: a tiny LLaVA (LeViT vision tower + Llama) built
from a config, with a word-level tokenizer trained on the synthetic benchmarks' text.

It is a real ``transformers`` architecture (``LlavaForConditionalGeneration``), saved and
loaded with ``save_pretrained`` / ``from_pretrained`` like any checkpoint, and scored through
the same adapter interface as real checkpoints (``refocus.reference.load_reference``). Its job
is to make the whole ReFoCUS loop learnable on a CPU: given the evidence frames it answers the
synthetic questions, given other frames it is near chance, so its margins say whether a frame
subset holds the evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from refocus.data.questions import LETTERS

# A ChatML-like template, the structure of the paper's reward prompt (Appendix B.6.1), except
# that system messages are dropped: this model is trained for one task only, and the fixed
# system line would triple the text a from-scratch model must learn to look past.
CHAT_TEMPLATE = (
    "{% for message in messages if message['role'] != 'system' %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|im_start|>", "<|im_end|>"]
# Words of the reward prompt and the frame markers; the benchmark text adds the rest.
BASE_VOCAB_TEXT = (
    "system user assistant You are a helpful assistant . Please choose the correct answer to the "
    "multiple-choice question regarding a video . The answer must be a single uppercase letter . "
    "Options : clutter " + " ".join(f"Frame{i} :" for i in range(1, 1025)) + " " + " ".join(LETTERS)
)


@dataclass
class SmallReferenceConfig:
    """Architecture of the small reference model (sizes chosen to train in minutes on 2 cores)."""

    image_size: int = 64
    """Frame side in pixels the vision tower sees (frames are decoded at this size); a
    multiple of ``patch_size``."""
    vision_hidden_sizes: tuple[int, ...] = (64, 128, 128)
    """Width of each LeViT stage. A four-conv stem cuts the frame into 16 px cells, and every
    stage after the first halves the grid: at 64 px, 4 x 4 cells, then 2 x 2, then one visual
    token per frame. One token that says the whole object (colour and shape together) is what
    lets the language model bind the two in one attention hop; with four tokens per frame stage 1
    learns `query` slower and less well (benchmarks/RESULTS.md, "Issue 19: the option-evidence
    target"). The conv stem is why LeViT and not a plain ViT: trained from scratch, it tells the
    shapes apart far sooner (benchmarks/RESULTS.md)."""
    vision_depths: tuple[int, ...] = (2, 2, 2)
    vision_heads: tuple[int, ...] = (4, 4, 4)
    vision_key_dim: int = 16
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_position_embeddings: int = 4096
    """Enough for 32 frames x (16 image tokens + marker) plus the question."""
    tie_word_embeddings: bool = True
    """Tie the LM head to the input embeddings: the answer letter is then read by copying the
    letter token's embedding from the options list, which the model learns much sooner."""

    @property
    def patch_size(self) -> int:
        """Pixels per visual token side: the 16 px stem cell, doubled by each later stage."""
        return 16 * 2 ** (len(self.vision_hidden_sizes) - 1)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def __post_init__(self) -> None:
        n = len(self.vision_hidden_sizes)
        if not (len(self.vision_depths) == len(self.vision_heads) == n >= 2):
            # transformers' LevitConfig derives its down-sampling ops from the first two widths.
            raise ValueError("vision_hidden_sizes, vision_depths and vision_heads need one entry per "
                             "stage, and LeViT at least two stages")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the {self.patch_size} px "
                             f"token cell of a {n}-stage LeViT tower")


# Pieces: a whole option line ("B. red circle"), a word, or one punctuation mark. Keeping an
# option line as one token puts its letter and its text in one embedding, so answering takes a
# single attention hop (match what was seen to an option, copy its letter) instead of the
# two-hop "read the letter two tokens back" circuit a from-scratch model needs thousands of
# steps to find. Letters on their own (the answer) remain single tokens.
PIECES = r"[A-Z]\. [^\n]+|<[^<>\s]+>|\w+|[^\w\s]"


def option_line(letter: str, text: str) -> str:
    return f"{letter}. {text}"


def train_tokenizer(texts: Iterable[str], options: Iterable[Sequence[str]] = ()):
    """A word-level tokenizer over ``texts`` and the prompt words; every letter is one token.

    ``options``: option lists of the questions; every (letter, option) line the reward prompt
    can show becomes a token (options are shuffled in training, so any letter with any text).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), behavior="removed", invert=True)
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    options = [list(o) for o in options]
    lines = sorted({option_line(LETTERS[j], text) for opts in options for text in opts
                    for j in range(len(opts))})
    words = [" ".join(t for opts in options for t in opts)]
    tok.train_from_iterator([BASE_VOCAB_TEXT, *texts, *words, "\n".join(lines)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_small_reference(tokenizer, config: SmallReferenceConfig | None = None):
    """Build an untrained tiny LLaVA and its processor around ``tokenizer``.

    Returns ``(model, processor)``.
    """
    from transformers import (
        LevitConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    cfg = config or SmallReferenceConfig()
    n = len(cfg.vision_hidden_sizes)
    sizes, key_dim = list(cfg.vision_hidden_sizes), cfg.vision_key_dim
    vision = LevitConfig(
        image_size=cfg.image_size,
        patch_size=16,  # the stem's total stride (four stride-2 convs); LeViT fixes it
        hidden_sizes=sizes,
        depths=list(cfg.vision_depths),
        num_attention_heads=list(cfg.vision_heads),
        key_dim=[key_dim] * n,
        attention_ratio=[2] * n,
        mlp_ratio=[2] * n,
        # Between stages: attention that subsamples the grid by 2 (LeViT's "Subsample" op:
        # key dim, heads, attention ratio, MLP ratio, stride).
        down_ops=[["Subsample", key_dim, sizes[i] // key_dim, 4, 2, 2] for i in range(n - 1)],
        drop_path_rate=0,
    )
    # LLaVA sizes its projector from ``vision_config.hidden_size``; LeViT's features are the
    # last stage's width. Saved with the config, so checkpoints reload as they were built.
    vision.hidden_size = sizes[-1]
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    config.refocus_small_reference = asdict(cfg)
    model = LlavaForConditionalGeneration(config)
    _he_init(model.model.vision_tower)
    image_processor = SiglipImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def _he_init(tower) -> None:
    """He-normal weights for the LeViT tower's convolutions and linear maps.

    transformers initialises them N(0, 0.02): harmless in training, where every batch norm
    rescales by batch statistics, but in eval mode (running statistics still at their initial
    0 / 1) four stacked stem convolutions shrink a frame's features to ~1e-7, so an untrained
    checkpoint would score every frame subset the same. He init keeps them O(1).
    """
    import torch

    for module in tower.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def save_untrained_small_reference(out_dir, items, config: SmallReferenceConfig | None = None,
                                   seed: int = 0):
    """Save an untrained small reference model for ``items`` (tokenizer trained on their text,
    random weights, real architecture): a valid ``REF`` directory for tests and benchmarks."""
    import torch

    tokenizer = train_tokenizer([it.question for it in items], [it.options for it in items])
    torch.manual_seed(seed)
    model, processor = build_small_reference(tokenizer, config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
