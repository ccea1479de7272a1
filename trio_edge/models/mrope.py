"""Qwen-VL's multimodal rotary positions (M-RoPE) of a prompt with one image, in closed form.

transformers' `get_rope_index` walks the token types of every request; with the image grid fixed at export
the rows depend only on how many text tokens come before and after the image span:
- text before the image: (t, h, w) = (i, i, i) for i in 0..before-1;
- image token (ti, hi, wi) of the merged grid: (before + ti, before + hi, before + wi), raster order;
- text after: continues at before + max(grid h, grid w) (transformers 5: max of the merged sides, which is the
  image's largest position + 1 for a still image), one more per token.
Decoding continues after the last row's position, so the first generated token's position is
`max(rows) + 1` (transformers' `rope_deltas`), never the KV length.
"""

from __future__ import annotations

import torch


def image_prompt_positions(before: int, merged_grid: tuple[int, int, int], after: int,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """(3, 1, before + t*h*w + after) int64 positions of [text | image grid | text], as get_rope_index gives."""
    t, h, w = merged_grid
    text_before = torch.arange(before, device=device).expand(3, -1)
    grid_t, grid_h, grid_w = torch.meshgrid(torch.arange(t, device=device), torch.arange(h, device=device),
                                            torch.arange(w, device=device), indexing="ij")
    image = torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + before
    resume = before + max(h, w)
    text_after = torch.arange(resume, resume + after, device=device).expand(3, -1)
    return torch.cat([text_before, image, text_after], dim=1)[:, None, :]


def first_decode_position(rows: torch.Tensor) -> int:
    """The position of the first generated token after a prompt with M-RoPE `rows` (3, 1, S): max + 1."""
    return int(rows.max()) + 1
