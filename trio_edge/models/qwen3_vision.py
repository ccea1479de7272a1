"""Qwen3-VL's vision tower at one fixed image size, as an export-friendly module.

transformers' tower derives, from `grid_thw` on every call, the bilinear resampling of its learned position table
(num_position_embeddings, a 48x48 grid on the released checkpoints) to the image's patch grid, the 2-D rotary
table and the attention boundaries (`cu_seqlens`, split with `.tolist()`). At a fixed image size all of it is a
constant, computed here once with transformers' own helpers: the resampled position embeddings, the rotary
cos/sin. There is no window attention: every block attends over the whole image. DeepStack: the hidden states
after the blocks in `deepstack_visual_indexes` each go through their own merger; the module returns those k
feature maps concatenated on the feature axis, (M, k*D), beside the merged image features (M, D). Equal to
`model.visual(pixel_values, grid_thw)` (tests/models/test_qwen3_vl_parts.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .qwen_vision import check_image_sides, vision_attention


def image_side_multiple(vision_config) -> int:
    """Pixels per merged image token side: patch x spatial merge (32 px on every Qwen3-VL checkpoint)."""
    return int(vision_config.patch_size) * int(vision_config.spatial_merge_size)


def check_image_size(vision_config, width: int, height: int) -> None:
    """Refuse an image size that does not divide into whole merged tokens (the processor would resize it)."""
    patch, merge = int(vision_config.patch_size), int(vision_config.spatial_merge_size)
    check_image_sides(width, height, image_side_multiple(vision_config),
                      f"the side of one image token ({patch}-px patches, {merge}x{merge} merged)")


class Qwen3VisionFeatures(nn.Module):
    """pixel patches (N, C * temporal * patch * patch) of one image at the fixed size, as Qwen's image processor
    lays them out -> merged image features (M, D), M = N / merge^2, and (when the checkpoint has DeepStack) the
    DeepStack features (M, k*D), in transformers' token order."""

    cuda_graph_safe = True  # fixed shapes, constants computed at construction

    def __init__(self, visual, thw: tuple[int, int, int]):
        super().__init__()
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

        self.visual = visual
        grid = torch.tensor([list(thw)])
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
        with torch.no_grad():
            positions = (visual.pos_embed(indices) * weights[:, :, None]).sum(1)  # as the tower computes it
            cos, sin = visual.rotary_pos_emb(positions, get_vision_position_ids(grid, visual.spatial_merge_size))
        self.register_buffer("position_embeddings", positions, persistent=False)
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)
        # block index -> its DeepStack merger, in the order of deepstack_visual_indexes
        self.deepstack = {int(block): merger for block, merger in zip(visual.deepstack_visual_indexes,
                                                                      visual.deepstack_merger_list)}

    def forward(self, pixel_values):
        h = self.visual.patch_embed(pixel_values)
        h, planes = self.run_blocks(h + self.position_embeddings.to(h.dtype), self.cos, self.sin)
        features = self.visual.merger(h)  # (M, D)
        return (features, torch.cat(planes, dim=-1)) if planes else features

    def run_blocks(self, h, cos, sin, images: int = 1):
        """The vision blocks on patch embeddings h (images * N, C), `images` equal consecutive spans each attending
        within itself (cos / sin: the rotary rows of those spans) -> (the last block's output, [the DeepStack
        mergers' outputs (images * M, D)] in the order of deepstack_visual_indexes). One image when exported; a
        batch of images in the training script of trio-tiny-qwen3."""
        planes = []
        for index, block in enumerate(self.visual.blocks):
            h = h + vision_attention(block.attn, block.norm1(h), cos, sin, images)
            h = h + block.mlp(block.norm2(h))
            if index in self.deepstack:
                planes.append(self.deepstack[index](h))
        return h, planes
