"""Tiny LLaVA-NeXT checkpoints built in code, so everything runs offline.

`make_tiny_llava_next` writes a standard `save_pretrained` directory (weights as safetensors, a real
tokenizer and image processor) that transformers' Auto classes load like any hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path

# Words the tiny tokenizer knows; everything else becomes <unk>. Enough for the default prompt
# template, the synthetic VQA task and free-form test prompts.
_WORDS = (
    "user assistant system what is the a an of in on at to and or color colour shape which where how many "
    "object objects left right top bottom center middle upper lower red green blue yellow purple orange "
    "white black gray circle square triangle cross ring star bar one two three four five six seven eight "
    "nine zero yes no there are image picture describe this more than less same code read letter digit "
    "bigger smaller larger compare count first second answer word with please short "
    "circles squares triangles crosses rings stars"
).split()
_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_PUNCTUATION = list(":?.,!'-\n")


def tiny_vocab() -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    return _SPECIALS + _PUNCTUATION + digits + letters + sorted(set(_WORDS) - set(letters))


def make_tiny_tokenizer(vocab: dict[str, int] | None = None):
    """A word-level fast tokenizer (lower-cased, whitespace/punctuation split) with LLaVA's specials.

    `vocab` (token -> id) defaults to the tiny vocabulary; it must hold the special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or {token: index for index, token in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # "<image>" must survive as one token: split on it first, then on whitespace and punctuation.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("<image>", behavior="isolated"), pre_tokenizers.WhitespaceSplit(),
         pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, model_max_length=4096,
    )


def tiny_llava_next_config(*, vocab_size: int, image_token_id: int, tile: int = 56, patch: int = 14,
                           hidden: int = 64, layers: int = 4, vision_layers: int = 2, vision_hidden: int = 32,
                           heads: int = 4, kv_heads: int = 2):
    """Config of a LLaVA-NeXT with a CLIP-style tower and a grouped-query Llama decoder."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=max(2, vision_hidden // 16), image_size=tile, patch_size=patch,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    return LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def make_tiny_processor(tokenizer, *, tile: int = 56, patch: int = 14):
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
    )
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def make_tiny_llava_next(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random LlavaNextForConditionalGeneration checkpoint (+ tokenizer, processor) to `path`."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    config = tiny_llava_next_config(
        vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    # Random init leaves the image newline at zero-ish scale; give every parameter a visible spread
    # so parity tests exercise real numbers.
    with torch.no_grad():
        model.model.image_newline.normal_(0.0, 0.5)
    model.save_pretrained(path)
    processor = make_tiny_processor(tokenizer, tile=config.vision_config.image_size,
                                    patch=config.vision_config.patch_size)
    processor.save_pretrained(path)
    return path
