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


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """(M, M) cosine similarities, float32. Both rules must call this, never re-derive it."""
    unit = nnf.normalize(features.float(), dim=-1)
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


def _suppression_mask(scores, features, threshold):
    """precedes[i, j]: i is visited before j; returns (rank, float A with A[i,j] = i may suppress j)."""
    num_tokens = scores.shape[0]
    idx = torch.arange(num_tokens, device=scores.device)
    # Explicit tie rule instead of trusting sort stability (TopK makes no promise).
    precedes = (scores[:, None] > scores[None, :]) | (
        (scores[:, None] == scores[None, :]) & (idx[:, None] < idx[None, :])
    )
    rank = precedes.sum(dim=0)  # number of tokens visited before j = its sorted position
    # Row i is the suppressor, exactly like above[kept] in the reference.
    may_suppress = precedes & (cosine_similarity_matrix(features) >= threshold)
    return rank, may_suppress.float()


def _cluster_step(keep_vec, may_suppress):
    # 0/1 matmul counts kept suppressors of each j exactly (float32 is exact below 2**24).
    return 1.0 - ((keep_vec[None, :] @ may_suppress)[0] > 0).float()


def nms_select_fixed(scores, features, keep: int, threshold: float, iterations: int,
                     stop_at_fixed_point: bool = False):
    """Fixed-shape, loop-free twin of ``select_tokens`` for ONNX export.

    Runs ``iterations`` unrolled Cluster-NMS steps. Returns ``(kept, converged)``;
    when ``converged`` is True, ``kept`` equals ``select_tokens`` exactly.
    ``stop_at_fixed_point`` (eager runtimes, not export) stops as soon as a step changes nothing: the
    result is the same, since further steps leave a fixed point unchanged.
    """
    keep = _check_inputs(scores, features, keep, threshold)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise InputError(f"iterations={iterations!r} must be an integer >= 1; use cluster_iterations_needed()")
    num_tokens = scores.shape[0]
    rank, may_suppress = _suppression_mask(scores, features, threshold)

    keep_vec = torch.ones(num_tokens, dtype=torch.float32, device=scores.device)
    previous = keep_vec
    for _ in range(int(iterations)):  # unrolled at trace time: no ONNX Loop
        previous, keep_vec = keep_vec, _cluster_step(keep_vec, may_suppress)
        if stop_at_fixed_point and torch.equal(previous, keep_vec):
            break
    converged = (previous == keep_vec).all()  # a fixed point is exactly the greedy result

    # Kept tokens first (in visiting order), then the fill in visiting order.
    # Ranks are distinct, so the keys are too and TopK ties cannot arise.
    key = keep_vec.long() * num_tokens + (num_tokens - rank)
    chosen = torch.topk(key, keep).indices
    return torch.sort(chosen).values, converged


def top_k_fixed(scores: torch.Tensor, keep: int, idx: torch.Tensor | None = None) -> torch.Tensor:
    """The ``keep`` highest scores' indices, sorted ascending; equal scores go to the lower index (as a stable
    descending sort). Fixed-shape and exact in a graph: ranks come from pairwise comparisons, so TopK sees
    distinct keys and its tie behaviour never matters. In a graph pass ``idx`` (0..M-1) computed from the
    inputs, so that export does not fold the (M, M) tie mask into a constant."""
    num_tokens = scores.shape[0]
    idx = torch.arange(num_tokens, device=scores.device) if idx is None else idx
    precedes = (scores[:, None] > scores[None, :]) | ((scores[:, None] == scores[None, :]) & (idx[:, None] < idx[None, :]))
    rank = precedes.sum(dim=0)  # (M,) distinct: position in the stable descending order
    return torch.sort(torch.topk((num_tokens - rank).float(), keep).indices).values


def cluster_iterations_needed(scores, features, threshold: float) -> int:
    """Smallest ``iterations`` for which ``nms_select_fixed`` reports convergence."""
    _check_inputs(scores, features, 1, threshold)
    _, may_suppress = _suppression_mask(scores, features, threshold)
    keep_vec = torch.ones(scores.shape[0], dtype=torch.float32, device=scores.device)
    # After t steps the first t tokens in visiting order are final, so this ends by M.
    for steps in range(1, scores.shape[0] + 2):
        new = _cluster_step(keep_vec, may_suppress)
        if torch.equal(new, keep_vec):
            return steps
        keep_vec = new
    raise AssertionError("Cluster-NMS failed to converge; this is a bug")
