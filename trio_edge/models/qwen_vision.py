"""Qwen2.5-VL's vision tower at one fixed image size, as an export-friendly module.

transformers' tower computes its window order, window boundaries and rotary table from `grid_thw` with
`.tolist()` and splits attention per window in a Python loop: data-dependent, not exportable with fixed
shapes. At a fixed image size all of it is a constant, computed here once with transformers' own helpers:
the window permutation and its inverse, the rotary cos/sin in window order, and the window length. When the
merged grid is a whole number of attention windows (image sides in multiples of `window_pixels`, 112 px on
every Qwen2.5-VL checkpoint), every window holds the same number of patches, so windowed attention is one
batched attention over (windows, window length) and full attention one over the whole sequence. Equal to
`model.visual(pixel_values, grid_thw)` (tests/models/test_qwen_vision.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


def window_pixels(vision_config) -> int:
    """Image pixels per attention window side: patch x merge x (window_size // merge // patch) merged units."""
    return int(vision_config.window_size) // int(vision_config.spatial_merge_size) // int(vision_config.patch_size) \
        * int(vision_config.spatial_merge_size) * int(vision_config.patch_size)


def check_image_size(vision_config, width: int, height: int) -> None:
    """Refuse an image size that does not tile into whole attention windows."""
    check_image_sides(width, height, window_pixels(vision_config), "the vision tower's attention window")


def check_image_sides(width: int, height: int, side: int, unit: str) -> None:
    """Refuse an image size whose sides are not multiples of `side` px (`unit`: what that many pixels are)."""
    if width <= 0 or height <= 0 or width % side or height % side:
        raise InputError(f"image size {width}x{height} is not a multiple of {side} px, {unit}; pick sides in "
                         f"multiples of {side} px (e.g. {max(side, width // side * side)}x"
                         f"{max(side, height // side * side)})")


def grid_thw(vision_config, width: int, height: int, frames: int = 1) -> tuple[int, int, int]:
    """(temporal, height, width) in patches of one image (or `frames` frames) at width x height pixels."""
    patch, temporal = int(vision_config.patch_size), int(vision_config.temporal_patch_size)
    return (max(1, frames // temporal), height // patch, width // patch)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last axis, as transformers' vision rotary does it."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionFeatures(nn.Module):
    """pixel patches (N, C * temporal * patch * patch), as Qwen's image processor lays them out for one image at
    the fixed size -> merged image features (M, D), M = N / merge^2, in transformers' token order."""

    cuda_graph_safe = True  # fixed shapes, constants computed at construction

    def __init__(self, visual, thw: tuple[int, int, int]):
        super().__init__()
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

        config = visual.config
        self.visual = visual
        self.unit = int(visual.spatial_merge_size) ** 2
        self.full_attention_blocks = frozenset(int(i) for i in visual.fullatt_block_indexes)
        grid = torch.tensor([list(thw)])
        window_index, cu_window = get_vision_window_index(grid, spatial_merge_size=visual.spatial_merge_size,
                                                          window_size=visual.window_size, patch_size=visual.patch_size)
        lengths = set((cu_window[1:] - cu_window[:-1]).tolist())
        if len(lengths) != 1:
            raise InputError(f"grid {thw} does not tile into equal attention windows ({sorted(lengths)} patches); "
                             f"use image sides in multiples of {window_pixels(config)} px")
        self.window_tokens = lengths.pop()
        self.tokens = int(grid.prod())
        positions = get_vision_position_ids(grid, visual.spatial_merge_size)
        cos, sin = visual.rotary_pos_emb(torch.empty(0), positions)
        self.register_buffer("window_index", window_index, persistent=False)
        self.register_buffer("reverse_index", torch.argsort(window_index), persistent=False)
        self.register_buffer("cos", self._in_window_order(cos.float()), persistent=False)
        self.register_buffer("sin", self._in_window_order(sin.float()), persistent=False)

    def _in_window_order(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) rows in raster-of-merge-units order -> window order (transformers' permute_input_for_window_attn)."""
        units = x.reshape(self.tokens // self.unit, self.unit, -1)
        return units.index_select(0, self.window_index).reshape(self.tokens, -1)

    def forward(self, pixel_values):
        visual = self.visual
        h = self._in_window_order(visual.patch_embed(pixel_values.to(visual.patch_embed.proj.weight.dtype)))
        for index, block in enumerate(visual.blocks):
            windows = 1 if index in self.full_attention_blocks else self.tokens // self.window_tokens
            h = h + self._attention(block.attn, block.norm1(h), windows)
            h = h + block.mlp(block.norm2(h))
        merged = visual.merger(h)  # (M, D) in window order
        return merged.index_select(0, self.reverse_index)

    def _attention(self, attn, x, windows: int):
        return vision_attention(attn, x, self.cos, self.sin, windows)


def vision_attention(attn, x, cos, sin, windows: int = 1):
    """A Qwen vision block's bidirectional attention (its fused qkv, rotary table cos/sin (N, hd) in float32, proj)
    within each of `windows` equal consecutive spans of x (N, C) -> (N, C)."""
    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3).unbind(0)  # (H, N, hd) each
    cos, sin = cos[None], sin[None]
    q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype)
    k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype)

    def spans(t):  # (H, N, hd) -> (H, windows, N / windows, hd)
        return t.reshape(t.shape[0], windows, n // windows, t.shape[-1])

    out = F.scaled_dot_product_attention(spans(q), spans(k), spans(v), scale=attn.scaling)
    return attn.proj(out.reshape(attn.num_heads, n, -1).transpose(0, 1).reshape(n, -1))
