"""SparseVLM (arXiv 2410.04417) as its authors' released code does it (Gumpest/SparseVLMs, USE_VERSION=1_0), in
fixed shapes.

What the code does (modelling_sparse_llama.py, score.py, utils.py), and how it maps here:
- Raters, once, on the language model's input embeddings: relevance = softmax over the text tokens after the
  image of V T^T, averaged over the image tokens; raters = text tokens with relevance above its mean
  (`rater_mask`).
- At each pruning layer (2, 6, 15 of LLaMA-7B's 32; this project's cuts 3, 7, 16, scored by layer N-1) the
  layer runs on every token; its softmax attention (heads averaged, rows = raters, columns = current image
  tokens) is averaged over the raters (`rater_scores`); the layer's output keeps the top k image tokens,
  k = min(table entry, current image tokens - 1), in their order.
- Recycling: of the deleted image tokens, the int(0.3 n) + 1 with the highest scores (in descending score
  order) are clustered by density peaks (`cluster_and_merge`) into int(n_recycled / 10) + 1 merged tokens,
  inserted right after the kept image tokens (in cluster order); text is kept; positions are renumbered.
Later cuts score the current image span, merged tokens included; merged tokens may be pruned and recycled.

Fixed shapes: every count is a static function of (tokens in, keep), selection is a rank + TopK on distinct
keys, clustering and merging are dense matrix ops (a one-hot assignment matrix times the states), no
data-dependent shapes, no scatter. Determinism: the authors break density ties with 1e-6 uniform noise
and leave TopK ties to the kernel; here every tie goes to the lower index (token order of the clustered
list, which is descending score), so the export is reproducible across backends.
"""

from __future__ import annotations

import math

import torch

from ..errors import ScheduleError
from ..graph_ops import clamp_index
from .methods import RATERS_GRAPH  # noqa: F401  (the raters stage's graph name, re-exported)
from .schedule import Cut, Schedule, schedule_for_ratio

# score.py, USE_VERSION 1_0: image tokens kept at layers 2/6/15 per RETAIN_TOKN budget (of 576 on LLaVA-1.5).
# The released code runs LLaVA-1.5 only (its llava_arch has no path for LLaVA-NeXT's anyres features); its keep
# rule min(entry, v - 1) is absolute, so this project applies the same counts to any image-token count.
SPARSEVLM_TABLES = {64: (66, 30, 17), 96: (238, 48, 26), 128: (303, 110, 36), 192: (300, 200, 110)}
SPARSEVLM_LAYERS = (2, 6, 15)  # pruning layers of the 32-layer LLaMA-7B (0-based)
SPARSEVLM_REFERENCE_DEPTH = 32
RECYCLE_FRACTION = 0.3  # of the deleted image tokens, int(0.3 * n) + 1 are recycled
CLUSTER_DIVISOR = 10  # recycled tokens per merged token: int(n / 10) + 1 clusters
MERGE_EPSILON = 1e-6  # the authors' merged token = sum / (count + 1e-6)


def sparsevlm_cut_layers(num_layers: int) -> tuple[int, ...]:
    """This project's cut layers N (pruning layer N-1) for a `num_layers`-deep decoder.

    The authors' model code prunes at layers 2/6/15 whatever the depth, so every decoder deep enough to run all
    three with a layer after the last (17 layers or more: LLaMA-7B's 32, LLaMA-13B's 40) gets their cuts 3/7/16.
    A shallower decoder, where that code would skip cuts, gets them at the same fractions of depth: pruning layer
    round(l * L / 32) (halves up); one too shallow to keep three distinct cuts is refused."""
    if num_layers > SPARSEVLM_LAYERS[-1] + 1:
        pruning = SPARSEVLM_LAYERS
    else:
        pruning = tuple(math.floor(layer * num_layers / SPARSEVLM_REFERENCE_DEPTH + 0.5) for layer in SPARSEVLM_LAYERS)
    cuts = tuple(layer + 1 for layer in pruning)
    if len(set(cuts)) != len(cuts) or cuts[-1] > num_layers - 1:
        raise ScheduleError(f"SparseVLM's three cuts (layers 2/6/15, scaled below 17 layers) do not fit a "
                            f"{num_layers}-layer decoder (they map to {list(cuts)}); use a model with at least 4 "
                            "decoder layers or pass explicit --cuts")
    return cuts


def recycle_counts(tokens_in: int, keep: int) -> tuple[int, int]:
    """(recycled, merged) token counts of a cut keeping `keep` of `tokens_in` image tokens, as the code rounds."""
    deleted = tokens_in - keep
    if deleted <= 0:
        return 0, 0
    recycled = int(deleted * RECYCLE_FRACTION) + 1
    return recycled, int(recycled / CLUSTER_DIVISOR) + 1


def sparsevlm_keeps(table: tuple[int, ...], num_image_tokens: int) -> list[int]:
    """Kept image tokens per cut as the code computes them: min(entry, current image tokens - 1), where the
    current count includes the previous cut's merged tokens."""
    keeps, current = [], num_image_tokens
    for entry in table:
        keep = max(1, min(entry, current - 1))
        keeps.append(keep)
        current = keep + recycle_counts(current, keep)[1]
    return keeps


def image_tokens_after(cuts, num_image_tokens: int) -> list[int]:
    """Image tokens leaving each cut (kept + merged), in order."""
    counts, current = [], num_image_tokens
    for cut in cuts:
        current = cut.keep + recycle_counts(current, cut.keep)[1]
        counts.append(current)
    return counts


def image_tokens_per_layer(cuts, num_layers: int, num_image_tokens: int) -> list[int]:
    """Image tokens entering each decoder layer (kept + merged after each cut): what the cost model counts."""
    after = dict(zip((c.layer for c in cuts), image_tokens_after(cuts, num_image_tokens)))
    counts, current = [], num_image_tokens
    for layer in range(num_layers):
        current = after.get(layer, current)
        counts.append(current)
    return counts


def selection_flops(cuts, num_image_tokens: int, text_tokens: int, hidden: int) -> float:
    """FLOPs the rule adds beyond the layers it reads (their attention is computed anyway): raters' V T^T once,
    per cut the rater average, the rank comparisons, and the clustering's Gram matrix and merge matmul."""
    flops = 2.0 * num_image_tokens * text_tokens * hidden
    current = num_image_tokens
    for cut in cuts:
        recycled, merged = recycle_counts(current, cut.keep)
        flops += 2.0 * text_tokens * current + current ** 2 + 2.0 * recycled ** 2 * hidden
        flops += 2.0 * merged * recycled * hidden
        current = cut.keep + merged
    return flops


def sparsevlm_schedule(*, num_layers: int, num_image_tokens: int, budget: int | None = None,
                       keep_ratio: float | None = None, cuts: str | None = None, **kwargs) -> Schedule:
    """The schedule of `--method sparsevlm`: a table budget, a layer-averaged keep ratio (the 192 table's
    shape scaled, kept tokens only; merged ones come on top), or explicit cuts (K = kept image tokens)."""
    given = [name for name, value in (("--budget", budget), ("--keep-ratio", keep_ratio), ("--cuts", cuts))
             if value is not None]
    if len(given) != 1:
        raise ScheduleError("--method sparsevlm needs exactly one of --budget {" +
                            ",".join(map(str, sorted(SPARSEVLM_TABLES))) + "}, --keep-ratio R or --cuts"
                            + (f" (got {' and '.join(given)})" if given else ""))
    provenance = {"method": "sparsevlm"}
    if cuts is not None:
        schedule = Schedule.parse(cuts, provenance=provenance, **kwargs)
        return validate_sparsevlm(schedule, num_layers, num_image_tokens)
    layers = sparsevlm_cut_layers(num_layers)
    if budget is not None:
        if budget not in SPARSEVLM_TABLES:
            raise ScheduleError(f"SparseVLM has no table for --budget {budget} (the authors' score.py has "
                                f"{', '.join(map(str, sorted(SPARSEVLM_TABLES)))}); pick one or pass --keep-ratio")
        keeps = sparsevlm_keeps(SPARSEVLM_TABLES[budget], num_image_tokens)
        schedule = Schedule(tuple(Cut(c, k) for c, k in zip(layers, keeps)),
                            provenance={**provenance, "budget": budget, "table": list(SPARSEVLM_TABLES[budget])},
                            **kwargs)
        return validate_sparsevlm(schedule, num_layers, num_image_tokens)
    weights = [count / 576 for count in SPARSEVLM_TABLES[192]]
    schedule = schedule_for_ratio(keep_ratio, layers, weights, num_layers, num_image_tokens, **kwargs)
    return validate_sparsevlm(Schedule(schedule.cuts, schedule.threshold, schedule.positions,
                                       {**provenance, "keep_ratio": keep_ratio}, schedule.precision),
                              num_layers, num_image_tokens)


def validate_sparsevlm(schedule: Schedule, num_layers: int, num_image_tokens: int) -> Schedule:
    """Cuts for SparseVLM: each after at least one layer (it scores with layer N-1), and KEEP below the image
    tokens entering the cut (kept + previous merged), since the code always deletes at least one."""
    current = num_image_tokens
    for cut in schedule.cuts:
        if not 1 <= cut.layer <= num_layers - 1:
            raise ScheduleError(f"cut {cut.layer}:{cut.keep}: SparseVLM scores with layer N-1's attention, so LAYER "
                                f"must be within 1..{num_layers - 1}")
        if not 1 <= cut.keep <= current - 1:
            raise ScheduleError(f"cut {cut.layer}:{cut.keep}: KEEP must be within 1..{current - 1} (SparseVLM keeps "
                                f"fewer than the {current} image tokens entering the cut); lower KEEP")
        current = cut.keep + recycle_counts(current, cut.keep)[1]
    if [c.layer for c in schedule.cuts] != sorted({c.layer for c in schedule.cuts}):
        raise ScheduleError("cut layers must be strictly increasing")
    return schedule


# ---------------------------------------------------------------------------------------------------------------
# The rule, as fixed-shape torch ops


def tail_rows(seq_len, tail: int | None, device) -> torch.Tensor:
    """The last `tail` positions of a sequence (all of them when None); positions before 0 repeat 0, which is
    never text after the image. The text after the image is the sequence's tail, at most the export's
    --max-text-tokens long: reading only that many rows keeps shapes static without touching all S."""
    if tail is None:
        return torch.arange(seq_len, device=device)
    return clamp_index(seq_len - tail + torch.arange(tail, device=device), seq_len - 1)


def rater_mask(hidden: torch.Tensor, image_start: torch.Tensor, num_image: int, tail: int | None = None):
    """hidden (1, S, D) language-model input embeddings -> (S,) float 0/1: the raters among the text tokens
    after the image span [image_start, image_start + num_image). All zero when there is no such text.
    `tail`: look for the text among the last `tail` positions only (it must hold all text after the image)."""
    h = hidden[0].float()  # (S, D)
    s = h.shape[0]
    rows = tail_rows(s, tail, h.device)  # (R,)
    first = s - rows.shape[0]  # position of row 0 before clamping (negative when S < tail)
    is_text = first + torch.arange(rows.shape[0], device=h.device) >= image_start + num_image  # (R,)
    image_rows = h.index_select(0, clamp_index(image_start + torch.arange(num_image, device=h.device), s - 1))
    logits = image_rows @ h.index_select(0, rows).T  # (M, R)
    logits = torch.where(is_text[None, :], logits, torch.full_like(logits, -torch.inf))
    relevance = torch.softmax(logits, dim=-1).mean(dim=0)  # (R,), 0 off the text (NaN rows only if no text)
    relevance = torch.where(is_text, relevance, torch.zeros_like(relevance))
    text_count = is_text.float().sum()
    mean = relevance.sum() / torch.clamp(text_count, min=1.0)
    raters = is_text & (relevance > mean)  # (R,)
    if tail is None:
        return raters.float()
    at = torch.arange(s, device=h.device)[:, None] == rows[None, :]  # (S, R): back to sequence positions
    return (at & raters[None, :]).any(dim=1).float()


def rater_scores(attention: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """attention (R, M) head-averaged softmax attention of R query rows to the current image tokens,
    weights (R,) 0/1 (rater or not) -> (M,) the mean over the raters (zeros when there are none)."""
    return (weights @ attention) / torch.clamp(weights.sum(), min=1.0)


def descending_rank(values: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N,) int64 position of each value in a descending order whose ties go to the lower index."""
    n = values.shape[0]
    index = torch.arange(n, device=values.device)
    before = (values[None, :] > values[:, None]) | (
        (values[None, :] == values[:, None]) & (index[None, :] < index[:, None]))
    return before.float().sum(dim=1).to(torch.int64)  # float sums are exact far beyond any token count


def in_rank_order(rank: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ranks 0..count-1, in rank order (TopK over distinct keys: no tie to resolve)."""
    n = rank.shape[0]
    return torch.topk((n - rank).float(), count).indices


def ascending_indices(member: torch.Tensor, count: int) -> torch.Tensor:
    """Indices where `member` (N,) bool is set (exactly `count` of them), ascending."""
    n = member.shape[0]
    index = torch.arange(n, device=member.device)
    key = member.float() * n + (n - 1 - index).float()  # distinct: members first, then by index
    return torch.topk(key, count).indices


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, N) float32 L2 distances / sqrt(C), the diagonal exactly 0.

    Through the Gram matrix (N x N x C memory is out of reach at LLaVA-NeXT sizes), on centred rows: the
    distances are the same, the cancellation error is far smaller for hidden states with large common parts."""
    n, c = x.shape
    x = x.float()
    x = x - x.mean(dim=0, keepdim=True)
    gram = x @ x.T
    gram = (gram + gram.T) * 0.5  # exactly symmetric, as direct distances are: mutual neighbours tie exactly
    eye = torch.arange(n, device=x.device)[:, None] == torch.arange(n, device=x.device)[None, :]
    squares = torch.where(eye, gram, torch.zeros_like(gram)).sum(dim=-1)  # the Gram diagonal: duplicates give 0
    d2 = squares[:, None] + squares[None, :] - 2.0 * gram
    d2 = torch.where(d2 > 0, d2, torch.zeros_like(d2))
    return torch.where(eye, torch.zeros_like(d2), torch.sqrt(d2)) / (c ** 0.5)


def cluster_and_merge(x: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """Density-peak clustering of x (N, C) into `cluster_num` merged tokens (cluster_num, C), as the authors'
    cluster_and_merge: density = exp(-mean squared distance to the cluster_num nearest (self included)),
    parent distance = distance to the nearest denser token (the largest distance overall where none),
    centres = top cluster_num of density x parent distance (in that order), every token joins its nearest
    centre (a centre joins itself), merged token = sum / (count + 1e-6). Ties go to the lower index."""
    n = x.shape[0]
    dist = pairwise_distances(x)  # (N, N)
    index = torch.arange(n, device=x.device)
    nearest = torch.topk(dist, cluster_num, dim=-1, largest=False).values  # values only: ties cannot matter
    density = torch.exp(-(nearest * nearest).mean(dim=-1))  # (N,)
    denser = (density[None, :] > density[:, None]) | (  # denser[i, j]: j is denser than i
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None]))
    parent = torch.where(denser, dist, dist.max()).min(dim=-1).values  # (N,)
    centres = in_rank_order(descending_rank(parent * density), cluster_num)  # (K,) in score order
    to_centre = dist.index_select(0, centres)  # (K, N)
    is_min = to_centre == to_centre.min(dim=0, keepdim=True).values
    first_min = is_min & (torch.cumsum(is_min.float(), dim=0) == 1)  # nearest centre, lowest cluster on ties
    centre_of = centres[:, None] == index[None, :]  # (K, N) one-hot of each centre's own token
    assign = torch.where(centre_of.any(dim=0, keepdim=True), centre_of.float(), first_min.float())  # (K, N)
    counts = assign.sum(dim=-1, keepdim=True)  # (K, 1)
    return (assign @ x.float()) / (counts + MERGE_EPSILON)


def prune_and_recycle(layer_out: torch.Tensor, scores: torch.Tensor, image_start: torch.Tensor, keep: int,
                      raters: torch.Tensor | None = None):
    """One SparseVLM cut on the pruning layer's output.

    layer_out (1, S, D), scores (M,) rater attention to the M current image tokens at
    [image_start, image_start + M), keep: static. Returns kept (keep,) ascending indices into the current
    image span, recycled (R,) indices in descending score order, hidden (1, S', D) = [text before | kept |
    merged | text after] with S' = S - M + keep + clusters, position_ids (1, S') renumbered, and the raters
    (S,) -> (S',) mask carried along (merged rows are not raters)."""
    m = scores.shape[0]
    recycled_count, cluster_num = recycle_counts(m, keep)
    rank = descending_rank(scores.float())
    kept = ascending_indices(rank < keep, keep)  # (keep,)
    recycled = in_rank_order(rank, keep + recycled_count)[keep:]  # (R,) deleted, by descending score
    h = layer_out[0]  # (S, D)
    s = h.shape[0]
    recycled_rows = h.index_select(0, image_start + recycled)
    merged = cluster_and_merge(recycled_rows, cluster_num).to(h.dtype)  # (K, D)
    extended = torch.cat([h, merged], dim=0)  # merged rows live at S .. S + K - 1
    new_len = s - m + keep + cluster_num
    j = torch.arange(new_len, device=h.device)
    offset = j - image_start
    in_kept = kept.index_select(0, clamp_index(offset, keep - 1)) + image_start
    in_merged = s + clamp_index(offset - keep, cluster_num - 1)
    after = j - keep - cluster_num + m
    rows = torch.where(offset < 0, j, torch.where(offset < keep, in_kept,
                                                  torch.where(offset < keep + cluster_num, in_merged, after)))
    hidden_out = extended.index_select(0, rows)[None]
    positions = j[None]
    if raters is None:
        return kept, recycled, hidden_out, positions
    padded = torch.cat([raters, torch.zeros(cluster_num, dtype=raters.dtype, device=raters.device)])
    return kept, recycled, hidden_out, positions, padded.index_select(0, rows)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's stages


def span_start(image_positions: torch.Tensor) -> torch.Tensor:
    """The first image row (): SparseVLM's released code takes one image, whose tokens form one span."""
    return image_positions[0]


class SparseVLMRaters(torch.nn.Module):
    """hidden (1, S, D) language-model input, image_positions (M,) one span -> raters (1, S) float32 0/1 (see
    rater_mask)."""

    def __init__(self, num_image_tokens: int, max_text_tokens: int | None = None):
        super().__init__()
        self.num_image_tokens, self.tail = num_image_tokens, max_text_tokens

    def forward(self, hidden, image_positions):
        return rater_mask(hidden, span_start(image_positions), self.num_image_tokens, self.tail)[None]


class SparseVLMSelectStage(torch.nn.Module):
    """A SparseVLM cut N:K: runs decoder layer N-1 on all tokens (writing its KV buffer), scores the current
    image tokens by the raters' head-averaged attention in that layer, keeps K of the layer's output and
    recycles deleted ones into merged tokens placed right after them.

    hidden (1, S, D) entering layer N-1, position_ids (1, S), image_positions (M,) one span, kv (1, 2, KVH, N, hd) of the
    one-layer segment [N-1, N), raters (1, S) -> kept (K,) indices into the M current image tokens, converged ()
    always True, hidden (1, S', D) entering layer N with S' = S - M + K + merged, position_ids (1, S')
    renumbered, saliency (M,) the rater attention, kv_out, raters_out (1, S')."""

    def __init__(self, decoder, owned_layer: int, num_image_tokens: int, keep: int, runtime_form: bool = False,
                 max_text_tokens: int | None = None):
        """`max_text_tokens`: the raters are among that many last positions (all S rows when None)."""
        super().__init__()
        self.tail = max_text_tokens
        self.layer = decoder.layers[owned_layer]  # registered so export sees the weights
        self.rotary = decoder.rotary
        self._decoder, self.owned_layer = decoder, owned_layer
        self.num_image_tokens, self.keep = num_image_tokens, keep
        self.runtime_form = runtime_form  # writes the KV buffer in place (the torch runtime)
        self.in_place_inputs = ("kv",) if runtime_form else ()

    def forward(self, hidden, position_ids, image_positions, kv, raters):
        h, span, image_start = hidden[0], image_positions, span_start(image_positions)  # one span (M,)
        h_out, new_kv, probs, _, _ = self._decoder.layer_with_attention(self.owned_layer, h, position_ids)
        rows = tail_rows(h.shape[0], self.tail, h.device)  # (R,): where the raters can be
        attention = probs.index_select(1, rows).mean(dim=0).index_select(1, span)  # (R, M): heads averaged
        scores = rater_scores(attention, raters[0].float().index_select(0, rows))  # (M,); repeated rows: 0 weight
        kept, _, hidden_out, positions, raters_out = prune_and_recycle(h_out[None], scores, image_start, self.keep,
                                                                       raters=raters[0].float())
        kv_out = self._decoder.write_owned_layer_kv(kv, new_kv, in_place=self.runtime_form)
        return kept, torch.tensor(True), hidden_out, positions, scores, kv_out, raters_out[None]
