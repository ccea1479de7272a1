"""Qwen-VL's multimodal rotary positions (M-RoPE) of a prompt, in closed form.

transformers' `get_rope_index` walks the token types of every request. Here the walk is the same, over runs of
text and visual tokens, with every visual run's merged grid known at export (a fixed image size):
- a text run of n tokens: (t, h, w) = (p, p, p) for p in current .. current + n - 1; current += n;
- a visual run (an image, a whole Qwen2.5-VL video, or one Qwen3-VL video frame group) with merged grid (t, h, w)
  and temporal interval i: token (ti, hi, wi) in raster order gets (current + int(ti * i), current + hi,
  current + wi); then current += max(h, w) (transformers 5: the temporal extent is not counted, so text after a
  video can reuse positions its later frames hold, exactly as transformers numbers it).
Still images have interval 1; a Qwen2.5-VL video tokens_per_second x its seconds per temporal patch.
Decoding continues after the largest position of all rows: the first generated token's position is
`max(rows) + 1` (transformers' `rope_deltas`), never the KV length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass(frozen=True)
class VisualSpan:
    """One visual run of a prompt: its merged grid (t, h, w) and the temporal step between its t slices."""

    grid: tuple[int, int, int]
    interval: float | torch.Tensor = 1

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


def span_positions(start: int, span: VisualSpan, device) -> torch.Tensor:
    """(3, t*h*w) rows of one visual run starting at `start` (transformers' get_vision_position_ids)."""
    t, h, w = span.grid
    temporal = (torch.arange(t, device=device) * span.interval).long()  # before the offset, as transformers
    grid_t, grid_h, grid_w = torch.meshgrid(temporal, torch.arange(h, device=device), torch.arange(w, device=device),
                                            indexing="ij")
    return torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + start


def runs(is_visual: torch.Tensor) -> list[tuple[bool, int]]:
    """(S,) bool -> [(visual?, length), ...] of its maximal runs, in order."""
    flags = is_visual.tolist()
    out: list[tuple[bool, int]] = []
    for flag in flags:
        if out and out[-1][0] == flag:
            out[-1] = (flag, out[-1][1] + 1)
        else:
            out.append((flag, 1))
    return out


def multimodal_positions(is_visual: torch.Tensor, spans: list[VisualSpan], kept=None) -> torch.Tensor:
    """(3, 1, S) int64 positions of a prompt whose visual tokens (`is_visual`, (S,) bool) form the runs `spans`, in
    order (== get_rope_index). `kept`: after a vision-stage prune the prompt holds only some tokens of each run: per
    run, the kept tokens' indices within it ((n_i,) each); they keep the unpruned run's rows."""
    device, current, rows, visual = is_visual.device, 0, [], iter(enumerate(spans))
    for flag, length in runs(is_visual):
        if not flag:
            rows.append(torch.arange(current, current + length, device=device).expand(3, -1))
            current += length
            continue
        index, span = next(visual, (None, None))
        if span is None:
            raise InputError(f"the prompt has more image/video spans than the {len(spans)} it was given; separate "
                             "images and frames with text (e.g. <|vision_start|> ... <|vision_end|>)")
        run_rows = span_positions(current, span, device)
        if kept is not None:
            run_rows = run_rows.index_select(1, kept[index].to(device))
        if run_rows.shape[1] != length:
            raise InputError(f"a run of {length} image/video tokens in the prompt does not match its grid "
                             f"{span.grid} ({run_rows.shape[1]} tokens); images and frames written next to each "
                             "other must be separated by text (e.g. <|vision_start|> ... <|vision_end|>)")
        rows.append(run_rows)
        current += max(span.grid[1], span.grid[2])
    if next(visual, None) is not None:
        raise InputError(f"the prompt has fewer image/video spans than the {len(spans)} it was given")
    return torch.cat(rows, dim=1)[:, None, :]


def image_prompt_positions(before: int, merged_grid: tuple[int, int, int], after: int,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """(3, 1, before + t*h*w + after) positions of [text | one image | text], as get_rope_index gives."""
    t, h, w = merged_grid
    is_visual = torch.zeros(before + t * h * w + after, dtype=torch.bool, device=device)
    is_visual[before:before + t * h * w] = True
    return multimodal_positions(is_visual, [VisualSpan(merged_grid)])


def first_decode_position(rows: torch.Tensor) -> int:
    """The position of the first generated token after a prompt with M-RoPE `rows` (3, 1, S): max + 1."""
    return int(rows.max()) + 1
