#!/usr/bin/env python
"""Train `trio-tiny-qwen3`: a small Qwen3VLForConditionalGeneration (with DeepStack) on the synthetic visual QA task.

The recipe is trio-tiny's (scripts/train_trio_tiny.py) and the Qwen parts trio-tiny-qwen's
(scripts/train_trio_tiny_qwen.py: the model's construction, M-RoPE rows for the tree-masked questions, labels per
merged token, the options); both are imported here. What is Qwen3-VL's:
  - the model: Qwen3-VL's geometry scaled down (trio_edge.models.tiny_qwen3: patch 16, temporal patch 2, 2x2
    merger, no window attention, a learned 8x8 position table interpolated to the grid, QK-norm, interleaved
    M-RoPE), Qwen3-VL-Instruct's chat prompt (no system turn), eos <|im_end|>; 4 vision blocks whose first three
    feed DeepStack (--deepstack 0,1,2: after 1/4, 1/2, 3/4 of the tower, as Qwen3-VL-2B's 5, 11, 17 of 24), so
    their merged features are added to the image positions after decoder layers 0, 1, 2; the decoder deep and
    narrow (12 layers x 64) as trio-tiny-qwen's, so that cuts after layer 1 reach the 2/9 and 1/9 budgets;
  - the image: one picture letterboxed to --image-side (256: 16x16 patches -> 64 merged image tokens, each the
    14x14-pixel cell of the 112-px scene), the image processor pinned to that square (min = max pixels);
  - the training forward: the vision tower batched over images (the images are equal spans of one packed
    sequence, each attending within itself: Qwen3VisionFeatures.run_blocks), and DeepStack added by the text
    model's own code (visual_pos_masks / deepstack_visual_embeds, as Qwen3VLModel.forward passes them); checked
    once against the model's own get_image_features / forward (features and answer logits, DeepStack included).
The aux heads and the probe are training-only: the saved checkpoint is a plain Qwen3-VL.

Usage (the shipped model, ~30 min on one CPU thread; dataset tensors are cached in --cache-dir):
    python scripts/train_trio_tiny_qwen3.py --out trio_edge/assets/trio-tiny-qwen3 --threads 1
Held-out accuracy of the shipped model (greedy generate, full image tokens):
    python scripts/train_trio_tiny_qwen3.py --eval-only trio-tiny-qwen3 --heldout 400
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from train_trio_tiny_qwen import QwenTrainer, build_qwen, make_qwen_parser, model_sizes, run_qwen

from trio_edge.models.qwen3_vision import Qwen3VisionFeatures
from trio_edge.models.qwen3_vl import Qwen3VLAdapter
from trio_edge.models.tiny_qwen3 import make_tiny_qwen3_image_processor, tiny_qwen3_vl_config


def build(args):
    from transformers import Qwen3VLForConditionalGeneration

    return build_qwen(args, Qwen3VLForConditionalGeneration, Qwen3VLAdapter,
                      lambda tokenizer: tiny_qwen3_vl_config(tokenizer, deepstack=args.deepstack, **model_sizes(args)),
                      make_tiny_qwen3_image_processor(pixels=args.image_side ** 2))


class BatchedQwen3Vision(Qwen3VisionFeatures):
    """Qwen3VisionFeatures (one image at the fixed size) over a batch (B, N, P) -> (merged features (B, M, D),
    [DeepStack features (B, M, D)] in the order of deepstack_visual_indexes). The patch embedding's Conv3d, whose
    kernel is its stride (one patch), is applied as the linear map it is: 9x faster on one CPU thread, forward and
    backward (0.02 s instead of 0.19 s a step)."""

    def forward(self, pixel_values):
        b = pixel_values.shape[0]
        proj = self.visual.patch_embed.proj
        h = F.linear(pixel_values.flatten(0, 1), proj.weight.flatten(1), proj.bias)
        h = h + self.position_embeddings.repeat(b, 1)
        h, planes = self.run_blocks(h, self.cos.repeat(b, 1), self.sin.repeat(b, 1), images=b)
        return self.visual.merger(h).unflatten(0, (b, -1)), [plane.unflatten(0, (b, -1)) for plane in planes]


class Qwen3Trainer(QwenTrainer):
    """trio-tiny-qwen's training forward with Qwen3-VL's tower; the DeepStack features of the last tile_features
    call are added to the image positions after decoder layers 0..k-1 by the text model itself."""

    vision_class = BatchedQwen3Vision

    def tile_features(self, pixels):
        """(B, N, P) patches -> merged features (B, 1, M, D); the DeepStack features are kept for the decoder."""
        features, self.deepstack_features = self.vision(pixels)
        return features[:, None]

    def decoder_inputs(self, batch: int, length: int, image_start: int, image_tokens: int) -> dict:
        """Qwen3VLTextModel's DeepStack inputs, as Qwen3VLModel.forward builds them for one image per sequence: the
        image positions (batch, length) and per DeepStack layer the features of those positions in row-major
        order (batch * image_tokens, D)."""
        image = torch.zeros(batch, length, dtype=torch.bool)
        image[:, image_start:image_start + image_tokens] = True
        planes = [plane.flatten(0, 1) for plane in self.deepstack_features]
        return {"visual_pos_masks": image, "deepstack_visual_embeds": planes}


def parse_args(argv=None):
    p = make_qwen_parser(__doc__, image_side=256, side_unit=32, cache_dir="/tmp/trio-tiny-qwen3-cache",
                         vision_layers=4)
    p.add_argument("--deepstack", type=lambda text: [int(i) for i in text.split(",")], default=[0, 1, 2],
                   help="vision blocks whose merged features DeepStack adds after decoder layers 0, 1, ... "
                        "(comma-separated; default 0,1,2)")
    return p.parse_args(argv)


def main(argv=None):
    run_qwen(parse_args(argv), build, Qwen3Trainer, token_pixels=32)


if __name__ == "__main__":
    main()
