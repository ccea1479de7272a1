"""DART at the embedding level, as NVIDIA TensorRT Edge-LLM runs it (0.11, `rt::DartPruner`,
cpp/runtime/preprocess/{dartPruner,visualTokenPruner}.cpp), in fixed-shape tensor ops for export.

Edge-LLM prunes once, before the language model's first layer, on the assembled input embeddings: the paper's
layer-2 keys are not observable inside its monolithic engine (its docs call this the `pruned_layer=0` mode of the
DART repository's selector). What its code does, step by step:
- the visual tokens form contiguous spans (one per image, or per video frame block); every span keeps its own quota
  ceil(span x (1 - reduction ratio)), at least 1 and at most the span;
- every row's L1 and L2 norms of its embedding; text pivots: the 4 text tokens (anywhere in the prompt) with the
  largest L1 norm, shared by all spans; each span's image pivots: its min(4, quota) tokens with the largest L1 norm
  (ties: lower position) -- retained;
- then per pivot, in order (the span's image pivots by descending norm, then the text pivots by descending norm),
  while the span's quota is not met: keep the ceil(remaining / pivots left) candidates of the span with the most
  negative cosine similarity to the pivot (dot / max(|p| |c|, 1e-8); ties: lower position), and drop them from the
  candidates;
- the kept sequence is every text token and the retained visual tokens in order; DeepStack planes and M-RoPE rows
  are gathered with the same rows, positions stay the original ones, decoding continues after the unpruned prompt.
Every count above is a function of the span sizes and quotas alone, so the walk unrolls at fixed shapes. The
spans and their quotas come from the plan (SelectPlan.item_tokens / item_keeps). In the export's dtype (Edge-LLM
reads fp16 embeddings; an fp32 export scores fp32 ones).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..graph_ops import count_at_most, running_count, sort_ascending, top_k
from .dart import ranks, top_ordered
from .select_module import apply_selection, carried_rows

IMAGE_PIVOTS = 4  # Edge-LLM's --dartPivotImageTokens default
TEXT_PIVOTS = 4  # Edge-LLM's --dartPivotTextTokens default
COSINE_EPS = 1e-8  # its cosine denominator floor (torch's cosine_similarity eps)


def span_quotas(spans: tuple[int, ...], keep_fraction: float) -> tuple[int, ...]:
    """Edge-LLM's retention quota of every visual span: ceil(span x (1 - reduction ratio)), within 1..span, where
    `keep_fraction` = 1 - reduction ratio. The ratio is a C++ float there (1 - 0.9f is 0.10000002, so a span of 120
    keeps 13, not 12): rounded to float32 here the same way."""
    import numpy as np

    kept = 1.0 - float(np.float32(1.0 - keep_fraction))
    return tuple(max(1, min(span, math.ceil(span * kept))) for span in spans)


def quotas_for_keep(spans: tuple[int, ...], keep: int) -> tuple[int, ...]:
    """A cut's KEEP shared by the spans in proportion to their size (an explicit --cuts 0:KEEP; equal spans share
    it evenly, the first KEEP % N one more): floor(KEEP x span / total), the remainder to the first spans."""
    total = sum(spans)
    quotas = [keep * span // total for span in spans]
    for index in range(keep - sum(quotas)):
        quotas[index % len(spans)] += 1
    return tuple(min(q, span) for q, span in zip(quotas, spans))


def growth_counts(quota: int, image_pivots: int, text_pivots: int) -> list[int]:
    """Tokens each pivot adds to a span with `quota`: while the quota is not met, ceil(remaining / pivots left)
    (the candidates never run out: a span holds at least its quota)."""
    counts, retained, pivots = [], image_pivots, image_pivots + text_pivots
    for offset in range(pivots):
        remaining = quota - retained
        if remaining <= 0:
            break
        counts.append(-(-remaining // (pivots - offset)))
        retained += counts[-1]
    return counts


def embedding_dart_fixed(embeds: torch.Tensor, image_positions: torch.Tensor, spans: tuple[int, ...],
                         quotas: tuple[int, ...]):
    """embeds (S, D) the input embeddings, image_positions (M,) ascending rows of the visual tokens, the spans' sizes
    and quotas (static) -> kept (sum quotas,) ascending indices into the M visual tokens, and their L1 norms (M,)."""
    x = embeds.float()
    s, m = x.shape[0], image_positions.shape[0]
    l1, l2 = x.abs().sum(dim=-1), x.norm(dim=-1)  # (S,)
    local = running_count(image_positions >= 0) - 1  # 0..M-1 from the data: export cannot fold the tie masks
    text = torch.arange(s - m, device=x.device)
    text_rows = text + count_at_most(image_positions - local, text)  # (T,) the text tokens' rows (graph_ops)
    text_pivots = text_rows.index_select(0, top_ordered(l1.index_select(0, text_rows), text_rows, TEXT_PIVOTS))
    kept, offset = [], 0
    for span, quota in zip(spans, quotas):
        rows, index = image_positions[offset:offset + span], local[offset:offset + span]
        image_pivots = top_ordered(l1.index_select(0, rows), index, min(IMAGE_PIVOTS, quota))  # local, by norm
        pivots = torch.cat([rows.index_select(0, image_pivots), text_pivots])  # rows, in visiting order
        taken = (index[:, None] - offset == image_pivots[None, :]).any(dim=1)  # (span,) the pivots are retained
        candidates = x.index_select(0, rows)  # (span, D)
        dots = x.index_select(0, pivots) @ candidates.T  # (pivots, span)
        norms = l2.index_select(0, pivots)[:, None] * l2.index_select(0, rows)[None, :]
        anti = -(dots / torch.clamp(norms, min=COSINE_EPS))
        for step, count in enumerate(growth_counts(quota, image_pivots.shape[0], TEXT_PIVOTS)):
            picked = ranks(torch.where(taken, -torch.inf, anti[step]), index) < count
            taken = taken | picked
        key = taken.float() * span + (span - (index - offset)).float()  # distinct: TopK sees no tie
        kept.append(sort_ascending(top_k(key, quota)[1]) + offset)
        offset += span
    return torch.cat(kept), l1.index_select(0, image_positions)


class EmbeddingDartStage(nn.Module):
    """The one cut of `--method dart-embed` (at layer 0): hidden (1, S, D) the input embeddings, position_ids,
    image_positions (M,) -> kept (K,), converged () always True, hidden (1, S', D), position_ids (1, S') original,
    saliency (M,) the L1 norms; with DeepStack (Qwen3-VL) also its planes (1, S, k*D) -> the kept rows'."""

    def __init__(self, num_image_tokens: int, spans: tuple[int, ...], quotas: tuple[int, ...],
                 carries_deepstack: bool = False):
        super().__init__()
        if sum(spans) != num_image_tokens:
            raise ValueError(f"the spans {spans} do not add up to the {num_image_tokens} image tokens")
        self.spans, self.quotas, self.carries_deepstack = tuple(spans), tuple(quotas), carries_deepstack

    def forward(self, hidden, position_ids, image_positions, deepstack=None):
        kept, norms = embedding_dart_fixed(hidden.squeeze(0), image_positions, self.spans, self.quotas)
        hidden_out, position_out = apply_selection(hidden, position_ids, image_positions, kept, renumber=False)
        carried = (carried_rows(deepstack, image_positions, kept),) if self.carries_deepstack else ()
        return kept, torch.tensor(True), hidden_out, position_out, norms, *carried
