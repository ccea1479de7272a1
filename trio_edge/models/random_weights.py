"""Real architectures with random weights, built offline: profile a target without its weights.

The configs are those of the hub checkpoints the aliases name (hyperparameters only); the tokenizer
is the tiny word-level one padded to the real vocabulary size, the image processor has the real
preprocessing settings, so every shape (image tokens, KV, vocab) is the real one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, ModelNotFoundError

CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5)
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32064, max_position_embeddings=32768, rms_norm_eps=1e-5,
                  rope_theta=1e6, sliding_window=None)
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

ARCHITECTURES = {
    "llava-next-7b": ("llava-next", "llama", CLIP_L_336, VICUNA_7B),
    "llava-next-mistral-7b": ("llava-next", "mistral", CLIP_L_336, MISTRAL_7B),
    "llava-1.5-7b": ("llava", "llama", CLIP_L_336, VICUNA_7B),
}
IMAGE_TOKEN_ID = 32000
# aliases whose hub config.json is shipped (trio_edge/assets/configs): Qwen2.5-VL, Qwen3-VL
SHIPPED_CONFIGS = {"qwen2.5-vl-3b": "qwen2.5-vl-3b.json", "qwen2.5-vl-7b": "qwen2.5-vl-7b.json",
                   "qwen3-vl-2b": "qwen3-vl-2b.json", "qwen3-vl-4b": "qwen3-vl-4b.json",
                   "qwen3-vl-8b": "qwen3-vl-8b.json"}
QWEN_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                    "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
QWEN_PIXELS = (56 * 56, 28 * 28 * 16384)  # the checkpoints' image processor: min_pixels, max_pixels
QWEN3_PIXELS = (65536, 16777216)  # Qwen3-VL's preprocessor_config size: shortest_edge, longest_edge (pixels)


def scaled(text: dict, vision: dict, scale: float, layers: int | None, vision_layers: int | None,
           patch_size: int | None = None):
    """The same structure scaled down in width (for CPU runs of the benchmark); `patch_size` cuts the real tiles
    into fewer, larger patches (fewer image tokens, same preprocessing and tiling)."""
    if patch_size is not None:
        if patch_size < 1 or vision["image_size"] % patch_size:
            raise InputError(f"patch_size must divide the tile size {vision['image_size']}, got {patch_size}")
        vision = {**vision, "patch_size": patch_size}
    if scale == 1.0 and layers is None and vision_layers is None:
        return text, vision

    def width(x, multiple):
        return max(multiple, int(round(x * scale / multiple)) * multiple)

    text = {**text, "hidden_size": width(text["hidden_size"], 64), "intermediate_size": width(text["intermediate_size"], 64)}
    group = text["num_attention_heads"] // text["num_key_value_heads"]  # keep grouped-query models grouped
    text["num_attention_heads"] = max(group, text["hidden_size"] // 128 // group * group)
    text["num_key_value_heads"] = text["num_attention_heads"] // group
    vision = {**vision, "hidden_size": width(vision["hidden_size"], 64), "intermediate_size": width(vision["intermediate_size"], 64)}
    vision["num_attention_heads"] = max(1, vision["hidden_size"] // 64)
    if layers is not None:
        text["num_hidden_layers"] = layers
    if vision_layers is not None:
        vision["num_hidden_layers"] = vision_layers
    return text, vision


def architecture(alias: str, *, scale: float = 1.0, layers: int | None = None, vision_layers: int | None = None,
                 patch_size: int | None = None):
    """`alias`'s real config (optionally scaled down) and processor, no weights: (config, model class, processor)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        MistralConfig,
    )

    from .tiny import make_tiny_tokenizer, tiny_vocab

    if alias in SHIPPED_CONFIGS:
        return qwen_architecture(alias, scale=scale, layers=layers, vision_layers=vision_layers)
    if alias not in ARCHITECTURES:
        raise ModelNotFoundError(f"--random-weights knows {', '.join([*ARCHITECTURES, *SHIPPED_CONFIGS])}; got {alias!r}")
    family, decoder, vision, text = ARCHITECTURES[alias]
    text, vision = scaled(text, vision, scale, layers, vision_layers, patch_size)
    text_config = (MistralConfig if decoder == "mistral" else LlamaConfig)(
        **text, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    vision_config = CLIPVisionConfig(**vision)
    common = dict(vision_config=vision_config, text_config=text_config, image_token_index=IMAGE_TOKEN_ID,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)
    if family == "llava-next":
        config, model_class = LlavaNextConfig(image_grid_pinpoints=NEXT_PINPOINTS, **common), LlavaNextForConditionalGeneration
    else:
        config, model_class = LlavaConfig(**common), LlavaForConditionalGeneration
    config.architectures = [model_class.__name__]
    tokenizer = make_tiny_tokenizer(padded_vocab(tiny_vocab(), text["vocab_size"]))
    return config, model_class, real_processor(family, tokenizer, vision)


def qwen_architecture(alias: str, *, scale: float = 1.0, layers: int | None = None, vision_layers: int | None = None):
    """A Qwen-VL alias's shipped hub config (scaled like the LLaVA ones: widths by `scale` keeping head_dim,
    depths by `layers` / `vision_layers`; Qwen2.5-VL's full-attention blocks and Qwen3-VL's DeepStack blocks moved
    to the same relative depths), a word-level tokenizer with Qwen's special tokens at their real ids padded to the
    real vocabulary, and Qwen's image processor with the checkpoint's settings."""
    import json

    from .tiny_qwen import make_tiny_qwen_tokenizer, qwen_words

    body = json.loads((Path(__file__).resolve().parent.parent / "assets" / "configs" / SHIPPED_CONFIGS[alias]).read_text())
    qwen3 = body["model_type"] == "qwen3_vl"
    text, vision = (body["text_config"] if qwen3 else body), body["vision_config"]
    if scale != 1.0:
        def width(x, multiple):
            return max(multiple, int(round(x * scale / multiple)) * multiple)

        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        group = text["num_attention_heads"] // text["num_key_value_heads"]
        text["hidden_size"] = max(head_dim * group, width(text["hidden_size"], head_dim * group))
        text["num_attention_heads"] = text["hidden_size"] // head_dim
        text["num_key_value_heads"] = text["num_attention_heads"] // group
        text["intermediate_size"] = width(text["intermediate_size"], 64)
        vision_head = vision["hidden_size"] // vision["num_heads"]  # kept: 80 (Qwen2.5-VL), 64 or 72 (Qwen3-VL)
        vision["hidden_size"] = width(vision["hidden_size"], vision_head)
        vision["num_heads"] = vision["hidden_size"] // vision_head
        vision["intermediate_size"] = width(vision["intermediate_size"], 64)
        vision["out_hidden_size"] = text["hidden_size"]
    if layers is not None:
        text["num_hidden_layers"] = layers
        if not qwen3:
            text["max_window_layers"] = layers
    if vision_layers is not None:
        depth, vision["depth"] = vision["depth"], vision_layers
        if qwen3:
            vision["deepstack_visual_indexes"] = sorted({i * vision_layers // depth
                                                         for i in vision["deepstack_visual_indexes"]})
        else:  # 7/15/23/31 of 32 -> 1/3/5/7 of 8: the last one last
            vision["fullatt_block_indexes"] = sorted({max(0, round((i + 1) * vision_layers / depth) - 1)
                                                      for i in vision["fullatt_block_indexes"]})
    vocab = {token: index for index, token in enumerate(qwen_words())} | QWEN_SPECIAL_IDS  # words below 151643
    used = set(vocab.values())
    vocab |= {f"<extra_{index}>": index for index in range(text["vocab_size"]) if index not in used}
    tokenizer = make_tiny_qwen_tokenizer(vocab)
    return (_qwen3_parts if qwen3 else _qwen2_5_parts)(body, tokenizer)


def _qwen2_5_parts(body: dict, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .qwen2_5_vl import CHAT_TEMPLATE, QwenProcessor
    from .tiny_qwen import make_tiny_qwen_image_processor

    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = make_tiny_qwen_image_processor(pixels=QWEN_PIXELS)
    return Qwen2_5_VLConfig(**body), Qwen2_5_VLForConditionalGeneration, QwenProcessor(tokenizer, image_processor)


def _qwen3_parts(body: dict, tokenizer):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from .qwen2_5_vl import QwenProcessor
    from .qwen3_vl import CHAT_TEMPLATE
    from .tiny_qwen3 import make_tiny_qwen3_image_processor

    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = make_tiny_qwen3_image_processor(pixels=QWEN3_PIXELS)
    return Qwen3VLConfig(**body), Qwen3VLForConditionalGeneration, QwenProcessor(tokenizer, image_processor, CHAT_TEMPLATE)


def build_random(alias: str, path: str | Path, *, seed: int = 0, dtype=None, scale: float = 1.0,
                 layers: int | None = None, vision_layers: int | None = None, patch_size: int | None = None) -> Path:
    """Write `alias`'s architecture with random weights as a save_pretrained directory."""
    import torch

    config, model_class, processor = architecture(alias, scale=scale, layers=layers, vision_layers=vision_layers,
                                                  patch_size=patch_size)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = model_class(config)
    model = model.to(dtype or torch.float16)  # still on meta: no memory
    path = Path(path)
    model.config.dtype = dtype or torch.float16  # what save_pretrained records
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    write_random_weights(model, path)
    processor.save_pretrained(path)
    return path


SHARD_BYTES = 2 * 2**30


def write_random_weights(meta_model, path: Path) -> None:
    """The parameters of a model on the meta device, drawn one at a time in parameter order (norm weights 1, other
    vectors 0, matrices N(0, 0.02)) and written shard by shard as safetensors of at most SHARD_BYTES (with the index
    transformers reads): peak memory is one shard, not the model (a 7B's 16 GB in fp16 does not fit beside its own
    export on a 24 GB machine)."""
    import json

    import torch
    from safetensors.torch import save_file

    written, shard, size = [], {}, 0  # written: (temporary file, its tensor names)

    def flush():
        file = path / f"random-shard-{len(written):05d}.tmp"
        save_file(shard, str(file), metadata={"format": "pt"})
        written.append((file, list(shard)))

    total = 0
    for name, meta in meta_model.named_parameters():  # shared (tied) parameters once, as save_pretrained
        value = torch.empty(meta.shape, dtype=meta.dtype)
        if name.endswith("norm.weight") or "layer_norm" in name or "layernorm" in name:
            value.fill_(1.0)
        elif value.dim() == 1:
            value.zero_()
        else:
            value.normal_(0.0, 0.02)
        if shard and size + value.nbytes > SHARD_BYTES:
            flush()
            shard, size = {}, 0
        shard[name], size, total = value, size + value.nbytes, total + value.nbytes
    flush()
    names = (["model.safetensors"] if len(written) == 1 else
             [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))])
    weight_map = {}
    for final, (file, tensors) in zip(names, written):
        file.rename(path / final)
        weight_map |= {name: final for name in tensors}
    if len(written) > 1:
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def padded_vocab(words: list[str], size: int) -> dict[str, int]:
    """The tiny words at their ids, <image> at the real image-token id, fillers up to `size`."""
    vocab = {w: i for i, w in enumerate(w for w in words if w != "<image>")}
    vocab["<image>"] = IMAGE_TOKEN_ID
    taken = set(vocab.values())
    for index in range(size):
        if index not in taken:
            vocab[f"<extra_{index}>"] = index
    return vocab


def real_processor(family: str, tokenizer, vision: dict):
    """The checkpoint's preprocessing: CLIP normalisation, 336-pixel tiles, anyres pinpoints for NeXT."""
    from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil, LlavaNextProcessor, LlavaProcessor

    tile, patch = vision["image_size"], vision["patch_size"]
    common = dict(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                  image_mean=CLIP_MEAN, image_std=CLIP_STD)
    if family == "llava-next":
        return LlavaNextProcessor(image_processor=LlavaNextImageProcessorPil(image_grid_pinpoints=NEXT_PINPOINTS, **common),
                                  tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
                                  num_additional_image_tokens=1)
    return LlavaProcessor(image_processor=CLIPImageProcessorPil(**common), tokenizer=tokenizer, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
