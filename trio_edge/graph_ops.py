"""Small ops written so they export to ops TensorRT accepts.

TensorRT's Clip and CumSum are float-only, so index clamping uses Where and running counts are summed
in float32 (exact below 2**24, far above any sequence length here). TensorRT's TopK returns at most
TOPK_MAX_K elements, so a longer top-k or sort is taken in rounds of at most that many (top_k).
"""

from __future__ import annotations

import torch

#: TensorRT's ITopKLayer returns at most this many elements (its operator page: k <= 3840); trio-check enforces it.
TOPK_MAX_K = 3840


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


def count_at_most(thresholds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each value (N,), how many thresholds (K,) are <= it: (N,) int64, summed in float32 (exact below 2**24)."""
    return (thresholds[None, :] <= values[:, None]).to(torch.float32).sum(dim=1).to(torch.int64)


def pruned_index_map(seq_len, image_positions: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Rows of the pruned sequence -- the text and the kept image tokens, in their order -- as indices into the old
    one (S - M + K,). `image_positions` (M,): ascending rows of the image tokens, in one span or several (images
    with text between them); `kept` (K,): ascending indices into them.

    Comparisons against the T = S - M text rows only (T is the prompt's text, small), no sort, no scatter:
    text row t sits at old row t + #{image rows before it} and at new row t + #{kept tokens before it}; a new row j
    is text row b(j) = #{text rows placed before j} when that row is placed at j, else kept token j - b(j)."""
    m, k = image_positions.shape[0], kept.shape[0]
    text = torch.arange(seq_len - m, device=kept.device)  # (T,)
    image_index = running_count(image_positions >= 0) - 1  # 0..M-1
    text_source = text + count_at_most(image_positions - image_index, text)  # (T,) old rows of the text
    kept_rows = image_positions.index_select(0, kept)  # (K,)
    text_target = text + count_at_most(kept_rows - kept, text)  # (T,) new rows of the text
    new = torch.arange(seq_len - m + k, device=kept.device)
    text_before = count_at_most(text_target + 1, new)  # (S',) text rows placed before each new row
    # one sentinel row after the text (target -1: never a new row), so every lookup has a row to read, even with no text
    sentinel = torch.full((1,), -1, dtype=text_target.dtype, device=kept.device)
    is_text = torch.cat([text_target, sentinel]).index_select(0, text_before) == new
    from_text = torch.cat([text_source, sentinel]).index_select(0, text_before)
    from_image = kept_rows.index_select(0, clamp_index(new - text_before, k - 1))
    return torch.where(is_text, from_text, from_image)


def rows_after_pruning(image_positions: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Rows of the kept image tokens in the pruned sequence (K,): each moves up by the dropped tokens before it."""
    return image_positions.index_select(0, kept) - kept + torch.arange(kept.shape[0], device=kept.device)


def top_k(values: torch.Tensor, k: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(values, k, largest=largest)`` of a 1-D tensor, as TopK ops of at most TOPK_MAX_K each.

    Up to TOPK_MAX_K it is one TopK. Beyond, round r takes the best TOPK_MAX_K of what earlier rounds left and
    overwrites those with the worst value of the dtype (ScatterElements), so each index comes out once: the
    values equal torch.topk's, in order; the indices equal them wherever values are distinct (equal values come
    out in an order TopK chooses, as in one TopK). Values must not be that worst value (-inf for floats, the
    dtype's max for ascending integers)."""
    if k <= TOPK_MAX_K:
        return torch.topk(values, k, largest=largest)
    if values.dtype.is_floating_point:
        worst = -torch.inf if largest else torch.inf
    else:
        info = torch.iinfo(values.dtype)
        worst = info.min if largest else info.max
    found_values, found_indices, rest = [], [], values
    for start in range(0, k, TOPK_MAX_K):
        round_values, round_indices = torch.topk(rest, min(TOPK_MAX_K, k - start), largest=largest)
        found_values.append(round_values)
        found_indices.append(round_indices)
        if start + TOPK_MAX_K < k:
            rest = rest.scatter(0, round_indices, worst)
    return torch.cat(found_values), torch.cat(found_indices)


def sort_ascending(values: torch.Tensor) -> torch.Tensor:
    """``torch.sort(values).values`` of a 1-D tensor, exported as TopK rounds TensorRT accepts (top_k)."""
    return top_k(values, values.shape[0], largest=False)[0]
