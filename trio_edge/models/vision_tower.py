"""CLIP-style vision towers read the way [CLS]-attention pruning rules need them (transformers' CLIPVisionModel:
embeddings, pre_layrnorm, encoder.layers of layer_norm1 + self_attn + layer_norm2 + mlp).

The [CLS] row of a layer's softmax attention is computed from that layer's own input with the layer's own
projections (what transformers' eager attention returns for `output_attentions`), so a graph needs neither
eager attention for every layer nor the (tiles, heads, N+1, N+1) matrices: one (tiles, heads, N+1) row each.
"""

from __future__ import annotations

import torch


def cls_attention_row(layer, hidden: torch.Tensor) -> torch.Tensor:
    """(B, 1+N, C) input of a CLIP encoder layer -> (B, H, 1+N) softmax attention of its [CLS] query."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    batch, tokens, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(batch, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, hd)
    k = attn.k_proj(x).view(batch, tokens, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1+N, hd)
    scores = (q @ k.transpose(-1, -2)) * attn.scale  # (B, H, 1, 1+N)
    return torch.softmax(scores.float(), dim=-1).to(hidden.dtype)[:, :, 0]


def run_tower(tower, pixel_values: torch.Tensor, feature_layer: int, score_layers: tuple[int, ...]):
    """Run a CLIPVisionModel up to the feature layer; return (hidden_states[feature_layer] (B, 1+N, C),
    {layer: (B, H, 1+N) [CLS] attention row of that layer}). Layers after the feature layer are not run."""
    layers = tower.encoder.layers
    feature_index = feature_layer % (len(layers) + 1)  # index into hidden_states (embeddings = 0)
    if any(not 0 <= layer < feature_index for layer in score_layers):
        raise ValueError(f"score layers {score_layers} must run before the feature layer {feature_layer}")
    hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
    rows = {}
    for index in range(feature_index):
        if index in score_layers:
            rows[index] = cls_attention_row(layers[index], hidden)
        hidden = layers[index](hidden, None)
    return hidden, rows
