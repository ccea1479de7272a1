"""A tiny Qwen3-VL built in code, so the family is exercised offline (alias `tiny-random-qwen3`).

`make_tiny_qwen3_vl` writes a standard `save_pretrained` directory (safetensors weights, the word-level tokenizer
with Qwen's chat and vision special tokens, Qwen's PIL image processor with Qwen3-VL's settings, its chat template)
that transformers' Auto classes load like a hub checkpoint. Its geometry is the real one scaled down: patch 16,
temporal patch 2, 2x2 merger, a learned 8x8 position table interpolated to the grid, interleaved M-RoPE sections,
QK-norm, and three DeepStack vision blocks feeding decoder layers 0, 1, 2 (as every released checkpoint: k = 3) of
4, so cuts both before and after the last DeepStack layer exist.
"""

from __future__ import annotations

from pathlib import Path

from .qwen3_vl import CHAT_TEMPLATE
from .tiny_qwen import make_tiny_qwen_image_processor, make_tiny_qwen_tokenizer, write_tiny_qwen

TINY_SIDE = 256  # 16 x 16 patches -> 64 image tokens
QWEN3_IMAGE_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # Qwen3-VL's preprocessor_config


def tiny_qwen3_vl_config(tokenizer, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                         head_dim: int = 16, vision_hidden: int = 32, vision_layers: int = 4, vision_heads: int = 2,
                         deepstack=(1, 2, 3)):
    """Config of a Qwen3-VL with the real vision geometry (patch 16, merger 2) at small width."""
    from transformers import Qwen3VLConfig

    half = head_dim // 2  # M-RoPE sections over head_dim / 2 frequencies, as 24/20/20 of 64
    section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": section,
                                 "mrope_interleaved": True},
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=False)
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                  num_heads=vision_heads, out_hidden_size=hidden, patch_size=16, temporal_patch_size=2,
                  spatial_merge_size=2, num_position_embeddings=64, deepstack_visual_indexes=list(deepstack))
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def make_tiny_qwen3_image_processor(*, pixels: int | tuple[int, int] = TINY_SIDE * TINY_SIDE):
    """Qwen's PIL image processor with Qwen3-VL's settings (patch 16, merge 2, mean/std 0.5), min = max `pixels`."""
    return make_tiny_qwen_image_processor(pixels=pixels, patch_size=16, **QWEN3_IMAGE_NORM)


def make_tiny_qwen3_vl(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random Qwen3VLForConditionalGeneration checkpoint (+ tokenizer, processor) to `path`; its norm
    scales are spread too, so a skipped QK-norm shows."""
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = make_tiny_qwen_tokenizer()
    config = tiny_qwen3_vl_config(tokenizer, **config_overrides)
    return write_tiny_qwen(path, Qwen3VLForConditionalGeneration, config, tokenizer, make_tiny_qwen3_image_processor(),
                           CHAT_TEMPLATE, seed, spread_norms=True)
