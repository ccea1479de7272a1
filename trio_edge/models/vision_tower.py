"""What a vision-tower rule (trio.vision_stage.vision_rule) reads from a CLIP tower, and the vision graph that
prunes with it: fixed shapes, one [CLS] + patches sequence per tile.

The CLIP layers run as transformers defines them; a layer whose attention or keys a rule reads runs through the
same submodules with transformers' eager attention (which returns the probabilities: the fused kernels do not),
so torch.onnx export sees plain MatMul/Softmax and the numbers equal CLIPVisionModel's own outputs.
"""

from __future__ import annotations

from torch import nn

CLS_TOWERS = ("clip_vision_model",)  # towers whose sequence starts with a [CLS] token


def tower_has_cls(vision_config) -> bool:
    return getattr(vision_config, "model_type", None) in CLS_TOWERS


def _layer_with_signals(layer, hidden):
    """One CLIPEncoderLayer on `hidden` (T, S, Dv) -> (output, attention probabilities (T, H, S, S),
    keys (T, H, S, dh))."""
    from transformers.models.clip.modeling_clip import eager_attention_forward

    attention = layer.self_attn
    normed = layer.layer_norm1(hidden)
    heads = (*normed.shape[:-1], -1, attention.head_dim)
    queries = attention.q_proj(normed).view(heads).transpose(1, 2)
    keys = attention.k_proj(normed).view(heads).transpose(1, 2)
    values = attention.v_proj(normed).view(heads).transpose(1, 2)
    out, probabilities = eager_attention_forward(attention, queries, keys, values, None, scaling=attention.scale)
    hidden = hidden + attention.out_proj(out.reshape(*normed.shape[:-1], -1))
    hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return hidden, probabilities, keys


def tower_signals(vision_model, pixel_values, feature_layer: int, attention_layers=(), key_layers=()):
    """CLIP tower (CLIPVisionTransformer) on tiles (T, 3, h, w) -> (hidden states of `feature_layer` (T, S, Dv),
    as transformers' hidden_states[feature_layer] ([CLS] included); the attention probabilities of
    `attention_layers`; the keys of `key_layers`). Layers index the encoder's layers (negative: from the end);
    layers after the last one needed do not run."""
    layers = vision_model.encoder.layers
    count = len(layers)
    wanted_attention = [i % count for i in attention_layers]
    wanted_keys = [i % count for i in key_layers]
    feature_index = feature_layer % (count + 1)  # hidden_states[0] is the embeddings, [i] layer i-1's output
    last = max([feature_index - 1, *wanted_attention, *wanted_keys])
    hidden = vision_model.pre_layrnorm(vision_model.embeddings(pixel_values))
    states, attentions, keys = [hidden], {}, {}
    for index, layer in enumerate(layers[:last + 1]):
        if index in wanted_attention or index in wanted_keys:
            hidden, attentions[index], keys[index] = _layer_with_signals(layer, hidden)
        else:
            hidden = layer(hidden, None)
        states.append(hidden)
    return (states[feature_index], tuple(attentions[i] for i in wanted_attention),
            tuple(keys[i] for i in wanted_keys))


class PrunedVisionFeatures(nn.Module):
    """pixel tiles (T, 3, h, w) -> (image features (M', D), kept (T, keep) int64): a vision-tower rule keeps a
    fixed number of tokens per tile at the feature layer; the projector maps them; `pack` lays the tiles' tokens
    out as the family's authors do (models.llava)."""

    cuda_graph_safe = True  # fixed shapes: the rule keeps a fixed count per tile

    def __init__(self, model, rule: nn.Module, pack):
        super().__init__()
        tower = model.model.vision_tower
        self.vision_model = getattr(tower, "vision_model", tower)  # transformers 5: the tower holds the layers
        self.projector = model.model.multi_modal_projector
        self.feature_layer = int(model.config.vision_feature_layer)
        self.rule, self.pack = rule, pack

    def forward(self, pixel_values):
        features, attentions, keys = tower_signals(self.vision_model, pixel_values, self.feature_layer,
                                                   self.rule.attention_layers, self.rule.key_layers)
        if getattr(self.rule, "merges_projected", False):  # TRIO-VE merges projector outputs: (T, keep, D)
            tokens, kept = self.rule(self.projector(features), attentions, keys)
            return self.pack(tokens, kept), kept
        tokens, kept = self.rule(features, attentions, keys)  # (T, keep, Dv), (T, keep)
        return self.pack(self.projector(tokens), kept), kept
