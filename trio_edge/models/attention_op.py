"""Grouped-query attention over a KV cache as one PyTorch custom op, so the export can write it as ONNX Runtime's
fused `com.microsoft.GroupQueryAttention` (exporters.onnx_graph translates it; `--target onnxruntime`).

Signature (ONNX Runtime's GQA, RoPE applied before it, past and present the same buffer at run time):
query (1, T, H*hd), key/value (1, T, KVH*hd), past_key/past_value (1, KVH, N, hd) the layer's whole cache,
seqlens_k (1,) int32 = P+T-1, total_sequence_length () int32 = P+T, where P is the slots already filled
-> output (1, T, H*hd), present_key/present_value (1, KVH, N, hd).

The runtime binds present_key/present_value to past_key/past_value's own buffers (IO binding); ONNX Runtime's
GQA kernels (CPU and CUDA) see the two pointers equal and then write only the T new slots and attend over the
P + T filled ones: nothing is copied. Unshared (no binding, as the export's validation runs it), the kernel
returns a fresh present with slots [0, P+T) filled and the rest zero; this PyTorch implementation returns that,
so the graph validates against it exactly, and it computes the standard form's attention
(llama_decoder.grouped_attention over the filled slots, causal), so eager results are unchanged.
"""

from __future__ import annotations

import torch

OP_NAME = "trio_edge::group_query_attention"


@torch.library.custom_op(OP_NAME, mutates_args=())
def group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
                          past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
                          num_heads: int, kv_num_heads: int,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .llama_decoder import causal_over_buffer, grouped_attention, mask_bias

    t = query.shape[1]
    head_dim = query.shape[2] // num_heads
    filled = int(total_sequence_length)
    past = filled - t

    def present(cache, new):  # (1, KVH, N, hd): slots [0, past) kept, the T new ones written, the rest zero
        out = torch.zeros_like(cache)
        out[:, :, :past] = cache[:, :, :past]
        out[0, :, past:filled] = new[0].reshape(t, kv_num_heads, head_dim).transpose(0, 1)
        return out

    present_key, present_value = present(past_key, key), present(past_value, value)
    q = query[0].reshape(t, num_heads, head_dim).transpose(0, 1)
    bias = mask_bias(causal_over_buffer(torch.tensor(past, device=query.device), t, filled))
    out = grouped_attention(q, present_key[0, :, :filled], present_value[0, :, :filled], bias, scale)
    return out[None], present_key, present_value


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads, kv_num_heads, scale):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)
