"""An independent, slow reference of the TRIO-pruned LLaVA pipeline (DESIGN.md section 1).

Built only from transformers' own modules -- the decoder layers called as LlamaDecoderLayer.forward
with the model's rotary embedding and an explicit causal additive mask, the model's final norm and
lm_head, `get_image_features` (which packs the anyres features) and the input embeddings -- plus
trio_edge's greedy selection rule `select_tokens` (itself tested against a brute force elsewhere).
No trio_edge segment, select-stage, saliency or KV-cache code is used.

Generation is greedy and recomputed from scratch at every step (no KV cache). The kept indices are
chosen once, at prefill, on the prompt, and reused at every later step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trio_edge.trio.selection import select_tokens

NUM_SUPERVISED = 4


@dataclass
class ReferenceResult:
    token_ids: list[int]
    logits: list[torch.Tensor]  # per generated step, (V,)
    kept: list[list[int]]  # per cut, in the original 0..M-1 image-token numbering
    saliency: list[torch.Tensor] = field(default_factory=list)  # per cut, over the current image span


def causal_mask(length: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(1, 1, T, T) additive mask: 0 where key <= query, the dtype's minimum elsewhere."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def position_ids(positions: torch.Tensor) -> torch.Tensor:
    """positions (T,) -> position_ids (1, T); M-RoPE rows (3, T) (Qwen) -> (3, 1, T)."""
    return (positions[None] if positions.dim() == 1 else positions[:, None]).long()


def heads_of(attn, which: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' q or k projection of x (T, D) as (1, heads, T, hd), through the layer's per-head q_norm/k_norm
    when it has one (Qwen3's QK-norm), as its attention forward does."""
    states = getattr(attn, f"{which}_proj")(x).view(1, x.shape[0], heads, attn.head_dim)
    norm = getattr(attn, f"{which}_norm", None)
    return (states if norm is None else norm(states)).transpose(1, 2)


def run_layer(model, index: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """transformers' decoder layer `index` on h (T, D) at `positions` (T,) (or M-RoPE rows (3, T)), causal;
    returns (T, D)."""
    lm = model.model.language_model
    layer = lm.layers[index]
    pos = position_ids(positions)
    cos_sin = lm.rotary_emb(h[None], pos)
    out = layer(h[None], attention_mask=causal_mask(h.shape[0], h.dtype, h.device), position_ids=pos,
                position_embeddings=cos_sin)
    out = out[0] if isinstance(out, tuple) else out
    return out[0]


def head(model, h: torch.Tensor) -> torch.Tensor:
    return model.lm_head(model.model.language_model.norm(h))


def supervised_positions(seq_len: int) -> list[int]:
    return list(range(seq_len - 1 - NUM_SUPERVISED, seq_len - 1))  # S-5 .. S-2


def reference_attention(model, layer_index: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Softmax attention probabilities (H, T, T) of transformers' layer `layer_index` on h (T, D), causal,
    computed head by head from the layer's own projections and transformers' rotary helper."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = model.model.language_model
    layer = lm.layers[layer_index]
    attn = layer.self_attn
    heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
    x = layer.input_layernorm(h)
    t = x.shape[0]
    q, k = heads_of(attn, "q", x, heads), heads_of(attn, "k", x, kv_heads)
    cos, sin = lm.rotary_emb(h[None], position_ids(positions))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    probs = []
    for head_index in range(heads):
        kv_index = head_index // (heads // kv_heads)
        scores = (q[0, head_index] @ k[0, kv_index].T).float() * attn.scaling  # (T, T)
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        probs.append(torch.softmax(scores, dim=-1))
    return torch.stack(probs)


def image_rows_of(image_start, m: int | None = None) -> list[int]:
    """The image tokens' rows: a list of rows as given (several images: spans with text between them), or the one
    span [image_start, image_start + m)."""
    return list(range(image_start, image_start + m)) if isinstance(image_start, int) else [int(r) for r in image_start]


def fastv_kept(model, layer_index: int, h, positions, image_start, m: int | None, keep: int) -> torch.Tensor:
    """FastV as its authors' code does it: the attention of layer K-1 (computed on that layer's input),
    averaged over heads, row of the last token, image columns; the top KEEP; sorted (local indices). `image_start`,
    `m`: the image span, or `image_start` the list of image rows (see image_rows_of)."""
    rows = image_rows_of(image_start, m)
    attention = reference_attention(model, layer_index, h, positions).mean(dim=0)[-1]
    scores = attention[rows]
    order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), i))  # ties: lower index first
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def reference_keys(model, layer_index: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Keys of transformers' layer `layer_index` after rotary, heads concatenated per token: (T, KVH*hd)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = model.model.language_model
    layer = lm.layers[layer_index]
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    t, kv_heads = x.shape[0], attn.config.num_key_value_heads
    k = heads_of(attn, "k", x, kv_heads)
    cos, sin = lm.rotary_emb(h[None], position_ids(positions))
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return k[0].transpose(0, 1).reshape(t, -1)


def dart_kept(model, layer_index: int, h, positions, image_start, m: int | None, keep: int) -> torch.Tensor:
    """DART as its authors' LLaVA code does it, step by step (local indices, sorted): L1 key-norm pivots (4 image,
    4 text after the image) of layer K-1, states = final norm of that layer's output, pivots visited in the order
    of a Python set, each taking its least cosine-similar image tokens not yet taken. Budget: 4 + sum of picks
    ((KEEP - 4) // 8 each, one more to each of the first (KEEP - 4) % 8 visited). Several images (`image_start`
    a list of rows): image pivots among all image tokens, text pivots among the text after the last one."""
    rows = image_rows_of(image_start, m)
    base, extra = divmod(keep - 4, 8)
    keys = reference_keys(model, layer_index, h, positions)
    state = model.model.language_model.norm(run_layer(model, layer_index, h, positions))
    image_norm = keys[rows].float().abs().sum(dim=-1)
    after = rows[-1] + 1
    text_norm = keys[after:].float().abs().sum(dim=-1)
    by_norm = lambda values: sorted(range(len(values)), key=lambda i: (-float(values[i]), i))  # noqa: E731
    image_indices = [rows[i] for i in by_norm(image_norm)[:4]]
    query_indices = [after + i for i in by_norm(text_norm)[:4]]
    indices_set = set(image_indices + query_indices)
    valid = set(rows) - set(image_indices)
    for visit, item in enumerate(list(indices_set.copy())):
        count = base + (1 if visit < extra else 0)
        valid_list = sorted(valid)
        distance = -F.cosine_similarity(state[item][None], state[valid_list], dim=-1)
        order = sorted(range(len(valid_list)), key=lambda i: (-float(distance[i]), i))[:count]
        picked = [valid_list[i] for i in order]
        indices_set.update(picked)
        valid.difference_update(picked)
    indices_set.difference_update(query_indices)
    return torch.tensor(sorted(rows.index(i) for i in indices_set), dtype=torch.long)


def reference_saliency(model, layer_index: int, h: torch.Tensor, positions: torch.Tensor,
                       supervised: list[int] | None = None) -> torch.Tensor:
    """||dLoss/dh_i||_2 for every position (S,), the proxy being transformers' layer `layer_index` run
    on the FULL sequence (every query), then norm + lm_head; loss = mean CE against the own argmax
    over positions S-5..S-2 (or `supervised`)."""
    supervised = supervised_positions(h.shape[0]) if supervised is None else supervised
    with torch.enable_grad():
        leaf = h.detach().clone().requires_grad_(True)
        logits = head(model, run_layer(model, layer_index, leaf, positions)).float()
        picked = logits[supervised]
        loss = F.cross_entropy(picked, picked.detach().argmax(dim=-1))
        (grad,) = torch.autograd.grad(loss, leaf)
    return grad.float().norm(dim=-1)


def embed_prompt(model, inputs: dict, image_features: torch.Tensor | None = None):
    """inputs from the HF processor (one image) -> (embeddings (S, D), image_start, M). `image_features` (M', D):
    what a rule inside the vision tower left (TRIO-VE), in place of the processor's M image tokens."""
    embeds, rows = embed_prompt_rows(model, inputs, image_features)
    assert rows == list(range(rows[0], rows[0] + len(rows))), "one image: its tokens must be contiguous"
    return embeds, rows[0], len(rows)


def embed_prompt_rows(model, inputs: dict, image_features: torch.Tensor | None = None):
    """inputs from the HF processor, one image or several -> (embeddings (S, D), the image tokens' rows)."""
    input_ids = inputs["input_ids"]
    if image_features is None:
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                  image_sizes=inputs["image_sizes"]).pooler_output
        features = torch.cat(list(features), dim=0) if isinstance(features, (list, tuple)) else features
    else:
        features = image_features
        ids = input_ids[0].tolist()
        first = ids.index(model.config.image_token_index)
        count = ids.count(model.config.image_token_index)
        ids = ids[:first] + [model.config.image_token_index] * features.shape[0] + ids[first + count:]
        input_ids = torch.tensor([ids])
    embeds = model.get_input_embeddings()(input_ids)[0].clone()
    is_image = input_ids[0] == model.config.image_token_index
    where = torch.nonzero(is_image)[:, 0]
    assert features.shape[0] == where.numel(), (features.shape, where.numel())
    embeds[is_image] = features.to(embeds.dtype)
    return embeds, where.tolist()


@torch.no_grad()
def _forward(model, x, prompt_len, image_rows: list[int], schedule, chosen, method="trio"):
    """One from-scratch pass over x (T, D) = prompt + generated embeddings; returns last logits (V,).

    `image_rows`: the image tokens' rows in the prompt (one span, or several with text between them: their union is
    what every cut selects from). `chosen` holds, per cut, the kept indices local to that cut's image tokens;
    filled at prefill. `method` fastv / dart score a cut N with layer N-1 run on that layer's input (kept from the
    loop); pdrop (PyramidDrop) scores it like FastV but with layer N itself on its input, as its code does."""
    cuts = {c.layer: (i, c.keep) for i, c in enumerate(schedule.cuts)}
    renumber = schedule.positions == "renumber"
    total = x.shape[0]
    h = x
    positions = torch.arange(total)  # 'original' position ids of the current rows
    image_ids = torch.arange(len(image_rows))  # original image numbering of the current image rows
    rows_now = list(image_rows)  # the current image rows
    kept_original, saliencies = [], []
    previous = None  # (h, positions) entering the previous layer
    for layer in range(len(model.model.language_model.layers)):
        if layer in cuts:
            index, keep = cuts[layer]
            if len(chosen) <= index:  # prefill: choose on the prompt
                assert total == prompt_len
                if method == "pdrop":  # the layer after the cut, on its input: this layer
                    chosen.append(fastv_kept(model, layer, h, positions, rows_now, None, keep))
                elif method in ("fastv", "dart"):
                    rule = fastv_kept if method == "fastv" else dart_kept
                    chosen.append(rule(model, layer - 1, *previous, rows_now, None, keep))
                else:
                    sal = reference_saliency(model, layer, h, positions)[rows_now]
                    features = h[rows_now]
                    chosen.append(select_tokens(sal, features, keep, schedule.threshold))
                    saliencies.append(sal)
            local = chosen[index].tolist()
            dropped = set(rows_now) - {rows_now[i] for i in local}
            rows = [r for r in range(h.shape[0]) if r not in dropped]
            h = h[rows]
            positions = torch.arange(h.shape[0]) if renumber else positions[rows]
            rows_now = [rows.index(rows_now[i]) for i in local]
            image_ids = image_ids[local]
            kept_original.append(image_ids.tolist())
        previous = (h, positions)
        h = run_layer(model, layer, h, positions)
    return head(model, h[-1]).float(), kept_original, saliencies


def reference_generate(model, inputs: dict, schedule, max_new_tokens: int, stop_token_ids=(),
                       method: str = "trio", image_features: torch.Tensor | None = None) -> ReferenceResult:
    """Greedy generation of the pruned model, recomputed from scratch at every step (`image_features`: see
    embed_prompt); the processor's inputs may hold several images."""
    model = model.eval()
    embeds, image_rows = embed_prompt_rows(model, inputs, image_features)
    for cut in schedule.cuts:
        assert 1 <= cut.keep <= len(image_rows)
    embed = model.get_input_embeddings()
    prompt_len = embeds.shape[0]
    x = embeds
    chosen: list[torch.Tensor] = []
    token_ids, all_logits, kept, saliency = [], [], [], []
    for step in range(max_new_tokens):
        logits, kept_step, sal = _forward(model, x, prompt_len, image_rows, schedule, chosen, method)
        if step == 0:
            kept, saliency = kept_step, sal
        token = int(logits.argmax())
        token_ids.append(token)
        all_logits.append(logits)
        if token in stop_token_ids:
            break
        with torch.no_grad():
            x = torch.cat([x, embed(torch.tensor([token]))], dim=0)
    return ReferenceResult(token_ids, all_logits, kept, saliency)


# ---- DART at the embedding level, as NVIDIA TensorRT Edge-LLM's DartPruner does it ------------------------------
def edge_llm_dart_keep(embeds: torch.Tensor, visual: list[bool], keep_fraction: float, image_pivots: int = 4,
                       text_pivots: int = 4) -> list[int]:
    """Edge-LLM 0.11 (cpp/runtime/preprocess/visualTokenPruner.cpp pruneForPrefill, dartPruner.cpp), step by step
    on plain lists: the visual rows' contiguous spans, each with quota ceil(span x keep_fraction) in 1..span; L1 and
    L2 norms of every embedding row (float32); text pivots = the `text_pivots` text rows with the largest L1 (ties:
    lower row), shared; per span its min(image_pivots, quota) rows with the largest L1 are retained pivots; then per
    pivot (span pivots, then text pivots, each by descending L1) while the quota is not met, the ceil(remaining /
    pivots left) candidates with the most negative dot / max(|p| |c|, 1e-8) join the retained set. Returns the
    retained visual rows, as indices into the visual tokens (0..M-1), ascending."""
    x = embeds.float()
    l1 = [float(v) for v in x.abs().sum(dim=-1)]
    l2 = [float(v) for v in x.norm(dim=-1)]
    rows = [i for i, flag in enumerate(visual) if flag]
    text = [i for i, flag in enumerate(visual) if not flag]

    def top(positions, count):
        return sorted(positions, key=lambda p: (-l1[p], p))[:count]

    spans, start = [], 0
    for index in range(1, len(rows) + 1):
        if index == len(rows) or rows[index] != rows[index - 1] + 1:
            spans.append(rows[start:index])
            start = index
    shared = top(text, text_pivots)
    retained = []
    import numpy as np

    reduction = np.float32(1.0 - keep_fraction)  # Edge-LLM's --dartReductionRatio, a C++ float
    for span in spans:
        quota = max(1, min(len(span), math.ceil(len(span) * (1.0 - float(reduction)))))
        pivots = top(span, min(image_pivots, quota))
        chosen = list(pivots)
        candidates = [p for p in span if p not in pivots]
        order = pivots + shared
        for offset, pivot in enumerate(order):
            remaining = quota - len(chosen)
            if remaining <= 0 or not candidates:
                break
            per_pivot = -(-remaining // (len(order) - offset))
            score = {c: -float(x[pivot] @ x[c]) / max(l2[pivot] * l2[c], 1e-8) for c in candidates}
            picked = sorted(candidates, key=lambda c: (-score[c], c))[:per_pivot]
            chosen += picked
            candidates = [c for c in candidates if c not in picked]
        retained += chosen
    return sorted(rows.index(r) for r in retained)


# ---- Qwen3-VL's pruned prefill from transformers' own parts ----------------------------------------------------
def qwen3_plain_prefill(model, inputs, cuts: dict, method: str):
    """The pruned prefill from transformers' parts, layer by layer: the embeddings with the vision features,
    get_rope_index's rows, decoder layers called one by one, DeepStack's add at the visual rows after layers
    0..k-1 (Qwen3VLTextModel._deepstack_process) of the visual tokens still there, and a cut N:KEEP after layer N-1
    keeping the text and the kept visual rows (original M-RoPE rows). The visual tokens are one image's, several
    images' or a video's frame groups' (text between them): a cut selects from all of them. TRIO (Qwen port) scores
    the hidden states entering layer N with the layer just run and the input embedding table
    (tests/qwen_reference.py); FastV and DART score layer N-1 on its input (tests/reference.py). Returns (kept per
    cut, original numbering; last position's logits). A cut at 0 is Edge-LLM's embedding-level DART (edge_llm_dart_keep),
    `cuts[0]` its keep fraction."""
    import qwen_reference

    ids = inputs["input_ids"]
    text = model.model.language_model
    video = "pixel_values_videos" in inputs
    pixels, grid = ((inputs["pixel_values_videos"], inputs["video_grid_thw"]) if video else
                    (inputs["pixel_values"], inputs["image_grid_thw"]))
    with torch.no_grad():
        vision = model.model.visual(pixels, grid_thw=grid)
        is_visual = ids[0] == (model.config.video_token_id if video else model.config.image_token_id)
        h = text.embed_tokens(ids)[0].clone()
        h[is_visual] = vision.pooler_output
        positions = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], inputs.get("image_grid_thw"),
                                               inputs.get("video_grid_thw"))[0][:, 0]
    rows = torch.nonzero(is_visual)[:, 0].tolist()
    image_ids, kept_per_cut = list(range(len(rows))), []

    def keep_only(kept):  # the text and the kept visual rows, in order; their positions and original ids follow
        nonlocal h, positions, rows, image_ids
        dropped = set(rows) - {rows[i] for i in kept}
        order = [r for r in range(h.shape[0]) if r not in dropped]
        h, positions = h[order], positions[:, order]
        rows = [order.index(rows[i]) for i in kept]
        image_ids = [image_ids[i] for i in kept]
        kept_per_cut.append(list(image_ids))

    if 0 in cuts:  # Edge-LLM's DART on the input embeddings (cuts[0]: the keep fraction); DeepStack rows follow
        keep_only(edge_llm_dart_keep(h, is_visual.tolist(), cuts[0]))
    for index in range(len(text.layers)):
        entering = h
        with torch.no_grad():
            h = qwen_reference.run_decoder_layer(model, index, h, positions)
            if index < len(vision.deepstack_features):
                h = h.clone()
                h[rows] += vision.deepstack_features[index][image_ids]
        if index + 1 not in cuts:
            continue
        keep = cuts[index + 1]
        if method == "trio":
            saliency = qwen_reference.decoder_saliency(model, h, positions, index)[rows]
            kept = qwen_reference.greedy_nms(saliency.tolist(), h[rows], keep)
        else:
            rule = fastv_kept if method == "fastv" else dart_kept
            with torch.no_grad():
                kept = rule(model, index, entering, positions, rows, None, keep).tolist()
        keep_only(kept)
    with torch.no_grad():
        return kept_per_cut, model.lm_head(text.norm(h))[-1]


# ---- TRIO-VE (ocy1/TRIO llava_arch.py encode_images, window_cls_selection, token_merging) ------------------------


def plain_order(values: list[float]) -> list[int]:
    """Indices by descending value, ties to the lower index (a stable sort)."""
    return sorted(range(len(values)), key=lambda i: -values[i])


def plain_local(shallow: list[float], side: int, local_request: int) -> list[int]:
    """Per-window top-k on a side x side grid: ceil-free split of rows/columns into n parts (n = round(side/6),
    at least 1; six-wide windows on 24x24), k = local_request // n^2 from every window."""
    n = max(1, int(side / 6 + 0.5))
    bounds = [(i * side) // n for i in range(n + 1)]
    k = local_request // (n * n)
    picked = []
    for wy in range(n):
        for wx in range(n):
            cells = []
            for y in range(bounds[wy], bounds[wy + 1]):
                for x in range(bounds[wx], bounds[wx + 1]):
                    cells.append(y * side + x)
            values = [shallow[c] for c in cells]
            for position in plain_order(values)[:k]:
                picked.append(cells[position])
    return picked


def plain_encode(shallow: torch.Tensor, deep: torch.Tensor, features: torch.Tensor, side: int, visual_token_num: int):
    """encode_images + token_merging for a batch of tiles: (kept indices per tile, merged kept features)."""
    batch, tokens = shallow.shape
    all_kept, all_merged = [], []
    for b in range(batch):
        if visual_token_num == tokens:
            all_kept.append(list(range(tokens)))
            all_merged.append(features[b].clone())
            continue
        local_request = int(visual_token_num * 0.5)
        local = plain_local(shallow[b].tolist(), side, local_request)
        deep_b = deep[b].clone()
        for i in local:
            deep_b[i] = -1.0  # the authors write 0: the same whenever every softmax weight is positive
        global_count = visual_token_num - local_request
        global_ = plain_order(deep_b.tolist())[:global_count]
        mask = [False] * tokens
        for i in local + global_:
            mask[i] = True
        kept = [i for i in range(tokens) if mask[i]]
        rest = [i for i in range(tokens) if not mask[i]]
        sums = [features[b, i].clone() for i in kept]
        counts = [0] * len(kept)
        kept_rows = features[b, kept]
        for i in rest:
            sims = F.cosine_similarity(features[b, i][None], kept_rows, dim=1)
            nearest = int(sims.argmax())
            sums[nearest] = sums[nearest] + features[b, i]
            counts[nearest] += 1
        merged = torch.stack([sums[j] / (1 + counts[j]) for j in range(len(kept))])
        all_kept.append(kept)
        all_merged.append(merged)
    return all_kept, all_merged


@torch.no_grad()
def trio_ve_image_features(model, pixel_values: torch.Tensor, grid_wh: tuple[int, int], keep: int):
    """The image features the released TRIO-VE code feeds the decoder of a LLaVA-NeXT model on a fixed grid (no
    unpadding): transformers' CLIP tower with eager attention (its `attentions`, [CLS] row over the patches, head
    mean), layers floor(5 L / 24) and L - 2, plain_encode on the projected features of every tile, then the
    spatial packing of prepare_inputs_labels_for_multimodal: the base tile's kept tokens, then the packed tiles'
    grid in raster order, kept tokens only, each row ending with the (always kept) image newline.
    Returns (features (M', D), kept per tile)."""
    tower = model.model.vision_tower
    before = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        tower.config._attn_implementation = before
    patches = out.hidden_states[model.config.vision_feature_layer][:, 1:]
    attentions = torch.stack(out.attentions)[:, :, :, 0, 1:].mean(dim=2)  # (L, tiles, N)
    layers = len(out.attentions)
    deep = layers - 2
    shallow = min(5 * layers // 24, deep)
    projected = model.model.multi_modal_projector(patches)
    kept, merged = plain_encode(attentions[shallow], attentions[deep], projected, int(patches.shape[1] ** 0.5), keep)
    side = int(patches.shape[1] ** 0.5)
    tile = model.config.vision_config.image_size
    across, down = grid_wh[0] // tile, grid_wh[1] // tile
    rows = [merged[0][j] for j in range(len(kept[0]))]
    newline = model.model.image_newline
    for big_row in range(down * side):
        ty, y = divmod(big_row, side)
        for tx in range(across):
            p = 1 + ty * across + tx
            for x in range(side):
                i = y * side + x
                if i in kept[p]:
                    rows.append(merged[p][kept[p].index(i)])
        rows.append(newline)
    return torch.stack(rows), kept
