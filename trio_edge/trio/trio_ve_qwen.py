"""TRIO's vision-encoder stage as its Qwen2.5-VL port runs it (ocy1/TRIO qwen/model/qwen2_5_vl_custom.py:155-200,
qwen2_5_vl_utils.py window_selection / token_merging), in fixed shapes for export.

What the released code does, on the merged grid (h x w tokens, M = h * w) of one image:
- scores: the attention every patch receives in two vision blocks, `fullatt_block_indexes[0]` ("local") and the
  last block ("global"): softmax probabilities summed over heads, averaged over all queries, then averaged over
  the 4 patches of each 2x2 merge unit (the tower side: models.qwen_vision.QwenVisionScores);
- keep = int(ratio * M) (the schedule's vision:KEEP); local = keep // 2 tokens by a per-window cap: windows of
  4x4 merged tokens, floor(h/4) x floor(w/4) of them, the leftover rows / columns folded into the last window
  row / column; walking the tokens by descending local score, a token is taken while its window holds fewer
  than ceil(local / windows), until `local` are taken;
- global = keep - keep // 2 tokens: the top-k of the global scores with the local picks set to the bottom;
- the union, sorted ascending; each dropped merger output is averaged into its most cosine-similar kept one
  (plain mean, first on ties): trio.trio_ve.merge_into_kept, the same token_merging as the LLaVA code's.
The sequential walk is computed in closed form (tests/qwen_reference.py window_cap_closed_form, checked against
the walk): a token is taken iff its rank inside its window is below the cap and it is among the first `local` of
those by descending score. Ties go to the lower index (a stable descending sort), as the plain reference.
"""

from __future__ import annotations

import math

import torch

from ..errors import ScheduleError
from .trio_ve import descending_ranks, members_ascending, merge_into_kept

WINDOW = 4  # window_selection(..., window_size=4): 4x4 merged tokens


def window_of_tokens(merged_h: int, merged_w: int) -> list[int]:
    """Window number of every merged token (raster order): floor(h/4) x floor(w/4) windows, the leftover rows and
    columns belonging to the last window row and column."""
    rows, cols = merged_h // WINDOW, merged_w // WINDOW
    return [min(y // WINDOW, rows - 1) * cols + min(x // WINDOW, cols - 1)
            for y in range(merged_h) for x in range(merged_w)]


def window_cap(keep: int, merged_h: int, merged_w: int) -> tuple[list[int], int]:
    """(window of every merged token, the per-window cap ceil((keep // 2) / windows)) of window_selection."""
    windows = window_of_tokens(merged_h, merged_w)
    return windows, math.ceil(keep // 2 / (max(windows) + 1))


def check_qwen_ve_keep(keep: int, merged_h: int, merged_w: int) -> None:
    """Refuse what the released window_selection cannot do (fewer than 2 kept: no local token; a merged side under
    4: zero windows) and a cap no window layout can fill, in one line."""
    tokens = merged_h * merged_w
    if merged_h < WINDOW or merged_w < WINDOW:
        raise ScheduleError(f"TRIO's Qwen vision stage needs a merged grid of at least {WINDOW}x{WINDOW} tokens (its "
                            f"4x4 windows); this image gives {merged_h}x{merged_w}: export a larger image size")
    if not 2 <= keep <= tokens:
        raise ScheduleError(f"TRIO's Qwen vision stage keeps vision:{keep} of {tokens} image tokens; it needs 2..{tokens} "
                            "(half of them, at least one, come from its window cap)")
    windows, limit = window_cap(keep, merged_h, merged_w)
    if sum(min(windows.count(w), limit) for w in set(windows)) < keep // 2:
        raise ScheduleError(f"TRIO's Qwen vision stage cannot take {keep // 2} tokens at {limit} per window here; "
                            "lower the vision keep")


class TrioVEQwenRule(torch.nn.Module):
    """(merger outputs (M, D) in raster order, local scores (M,), global scores (M,)) -> (merged kept tokens
    (keep, D), kept (1, keep) int64 raster indices, ascending). `blocks`: the (local, global) vision blocks whose
    attention the scores come from, as the released code reads them."""

    merges_projected = True

    def __init__(self, keep: int, merged_h: int, merged_w: int, num_vision_layers: int, full_attention_blocks):
        super().__init__()
        check_qwen_ve_keep(keep, merged_h, merged_w)
        self.keep, self.local_count = int(keep), int(keep) // 2
        self.global_count = self.keep - self.local_count
        windows, self.limit = window_cap(self.keep, merged_h, merged_w)
        window = torch.tensor(windows)
        self.register_buffer("same_window", window[:, None] == window[None, :], persistent=False)
        self.blocks = (int(sorted(full_attention_blocks)[0]), num_vision_layers - 1)

    def select(self, local_scores: torch.Tensor, global_scores: torch.Tensor) -> torch.Tensor:
        """(M,) local and global scores -> (keep,) kept raster indices, ascending."""
        local, glob = local_scores.float()[None], global_scores.float()[None]  # (1, M)
        n = local.shape[-1]
        index = torch.arange(n, device=local.device)
        before = (local[:, None, :] > local[:, :, None]) | (
            (local[:, None, :] == local[:, :, None]) & (index[None, None, :] < index[None, :, None]))  # j before i
        rank_in_window = (before & self.same_window[None]).float().sum(dim=-1)  # float sums: exact at these counts
        eligible = rank_in_window < self.limit
        rank_among_eligible = (before & eligible[:, None, :]).float().sum(dim=-1)
        taken = eligible & (rank_among_eligible < self.local_count)
        masked = torch.where(taken, torch.full_like(glob, -1.0), glob)  # softmax means are > 0: picks go last
        chosen = taken | (descending_ranks(masked) < self.global_count)
        return members_ascending(chosen, self.keep)[0]

    def forward(self, merged, local_scores, global_scores):
        kept = self.select(local_scores, global_scores)
        return merge_into_kept(merged[None], kept[None])[0], kept[None]
