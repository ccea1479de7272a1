"""DART (ZichenWen1/DART, "Stop Looking for Important Tokens ... Duplication Matters More") as its released
LLaVA code does it, in fixed-shape tensor ops for export.

At the pruning layer K (default 2) the code reads layer K-1: its keys (after rotary, heads concatenated per
token) and its output hidden states passed through the model's final RMSNorm. Pivots: the 4 image tokens and
the 4 text tokens after the image with the largest L1 key norm. Then, for each pivot in turn, the TOKEN_TOPK
image tokens least cosine-similar to it among those not yet taken (image pivots excluded from the start) are
added. Kept = image pivots + every pivot's picks; positions stay the original ones.

Two details of the code decide the kept set and are reproduced exactly:
- the pivots are visited in the iteration order of a Python `set` built from [image pivots by descending
  norm, text pivots by descending norm]: CPython's hash-table slot order, emulated here (set_iteration_order);
- TOKEN_TOPK = budget // 8 per pivot, so the released code keeps 4 + 8 * (budget // 8) tokens (e.g. 132 for
  its "128"). A cut's KEEP here is the kept count: TOKEN_TOPK = (KEEP - 4) // 8, and a remainder r (KEEP not of
  the form 4 + 8t) gives one more pick to each of the first r pivots visited (not in the released code).
Ties (equal norms or similarities, e.g. identical flat image patches) go to the lower index; torch.topk in
the released code leaves them unspecified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from ..graph_ops import running_count, sort_ascending, top_k

IMAGE_PIVOTS = 4
TEXT_PIVOTS = 4
LINEAR_PROBES, PERTURB_SHIFT = 9, 5  # CPython's setobject.c
PROBE_GROUPS = 16  # enough for keys < 2**20 (sequence positions): see set_iteration_order


def picks_per_pivot(keep: int) -> list[int]:
    """Image tokens each visited pivot adds, for KEEP kept tokens (KEEP >= IMAGE_PIVOTS)."""
    pivots = IMAGE_PIVOTS + TEXT_PIVOTS
    base, extra = divmod(keep - IMAGE_PIVOTS, pivots)
    return [base + (1 if r < extra else 0) for r in range(pivots)]


def ranks(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Position of each value in a stable descending sort (ties: lower `idx` first), from pairwise comparisons.
    `idx` (0..n-1) should come from the inputs, so that export does not fold the (n, n) tie mask into a constant."""
    precedes = (values[:, None] > values[None, :]) | ((values[:, None] == values[None, :]) & (idx[:, None] < idx[None, :]))
    return precedes.sum(dim=0)


def top_ordered(values: torch.Tensor, idx: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest values, largest first (ties: lower index first): what
    `values.topk(count).indices.tolist()` lists when there are no ties."""
    rank = ranks(values, idx)
    return torch.stack([torch.argmax((rank == r).float()) for r in range(count)])


def _probe_sequence(keys: torch.Tensor, size: int):
    """Every slot CPython's set probes for each key, in order: (K, PROBE_GROUPS * 10) slots and a 0/1 validity.
    A probe group checks slot i, and the 10-slot linear window i..i+9 when it fits in the table; then
    perturb >>= 5 and i = (5i + 1 + perturb) & mask (set_add_entry / set_insert_clean)."""
    mask = size - 1
    offsets = torch.arange(LINEAR_PROBES + 1, device=keys.device)
    i, perturb, starts = keys % size, keys, []
    for _ in range(PROBE_GROUPS):  # unrolled: no ONNX Loop
        starts.append(i)
        perturb = torch.div(perturb, 1 << PERTURB_SHIFT, rounding_mode="trunc")  # keys >= 0: a plain Div
        i = (i * 5 + 1 + perturb) % size
    starts = torch.stack(starts, dim=1)  # (K, G)
    window = torch.where(starts + LINEAR_PROBES <= mask, LINEAR_PROBES + 1, 1)  # (K, G)
    slots = (starts[..., None] + offsets) % size  # (K, G, 10)
    valid = (offsets < window[..., None]).float()
    return slots.flatten(1), valid.flatten(1)


def _insert(occupied: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor):
    """Put a key in the first free slot of its probe sequence; occupied (size,) float 0/1 -> (occupied, slot)."""
    free = valid * (1.0 - occupied.index_select(0, slots))
    slot = slots.index_select(0, torch.argmax(free)[None])[0]
    taken = (torch.arange(occupied.shape[0], device=slots.device) == slot).float()
    return torch.maximum(occupied, taken), slot


def set_iteration_order(keys: torch.Tensor) -> torch.Tensor:
    """(8,) distinct non-negative int64 keys in insertion order -> the order `list(set(keys))` yields on CPython
    (small ints hash to themselves). The set starts with 8 slots, grows to 32 after the 5th insertion
    (re-inserting in old slot order) and is iterated by slot. PROBE_GROUPS = 16 always finds a free slot for
    keys < 2**20: the perturbation dies after 4 shifts and the plain jump i -> 5i + 1 then visits every slot."""
    small_slots, small_valid = _probe_sequence(keys, 8)
    big_slots, big_valid = _probe_sequence(keys, 32)
    small = torch.zeros(8, device=keys.device)
    first = []
    for j in range(5):
        small, slot = _insert(small, small_slots[j], small_valid[j])
        first.append(slot)
    old_order = torch.argsort(torch.stack(first).float())  # the resize re-inserts by old slot
    big, moved = torch.zeros(32, device=keys.device), []
    for r in range(5):
        row = old_order[r:r + 1]
        big, slot = _insert(big, big_slots.index_select(0, row)[0], big_valid.index_select(0, row)[0])
        moved.append(slot)
    slots = [torch.stack(moved).index_select(0, torch.argsort(old_order.float()))]
    for j in range(5, keys.shape[0]):
        big, slot = _insert(big, big_slots[j], big_valid[j])
        slots.append(slot[None])
    return torch.argsort(torch.cat(slots).float())


def dart_select_fixed(keys: torch.Tensor, normed: torch.Tensor, image_positions: torch.Tensor, keep: int):
    """keys (S, KVH*hd) of layer K-1, normed (S, D) = final_norm(layer K-1 output), image_positions (M,) the image
    tokens' rows, ascending -> kept (KEEP,) sorted local image indices, and the image tokens' L1 key norms (M,).
    The text pivots are among the tokens after the last image token (several images: after all of them)."""
    m, s = image_positions.shape[0], keys.shape[0]
    positions = torch.arange(s, device=keys.device)
    norms = keys.float().abs().sum(dim=-1)  # (S,) L1
    image_norms = norms.index_select(0, image_positions)
    local = running_count(image_positions >= 0) - 1  # 0..M-1, computed from the data: export cannot fold the ties
    image_pivots = top_ordered(image_norms, local, IMAGE_PIVOTS)  # local, by descending norm
    after_image = positions > image_positions[m - 1:m]
    text_pivots = top_ordered(torch.where(after_image, norms, -torch.inf), positions, TEXT_PIVOTS)  # absolute
    pivots = torch.cat([image_positions.index_select(0, image_pivots), text_pivots])  # (8,) absolute, insertion order
    visit = pivots.index_select(0, set_iteration_order(pivots))
    taken = (local[:, None] == image_pivots[None, :]).any(dim=1)  # (M,) kept so far: the image pivots
    image_states = normed.index_select(0, image_positions)
    for r, count in enumerate(picks_per_pivot(keep)):
        if count == 0:
            continue
        pivot_state = normed.index_select(0, visit[r:r + 1])
        distance = -nnf.cosine_similarity(pivot_state, image_states, dim=-1)  # (M,)
        picked = ranks(torch.where(taken, -torch.inf, distance), local) < count
        taken = taken | picked
    key = taken.float() * m + (m - local).float()  # distinct (exact below 2**24): TopK never sees a tie
    return sort_ascending(top_k(key, keep)[1]), image_norms
