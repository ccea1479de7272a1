"""Analytic FLOPs and bytes of each stage (CLIP-style tower + Llama-family decoder), from the config.

Counts multiply-adds as 2 FLOPs; attention counts QK^T and PV over the causal triangle. Used for
the benchmark's per-stage FLOPs and its roofline (compute floor for prefill, bandwidth floor for decode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..defaults import NMS_BLOCK


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, text_config) -> "DecoderShape":
        heads = text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        return cls(text_config.hidden_size, text_config.intermediate_size, heads,
                   getattr(text_config, "num_key_value_heads", None) or heads, head_dim, text_config.vocab_size)

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attn + 3 * self.hidden * self.ffn + 2 * self.hidden

    def layer_flops(self, new_tokens: int, context: int) -> float:
        """One layer for `new_tokens` queries appended after `context - new_tokens` cached tokens."""
        dense = 2.0 * (self.layer_params - 2 * self.hidden) * new_tokens
        past = context - new_tokens
        attended = new_tokens * past + new_tokens * (new_tokens + 1) / 2  # causal
        return dense + 4.0 * attended * self.heads * self.head_dim

    def head_flops(self, tokens: int = 1) -> float:
        return 2.0 * self.hidden * self.vocab * tokens


def vision_flops(vision_config, tiles: int, projector_out: int, grid: tuple[int, int] | None = None) -> float:
    """The vision graph: a CLIP-style tower per tile and LLaVA's projector; Qwen2.5-VL's windowed tower and Qwen3-VL's
    tower at the plan's fixed `grid` (width, height) pixels."""
    if getattr(vision_config, "model_type", "") in ("qwen2_5_vl_vision", "qwen3_vl_vision"):
        return qwen_vision_flops(vision_config, grid, projector_out)
    d, ffn, layers = vision_config.hidden_size, vision_config.intermediate_size, vision_config.num_hidden_layers
    n = (vision_config.image_size // vision_config.patch_size) ** 2 + 1
    per_layer = 2.0 * n * (4 * d * d + 2 * d * ffn) + 4.0 * n * n * d
    patch_embed = 2.0 * n * 3 * vision_config.patch_size ** 2 * d
    projector = 2.0 * n * (d * projector_out + projector_out * projector_out)
    return tiles * (layers * per_layer + patch_embed + projector)


def qwen_vision_flops(vision_config, grid: tuple[int, int], projector_out: int) -> float:
    """Qwen2.5-VL's tower over N = (w/14)(h/14) patches: fused qkv + proj (4 d^2) and a SwiGLU MLP (3 d ffn) per
    block; attention within 112-px windows (window_tokens keys) except the full-attention blocks (N keys); the
    Conv3d patch embedding (2 frames x 14 x 14 x 3); the merger's MLP over N / 4 tokens of 4 d. Qwen3-VL's
    (patch 16): a two-layer MLP (2 d ffn), every block attending over all N, and one merger more per DeepStack
    block."""
    d, ffn, patch = vision_config.hidden_size, vision_config.intermediate_size, vision_config.patch_size
    n = (grid[0] // patch) * (grid[1] // patch)
    unit = vision_config.spatial_merge_size ** 2
    deepstack = getattr(vision_config, "deepstack_visual_indexes", None)
    if deepstack is None:  # Qwen2.5-VL
        window_tokens, full, mlp, mergers = ((vision_config.window_size // patch) ** 2,
                                             len(vision_config.fullatt_block_indexes), 3, 1)
    else:
        window_tokens, full, mlp, mergers = n, vision_config.depth, 2, 1 + len(deepstack)
    dense = vision_config.depth * 2.0 * n * (4 * d * d + mlp * d * ffn)
    attention = 4.0 * n * d * (full * n + (vision_config.depth - full) * min(n, window_tokens))
    patch_embed = 2.0 * n * 3 * vision_config.temporal_patch_size * patch * patch * d
    merger = mergers * 2.0 * (n // unit) * (unit * d * unit * d + unit * d * projector_out)
    return dense + attention + patch_embed + merger


def nms_flops(image_tokens: int, hidden: int, nms_iterations: int, block: int, keep: int) -> float:
    """The blocked greedy NMS of trio/selection.py (`_cluster_nms`), in visiting order: blocks of at most `block`
    tokens; each block's rows against the kept-token buffer (min(keep, tokens before the block) rows: 2 * B *
    capacity * D, then one 0/1 matvec counting the buffer's suppressors) and against themselves (2 * B * B * D),
    and `nms_iterations` 0/1 matvecs on the block's own (B, B) matrix. At M = 2928, keep 629, B = 256 this is
    about M x (keep + B) x D: 0.3 of the M x M x D that all pairwise similarities cost."""
    blocks = math.ceil(image_tokens / block)
    bounds = [image_tokens * b // blocks for b in range(blocks + 1)]
    total = 0.0
    for lo, hi in zip(bounds, bounds[1:]):
        rows, capacity = hi - lo, min(keep, lo)
        total += 2.0 * rows * capacity * (hidden + 1) + 2.0 * rows * rows * hidden + nms_iterations * 2.0 * rows * rows
    return total


def select_flops_parts(shape: DecoderShape, seq: int, image_tokens: int, keep: int, nms_iterations: int,
                       block: int = NMS_BLOCK) -> dict[str, float]:
    """A select stage in two parts: `proxy` = the proxy layer (keys for all S tokens, the 4 supervised queries,
    `v_proj` applied after the attention mix: models/llama_decoder.values_after_mixing) forward plus its
    backward to the input only (no weight gradients), in the select precision; `nms` = cosine similarities +
    Cluster-NMS steps (nms_flops), always fp32.

    Backward: a product with a weight costs its forward again (the input's gradient only); a product of two
    activations (scores, the mix) twice (both operands' gradients). tests/runtime/test_roofline.py checks the
    count against PyTorch's own count of the stage's products."""
    d, q = shape.hidden, 4  # the 4 supervised queries
    kv_width, q_width = shape.kv_heads * shape.head_dim, shape.heads * shape.head_dim
    with_weights = (2.0 * seq * d * kv_width  # k_proj over all S rows
                    + 2.0 * q * d * q_width  # q_proj of the 4 queries
                    + 2.0 * shape.heads * q * d * kv_width  # v_proj after the mix: every head's row, all KV heads
                    + 2.0 * q * q_width * d  # o_proj
                    + 2.0 * q * 3 * d * shape.ffn  # MLP
                    + shape.head_flops(q))  # lm_head
    activations = (2.0 * shape.heads * q * seq * shape.head_dim  # scores q k^T
                   + 2.0 * shape.heads * q * seq * d)  # probs x normalised input (the mix)
    # one-hot row picks (4, S) of h, x, cos and sin; the backward reaches h and x only
    picks = 2.0 * q * seq * (2 * d + 2 * shape.head_dim) + 2.0 * q * seq * 2 * d
    return {"proxy": 2.0 * with_weights + 3.0 * activations + picks,
            "nms": nms_flops(image_tokens, d, nms_iterations, block, keep)}


def select_flops(shape: DecoderShape, seq: int, image_tokens: int, keep: int, nms_iterations: int) -> float:
    return sum(select_flops_parts(shape, seq, image_tokens, keep, nms_iterations).values())


def stage_flops(config, plan, prompt_tokens: int, tiles: int) -> dict[str, float]:
    """Prefill FLOPs per stage for a prompt of `prompt_tokens` (text + image) tokens, and decode per token."""
    shape = DecoderShape.from_config(config.text_config)
    # the vision graph runs once per image / video frame group of the request
    flops = {"vision": plan.items * vision_flops(config.vision_config, tiles, shape.hidden, plan.grid)}
    text = prompt_tokens - plan.num_image_tokens
    for stage in plan.stages():
        if hasattr(stage, "keep"):
            seq = text + stage.tokens_in
            if getattr(stage, "owned_segment", None):  # runs layer N-1 on every token; the rule itself is small
                flops[stage.name] = shape.layer_flops(seq, seq)
            else:
                flops[stage.name] = select_flops(shape, seq, stage.tokens_in, stage.keep, plan.nms_iterations)
            continue
        seq = text + stage.image_tokens
        layers = stage.end - stage.start
        flops[stage.name] = layers * shape.layer_flops(seq, seq) + (shape.head_flops() if stage.with_head else 0.0)
    decode = 0.0
    for segment in plan.segments:  # every segment decodes, also those a select runs in prefill
        seq = text + segment.image_tokens
        decode += ((segment.end - segment.start) * shape.layer_flops(1, seq + 1)
                   + (shape.head_flops() if segment.with_head else 0.0))
    flops["prefill_total"] = sum(flops.values())
    flops["decode_per_token"] = decode
    return flops


def fp32_prefill_flops(config, plan, text_tokens: int) -> float:
    """Prefill FLOPs that run in fp32 whatever the model dtype: every select FLOP with fp32 selection
    (the default), only the NMS part with `--select-precision model`."""
    shape = DecoderShape.from_config(config.text_config)
    total = 0.0
    for select in plan.selects:
        parts = select_flops_parts(shape, text_tokens + select.tokens_in, select.tokens_in, select.keep,
                                   plan.nms_iterations)
        total += parts["nms"] + (parts["proxy"] if plan.schedule.precision == "fp32" else 0.0)
    return total


def prefill_flops_by_layer_tokens(shape: DecoderShape, text_tokens: int, image_tokens_per_layer) -> float:
    """Decoder prefill FLOPs (+ lm_head for the last position) when layer l sees text + image_tokens_per_layer[l]
    tokens: any pruning schedule, merged tokens included."""
    total = sum(shape.layer_flops(text_tokens + m, text_tokens + m) for m in image_tokens_per_layer)
    return total + shape.head_flops()


def kv_bytes_by_layer_tokens(shape: DecoderShape, text_tokens: int, image_tokens_per_layer,
                             bytes_per_element: int) -> int:
    """Bytes of the prompt's KV cache when layer l holds text + image_tokens_per_layer[l] positions."""
    per_position = 2 * shape.kv_heads * shape.head_dim * bytes_per_element
    return sum((text_tokens + m) * per_position for m in image_tokens_per_layer)


def decode_bytes_per_token(config, plan, bytes_per_element: int, prompt_tokens: int) -> float:
    """Bytes a decode step must read at least: decoder weights + lm_head + the filled part of each KV buffer."""
    shape = DecoderShape.from_config(config.text_config)
    weights = (plan.num_layers * shape.layer_params + shape.hidden * shape.vocab + shape.hidden) * bytes_per_element
    text = prompt_tokens - plan.num_image_tokens
    kv = sum((s.end - s.start) * 2 * shape.kv_heads * shape.head_dim * (text + s.image_tokens) for s in plan.segments)
    return weights + kv * bytes_per_element
