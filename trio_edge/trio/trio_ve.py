"""TRIO-VE: TRIO's vision-encoder stage (ocy1/TRIO, llava_arch.py encode_images), in fixed shapes for export.

What the released code does, per vision tile (LLaVA-NeXT runs it on every sub-image, base tile included):
- scores: the [CLS] row of each CLIP layer's softmax attention over the patch tokens, averaged over heads
  (clip_encoder.py feature_select; `cls_attention` here);
- local tokens: the grid (24x24) is cut into 6x6 windows (16 of them); each window keeps its top
  k = int(T * 0.5) // 16 tokens by the SHALLOW layer's (attentions[5]) scores (window_cls_selection);
- global tokens: the DEEP layer's (attentions[-2]) scores with the local tokens set to 0; top T - int(T * 0.5);
- index mask = local | global; the projected features (after mm_projector) of the other tokens are merged into
  the kept ones (token_merging, scaling=1): each non-kept token goes to the kept token of highest cosine
  similarity (first on ties, as argmax), every kept token becomes (itself + its assigned tokens) / (1 + count);
- the kept tokens stay in their original order (the index mask selects them), T = N keeps everything unmerged.
So the released code keeps 16 * (int(T/2) // 16) + T - int(T/2) tokens, not always T (T=100 keeps 98):
`ve_kept_count` gives the count this module produces for a requested T, exactly as the code does.

Beyond the released code (it asserts a 24x24 grid and reads layers 5 and -2 of CLIP-L's 24):
- other grids: n = max(1, floor(G / 6 + 1/2)) windows per side (4 on 24x24), window rows/columns split at
  floor(i * G / n) (6-wide on 24x24), k = int(T/2) // n^2 per window (windows are 4..9 tokens wide, so k,
  at most half the average window, always fits the smallest);
- other depths: shallow layer = floor(5 * L / 24) (5 of 24), deep layer = L - 2 (the feature layer's own
  attention, attentions[-2]).
Ties (equal attention, e.g. flat image regions) go to the lower index, as a stable descending sort; the
released code leaves them to torch.topk. Local tokens are set to -1 rather than 0 before the global top-k:
the same choice whenever the softmax weights are positive, and never a local token again when some weight
underflows to 0 (the released code could then pick a local token twice and keep fewer tokens).
"""

from __future__ import annotations

import numbers

import torch

from ..errors import InputError

REFERENCE_GRID = 24  # CLIP ViT-L/14 at 336 px: 24 x 24 patches
REFERENCE_WINDOW = 6  # window_cls_selection's window_size
REFERENCE_DEPTH = 24  # CLIP ViT-L layers
REFERENCE_SHALLOW = 5  # attentions[5]
DEEP_FROM_END = 2  # attentions[-2]
LOCAL_RATIO = 0.5  # local_ratio = 1 - global_ratio


def ve_layers(num_vision_layers: int) -> tuple[int, int]:
    """(shallow, deep) 0-based vision-encoder layers whose [CLS] attention scores the tokens."""
    if num_vision_layers < DEEP_FROM_END:
        raise InputError(f"TRIO-VE reads the attention of vision layer L-2; this tower has {num_vision_layers} "
                         "layer(s)")
    deep = num_vision_layers - DEEP_FROM_END
    return min(REFERENCE_SHALLOW * num_vision_layers // REFERENCE_DEPTH, deep), deep


def windows_per_side(grid_side: int) -> int:
    return max(1, (2 * grid_side + REFERENCE_WINDOW) // (2 * REFERENCE_WINDOW))  # floor(G / 6 + 1/2)


def window_edges(grid_side: int) -> list[int]:
    n = windows_per_side(grid_side)
    return [i * grid_side // n for i in range(n + 1)]


def windows(grid_side: int) -> list[list[int]]:
    """Token indices (row-major on the G x G grid) of each window, windows in row-major order."""
    edges = window_edges(grid_side)
    spans = list(zip(edges[:-1], edges[1:]))
    return [[y * grid_side + x for y in range(y0, y1) for x in range(x0, x1)] for y0, y1 in spans for x0, x1 in spans]


def ve_counts(grid_side: int, keep: int) -> tuple[int, int, int]:
    """(per_window, local, global) token counts for a requested T = `keep`, as the released code computes them."""
    local_request = int(keep * LOCAL_RATIO)
    per_window = local_request // windows_per_side(grid_side) ** 2
    return per_window, per_window * windows_per_side(grid_side) ** 2, keep - local_request


def ve_kept_count(grid_side: int, keep: int) -> int:
    """Tokens per tile TRIO-VE keeps for a requested T (all of them when T = G*G, as the released code)."""
    keep = check_ve_keep(keep, grid_side)
    if keep == grid_side * grid_side:
        return keep
    _, local, global_count = ve_counts(grid_side, keep)
    return local + global_count


def check_ve_keep(keep, grid_side: int) -> int:
    """Validate a per-tile visual_token_num T on a G x G grid; return it as int."""
    tokens = grid_side * grid_side
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral):
        raise InputError(f"TRIO-VE keep={keep!r} must be a whole number of tokens per tile")
    keep = int(keep)
    if not 1 <= keep <= tokens:
        raise InputError(f"TRIO-VE keep={keep} must be between 1 and the {tokens} tokens of a {grid_side}x{grid_side} "
                         "tile; change the vision stage's KEEP")
    return keep


def cls_attention(cls_rows: torch.Tensor) -> torch.Tensor:
    """(B, H, 1+N) [CLS] row of a layer's softmax attention -> (B, N): its weights on the patches, head mean."""
    return cls_rows[:, :, 1:].mean(dim=1)


def descending_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) int64 position of each value in a stable descending sort along the last dim (ties: lower
    index first), from pairwise comparisons: exact, and the same on every backend."""
    n = values.shape[-1]
    index = torch.arange(n, device=values.device)
    before = (values[:, None, :] > values[:, :, None]) | (
        (values[:, None, :] == values[:, :, None]) & (index[None, None, :] < index[None, :, None]))
    return before.float().sum(dim=-1).to(torch.int64)  # float sums are exact far beyond any token count


def members_ascending(member: torch.Tensor, count: int) -> torch.Tensor:
    """(B, N) bool with exactly `count` set per row -> (B, count) their indices, ascending."""
    n = member.shape[-1]
    index = torch.arange(n, device=member.device)
    key = member.float() * n + (n - 1 - index).float()  # distinct: members first, then by index
    return torch.topk(key, count, dim=-1).indices


def ve_select(shallow: torch.Tensor, deep: torch.Tensor, grid_side: int, keep: int) -> torch.Tensor:
    """Kept token indices (B, ve_kept_count), ascending, from the shallow and deep layers' (B, N) scores."""
    keep = check_ve_keep(keep, grid_side)
    batch, tokens = shallow.shape
    if tokens != grid_side * grid_side or deep.shape != shallow.shape:
        raise InputError(f"TRIO-VE scores must be (tiles, {grid_side * grid_side}) for a {grid_side}x{grid_side} grid; "
                         f"got {tuple(shallow.shape)} and {tuple(deep.shape)}")
    index = torch.arange(tokens, device=shallow.device)
    if keep == tokens:
        return index[None].expand(batch, tokens)
    per_window, local_count, global_count = ve_counts(grid_side, keep)
    local = torch.zeros(batch, tokens, dtype=torch.bool, device=shallow.device)
    if per_window > 0:
        for cells in windows(grid_side):  # static windows: unrolled at trace time
            cells_t = torch.tensor(cells, device=shallow.device)
            in_window = descending_ranks(shallow.index_select(1, cells_t)) < per_window  # (B, window)
            local = local | ((cells_t[None, :, None] == index[None, None, :]) & in_window[:, :, None]).any(dim=1)
    masked = torch.where(local, torch.full_like(deep, -1.0), deep)
    chosen = local | (descending_ranks(masked) < global_count)
    return members_ascending(chosen, local_count + global_count)


def merge_into_kept(features: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """token_merging(scaling=1): (B, N, D) projected features, (B, K) ascending kept indices -> (B, K, D).

    Every non-kept token joins the kept token of highest cosine similarity (the first on ties); each kept token
    becomes (itself + the tokens that joined it) / (1 + their count). Dense one-hot matrices, no scatter."""
    batch, tokens, dim = features.shape
    k = kept.shape[1]
    if k == tokens:
        return features
    x = features.float()
    index = torch.arange(tokens, device=features.device)
    pick = (kept[:, :, None] == index[None, None, :]).float()  # (B, K, N) one-hot rows of the kept tokens
    kept_x = pick @ x  # (B, K, D)
    # F.cosine_similarity: each side divided by its norm clamped at eps=1e-8, then the dot product
    unit = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8)
    kept_unit = kept_x / torch.linalg.vector_norm(kept_x, dim=-1, keepdim=True).clamp_min(1e-8)
    sim = unit @ kept_unit.transpose(1, 2)  # (B, N, K)
    is_max = sim == sim.max(dim=-1, keepdim=True).values
    first_max = is_max & (torch.cumsum(is_max.float(), dim=-1) == 1)  # argmax: the first maximum
    non_kept = pick.sum(dim=1) == 0  # (B, N)
    assign = (first_max & non_kept[:, :, None]).float().transpose(1, 2)  # (B, K, N)
    merged = (kept_x + assign @ x) / (1.0 + assign.sum(dim=-1, keepdim=True))
    return merged.to(features.dtype)


class TrioVERule(torch.nn.Module):
    """TRIO-VE as a vision-tower rule (trio.vision_stage.vision_rule): projected features (T, S, D) of every tile
    ([CLS] first; the released code merges after the projector), the [CLS] attention of the shallow and deep
    layers -> merged kept tokens (T, K, D), kept (T, K) int64 (index in the tile, 0 = [CLS]: patch index + 1)."""

    merges_projected = True  # the vision module hands over projector outputs, not the tower's features
    packing = "in-place"  # kept tokens stay at their place in the tile (LLaVA-NeXT: newlines kept), as released

    def __init__(self, keep: int, num_vision_layers: int):
        super().__init__()
        self.keep = int(keep)
        self.attention_layers = ve_layers(num_vision_layers)  # (shallow, deep)
        self.key_layers = ()

    def forward(self, projected, attentions, keys):
        side = int(round((projected.shape[1] - 1) ** 0.5))
        shallow, deep = (cls_attention(a[:, :, 0]) for a in attentions)
        kept = ve_select(shallow, deep, side, self.keep)
        return merge_into_kept(projected[:, 1:], kept), kept + 1
