"""TRIO token selection: a plain greedy reference and a fixed-shape twin for export.

Both rules share one similarity function so their comparisons see the very same
float32 values; that is what lets ``nms_select_fixed`` promise bit-identical
results to ``select_tokens`` (whenever it reports convergence).
"""

from __future__ import annotations

import math
import numbers

import torch

from ..defaults import NMS_BLOCK
from ..errors import InputError
from ..graph_ops import running_count, sort_ascending, top_k


def check_keep(keep, num_tokens: int) -> int:
    """Validate a token budget against ``num_tokens`` image tokens; return it as int."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral):
        raise InputError(f"keep={keep!r} must be a whole number of image tokens; set the cut's KEEP to an integer")
    keep = int(keep)
    if keep < 1:
        raise InputError(f"keep={keep} must be at least 1 (of the {num_tokens} image tokens); raise the cut's KEEP")
    if keep > num_tokens:
        raise InputError(f"keep={keep} is larger than the {num_tokens} image tokens; lower the cut's KEEP")
    return keep


def _check_inputs(scores, features, keep, threshold) -> int:
    if scores.dim() != 1:
        raise InputError(f"scores must be 1-D (one saliency per image token), got shape {tuple(scores.shape)}")
    if features.dim() != 2:
        raise InputError(f"features must be 2-D (image tokens x hidden), got shape {tuple(features.shape)}")
    if features.shape[0] != scores.shape[0]:
        raise InputError(
            f"scores has {scores.shape[0]} image tokens but features has {features.shape[0]}; "
            "pass the same image tokens to both"
        )
    if not math.isfinite(float(threshold)):
        raise InputError(f"threshold={threshold} must be a finite cosine similarity (e.g. 0.8)")
    return check_keep(keep, scores.shape[0])


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, float32 (what cosine similarities are dot products of): torch's normalize
    without its expand_as, the very same division (an Expand copies all M x D values in an exported graph)."""
    features = features.float()
    return features / features.norm(2, -1, keepdim=True).clamp_min(1e-12)


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """(M, M) cosine similarities, float32: dot products of unit_rows, as the fixed-shape rule computes them."""
    unit = unit_rows(features)
    return unit @ unit.T


def select_tokens(scores: torch.Tensor, features: torch.Tensor, keep: int, threshold: float = 0.8) -> torch.Tensor:
    """Reference greedy rule: visit by descending score, keep unless suppressed, stop at ``keep``.

    A kept token suppresses every token at least ``threshold``-similar to it. If fewer
    than ``keep`` survive, the highest-scoring unkept tokens fill the budget. Ties in
    score go to the lower index. Returns the kept indices sorted ascending (int64).
    """
    keep = _check_inputs(scores, features, keep, threshold)
    if torch.isnan(scores).any():
        raise InputError("scores contain NaN; the saliency pass produced invalid values")
    num_tokens = scores.shape[0]
    above = cosine_similarity_matrix(features) >= threshold
    # Stable sort keeps equal scores in index order, i.e. lower index first.
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()

    kept, suppressed = [], torch.zeros(num_tokens, dtype=torch.bool, device=above.device)
    for i in order:
        if len(kept) == keep:
            break
        if not suppressed[i]:
            kept.append(i)
            suppressed |= above[i]
    # Fill: too much was suppressed, so top up with the best of what is left.
    chosen = set(kept)
    for i in order:
        if len(kept) == keep:
            break
        if i not in chosen:
            kept.append(i)
    return torch.tensor(sorted(kept), dtype=torch.long, device=scores.device)


def _exact_keys(key: torch.Tensor, bound: int) -> torch.Tensor:
    """Integer TopK keys below `bound` as TopK compares them exactly: float32 up to 2**24, else int64 (TensorRT
    has no float64)."""
    return key.float() if bound <= 2**24 else key.long()


def visiting_order(scores: torch.Tensor) -> torch.Tensor:
    """The image tokens in visiting order (descending score, equal scores lower index first), as (M,) int64
    indices. Fixed-shape and exact without any (M, M) comparison: the first TopK is read for its values only,
    the second sees distinct keys, so TopK's tie behaviour never matters (nor does top_k's rounds, past 3840)."""
    num_tokens = scores.shape[0]
    values, position = top_k(scores, num_tokens)  # ties in any order
    new_value = torch.cat((torch.zeros_like(values[:1], dtype=torch.bool), values[1:] != values[:-1]))
    tier = num_tokens - running_count(new_value)  # M for the highest score, one less per lower distinct score
    key = _exact_keys(tier * num_tokens + (num_tokens - 1 - position), num_tokens * num_tokens + num_tokens)
    return position.index_select(0, top_k(key, num_tokens)[1])


# Tokens per block of the fixed-shape rule (defaults.NMS_BLOCK). Each block is compared with the kept-token
# buffer (at most `keep` rows) and with itself, and runs its Cluster-NMS steps on its own (B, B) matrix, which
# stays in cache: the similarities cost about M x (keep + B) x D, so smaller blocks cost less arithmetic but more
# (small) ops.


def first_kept(keep_vec: torch.Tensor, descending_rank: torch.Tensor, capacity: int) -> torch.Tensor:
    """Indices (capacity,) of the first `capacity` kept tokens of `keep_vec` (0/1, visiting order), then unkept
    ones (never read). `descending_rank` is M-1-position: distinct keys, so TopK's ties never matter."""
    num_tokens = descending_rank.shape[0]
    key = keep_vec.long() * num_tokens + descending_rank[:keep_vec.shape[0]]
    return top_k(_exact_keys(key, 2 * num_tokens), capacity)[1]


def _cluster_nms(scores, features, keep: int, threshold: float, iterations: int,
                 stop_at_fixed_point: bool = False, block: int = NMS_BLOCK):
    """Greedy NMS in visiting order against a buffer of the tokens kept so far: returns (visit (M,) the token
    indices in visiting order, keep_vec (M,) float 0/1 in that order, converged (), the most steps a block ran).

    A token is suppressed only by tokens kept before it, and the result reads only the tokens up to the
    `keep`-th survivor: so only the first `keep` kept tokens can ever suppress a token the result reads. Blocks
    of tokens settle in visiting order. A block starts from what the buffer suppresses: the first min(keep,
    tokens before the block) kept tokens of earlier blocks, gathered by one TopK (B x capacity similarities,
    fixed-shape, no ScatterND), then runs up to `iterations` Cluster-NMS steps on its own (B, B) matrix ("i is
    visited before j" is the strict upper triangle). After t steps a block's first t tokens are final; a step
    that changes none of the tokens up to the `keep`-th survivor has settled them (a prefix that is a fixed
    point is the greedy one: it is unique). Tokens past the `keep`-th survivor may be marked kept although a
    kept token beyond the buffer suppresses them: the result never reads them. `stop_at_fixed_point` (eager
    only) stops each block at its fixed point and skips the blocks after the one holding the `keep`-th survivor,
    marking them unkept."""
    num_tokens = scores.shape[0]
    visit = visiting_order(scores)
    unit = unit_rows(features.index_select(0, visit))
    # positions 1..M computed from the data, so that export does not fold the triangles into constants
    position = torch.cumsum(torch.ones_like(visit), 0)
    descending_rank = num_tokens - position  # M-1 .. 0
    blocks = math.ceil(num_tokens / block)
    bounds = [num_tokens * b // blocks for b in range(blocks + 1)]
    survivors_before = torch.zeros((), dtype=torch.float32, device=scores.device)
    keeps, converged, steps = [], torch.tensor(True, device=scores.device), 0
    for lo, hi in zip(bounds, bounds[1:]):
        rows = unit[lo:hi]  # (B, D)
        free_row = torch.ones(1, hi - lo, dtype=torch.float32, device=scores.device)  # (1, B)
        capacity = min(keep, lo)  # kept tokens before this block that the result may read
        if capacity:
            buffer = unit.index_select(0, first_kept(torch.cat(keeps), descending_rank, capacity))  # (capacity, D)
            filled = (position[None, :capacity] <= survivors_before).float()  # (1, capacity) slots holding a kept one
            # a 0/1 matmul counts each row's kept suppressors exactly (float32 is exact below 2**24)
            free_row = (filled @ (buffer @ rows.T >= threshold).float() == 0).float()
        similar = rows @ rows.T >= threshold
        inner = (similar & (position[lo:hi, None] < position[None, lo:hi])).float()  # (B, B) i before j
        # A step keeps j when no kept token before it suppresses it: hits 0 < free[j] (1 for a free token, 0 for
        # one the buffer suppressed). Rows (1, B) throughout: one MatMul, Less and Cast per step.
        keep_row, settled, block_steps = free_row, torch.tensor(False, device=scores.device), 0
        for block_steps in range(1, int(iterations) + 1):  # unrolled at trace time: no ONNX Loop
            previous = keep_row
            keep_row = (keep_row @ inner < free_row).float()
            if stop_at_fixed_point or block_steps == iterations:  # the graph reads only its last step's
                read = survivors_before + torch.cumsum(keep_row[0], 0) - keep_row[0] < keep  # to the keep-th survivor
                settled = ~((previous[0] != keep_row[0]) & read).any()
            if stop_at_fixed_point and bool(settled):
                break
        keep_vec = keep_row[0]
        steps, converged = max(steps, block_steps), converged & settled
        keeps.append(keep_vec)
        survivors_before = survivors_before + keep_vec.sum()
        if stop_at_fixed_point and hi < num_tokens and bool(survivors_before >= keep):
            # the keep-th survivor is settled: later blocks only ever change tokens the result never reads
            keeps.append(torch.zeros(num_tokens - hi, dtype=keep_vec.dtype, device=keep_vec.device))
            break
    return visit, torch.cat(keeps), converged, steps


def nms_select_fixed(scores, features, keep: int, threshold: float, iterations: int,
                     stop_at_fixed_point: bool = False, block: int = NMS_BLOCK):
    """Fixed-shape, loop-free twin of ``select_tokens`` for ONNX export.

    Runs up to ``iterations`` unrolled Cluster-NMS steps per ``block`` of tokens in visiting order. Returns
    ``(kept, converged)``; when ``converged`` is True, ``kept`` equals ``select_tokens`` exactly.
    ``stop_at_fixed_point`` (eager runtimes, not export) stops each block as soon as the result has settled:
    further steps leave it unchanged.
    """
    keep = _check_inputs(scores, features, keep, threshold)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise InputError(f"iterations={iterations!r} must be an integer >= 1; use cluster_iterations_needed()")
    count = scores.shape[0]
    visit, keep_vec, converged, _ = _cluster_nms(scores, features, keep, threshold, iterations,
                                                 stop_at_fixed_point, block)
    # Kept tokens first (in visiting order), then the fill in visiting order: distinct keys.
    position = torch.arange(count, device=scores.device)
    key = keep_vec.long() * count + (count - 1 - position)
    chosen = visit.index_select(0, top_k(_exact_keys(key, 2 * count), keep)[1])
    return sort_ascending(chosen), converged


def top_k_fixed(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest scores' indices, sorted ascending; equal scores go to the lower index (as a stable
    descending sort). Fixed-shape and exact in a graph: the first ``keep`` of ``visiting_order``."""
    return sort_ascending(visiting_order(scores)[:keep])


def cluster_iterations_needed(scores, features, threshold: float, keep: int | None = None,
                              block: int = NMS_BLOCK) -> int:
    """Smallest ``iterations`` for which ``nms_select_fixed`` reports convergence (keep None: every token's
    status settled)."""
    keep = _check_inputs(scores, features, scores.shape[0] if keep is None else keep, threshold)
    # After t steps a block's first t tokens are final, so every block settles by B + 1 <= M + 1.
    _, _, converged, steps = _cluster_nms(scores, features, keep, threshold, scores.shape[0] + 1, True, block)
    assert bool(converged), "Cluster-NMS failed to converge; this is a bug"
    return steps
