#!/usr/bin/env python
"""Train `trio-tiny-qwen`: a small Qwen2_5_VLForConditionalGeneration on the synthetic visual QA task.

The recipe is trio-tiny's (scripts/train_trio_tiny.py, whose pieces this script imports): answer-only loss,
auxiliary per-token colour / shape heads, a vision-only stage 1, several questions per image under a tree
mask, a question probe, a curriculum of easy scenes, unit-scale init. What is Qwen's here:
  - the model: Qwen2.5-VL's geometry scaled down (patch 14, temporal patch 2, 2x2 merger, 112-px attention
    windows, the last vision block full attention), Qwen's chat prompt, eos <|im_end|>; the decoder is deep
    and narrow (12 layers x 64) because Qwen cuts start after layer 1 (TRIO's Qwen proxy reruns the layer
    just executed): on 4 layers, layer 0's full image alone averages 1/4, so the 2/9 and 1/9 budgets of
    TRIO, FastV, DART and PyramidDrop were out of reach;
  - the image: one picture letterboxed to --image-side (224: 16x16 patches -> 64 merged image tokens), the
    image processor pinned to that square (min = max pixels) so the adapter's default grid is it;
  - the training forward: the vision tower batched over images (each image's windows become windows of one
    packed sequence), and M-RoPE positions (prefix text, the image's (t, h, w) rows, then each question's text
    continuing at the prompt's image start + max(h, w)); checked once against the model's own
    get_image_features / forward;
  - the aux labels: one per merged image token (the 14x14-pixel cell of the 112-px scene it covers).
The aux heads and the probe are training-only: the saved checkpoint is a plain Qwen2.5-VL.

Usage (the shipped model, ~25 min on one CPU thread; dataset tensors are cached in --cache-dir):
    python scripts/train_trio_tiny_qwen.py --out trio_edge/assets/trio-tiny-qwen
Held-out accuracy of the shipped model (greedy generate, full image tokens):
    python scripts/train_trio_tiny_qwen.py --eval-only trio-tiny-qwen --heldout 400
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from train_trio_tiny import (Trainer, evaluate_only, make_parser, object_labels, region_objects, scaled_init,
                             train_model)

from trio_edge.models.mrope import image_prompt_positions
from trio_edge.models.qwen2_5_vl import CHAT_TEMPLATE, Qwen2_5_VLAdapter, QwenProcessor
from trio_edge.models.qwen_vision import QwenVisionFeatures, rotate_half
from trio_edge.models.tiny_qwen import make_tiny_qwen_image_processor, make_tiny_qwen_tokenizer, tiny_qwen2_5_vl_config


def build(args):
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = make_tiny_qwen_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = tiny_qwen2_5_vl_config(tokenizer, hidden=args.hidden, layers=args.layers, heads=args.heads,
                                    kv_heads=args.kv_heads, vision_hidden=args.vision_hidden,
                                    vision_layers=args.vision_layers, vision_heads=args.vision_heads)
    processor = QwenProcessor(tokenizer, make_tiny_qwen_image_processor(pixels=args.image_side ** 2))
    torch.manual_seed(args.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    if args.init == "scaled":
        scaled_init(model, config, skip=())  # the vision tower too: its HF init is std 0.02, not fan-in scaled
    adapter = Qwen2_5_VLAdapter(config, processor, model)
    if adapter.default_grid() != (args.image_side, args.image_side):
        raise SystemExit(f"--image-side {args.image_side} must be a multiple of 112 px (the attention window)")
    return model, processor, adapter


class BatchedQwenVision(QwenVisionFeatures):
    """QwenVisionFeatures (one image at the fixed size) over a batch (B, N, P) -> (B, M, D): the B images'
    windows are the windows of one packed sequence; full-attention blocks attend within each image."""

    def forward(self, pixel_values):
        visual, b = self.visual, pixel_values.shape[0]
        h = visual.patch_embed(pixel_values.flatten(0, 1)).view(b, self.tokens // self.unit, self.unit, -1)
        h = h.index_select(1, self.window_index).reshape(b * self.tokens, -1)  # window order, image by image
        for index, block in enumerate(visual.blocks):
            windows = b if index in self.full_attention_blocks else b * self.tokens // self.window_tokens
            h = h + self._attention(block.attn, block.norm1(h), windows)
            h = h + block.mlp(block.norm2(h))
        merged = visual.merger(h).view(b, self.tokens // self.unit, -1)
        return merged.index_select(1, self.reverse_index)

    def _attention(self, attn, x, windows: int):
        n = x.shape[0]
        q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3).unbind(0)  # (H, N, hd) each
        cos, sin = (table.repeat(n // self.tokens, 1)[None] for table in (self.cos, self.sin))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin

        def spans(t):
            return t.reshape(t.shape[0], windows, n // windows, t.shape[-1])

        out = F.scaled_dot_product_attention(spans(q), spans(k), spans(v), scale=attn.scaling)
        return attn.proj(out.reshape(attn.num_heads, n, -1).transpose(0, 1).reshape(n, -1))


class QwenTrainer(Trainer):
    """Trainer's packed multi-question forward with Qwen's vision tower and M-RoPE positions."""

    def __init__(self, model, adapter, grid, probe_layer: int = 2):
        torch.nn.Module.__init__(self)
        self.model = model
        self.vision = BatchedQwenVision(model.model.visual, adapter._thw(grid))
        self.merged = adapter.merged_grid(grid)
        self.add_heads(model, adapter, probe_layer)

    def vision_modules(self):
        return (self.model.model.visual,)  # the tower and its merger (Qwen's projector)

    def tile_features(self, pixels):
        """(B, N, P) patches -> merged features (B, 1, M, D) (one "tile": the shape aux_loss_of expects)."""
        return self.vision(pixels)[:, None]

    def pack(self, feats):
        return feats[:, 0]

    def position_ids(self, batch: int, n_prefix: int, order: torch.Tensor) -> torch.Tensor:
        """(3, B, T) M-RoPE rows: the prompt's own rows (== get_rope_index) for the prefix, the image and each
        question's text, every question numbered from the same start."""
        image_end = n_prefix + self.merged[0] * self.merged[1] * self.merged[2]
        after = int(order[image_end:].max()) - image_end + 1 if order.numel() > image_end else 0
        rows = image_prompt_positions(n_prefix, self.merged, after)[:, 0]
        text = rows[:, image_end:]
        rows = torch.cat([rows[:, :image_end], text[:, order[image_end:] - image_end]], dim=1)
        return rows[:, None].expand(-1, batch, -1)


def merged_token_labels(side: int):
    """Per merged image token (raster order over the side/28 x side/28 merged grid), the colour / shape of the
    object covering its cell of the 112-px scene (the image is letterboxed to side x side, an exact upscale)."""
    per_side = side // 28

    def labels_of(sample):
        return object_labels(sample, region_objects(sample["mask"], per_side, len(sample["objects"])))

    return labels_of


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--image-side", type=int, default=224, help="export / training image size (multiple of 112 px)")
    p.add_argument("--vision-heads", type=int, default=2)
    # 12,000 training images: the uint8 patches of a 224-px image are 3x a trio-tiny image's (150 KB)
    p.set_defaults(cache_dir="/tmp/trio-tiny-qwen-cache", vision_layers=3, vision_hidden=64, train_size=12_000,
                   layers=12, hidden=64, steps=2000)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval_only:
        return evaluate_only(args)
    train_model(args, build, lambda model, adapter, grid: QwenTrainer(model, adapter, grid, args.probe_layer),
                merged_token_labels(args.image_side))


if __name__ == "__main__":
    main()
