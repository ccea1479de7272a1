"""Llama-family decoder (Llama, Vicuna, Mistral) as export-friendly functional pieces.

Uses the transformers layer's own submodules (projections, norms, MLP, rotary embedding) so the
numbers are transformers' numbers; only attention is re-written, to read and write one static KV
buffer per layer group, and to evaluate queries for a subset of positions (TRIO's proxy).

Two forms of the same segment, both writing only the new positions' KV slots:
- the export form attends over the filled slots [0, past_length) read from the cache input plus the new
  keys/values, and returns the updated cache as ONE scatter (ScatterND) of the new slots into the cache
  input. A runtime binds that output to the input's own buffer (ONNX Runtime IO binding, TensorRT tensor
  addresses) and the scatter then skips its copy: a step costs O(filled slots), not O(KV capacity). The
  graph reads only slots below past_length and the scatter writes only slots from past_length on, so the
  result does not depend on whether the runtime runs the reads before or after the write.
- the in-place form (the torch runtime) writes the new slots with `index_copy_` and attends with fused
  SDPA (over the filled slots on CPU; over the whole buffer under a mask on CUDA, where fixed shapes let a
  CUDA graph capture the step), allocating nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph_ops import add_deepstack_plane


def _heads(layer) -> tuple[int, int, int]:
    attn = layer.self_attn
    cfg = attn.config
    head_dim = attn.head_dim
    return cfg.num_attention_heads, cfg.num_key_value_heads, head_dim


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last axis, without slicing: the backward of a slice is a
    slice_scatter (ScatterND in ONNX), the backward of a flip is a flip."""
    halves = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2)
    sign = torch.tensor([-1.0, 1.0], dtype=x.dtype, device=x.device)[:, None]
    return (halves * sign).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (heads, T, hd); cos/sin (T, hd)
    return x * cos + rotate_half(x) * sin


def mask_bias(allowed: torch.Tensor) -> torch.Tensor:
    """bool (T, N) -> additive float32 bias: 0 where allowed, float32 min elsewhere. Computed once per
    call and added to every layer's scores (an Add, cheaper than a Where per layer in ONNX Runtime); the
    softmax is the same as masking, bit for bit, since every row allows at least its own position."""
    # (allowed - 1) * max: Cast/Sub/Mul, which ONNX Runtime vectorises (a broadcasting Where it does not)
    return (allowed.to(torch.float32) - 1.0) * torch.finfo(torch.float32).max


def grouped_attention(q, k, v, bias, scale):
    """q (H, T, hd), k/v (KVH, N, hd), bias (T, N) additive float32 mask (see mask_bias) -> (T, H*hd).

    Grouped-query attention without materialising repeated keys: the query heads of one KV head
    are stacked along the query axis.
    """
    num_heads, t, head_dim = q.shape
    num_kv = k.shape[0]
    groups = num_heads // num_kv
    q = q.reshape(num_kv, groups * t, head_dim)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # (KVH, G*T, N)
    scores = scores.reshape(num_kv, groups, t, -1).float() + bias
    probs = torch.softmax(scores, dim=-1).to(q.dtype).reshape(num_kv, groups * t, -1)
    out = torch.matmul(probs, v).reshape(num_heads, t, head_dim)  # (H, T, hd)
    return out.transpose(0, 1).reshape(t, num_heads * head_dim)


def head_states(attn, which: str, x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """x (T, D) -> the `which` ("q" or "k") projection per head (heads, T, hd), before rotary; through the layer's
    per-head RMSNorm (`q_norm` / `k_norm`: Qwen3's QK-norm) when the layer has one."""
    states = getattr(attn, f"{which}_proj")(x).reshape(x.shape[0], heads, head_dim)
    norm = getattr(attn, f"{which}_norm", None)
    return (states if norm is None else norm(states)).transpose(0, 1)


def project_qkv(layer, x, cos, sin):
    """x (T, D) normalised input -> rotated q (H, T, hd), k (KVH, T, hd), v (KVH, T, hd)."""
    num_heads, num_kv, head_dim = _heads(layer)
    attn = layer.self_attn
    t = x.shape[0]
    q = head_states(attn, "q", x, num_heads, head_dim)
    k = head_states(attn, "k", x, num_kv, head_dim)
    v = attn.v_proj(x).reshape(t, num_kv, head_dim).transpose(0, 1)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def scatter_new_slots(cache: torch.Tensor, new: torch.Tensor, past_length: torch.Tensor) -> torch.Tensor:
    """cache (L, 2, KVH, N, hd) with `new` (L, 2, KVH, T, hd) written at slots [past_length, past_length+T):
    one out-of-place index_put, which exports to a single ScatterND from the cache input to the output."""
    layers, two, heads, t = new.shape[:4]
    device = cache.device
    slots = past_length + torch.arange(t, device=device)
    index = (torch.arange(layers, device=device)[:, None, None, None], torch.arange(two, device=device)[None, :, None, None],
             torch.arange(heads, device=device)[None, None, :, None], slots[None, None, None, :])
    return cache.index_put(index, new)


def filled_slots(kv: torch.Tensor, layer: int, past: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer `layer`'s keys and values (KVH, past, hd) in slots [0, past) of the cache kv (L, 2, KVH, N, hd).

    One Gather each over the cache's rows (viewed as (L*2*KVH*N, hd), a free Reshape), so exactly the filled
    slots of this layer are copied. Slicing the slot axis and then picking the layer (Slice, then Gather/Split in
    ONNX Runtime) copied every layer's filled slots and then this layer's again: on the wide shape that was 60%
    of an ONNX Runtime decode step."""
    layers, two, heads, capacity, head_dim = kv.shape
    rows = kv.reshape(layers * two * heads * capacity, head_dim)
    slots = torch.arange(past, device=kv.device)
    head_rows = torch.arange(heads, device=kv.device) * capacity

    def read(which: int) -> torch.Tensor:
        first = (layer * two + which) * heads * capacity
        index = (head_rows[:, None] + slots[None, :] + first).reshape(-1)  # (KVH * past,)
        return rows.index_select(0, index).reshape(heads, past, head_dim)

    return read(0), read(1)


def write_kv_in_place(buffer: torch.Tensor, new: torch.Tensor, past_length: torch.Tensor) -> torch.Tensor:
    """Write `new` (KVH, T, hd) into `buffer` (KVH, N, hd) at [past_length, past_length+T), in place."""
    slots = past_length + torch.arange(new.shape[1], device=buffer.device)
    return buffer.index_copy_(1, slots, new)


def fused_attention(q, k, v, allowed, scale, causal: bool | None = None):
    """grouped_attention's contract on PyTorch's fused SDPA: q (H, T, hd), k/v (KVH, N, hd) -> (T, H*hd).
    `allowed` None means causal within k/v (they hold exactly the T query positions) unless `causal` is
    False (every key visible: one query over exactly the filled slots)."""
    num_heads, t, head_dim = q.shape
    causal = allowed is None if causal is None else causal
    out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=allowed, is_causal=causal,
                                         scale=scale, enable_gqa=k.shape[0] != num_heads)
    return out[0].transpose(0, 1).reshape(t, num_heads * head_dim)


def causal_over_buffer(past_length: torch.Tensor, t: int, n: int) -> torch.Tensor:
    """(T, N) bool: query i (buffer slot past_length + i) may see slots 0..past_length + i."""
    query_slot = past_length + torch.arange(t, device=past_length.device)
    return torch.arange(n, device=past_length.device)[None, :] <= query_slot[:, None]


def values_after_mixing(v_proj, q, k, x, bias, scale):
    """grouped_attention's (T, H*hd) with the value projection applied after the attention mix: each KV head's
    probs (G*T, N) times the normalised input x (N, D), then v_proj. Equal in exact arithmetic (softmax rows sum
    to 1, so a bias passes through too); for T << N queries this skips projecting all N values, and the
    backward to x is a rank-(G*T) product per head instead of an (N, D) x (D, KVH*hd) one (TRIO's proxy)."""
    num_heads, t, head_dim = q.shape
    num_kv = k.shape[0]
    groups = num_heads // num_kv
    scores = torch.matmul(q.reshape(num_kv, groups * t, head_dim), k.transpose(1, 2)) * scale  # (KVH, G*T, N)
    probs = torch.softmax(scores.reshape(num_kv, groups, t, -1).float() + bias, dim=-1).to(q.dtype)
    mixed = torch.matmul(probs.reshape(num_kv, groups * t, -1), x)  # (KVH, G*T, D)
    every_head = v_proj(mixed).reshape(num_kv, groups * t, num_kv, head_dim)  # row head g, projected by all heads
    own = torch.eye(num_kv, dtype=mixed.dtype, device=mixed.device)[:, None, :, None]
    out = (every_head * own).sum(dim=2).reshape(num_heads, t, head_dim)  # each head's own projection (no Gather)
    return out.transpose(0, 1).reshape(t, num_heads * head_dim)


class ProxyHead(torch.autograd.Function):
    """x (Q, D) @ weight.T as (weight @ x.T).T, the input's gradient as grad @ weight: both products read the
    weight (V, D) as it is stored. The plain x @ weight.T differentiates into a product with weight.T as well, and
    ONNX Runtime's transpose optimizer folds that transpose into a second resident copy of the matrix (on CPU, in
    fp32 beside the fp32 copy of an fp16 weight: 2 x 2.5 GB for Qwen3-VL-8B's 151,936-word table in every select
    graph). The form the select graphs are exported in."""

    @staticmethod
    def forward(x, weight):
        return (weight @ x.t()).t()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None


class FewRowsHead(ProxyHead):
    """x (Q, D) @ weight.T for a few rows Q and a wide weight (V, D) (lm_head on TRIO's 4 supervised rows),
    computed as (weight @ x.T).T, with the input's gradient grad @ weight and none for the weight.

    On CPU torch's GEMM runs x @ weight.T with Q of 2-16 rows ~4x slower than the matrix-vector shaped
    weight @ x.T (26 vs 6 ms at 4 x 1024 x 32064, reading the weight once either way), and autograd's own
    backward of the latter (weight.T @ grad.T) is slower still, hence a Function. Eager torch only (its backward
    splits the vocabulary in a bmm); exported graphs take ProxyHead, the same products without the split."""

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        vocab, width = weight.shape
        if vocab % 2:
            return grad @ weight, None
        # grad @ weight with Q of 4 rows runs on one core (11.6 ms at 4 x 32064 x 1024 on 2 cores); as two
        # half-vocabulary products in one bmm, summed, the cores share it (6.0 ms), reading the weight once.
        halves = grad.view(grad.shape[0], 2, vocab // 2).transpose(0, 1)  # (2, Q, V/2)
        return torch.bmm(halves, weight.view(2, vocab // 2, width)).sum(dim=0), None


def attention_with_probs(q, k, v, bias, scale):
    """grouped_attention that also returns the softmax attention: (T, H*hd) and probs (H, T, N) float32.

    Explicit softmax (no fused kernel): the rules that score tokens by attention read these probabilities."""
    num_heads, t, head_dim = q.shape
    num_kv = k.shape[0]
    groups = num_heads // num_kv
    scores = torch.matmul(q.reshape(num_kv, groups * t, head_dim), k.transpose(1, 2)) * scale  # (KVH, G*T, N)
    probs = torch.softmax(scores.reshape(num_kv, groups, t, -1).float() + bias, dim=-1)  # (KVH, G, T, N)
    out = torch.matmul(probs.to(q.dtype).reshape(num_kv, groups * t, -1), v).reshape(num_heads, t, head_dim)
    return out.transpose(0, 1).reshape(t, num_heads * head_dim), probs.reshape(num_heads, t, -1)


def layer_step(layer, h, cos, sin, kv, past_length, mask, in_place: bool = False, filled: int | None = None,
               fused_op: bool = False):
    """One decoder layer on h (T, D) with the layer's cache kv (2, KVH, N, hd), or in the export form its past
    (keys, values); returns (h, kv_or_new).

    In place (`in_place`): writes the new keys/values into kv and returns kv; `mask` is the bool causal
    mask over the buffer, and `filled` (CPU) the slots to read, past_length + T. Export form: kv holds only
    the layer's past slots (2, KVH, past_length, hd). A call with T > 1 is a
    prefill from slot 0 (the runtime's only multi-token call): it attends causally within its own T
    positions (SDPA's flash path). Export form: attends over those past slots plus the new keys/values
    under `mask`, an additive bias (T, filled) (see mask_bias), and returns the new (2, KVH, T, hd).
    `fused_op` (export form of the onnxruntime target): kv is the layer's whole (keys, values) caches, each
    (1, KVH, N, hd), attention is one group_query_attention op (ONNX Runtime's GQA) that also writes the new
    slots, and the layer returns the op's (present_key, present_value)."""
    x = layer.input_layernorm(h)
    q, k, v = project_qkv(layer, x, cos, sin)
    scale = layer.self_attn.scaling
    if in_place:
        write_kv_in_place(kv[0], k, past_length)
        write_kv_in_place(kv[1], v, past_length)
        if h.shape[0] > 1:
            attn = fused_attention(q, k, v, None, scale)
        elif filled is not None:
            attn = fused_attention(q, kv[0, :, :filled], kv[1, :, :filled], None, scale, causal=False)
        else:
            attn = fused_attention(q, kv[0], kv[1], mask, scale)
        kv_out = kv
    elif fused_op:
        attn, *kv_out = _fused_op_attention(q, k, v, kv, past_length, scale)
    else:  # kv holds exactly the past slots here (filled_slots)
        keys = torch.cat((kv[0], k), dim=1)  # (KVH, past + T, hd)
        values = torch.cat((kv[1], v), dim=1)
        attn = grouped_attention(q, keys, values, mask, scale)
        kv_out = torch.stack((k, v))
    h = h + layer.self_attn.o_proj(attn)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, kv_out


def _fused_op_attention(q, k, v, caches, past_length, scale: float):
    """layer_step's export attention as the group_query_attention op (models.attention_op) over the layer's
    whole caches (keys, values), each (1, KVH, N, hd), with the new keys/values written at slot past_length:
    (T, H*hd), present_key, present_value."""
    from . import attention_op  # noqa: F401  (registers the op)

    num_heads, t, head_dim = q.shape
    total = (past_length + t).to(torch.int32)

    def flat(x):  # (heads, T, hd) -> (1, T, heads*hd)
        return x.transpose(0, 1).reshape(1, t, -1)

    out, present_key, present_value = torch.ops.trio_edge.group_query_attention(
        flat(q), flat(k), flat(v), caches[0], caches[1], (total - 1).reshape(1), total, num_heads, k.shape[0],
        float(scale))
    return out[0], present_key, present_value


class DecoderSegment(nn.Module):
    """Layers [start, end) with one static KV buffer; prefill (T = prompt) and decode (T = 1) alike.

    Inputs:  hidden (1, T, D), position_ids (1, T) int64, past_length () int64, kv (L, 2, KVH, N, hd)
    Outputs: hidden (1, T, D) -- or logits (1, V) of the last position when `with_head` -- and kv: the
    cache with the T new slots written (a scatter into the input; in place with `in_place`).
    With `fused_op` (the onnxruntime target's export form) the cache comes as one (1, KVH, N, hd) tensor per
    layer's keys and values instead (past_key_0, past_value_0, ...: views of the one buffer at run time) and
    goes out as each layer's present keys and values (bound to the same buffers: ONNX Runtime's GQA then
    writes only the new slots and copies nothing).
    A segment holding decoder layers below `deepstack_layers` (Qwen3-VL's DeepStack) takes `deepstack` (1, T, k*D)
    after past_length: plane i (columns i*D..(i+1)*D) is added to the hidden states after decoder layer i. The
    embed graph lays the planes out over the sequence with zeros at text positions, so adding the whole plane
    equals transformers' add at the image positions, and a decode step (a text token) adds zeros.
    """

    cuda_graph_safe = True  # fixed shapes per call, no host synchronisation, no data-dependent control flow

    def __init__(self, decoder: "LlamaFamilyDecoder", start: int, end: int, with_head: bool, in_place: bool = False,
                 fused_op: bool = False, deepstack_layers: int = 0):
        super().__init__()
        self.start, self.width = start, decoder.hidden_size
        self.deepstack_planes = max(0, min(end, deepstack_layers) - start)  # planes added after layers start, ...
        self.in_place = in_place
        self.fused_op = fused_op  # export form: attention as one group_query_attention op (ONNX Runtime's GQA)
        self.in_place_inputs = ("kv",) if in_place else ()  # inputs the call writes (a CUDA graph keeps them)
        self.layers = nn.ModuleList(decoder.layers[start:end])
        self.rotary = decoder.rotary
        self.norm = decoder.norm if with_head else None
        self.lm_head = decoder.lm_head if with_head else None

    def forward(self, hidden, position_ids, past_length, *caches):
        h = hidden[0]  # (T, D)
        cos, sin = self.rotary(h, position_ids)
        cos, sin = cos[0], sin[0]  # (T, hd)
        planes = None
        if self.deepstack_planes:
            planes, *caches = caches
            planes = planes.squeeze(0)  # (T, k*D)
        if self.fused_op:
            return self._forward_fused(h, cos, sin, past_length, caches, planes)
        (kv,) = caches
        t, capacity = h.shape[0], kv.shape[3]
        if self.in_place:
            return self._forward_in_place(h, cos, sin, past_length, kv, planes)
        past = past_length.item()  # the export's one data-dependent size: the slots read
        torch._check(past >= 0)
        torch._check(past + t <= capacity)
        mask = mask_bias(causal_over_buffer(past_length, t, past + t))  # one mask for every layer
        new = []
        for index, layer in enumerate(self.layers):
            past_kv = filled_slots(kv, index, past)  # only this layer's filled slots (never its whole capacity)
            h, layer_new = layer_step(layer, h, cos, sin, past_kv, past_length, mask)
            h = self._add_deepstack(h, index, planes)
            new.append(layer_new)
        kv_out = scatter_new_slots(kv, torch.stack(new), past_length) if new else kv
        return self._head(h), kv_out

    def _forward_fused(self, h, cos, sin, past_length, caches, planes=None):
        presents = []
        for index, layer in enumerate(self.layers):
            h, present = layer_step(layer, h, cos, sin, caches[2 * index:2 * index + 2], past_length, None,
                                    fused_op=True)
            h = self._add_deepstack(h, index, planes)
            presents.extend(present)
        return (self._head(h), *presents)

    def _forward_in_place(self, h, cos, sin, past_length, kv, planes=None):
        t = h.shape[0]
        on_host = past_length.device.type == "cpu"  # a host value costs nothing; on a GPU it would synchronise
        if on_host and t > 1 and int(past_length) != 0:
            raise ValueError("the in-place segment's multi-token calls are prefills from slot 0 (past_length 0)")
        # CPU reads the filled slots only; CUDA reads the whole buffer under a mask (fixed shapes: CUDA graphs)
        filled = int(past_length) + t if on_host else None
        mask = None if on_host else causal_over_buffer(past_length, t, kv.shape[3])
        for index, layer in enumerate(self.layers):
            h, _ = layer_step(layer, h, cos, sin, kv[index], past_length, mask, True, filled)
            h = self._add_deepstack(h, index, planes)
        return self._head(h), kv

    def _add_deepstack(self, h, index: int, planes):
        """h (T, D) after the segment's layer `index`, plus that layer's DeepStack plane when it has one."""
        if index >= self.deepstack_planes:
            return h
        return add_deepstack_plane(h, planes, self.start + index, self.width)

    def _head(self, h):
        if self.lm_head is not None:
            return self.lm_head(self.norm(h[-1:]))  # (1, V)
        return h[None]


class LlamaFamilyDecoder:
    """Access to a Llama-style decoder's parts, plus the model-specific computations TRIO needs."""

    def __init__(self, embed_tokens, layers, rotary, norm, lm_head):
        self.embed_tokens = embed_tokens
        self.layers = list(layers)
        self.rotary = rotary
        self.norm = norm
        self.lm_head = lm_head
        num_heads, num_kv, head_dim = _heads(self.layers[0])
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv, head_dim
        self.hidden_size = embed_tokens.weight.shape[1]
        self.vocab_size = lm_head.weight.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def proxy_copy(self, layer_index: int, dtype: torch.dtype) -> "LlamaFamilyDecoder":
        """A decoder holding only layer `layer_index` (as layer 0), the final norm and lm_head, in `dtype`:
        what a select stage needs, so reduced-precision exports still select in fp32."""
        import copy

        def clone(module):
            return copy.deepcopy(module).to(dtype)

        embed = nn.Embedding(1, self.hidden_size)  # unused by the proxy; keeps the interface whole
        return LlamaFamilyDecoder(embed, [clone(self.layers[layer_index])], self.rotary, clone(self.norm),
                                  clone(self.lm_head))

    def segment(self, start: int, end: int, with_head: bool, in_place: bool = False,
                fused_op: bool = False, deepstack_layers: int = 0) -> DecoderSegment:
        return DecoderSegment(self, start, end, with_head, in_place, fused_op, deepstack_layers)

    def proxy_logits(self, layer_index, h, position_ids, query_rows, eager: bool = False):
        """TRIO proxy: layer `layer_index` on h (S, D) for the queries picked by `query_rows` (Q, S)
        one-hot (keys/values for all S), then final norm and lm_head -> logits (Q, V).

        The one-hot contraction (instead of slicing) keeps the traced backward free of Scatter ops. `eager`
        (the torch runtime, never export) runs lm_head through FewRowsHead, the faster CPU form for Q rows.
        """
        layer = self.layers[layer_index]
        cos, sin = self.rotary(h[None], position_ids)
        cos, sin = cos[0], sin[0]
        x = layer.input_layernorm(h)
        num_heads, num_kv, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        attn = layer.self_attn
        s = h.shape[0]
        k = apply_rope(head_states(attn, "k", x, num_kv, head_dim), cos, sin)
        xq, cos_q, sin_q = query_rows @ x, query_rows @ cos, query_rows @ sin  # (Q, .)
        q = apply_rope(head_states(attn, "q", xq, num_heads, head_dim), cos_q, sin_q)
        # Integer positions: a float arange is inexact above 256 (bf16) / 2048 (fp16) positions, and a
        # LLaVA-NeXT prompt has ~2,990, so a float mask would let a query see a later key.
        query_slot = query_rows.argmax(dim=1)  # (Q,) int64: the one position each row picks
        allowed = torch.arange(s, device=h.device)[None, :] <= query_slot[:, None]
        hq = query_rows @ h + attn.o_proj(values_after_mixing(attn.v_proj, q, k, x, mask_bias(allowed), attn.scaling))
        hq = hq + layer.mlp(layer.post_attention_layernorm(hq))
        if self.lm_head.bias is not None:
            return self.lm_head(self.norm(hq))
        return (FewRowsHead if eager else ProxyHead).apply(self.norm(hq), self.lm_head.weight)

    def last_token_attention(self, layer_index, h, position_ids):
        """Head-averaged softmax attention of the last position to every position at `layer_index`, computed on
        h (S, D) entering that layer: (S,) float32 (PyramidDrop's score; softmax in fp32 as its code does)."""
        layer = self.layers[layer_index]
        cos, sin = self.rotary(h[None], position_ids)
        q, k, _ = project_qkv(layer, layer.input_layernorm(h), cos[0], sin[0])
        last = torch.full((1,), h.shape[0] - 1, device=h.device)
        k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=0)  # (H, S, hd)
        scores = torch.matmul(q.index_select(1, last), k.transpose(1, 2)) * layer.self_attn.scaling  # (H, 1, S)
        return torch.softmax(scores.float(), dim=-1).to(h.dtype).float().mean(dim=0)[0]

    @staticmethod
    def write_owned_layer_kv(kv, new_kv, in_place: bool):
        """A select graph that owns a layer writes that layer's prefill keys/values `new_kv` (2, KVH, S, hd) at
        slots 0..S-1 of its one-layer cache `kv` (1, 2, KVH, N, hd): in place for the torch runtime, else with
        the one scatter a segment graph does (scatter_new_slots). Returns the cache to output."""
        if in_place:
            kv[0, :, :, :new_kv.shape[2]] = new_kv
            return kv
        return scatter_new_slots(kv, new_kv[None], torch.zeros((), dtype=torch.int64, device=kv.device))

    def layer_with_attention(self, layer_index, h, position_ids):
        """A prefill of layer `layer_index` on all S tokens of h (S, D) that also exposes what token-scoring
        rules read from it: returns (h_out (S, D), new_kv (2, KVH, S, hd) to write at slots 0..S-1 of the
        layer's cache, probs (H, S, S) float32 softmax attention, keys (KVH, S, hd) after rotary, states (S, D)
        the layer's normalised input). The layer's decode steps then run in an ordinary one-layer segment."""
        layer = self.layers[layer_index]
        cos, sin = self.rotary(h[None], position_ids)
        cos, sin = cos[0], sin[0]
        states = layer.input_layernorm(h)
        q, k, v = project_qkv(layer, states, cos, sin)
        positions = torch.arange(h.shape[0], device=h.device)
        allowed = positions[None, :] <= positions[:, None]  # causal within the S prompt tokens
        attn, probs = attention_with_probs(q, k, v, mask_bias(allowed), layer.self_attn.scaling)
        h = h + layer.self_attn.o_proj(attn)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, torch.stack((k, v)), probs, k, states
