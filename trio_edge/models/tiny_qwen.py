"""A tiny Qwen2.5-VL built in code, so the Qwen family is exercised offline.

`make_tiny_qwen2_5_vl` writes a standard `save_pretrained` directory (safetensors weights, a word-level
tokenizer with Qwen's chat and vision special tokens, Qwen's PIL image processor and its chat template) that
transformers' Auto classes load like a hub checkpoint. Its geometry is the real one scaled down: patch 14,
temporal patch 2, 2x2 merger, 112-pixel attention windows with one full-attention block, M-RoPE sections.
"""

from __future__ import annotations

from pathlib import Path

from .qwen2_5_vl import CHAT_TEMPLATE
from .tiny import tiny_vocab

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
def qwen_words() -> list[str]:
    """The tiny vocabulary without LLaVA's specials, plus the words of Qwen's default system prompt."""
    return [token for token in tiny_vocab() if token not in ("<s>", "</s>", "<image>")] + ["you", "helpful"]


def make_tiny_qwen_tokenizer(vocab: dict[str, int] | None = None):
    """A word-level fast tokenizer with Qwen's special tokens (no BOS, as Qwen). `vocab` (token -> id, holding
    Qwen's specials) defaults to the tiny words followed by the specials."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or {token: index for index, token in enumerate(qwen_words() + QWEN_SPECIALS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    specials = [pre_tokenizers.Split(token.lower(), behavior="isolated") for token in QWEN_SPECIALS]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*specials, pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(QWEN_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
        model_max_length=4096,
    )


def tiny_qwen2_5_vl_config(tokenizer, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                           vision_hidden: int = 32, vision_layers: int = 2, vision_heads: int = 2,
                           full_attention_blocks: list[int] | None = None):
    """Config of a Qwen2.5-VL with the real vision geometry (patch 14, merger 2, window 112 px) at small width;
    one full-attention block (the last) unless `full_attention_blocks` says which."""
    from transformers import Qwen2_5_VLConfig

    head_dim = hidden // heads
    quarter = head_dim // 2 // 4  # M-RoPE sections (t, h, w) over head_dim / 2 frequencies, as 16/24/24 of 64
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": [head_dim // 2 - 2 * (quarter * 3 // 2), quarter * 3 // 2, quarter * 3 // 2]},
                bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=False)
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                  num_heads=vision_heads, out_hidden_size=hidden, patch_size=14, temporal_patch_size=2,
                  spatial_merge_size=2, window_size=112,
                  fullatt_block_indexes=full_attention_blocks or [vision_layers - 1])
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def make_tiny_qwen_image_processor(*, pixels: int | tuple[int, int] = 224 * 224, patch_size: int = 14, **options):
    """Qwen's PIL image processor with min = max `pixels` (or a (min, max) pair). transformers' Qwen2_5_VLProcessor cannot be built without
    torchvision (its video processor needs it), so the checkpoint carries its tokenizer (with the chat template)
    and image processor as separate files, which is also all a Qwen checkpoint's processor holds for images."""
    from transformers import Qwen2VLImageProcessorPil

    low, high = pixels if isinstance(pixels, tuple) else (pixels, pixels)
    return Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high, patch_size=patch_size, temporal_patch_size=2,
                                    merge_size=2, **options)


def make_tiny_qwen2_5_vl(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random Qwen2_5_VLForConditionalGeneration checkpoint (+ tokenizer, processor) to `path`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = make_tiny_qwen_tokenizer()
    config = tiny_qwen2_5_vl_config(tokenizer, **config_overrides)
    return write_tiny_qwen(path, Qwen2_5_VLForConditionalGeneration, config, tokenizer, make_tiny_qwen_image_processor(),
                           CHAT_TEMPLATE, seed)


def write_tiny_qwen(path: str | Path, model_class, config, tokenizer, image_processor, chat_template: str, seed: int,
                    spread_norms: bool = False) -> Path:
    """A random `model_class(config)` saved with its tokenizer (carrying `chat_template`) and image processor.
    Random init is near-zero in places; a visible spread (matrices N(0, 0.08); with `spread_norms` the norms' scales
    in [0.5, 1.5], so a skipped norm shows) makes parity checks meaningful."""
    import torch

    path = Path(path)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.08)
            elif spread_norms and name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.save_pretrained(path)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    return path
