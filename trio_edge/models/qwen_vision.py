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

    def __init__(self, visual, thw: tuple[int, int, int], score_blocks: tuple[int, ...] = ()):
        """`score_blocks`: blocks whose attention `features_and_scores` also reduces to one score per merged token
        (TRIO's Qwen vision stage); their attention then runs with explicit probabilities instead of SDPA."""
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
        self.score_blocks = tuple(int(b) for b in score_blocks)
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
        return self.features_and_scores(pixel_values)[0]

    def features_and_scores(self, pixel_values):
        """-> (merged features (M, D) in raster order, {block: (M,) attention received per merged token, raster
        order} for each of `score_blocks`)."""
        visual = self.visual
        h = self._in_window_order(visual.patch_embed(pixel_values.to(visual.patch_embed.proj.weight.dtype)))
        scores = {}
        for index, block in enumerate(visual.blocks):
            windows = 1 if index in self.full_attention_blocks else self.tokens // self.window_tokens
            out, probs = self._attention(block.attn, block.norm1(h), windows, index in self.score_blocks)
            if probs is not None:
                scores[index] = self._unit_scores(probs)
            h = h + out
            h = h + block.mlp(block.norm2(h))
        merged = visual.merger(h)  # (M, D) in window order
        return merged.index_select(0, self.reverse_index), scores

    def _unit_scores(self, probs):
        """(heads, windows, n, n) softmax probabilities -> (M,): summed over heads, averaged over all N queries (a
        key's window holds every query that can reach it), averaged over each merge unit's patches, raster order
        (TRIO's Qwen code: sum(0), mean(0), view(-1, 4).mean(1), then the reverse window permutation)."""
        received = probs.sum(dim=0).sum(dim=-2).reshape(self.tokens) / self.tokens  # (N,) window order
        units = received.reshape(self.tokens // self.unit, self.unit).mean(dim=-1)
        return units.index_select(0, self.reverse_index)

    def _attention(self, attn, x, windows: int, with_probs: bool = False):
        """-> (attention output (N, C), the float32 probabilities (heads, windows, n, n) when `with_probs`, else
        None)."""
        if with_probs:
            return vision_attention_with_probs(attn, x, self.cos, self.sin, windows)
        return vision_attention(attn, x, self.cos, self.sin, windows), None


class PrunedQwenVision(nn.Module):
    """pixel patches -> (kept image features (keep, D), kept (1, keep) int64 merged-token indices): the tower with
    the two blocks TRIO's Qwen vision stage reads, and its rule (trio.trio_ve_qwen.TrioVEQwenRule)."""

    cuda_graph_safe = True

    def __init__(self, visual, thw: tuple[int, int, int], rule):
        super().__init__()
        self.tower = QwenVisionFeatures(visual, thw, score_blocks=rule.blocks)
        self.rule = rule

    def forward(self, pixel_values):
        merged, scores = self.tower.features_and_scores(pixel_values)
        local, global_ = (scores[block] for block in self.rule.blocks)
        return self.rule(merged, local, global_)


def _rotated_spans(attn, x, cos, sin, windows: int):
    """q, k, v of a Qwen vision block (fused qkv, rotary table cos/sin (N, hd) in float32) on x (N, C), each split
    into `windows` equal consecutive spans: (H, windows, N / windows, hd)."""
    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3).unbind(0)  # (H, N, hd) each
    cos, sin = cos[None], sin[None]
    q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype)
    k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype)
    return tuple(t.reshape(t.shape[0], windows, n // windows, t.shape[-1]) for t in (q, k, v))


def _merge_heads(attn, out):
    heads, n = attn.num_heads, out.shape[1] * out.shape[2]
    return attn.proj(out.reshape(heads, n, -1).transpose(0, 1).reshape(n, -1))


def vision_attention(attn, x, cos, sin, windows: int = 1):
    """A Qwen vision block's bidirectional attention within each of `windows` equal consecutive spans of x (N, C)
    -> (N, C)."""
    q, k, v = _rotated_spans(attn, x, cos, sin, windows)
    return _merge_heads(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scaling))


def vision_attention_with_probs(attn, x, cos, sin, windows: int = 1):
    """vision_attention with explicit softmax probabilities (what TRIO's Qwen vision stage reads; SDPA does not
    return them) -> (output (N, C), float32 probabilities (heads, windows, n, n))."""
    q, k, v = _rotated_spans(attn, x, cos, sin, windows)
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scaling, dim=-1)
    return _merge_heads(attn, probs.to(v.dtype) @ v), probs
