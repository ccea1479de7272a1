"""TRIO token selection: a plain greedy reference and a fixed-shape twin for export.

Both rules share one similarity function so their comparisons see the very same
float32 values; that is what lets ``nms_select_fixed`` promise bit-identical
results to ``select_tokens`` (whenever it reports convergence).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as nnf

from ..errors import InputError


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
    """Rows scaled to unit length, float32 (what cosine similarities are dot products of)."""
    return nnf.normalize(features.float(), dim=-1)


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
    """Integer TopK keys below `bound` as floats TopK compares exactly (float32 up to 2**24)."""
    return key.float() if bound <= 2**24 else key.double()


def visiting_order(scores: torch.Tensor) -> torch.Tensor:
    """The image tokens in visiting order (descending score, equal scores lower index first), as (M,) int64
    indices. Fixed-shape and exact without any (M, M) comparison: the first TopK is read for its values only,
    the second sees distinct keys, so TopK's tie behaviour never matters."""
    num_tokens = scores.shape[0]
    values, position = torch.topk(scores, num_tokens)  # ties in any order
    new_value = torch.cat((torch.zeros_like(position[:1]), (values[1:] != values[:-1]).long()))
    tier = num_tokens - torch.cumsum(new_value, 0)  # M for the highest score, one less per lower distinct score
    key = _exact_keys(tier * num_tokens + (num_tokens - 1 - position), num_tokens * num_tokens + num_tokens)
    return position.index_select(0, torch.topk(key, num_tokens).indices)


# Tokens per block of the fixed-shape rule: similarities only from each block to itself and later blocks,
# and Cluster-NMS steps on a block's own (B, B) matrix, which stays in cache.
NMS_BLOCK = 384


def _cluster_nms(scores, features, keep: int, threshold: float, iterations: int,
                 stop_at_fixed_point: bool = False, block: int = NMS_BLOCK):
    """Cluster-NMS in visiting order: returns (visit (M,) the token indices in visiting order, keep_vec (M,)
    float 0/1 in that order, converged (), the most steps a block ran).

    Works in visiting order, so "i is visited before j" is the strict upper triangle: no (M, M) rank
    comparisons, and similarities only from each block of tokens to itself and the blocks after it. Blocks
    settle in order: a block starts from what the kept tokens of earlier blocks suppress (one matvec each),
    then runs up to `iterations` steps on its own (B, B) matrix. After t steps its first t
    tokens are final; the greedy result only reads the tokens up to its `keep`-th survivor, so a step that
    changes none of those has settled them (a prefix that is a fixed point is the greedy one: it is unique).
    `stop_at_fixed_point` (eager only) also skips the blocks after the one holding the `keep`-th survivor, marking
    them unkept: the fixed-shape graph settles each of those in one step and the result never reads them."""
    num_tokens = scores.shape[0]
    visit = visiting_order(scores)
    unit = unit_rows(features.index_select(0, visit))
    # positions 1..M computed from the data, so that export does not fold the triangle into a constant
    position = torch.cumsum(torch.ones_like(visit), 0)
    blocks = math.ceil(num_tokens / block)
    bounds = [num_tokens * b // blocks for b in range(blocks + 1)]
    suppressors = torch.zeros(num_tokens, dtype=torch.float32, device=scores.device)  # kept ones, earlier blocks
    survivors_before = torch.zeros((), dtype=torch.float32, device=scores.device)
    keeps, converged, steps = [], torch.tensor(True, device=scores.device), 0
    for lo, hi in zip(bounds, bounds[1:]):
        # row i (this block) may suppress column j (this block or later) visited after it
        similar = unit[lo:hi] @ unit[lo:].T >= threshold
        may_suppress = (similar & (position[lo:hi, None] < position[None, lo:])).float()  # (B, M - lo)
        inner = may_suppress[:, :hi - lo]
        free = suppressors[lo:hi] == 0
        keep_vec, settled, block_steps = free.float(), torch.tensor(False, device=scores.device), 0
        for block_steps in range(1, int(iterations) + 1):  # unrolled at trace time: no ONNX Loop
            previous = keep_vec
            # 0/1 matmul counts kept suppressors of each j exactly (float32 is exact below 2**24).
            keep_vec = (free & ((keep_vec[None, :] @ inner)[0] == 0)).float()
            read = survivors_before + torch.cumsum(keep_vec, 0) - keep_vec < keep  # up to the keep-th survivor
            settled = ~((previous != keep_vec) & read).any()
            if stop_at_fixed_point and bool(settled):
                break
        steps, converged = max(steps, block_steps), converged & settled
        keeps.append(keep_vec)
        survivors_before = survivors_before + keep_vec.sum()
        if stop_at_fixed_point and hi < num_tokens and bool(survivors_before >= keep):
            # the keep-th survivor is settled: later blocks only ever change tokens the result never reads
            keeps.append(torch.zeros(num_tokens - hi, dtype=keep_vec.dtype, device=keep_vec.device))
            break
        if hi < num_tokens:
            suppressors = suppressors + nnf.pad((keep_vec[None, :] @ may_suppress)[0], (lo, 0))
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
    chosen = visit.index_select(0, torch.topk(_exact_keys(key, 2 * count), keep).indices)
    return torch.sort(chosen).values, converged


def top_k_fixed(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest scores' indices, sorted ascending; equal scores go to the lower index (as a stable
    descending sort). Fixed-shape and exact in a graph: the first ``keep`` of ``visiting_order``."""
    return torch.sort(visiting_order(scores)[:keep]).values


def cluster_iterations_needed(scores, features, threshold: float, keep: int | None = None,
                              block: int = NMS_BLOCK) -> int:
    """Smallest ``iterations`` for which ``nms_select_fixed`` reports convergence (keep None: every token's
    status settled)."""
    keep = _check_inputs(scores, features, scores.shape[0] if keep is None else keep, threshold)
    # After t steps a block's first t tokens are final, so every block settles by B + 1 <= M + 1.
    _, _, converged, steps = _cluster_nms(scores, features, keep, threshold, scores.shape[0] + 1, True, block)
    assert bool(converged), "Cluster-NMS failed to converge; this is a bug"
    return steps
