"""Grouped-query attention over a KV cache as one PyTorch custom op, so the export can write it as ONNX Runtime's
fused `com.microsoft.GroupQueryAttention` (exporters.onnx_graph translates it; `--target onnxruntime`).

Its PyTorch implementation is the standard form's computation (llama_decoder.grouped_attention over the past
slots and the new keys/values, causal), so eager results, and the validation references, are unchanged.
Signature (ONNX Runtime's GQA with RoPE applied before it, past and present not shared):
query (1, T, H*hd), key/value (1, T, KVH*hd), past_key/past_value (1, KVH, P, hd), seqlens_k (1,) int32 = P+T-1,
total_sequence_length () int32 = P+T -> (1, T, H*hd).
"""

from __future__ import annotations

import torch

OP_NAME = "trio_edge::group_query_attention"


@torch.library.custom_op(OP_NAME, mutates_args=())
def group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
                          past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
                          num_heads: int, kv_num_heads: int, scale: float) -> torch.Tensor:
    from .llama_decoder import causal_over_buffer, grouped_attention, mask_bias

    t = query.shape[1]
    head_dim = query.shape[2] // num_heads
    q = query[0].reshape(t, num_heads, head_dim).transpose(0, 1)
    keys = torch.cat((past_key[0], key[0].reshape(t, kv_num_heads, head_dim).transpose(0, 1)), dim=1)
    values = torch.cat((past_value[0], value[0].reshape(t, kv_num_heads, head_dim).transpose(0, 1)), dim=1)
    past = torch.tensor(past_key.shape[2], device=query.device)
    bias = mask_bias(causal_over_buffer(past, t, keys.shape[1]))
    return grouped_attention(q, keys, values, bias, scale)[None]


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads, kv_num_heads, scale):
    return torch.empty_like(query)
