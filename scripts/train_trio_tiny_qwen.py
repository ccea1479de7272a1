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
from trio_edge.models.qwen2_5_vl import Qwen2_5_VLAdapter, QwenProcessor
from trio_edge.models.qwen_vision import QwenVisionFeatures, rotate_half
from trio_edge.models.tiny_qwen import make_tiny_qwen_image_processor, make_tiny_qwen_tokenizer, tiny_qwen2_5_vl_config


def build(args):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return build_qwen(args, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLAdapter,
                      lambda tokenizer: tiny_qwen2_5_vl_config(tokenizer, **model_sizes(args)),
                      make_tiny_qwen_image_processor(pixels=args.image_side ** 2))


def model_sizes(args) -> dict:
    """The tiny config builders' size options, from the shared parser's."""
    return dict(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                vision_hidden=args.vision_hidden, vision_layers=args.vision_layers, vision_heads=args.vision_heads)


def build_qwen(args, model_class, adapter_class, make_config, image_processor):
    """A Qwen-VL `model_class` (config `make_config(tokenizer)`) with the tiny Qwen tokenizer carrying the family's
    chat template and `image_processor` (pinned to --image-side square), unit-scale init -> (model, processor,
    adapter)."""
    tokenizer = make_tiny_qwen_tokenizer()
    tokenizer.chat_template = adapter_class.chat_template
    config = make_config(tokenizer)
    processor = QwenProcessor(tokenizer, image_processor, adapter_class.chat_template)
    torch.manual_seed(args.seed)
    model = model_class(config)
    if args.init == "scaled":
        scaled_init(model, config, skip=())  # the vision tower too: its HF init is std 0.02, not fan-in scaled
    adapter = adapter_class(config, processor, model)
    if adapter.default_grid() != (args.image_side, args.image_side):
        raise SystemExit(f"--image-side {args.image_side} must be a multiple of {adapter.image_side_multiple()} px "
                         f"({adapter.family}'s image side unit)")
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

    vision_class = BatchedQwenVision  # the family's vision tower over a batch of images at the fixed size

    def __init__(self, model, adapter, grid, probe_layer: int = 2):
        torch.nn.Module.__init__(self)
        self.model = model
        self.vision = self.vision_class(model.model.visual, adapter._thw(grid))
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


def merged_token_labels(per_side: int):
    """Per merged image token (raster order over the per_side x per_side merged grid), the colour / shape of the
    object covering its cell of the 112-px scene (the image is letterboxed to the square grid, so each token's
    pixels are that cell's, resampled)."""
    if 112 % per_side:
        raise SystemExit(f"{per_side} image tokens per side do not split the 112-px scene into whole cells")

    def labels_of(sample):
        return object_labels(sample, region_objects(sample["mask"], per_side, len(sample["objects"])))

    return labels_of


def make_qwen_parser(description: str, image_side: int, side_unit: int, **defaults):
    """The shared recipe's options, an --image-side (default `image_side`, a multiple of `side_unit` px) and
    --vision-heads, with the Qwen tiny models' sizes (12,000 training images: the uint8 patches of a 224-px image
    are 3x a trio-tiny image's, 150 KB) and `defaults` over them."""
    p = make_parser(description)
    p.add_argument("--image-side", type=int, default=image_side,
                   help=f"export / training image size (multiple of {side_unit} px)")
    p.add_argument("--vision-heads", type=int, default=2)
    p.set_defaults(**{"vision_layers": 3, "vision_hidden": 64, "train_size": 12_000, "layers": 12, "hidden": 64,
                      "steps": 2000, **defaults})
    return p


def parse_args(argv=None):
    parser = make_qwen_parser(__doc__, image_side=224, side_unit=112, cache_dir="/tmp/trio-tiny-qwen-cache")
    return parser.parse_args(argv)


def run_qwen(args, build, trainer_class, token_pixels: int):
    """--eval-only, else the recipe with `build`, `trainer_class` and labels per merged token of `token_pixels` px
    (patch x spatial merge)."""
    torch.set_num_threads(args.threads)
    if args.eval_only:
        return evaluate_only(args)
    train_model(args, build, lambda model, adapter, grid: trainer_class(model, adapter, grid, args.probe_layer),
                merged_token_labels(args.image_side // token_pixels))


def main(argv=None):
    run_qwen(parse_args(argv), build, QwenTrainer, token_pixels=28)


if __name__ == "__main__":
    main()
