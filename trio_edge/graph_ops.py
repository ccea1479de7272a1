"""Small integer ops written so they export to ops TensorRT accepts for INT64.

TensorRT's Clip and CumSum are float-only, so index clamping uses Where and running counts are summed
in float32 (exact below 2**24, far above any sequence length here).
"""

from __future__ import annotations

import torch


def clamp_index(index: torch.Tensor, high: int) -> torch.Tensor:
    """Clamp an int64 index tensor to [0, high] with Where instead of Clip."""
    index = torch.where(index < 0, torch.zeros_like(index), index)
    return torch.where(index > high, torch.full_like(index, high), index)


def running_count(flags: torch.Tensor) -> torch.Tensor:
    """Inclusive running count of a bool vector as int64 (CumSum in float32)."""
    return torch.cumsum(flags.to(torch.float32), dim=0).to(torch.int64)


def add_deepstack_plane(h: torch.Tensor, planes: torch.Tensor, layer: int, width: int) -> torch.Tensor:
    """h (T, D) + DeepStack plane `layer` of planes (T, k*D) (columns layer*D .. (layer+1)*D), in h's dtype
    (Qwen3-VL adds plane i to the hidden states after decoder layer i)."""
    return h + planes[:, layer * width:(layer + 1) * width].to(h.dtype)
