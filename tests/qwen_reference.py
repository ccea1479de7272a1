"""A plain, step-by-step reference of the two TRIO pruning stages of the authors' Qwen2.5-VL port (ocy1/TRIO,
qwen/model/qwen2_5_vl_custom.py and qwen/model/qwen2_5_vl_utils.py). See tests/qwen_reference_NOTES.md for the
line-by-line account, the deviations from the LLaVA port and what in the released code is broken or ambiguous.

1. Vision-encoder stage (TRIO-VE; qwen2_5_vl_custom.py Qwen2_5_VisionTransformerPretrainedModel_X.forward and
   Qwen2_5_VLForConditionalGeneration_X.forward:155-200; qwen2_5_vl_utils.py window_selection, token_merging):
   attention of the first full-attention vision block and of the last block -> per merged token scores; half of the
   budget from a per-window cap over 4x4 windows of the merged grid, the rest global top-k; each dropped merged token
   averaged into its most cosine-similar kept token.
2. Decoder stage (qwen2_5_vl_custom.py Qwen2_5_VLModel_X.forward:781-837 and layer_prune): after 1-based layer
   `rank_layer` ran, that same layer is rerun on its own output, then the final norm and a head; cross-entropy
   against the own argmax on the last 4 shifted positions; saliency = L2 norm of the gradient w.r.t. the rerun's
   input; greedy NMS at cosine 0.8 on that input; keep = int(ratio * current image count).

Built from transformers' (5.x) modules only: the vision patch embedding, blocks, rotary inverse frequencies and merger;
the decoder layers, rotary embedding, final norm, embedding table and lm_head; `get_rope_index`. Everything else is
written out here as plain loops. Float32 on the CPU; ties are broken towards the lower index everywhere (the
authors' torch.argsort / topk / argmax on CUDA give no such promise, see the notes). Single image, batch one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WINDOW = 4  # window_selection(..., window_size=4): 4x4 merged tokens (qwen2_5_vl_custom.py:162)
NUM_SUPERVISED = 4  # K_pos = 4 (qwen2_5_vl_custom.py:1006)
NMS_THRESHOLD = 0.8  # tau = 0.8 (qwen2_5_vl_custom.py:1144)
IGNORE = -100


# ---- small plain helpers ----------------------------------------------------------------------------------------


def descending_order(values: list[float]) -> list[int]:
    """Indices by descending value, ties to the lower index (a stable sort)."""
    return sorted(range(len(values)), key=lambda i: -values[i])


def first_argmax(values: list[float]) -> int:
    """Index of the largest value; the first one on ties (torch.argmax's documented rule)."""
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best


def causal_mask(length: int, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, T, T) additive mask: 0 where key <= query, the dtype's minimum elsewhere."""
    mask = torch.zeros(length, length, dtype=dtype)
    for q in range(length):
        for k in range(q + 1, length):
            mask[q, k] = torch.finfo(dtype).min
    return mask[None, None]


# ---- 1. vision-encoder stage ------------------------------------------------------------------------------------


def patch_positions(grid_h: int, grid_w: int) -> list[tuple[int, int]]:
    """(row, col) of every patch row of pixel_values, in the processor's order: merge units (2x2 patches) in raster
    order over the (h/2, w/2) merged grid, the 4 patches of a unit consecutive and in raster order
    (transformers 4.51 Qwen2_5_VisionTransformerPretrainedModel.rot_pos_emb, which the authors' forward calls)."""
    out = []
    for uy in range(grid_h // 2):
        for ux in range(grid_w // 2):
            for dy in range(2):
                for dx in range(2):
                    out.append((2 * uy + dy, 2 * ux + dx))
    return out


def window_order(merged_h: int, merged_w: int, window: int) -> tuple[list[int], list[int]]:
    """The ViT's attention-window permutation (transformers' get_window_index): merged units grouped by
    window x window windows of the merged grid (windows in raster order, the grid padded at the bottom/right,
    empty windows dropped), units in raster order inside a window. Returns (window_index: the raster unit at each
    permuted slot, window sizes in units)."""
    rows, cols = math.ceil(merged_h / window), math.ceil(merged_w / window)
    index, sizes = [], []
    for wy in range(rows):
        for wx in range(cols):
            count = 0
            for y in range(wy * window, min((wy + 1) * window, merged_h)):
                for x in range(wx * window, min((wx + 1) * window, merged_w)):
                    index.append(y * merged_w + x)
                    count += 1
            if count:
                sizes.append(count)
    return index, sizes


def vision_attention_probs(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                           segments: list[tuple[int, int]]) -> torch.Tensor:
    """Softmax probabilities (heads, N, N) of a vision block's attention on its input x (N, C) (in the permuted
    order), head by head: q, k from the block's qkv after norm1, vision rotary, scores / sqrt(head_dim), keys
    outside the query's segment masked out (qwen2_5_vl_custom.py Qwen2_5_VLVisionSdpaAttention_X.forward:522-531,
    which adds finfo.min, softmax in float32, cast back to q's dtype)."""
    attn = block.attn
    heads = attn.num_heads
    n = x.shape[0]
    q, k, _ = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    head_dim = q.shape[-1]

    def rotate(t):
        half = t.shape[-1] // 2
        return torch.cat([-t[..., half:], t[..., :half]], dim=-1)

    c, s = cos[:, None, :].float(), sin[:, None, :].float()
    q = q.float() * c + rotate(q.float()) * s
    k = k.float() * c + rotate(k.float()) * s
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for start, end in segments:
        allowed[start:end, start:end] = True
    probs = []
    for h in range(heads):
        scores = (q[:, h] @ k[:, h].T) / math.sqrt(head_dim)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs.append(torch.softmax(scores, dim=-1))
    return torch.stack(probs)


def attention_to_unit_scores(probs: torch.Tensor, unit: int = 4) -> list[float]:
    """(heads, N, N) -> one score per merged unit, in the permuted order: sum over heads, mean over the N queries
    (every row, so the result is the mean attention each key receives), mean over the 4 patches of each unit
    (qwen2_5_vl_custom.py:385-399)."""
    summed = probs.sum(dim=0)  # (N, N)
    n = summed.shape[0]
    per_key = [float(summed[:, j].sum()) / n for j in range(n)]
    return [sum(per_key[u * unit:(u + 1) * unit]) / unit for u in range(n // unit)]


@dataclass
class VisionPass:
    features: torch.Tensor  # (M, D) merger output, raster order over the merged grid
    local_scores: list[float]  # (M,) block fullatt_block_indexes[0], raster order
    global_scores: list[float]  # (M,) the last block, raster order
    merged_hw: tuple[int, int]


@torch.no_grad()
def vision_pass(model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, local_block: int | None = None,
                global_block: int | None = None) -> VisionPass:
    """The vision tower as the authors' Qwen2_5_VisionTransformerPretrainedModel_X.forward (:316-414) runs it, plus
    the two attention maps it reads: block `fullatt_block_indexes[0]` ('local') and block depth-1 ('global').
    In the authors' code the two must differ (an `elif`: when the first full-attention block is the last block,
    the global map is never assigned and the forward raises); here equal blocks read the same map."""
    visual = model.model.visual
    (t, gh, gw), = image_grid_thw.tolist()
    assert t == 1, "still images only"
    merge = visual.spatial_merge_size
    unit = merge * merge
    mh, mw = gh // merge, gw // merge
    depth = len(visual.blocks)
    local_block = visual.fullatt_block_indexes[0] if local_block is None else local_block
    global_block = depth - 1 if global_block is None else global_block

    x = visual.patch_embed(pixel_values)  # (N, C), processor order
    inv_freq = visual.rotary_pos_emb.inv_freq.float()
    cos_rows, sin_rows = [], []
    for row, col in patch_positions(gh, gw):
        freqs = torch.cat([row * inv_freq, col * inv_freq])
        emb = torch.cat([freqs, freqs])
        cos_rows.append(emb.cos())
        sin_rows.append(emb.sin())
    cos, sin = torch.stack(cos_rows), torch.stack(sin_rows)

    index, sizes = window_order(mh, mw, visual.window_size // merge // visual.patch_size)
    patch_perm = [u * unit + j for u in index for j in range(unit)]
    x, cos, sin = x[patch_perm], cos[patch_perm], sin[patch_perm]
    n = x.shape[0]
    window_segments, start = [], 0
    for size in sizes:
        window_segments.append((start, start + size * unit))
        start += size * unit
    full_segments = [(0, n)]

    local_perm = global_perm = None
    for number, block in enumerate(visual.blocks):
        segments = full_segments if number in visual.fullatt_block_indexes else window_segments
        if number in (local_block, global_block):
            scores = attention_to_unit_scores(vision_attention_probs(block, x, cos, sin, segments), unit)
            if number == local_block:
                local_perm = scores
            if number == global_block:
                global_perm = scores
        bounds = [0] + [end for _, end in segments]
        x = block(x, cu_seqlens=torch.tensor(bounds, dtype=torch.int32), position_embeddings=(cos, sin))
        x = x[0] if isinstance(x, tuple) else x
    merged_perm = visual.merger(x)  # (M, D), permuted order

    m = mh * mw
    features = torch.empty_like(merged_perm)
    local, global_ = [0.0] * m, [0.0] * m
    for slot, raster in enumerate(index):  # back to raster order (the authors' x[argsort(window_index)])
        features[raster] = merged_perm[slot]
        local[raster] = local_perm[slot]
        global_[raster] = global_perm[slot]
    return VisionPass(features, local, global_, (mh, mw))


def window_cap_select(scores: list[float], count: int, merged_h: int, merged_w: int, window: int = WINDOW) -> list[int]:
    """qwen2_5_vl_utils.py window_selection: walk the merged tokens by descending score and take a token while its
    window holds fewer than ceil(count / windows) taken ones, until `count` are taken. Windows are window x window
    blocks of the merged grid, floor(h / window) x floor(w / window) of them; the leftover rows (columns) at the
    bottom (right) belong to the last window row (column). Returned in the order taken (not sorted)."""
    rows, cols = merged_h // window, merged_w // window
    if rows == 0 or cols == 0 or count < 1:
        raise ValueError("the authors' window_selection needs a merged grid of at least 4x4 and count >= 1 "
                         f"(got {merged_h}x{merged_w}, count {count}): it divides by zero windows or fails its assert")
    limit = math.ceil(count / (rows * cols))
    taken_in = {}
    taken = []
    for index in descending_order(scores):
        wy = min((index // merged_w) // window, rows - 1)
        wx = min((index % merged_w) // window, cols - 1)
        if taken_in.get((wy, wx), 0) < limit:
            taken_in[(wy, wx)] = taken_in.get((wy, wx), 0) + 1
            taken.append(index)
        if len(taken) >= count:
            break
    assert len(taken) == count
    return taken


def window_cap_closed_form(scores: list[float], count: int, merged_h: int, merged_w: int,
                           window: int = WINDOW) -> list[int]:
    """The same set as window_cap_select without the sequential walk (what a fixed-shape graph can compute): a token
    is taken iff fewer than `limit` tokens of its window precede it in the descending order (a window's count only
    ever grows by the tokens seen before, each taken while under the cap), and the walk stops at `count`, so the
    set is the first `count` tokens of that order among those of within-window rank < limit. Sorted ascending."""
    rows, cols = merged_h // window, merged_w // window
    limit = math.ceil(count / (rows * cols))
    order = descending_order(scores)
    position = {index: p for p, index in enumerate(order)}
    window_of = [(min((i // merged_w) // window, rows - 1), min((i % merged_w) // window, cols - 1))
                 for i in range(len(scores))]
    eligible = []
    for i in range(len(scores)):
        rank = sum(1 for j in range(len(scores)) if window_of[j] == window_of[i] and position[j] < position[i])
        if rank < limit:
            eligible.append(i)
    eligible.sort(key=lambda i: position[i])
    return sorted(eligible[:count])


def ve_keep_indices(local_scores: list[float], global_scores: list[float], keep: int, merged_h: int,
                    merged_w: int) -> list[int]:
    """qwen2_5_vl_custom.py:159-168: keep // 2 by the window cap on the local scores, the other keep - keep // 2 the
    global top-k of the global scores with the window-picked ones set to 0; the union, sorted ascending."""
    local = window_cap_select(local_scores, keep // 2, merged_h, merged_w)
    global_scores = list(global_scores)
    for i in local:
        global_scores[i] = 0.0  # softmax means are > 0, so these come last
    global_ = descending_order(global_scores)[:keep - keep // 2]
    return sorted(local + global_)


def merge_dropped(features: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """qwen2_5_vl_utils.py token_merging(scaling=1): every dropped token goes to the kept token of highest cosine
    similarity (L2-normalised merger outputs, first kept on ties); each kept row becomes the plain mean of itself
    and the raw (unnormalised) features of the dropped tokens it received."""
    kept_set = set(kept)
    dropped = [i for i in range(features.shape[0]) if i not in kept_set]
    sums = [features[i].clone() for i in kept]
    counts = [0] * len(kept)
    kept_unit = [F.normalize(features[i], p=2, dim=-1) for i in kept]
    for i in dropped:
        unit = F.normalize(features[i], p=2, dim=-1)
        sims = [float(unit @ other) for other in kept_unit]
        j = first_argmax(sims)
        sums[j] = sums[j] + features[i]
        counts[j] += 1
    return torch.stack([sums[j] / (1 + counts[j]) for j in range(len(kept))])


@torch.no_grad()
def ve_stage_reference(model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, keep_ratio: float,
                       local_block: int | None = None, global_block: int | None = None):
    """The vision-encoder stage (qwen2_5_vl_custom.py:155-200): keep = int(keep_ratio * M) of the M merged tokens
    (none pruned when keep_ratio == 1, as the authors' `!= 1` test). Returns (kept indices, sorted, in raster
    merged-token numbering; merged features (keep, D)) -- all M and the unmerged features when keep_ratio == 1."""
    vision = vision_pass(model, pixel_values, image_grid_thw, local_block, global_block)
    m = vision.features.shape[0]
    if keep_ratio == 1:
        return list(range(m)), vision.features
    keep = int(keep_ratio * m)
    kept = ve_keep_indices(vision.local_scores, vision.global_scores, keep, *vision.merged_hw)
    return kept, merge_dropped(vision.features, kept)


# ---- 2. decoder stage ---------------------------------------------------------------------------------------------


def run_decoder_layer(model, index: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """transformers' decoder layer `index` on h (S, D) at M-RoPE positions (3, S), causal; returns (S, D)."""
    lm = model.model.language_model
    pos = positions[:, None, :].long()  # (3, 1, S)
    cos_sin = lm.rotary_emb(h[None], pos)
    out = lm.layers[index](h[None], attention_mask=causal_mask(h.shape[0], h.dtype), position_ids=pos,
                           position_embeddings=cos_sin)
    out = out[0] if isinstance(out, tuple) else out
    return out[0]


def supervised_shift_positions(seq_len: int, valid_len: int | None = None, k: int = NUM_SUPERVISED) -> list[int]:
    """Indices into the shifted logits (logits[:-1], S - 1 rows) that carry a label (layer_prune
    _loss_on_current_layer:1039-1056): valid_len - 1 - t clamped to [0, S - 2] for t < 4, where valid_len is the
    number of ones in attention_mask[1:] (S - 1 with no mask or an all-ones mask of the current length, giving
    S-5..S-2). A duplicate counts once (a boolean mask). With the mask generate passes after the vision stage
    dropped tokens, valid_len is the unpruned length and all four clamp to S - 2 (see the notes)."""
    s1 = seq_len - 1
    valid_len = s1 if valid_len is None else valid_len
    if valid_len <= 0:
        return [s1 - 1]
    return sorted({max(0, min(s1 - 1, valid_len - 1 - t)) for t in range(k)})


def probe_head(model, head: str):
    """The output head the authors' layer_prune finds (_get_output_head:982-996). `self` there is the text model
    (transformers 4.49-4.51 Qwen2_5_VLModel): no `lm_head`, and PreTrainedModel.get_output_embeddings returns None,
    so it falls through to F.linear(x, embed_tokens.weight), the INPUT embedding table. Identical to lm_head only
    for tied checkpoints (Qwen2.5-VL-3B); for 7B/32B/72B (tie_word_embeddings false) it is a different matrix.
    head='embed_tokens' reproduces the code, head='lm_head' what it presumably meant."""
    if head == "embed_tokens":
        weight = model.model.language_model.embed_tokens.weight
        return lambda x: F.linear(x, weight)
    if head == "lm_head":
        return model.lm_head
    raise ValueError(head)


def decoder_saliency(model, hidden: torch.Tensor, positions: torch.Tensor, layer: int, head: str = "embed_tokens",
                     valid_len: int | None = None) -> torch.Tensor:
    """||dLoss/dx_i||_2 for every row i (S,), x = `hidden` = the OUTPUT of 0-based layer `layer` (the layer just run,
    1-based rank_layer = layer + 1). The proxy reruns that same layer (layers[rank_layer - 1]) on x, causal, at the
    current M-RoPE positions, then the final norm and the head; loss = mean cross-entropy (float32 logits) against
    the detached own argmax at the supervised shifted positions (layer_prune:1004-1070, 1105-1138, 1155)."""
    lm = model.model.language_model
    out_head = probe_head(model, head)
    with torch.enable_grad():
        leaf = hidden.detach().clone().requires_grad_(True)
        h = run_decoder_layer(model, layer, leaf, positions)
        logits = out_head(lm.norm(h)).float()
        shifted = logits[:-1]
        rows = supervised_shift_positions(hidden.shape[0], valid_len)
        labels = torch.full((shifted.shape[0],), IGNORE, dtype=torch.long)
        for r in rows:
            labels[r] = int(shifted[r].detach().argmax())
        loss = F.cross_entropy(shifted, labels, ignore_index=IGNORE, reduction="mean")
        (grad,) = torch.autograd.grad(loss, leaf)
    return torch.stack([grad[i].norm(p=2) for i in range(grad.shape[0])]).float()


def greedy_nms(scores: list[float], features: torch.Tensor, keep: int, threshold: float = NMS_THRESHOLD) -> list[int]:
    """layer_prune:1159-1200: visit the image tokens by descending saliency; take a token unless an earlier taken
    one has cosine >= threshold with it (L2-normalised float32 rows of the cut input, self included), stop at `keep`;
    if fewer than `keep` were taken, fill with the not-yet-taken in the same saliency order (suppressed ones
    included). Returned sorted ascending (local indices)."""
    unit = F.normalize(features.float(), dim=-1)
    order = descending_order(scores)
    taken, suppressed = [], [False] * len(scores)
    for i in order:
        if len(taken) >= keep:
            break
        if suppressed[i]:
            continue
        taken.append(i)
        for j in range(len(scores)):
            if float(unit[i] @ unit[j]) >= threshold:
                suppressed[j] = True
    if len(taken) < keep:
        for i in order:
            if len(taken) >= keep:
                break
            if i not in taken:
                taken.append(i)
    return sorted(taken)


def keep_count(ratio: float, current: int) -> int:
    """Qwen2_5_VLModel_X.forward:793-794: int(ratio * current) (Python float product, truncated), clamped to
    [0, current]. The ratio is relative to the image tokens entering this cut (after the vision stage / any earlier
    cut), e.g. 0.333 * 216 -> 71."""
    return max(0, min(int(ratio * current), current))


@dataclass
class DecoderCut:
    kept: list[int]  # local indices into the current image span, sorted
    saliency: torch.Tensor  # (image count,)
    positions: torch.Tensor  # (3, S') the gathered rows after the cut


@torch.no_grad()
def decoder_stage_reference(model, hidden: torch.Tensor, positions: torch.Tensor, image_start: int, image_count: int,
                            layer: int, ratio: float, head: str = "embed_tokens",
                            valid_len: int | None = None) -> DecoderCut:
    """One cut (layer_prune), at the output `hidden` (S, D) of 0-based layer `layer` (layer_list holds layer + 1),
    positions (3, S) the current M-RoPE rows, the image tokens rows image_start .. image_start + image_count - 1.
    keep = keep_count(ratio, image_count); keep >= count or keep == 0 prunes nothing (layer_prune:969-977; with 0 the
    forward still records 0 image tokens, so later cuts are skipped). The rows after the cut are the original rows
    gathered (text before, kept image rows, text after): no renumbering; decoding continues at max(original rows of
    the UNPRUNED prompt) + 1 + step (rope_deltas from get_rope_index on the full prompt, notes section 3)."""
    keep = keep_count(ratio, image_count)
    if keep <= 0 or keep >= image_count:
        return DecoderCut(list(range(image_count)), torch.zeros(image_count), positions)
    saliency = decoder_saliency(model, hidden, positions, layer, head, valid_len)[image_start:image_start + image_count]
    kept = greedy_nms(saliency.tolist(), hidden[image_start:image_start + image_count], keep)
    rows = list(range(image_start)) + [image_start + i for i in kept] + list(range(image_start + image_count,
                                                                                    hidden.shape[0]))
    return DecoderCut(kept, saliency, positions[:, rows])


# ---- the prompt up to a cut (the glue between the two stages) ----------------------------------------------------


@dataclass
class Prefill:
    embeds: torch.Tensor  # (S', D) after the vision stage
    positions: torch.Tensor  # (3, S') the gathered original M-RoPE rows
    image_start: int
    image_count: int
    ve_kept: list[int]
    first_decode_position: int  # max original row + 1 (rope_deltas + full prompt length)


@torch.no_grad()
def prefill_after_vision(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                         ve_ratio: float) -> Prefill:
    """Qwen2_5_VLForConditionalGeneration_X.forward:118-200: M-RoPE rows from get_rope_index on the FULL prompt;
    the vision stage; the dropped image tokens removed from the ids and from the rows (the kept rows keep their
    original (t, h, w) values); the embeddings with the merged features in the kept image slots."""
    ids = input_ids[0]
    image_token = model.config.image_token_id
    is_image = [int(i) == image_token for i in ids.tolist()]
    mm = torch.tensor([is_image], dtype=torch.int32)
    rows, deltas = model.model.get_rope_index(input_ids, mm, image_grid_thw)
    rows = rows[:, 0, :]
    kept, features = ve_stage_reference(model, pixel_values, image_grid_thw, ve_ratio)
    image_start = is_image.index(True)
    count = sum(is_image)
    keep_rows = list(range(image_start)) + [image_start + i for i in kept] + list(range(image_start + count, len(ids)))
    new_ids = ids[keep_rows]
    embeds = model.model.language_model.embed_tokens(new_ids).clone()
    for j in range(len(kept)):
        embeds[image_start + j] = features[j]
    return Prefill(embeds, rows[:, keep_rows], image_start, len(kept), kept, int(rows.max()) + 1)


@torch.no_grad()
def run_to_cut(model, prefill: Prefill, layer: int) -> torch.Tensor:
    """Decoder layers 0..layer (inclusive) on the pruned prompt: the hidden state a cut at rank_layer = layer + 1
    scores and prunes."""
    h = prefill.embeds
    for index in range(layer + 1):
        h = run_decoder_layer(model, index, h, prefill.positions)
    return h


@dataclass
class PrefillResult:
    ve_kept: list[int]
    cuts: list[DecoderCut]  # per cut in layer_list order (that ran)
    kept_original: list[list[int]]  # per cut, in the vision stage's kept numbering (0 .. ve count - 1)
    last_logits: torch.Tensor  # (V,) lm_head(norm(h))[-1]


@torch.no_grad()
def prefill_reference(model, input_ids, pixel_values, image_grid_thw, ve_ratio: float, layer_list: list[int],
                      ratio_list: list[float], head: str = "embed_tokens") -> PrefillResult:
    """The whole pruned prefill (Qwen2_5_VLModel_X.forward:741-837): every decoder layer in turn; after 1-based layer
    r in layer_list (stage = layer_list.index(r)) a cut with ratio_list[stage] of the current image count, while
    image tokens remain. Later layers see the pruned rows and the gathered positions. Supervised rows are those
    of an all-ones mask of the current length (the crash-free reading, notes section 2.3)."""
    prefill = prefill_after_vision(model, input_ids, pixel_values, image_grid_thw, ve_ratio)
    h, positions = prefill.embeds, prefill.positions
    start, count = prefill.image_start, prefill.image_count
    ids = list(range(count))
    cuts, kept_original = [], []
    for index in range(len(model.model.language_model.layers)):
        h = run_decoder_layer(model, index, h, positions)
        rank = index + 1
        if rank in layer_list and h.shape[0] != 1 and count > 0:
            ratio = ratio_list[layer_list.index(rank)]
            cut = decoder_stage_reference(model, h, positions, start, count, index, ratio, head)
            cuts.append(cut)
            keep = keep_count(ratio, count)
            if 0 < keep < count:
                rows = list(range(start)) + [start + i for i in cut.kept] + list(range(start + count, h.shape[0]))
                h, positions = h[rows], cut.positions
                ids = [ids[i] for i in cut.kept]
            count = keep  # 0 stops later cuts (the authors' cur_image_tokens = next_image_tokens)
            kept_original.append(list(ids))
    logits = model.lm_head(model.model.language_model.norm(h))[-1].float()
    return PrefillResult(prefill.ve_kept, cuts, kept_original, logits)


# ---- self-checks ----------------------------------------------------------------------------------------------------


def _self_check():
    import tempfile

    from transformers import AutoModelForImageTextToText
    from transformers.vision_utils import get_vision_window_index

    from trio_edge.models.tiny_qwen import make_tiny_qwen2_5_vl

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_qwen2_5_vl(tmp, vision_layers=4)
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    # the real model reads block 7 and block 31 of 32; the tiny default has one full block (the last): use two
    model.config.vision_config.fullatt_block_indexes = [1, 3]
    model.model.visual.fullatt_block_indexes = [1, 3]
    visual = model.model.visual
    for gh, gw in ((16, 24), (20, 28), (8, 8)):  # merged 8x12 (6 windows), 10x14 (leftover rows/cols), 4x4
        index, sizes = window_order(gh // 2, gw // 2, 4)
        expected, cu = get_vision_window_index(torch.tensor([[1, gh, gw]]), spatial_merge_size=2, window_size=112,
                                               patch_size=14)
        assert index == expected.tolist(), (gh, gw)
        bounds = [0]
        for s in sizes:
            bounds.append(bounds[-1] + 4 * s)
        assert bounds == torch.unique_consecutive(torch.as_tensor(cu)).tolist()

    gh, gw = 20, 28
    pixel_values = torch.randn(gh * gw, 3 * 2 * 14 * 14)
    thw = torch.tensor([[1, gh, gw]])
    vision = vision_pass(model, pixel_values, thw)
    with torch.no_grad():
        expected = visual(pixel_values, grid_thw=thw).pooler_output
    torch.testing.assert_close(vision.features, expected, rtol=0, atol=1e-5)
    kept, merged = ve_stage_reference(model, pixel_values, thw, 0.3)
    print(f"VE stage, merged grid 10x14 = 140 tokens, ratio 0.3 -> {len(kept)} kept: {kept}")
    print(f"  merged features {tuple(merged.shape)}")

    image_token = model.config.image_token_id
    text = [5, 6, 7]
    after = [10, 11, 12, 13, 14, 15, 16]
    start = model.config.vision_start_token_id
    end = model.config.vision_end_token_id
    ids = torch.tensor([text + [start] + [image_token] * (gh * gw // 4) + [end] + after])
    prefill = prefill_after_vision(model, ids, pixel_values, thw, 0.3)
    layer = 1  # --layer-list '[2]'
    hidden = run_to_cut(model, prefill, layer)
    cut = decoder_stage_reference(model, hidden, prefill.positions, prefill.image_start, prefill.image_count, layer,
                                  0.333)
    print(f"decoder cut after layer index {layer} (rank 2): {prefill.image_count} -> {len(cut.kept)} kept "
          f"(local): {cut.kept}")
    print(f"  first decode position {prefill.first_decode_position}, rows after cut {tuple(cut.positions.shape)}")
    generator = torch.Generator().manual_seed(3)
    for trial in range(40):  # the closed form equals the walk, ties included (scores drawn from few levels)
        mh, mw = 4 + trial % 7, 4 + (trial * 3) % 9
        levels = 3 + trial % 5
        values = torch.randint(0, levels, (mh * mw,), generator=generator).float().tolist()
        want = 1 + trial % (mh * mw // 2)
        assert sorted(window_cap_select(values, want, mh, mw)) == window_cap_closed_form(values, want, mh, mw)
    whole = prefill_reference(model, ids, pixel_values, thw, 0.3, [2, 4], [0.333, 0.5])
    assert whole.ve_kept == kept and whole.cuts[0].kept == cut.kept
    print(f"whole prefill, layer_list [2, 4], ratios [0.333, 0.5]: kept per cut (VE numbering) {whole.kept_original}")
    assert supervised_shift_positions(20) == [15, 16, 17, 18]  # logits rows S-5..S-2
    assert supervised_shift_positions(20, valid_len=120) == [18]  # the collapsed case
    assert keep_count(0.333, 216) == 71 and keep_count(0.167, 1296) == 216


if __name__ == "__main__":
    _self_check()
