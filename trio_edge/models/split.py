"""Split a loaded VLM into the plan's PyTorch modules: vision, embed, decoder segments, selects."""

from __future__ import annotations

import torch
from torch import nn

from ..graph_ops import clamp_index, running_count
from ..trio.dart_embed import EmbeddingDartStage
from ..trio.methods import RATERS_GRAPH
from ..trio.select_module import LayerOwningSelectStage, SelectStage
from ..trio.sparsevlm import SparseVLMRaters, SparseVLMSelectStage


class EmbedAndMerge(nn.Module):
    """input_ids (1, T), image_features (M, D) -> (1, T, D): text embeddings with image features at the
    image-token positions. CumSum + Gather + Where instead of masked_scatter (no NonZero/Scatter).

    With DeepStack features (M, k*D) (Qwen3-VL) also -> their planes over the sequence (1, T, k*D): the same merge,
    zeros at text positions (what the decoder segments add after layers 0..k-1)."""

    cuda_graph_safe = True  # fixed shapes per call, no host synchronisation

    def __init__(self, embed_tokens, image_token_id: int):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.image_token_id = image_token_id

    def forward(self, input_ids, image_features, deepstack_features=None):
        is_image = input_ids[0] == self.image_token_id  # (T,)
        text_ids = torch.where(is_image, torch.zeros_like(input_ids[0]), input_ids[0])
        text = self.embed_tokens(text_ids)  # (T, D)
        slot = clamp_index(running_count(is_image) - 1, image_features.shape[0] - 1)
        image = image_features.index_select(0, slot).to(text.dtype)
        hidden = torch.where(is_image[:, None], image, text)[None]
        if deepstack_features is None:
            return hidden
        planes = deepstack_features.index_select(0, slot).to(text.dtype)  # (T, k*D)
        return hidden, torch.where(is_image[:, None], planes, torch.zeros_like(planes))[None]


def build_modules(adapter, plan, seed: int = 0, runtime_form: bool = False,
                  fused_attention_op: bool = False) -> dict[str, nn.Module]:
    """Graph name -> PyTorch module; these are what the torch backend runs and what export traces.

    `plan.method` picks the selection rule of every cut (trio.methods says where it acts). `runtime_form`
    builds the torch runtime's forms (segments write KV in place with fused attention; selects iterate
    Cluster-NMS to its fixed point); export traces the default, graph-friendly forms, with attention as one
    fused op per layer when `fused_attention_op` (the onnxruntime export target: ONNX Runtime's GQA)."""
    decoder = adapter.decoder
    rule = adapter.vision_rule(plan.method, plan.schedule.vision, plan.grid) if plan.schedule.vision is not None else None
    modules = {
        "vision": adapter.vision_module(plan.grid, rule),
        "embed": EmbedAndMerge(decoder.embed_tokens, adapter.image_token_id),
    }
    for seg in plan.segments:
        modules[seg.name] = decoder.segment(seg.start, seg.end, seg.with_head, in_place=runtime_form,
                                            fused_op=fused_attention_op and not runtime_form,
                                            deepstack_layers=plan.deepstack_layers)
    if plan.method == "sparsevlm" and plan.selects:
        modules[RATERS_GRAPH] = SparseVLMRaters(plan.num_image_tokens, plan.max_text_tokens)
    for sel in plan.selects:
        owned = plan.owned_segment_of(sel)
        if plan.cut_rule == "dart-embed":  # Edge-LLM's DART on the input embeddings, a quota per visual span
            modules[sel.name] = EmbeddingDartStage(sel.tokens_in, sel.item_tokens, sel.item_keeps,
                                                   carries_deepstack=plan.gives_deepstack(sel))
        elif plan.cut_rule == "sparsevlm":
            modules[sel.name] = SparseVLMSelectStage(decoder, owned.start, sel.tokens_in, sel.keep,
                                                     runtime_form=runtime_form, max_text_tokens=plan.max_text_tokens)
        elif owned is not None:
            modules[sel.name] = LayerOwningSelectStage(decoder, owned.start, sel.tokens_in, sel.keep, plan.schedule,
                                                       plan.cut_rule, runtime_form=runtime_form,
                                                       deepstack_layers=plan.deepstack_layers,
                                                       item_tokens=sel.item_tokens, item_keeps=sel.item_keeps)
        else:  # TRIO's proxy is the family's (adapter.trio_proxy); PyramidDrop and the baselines read layer N
            proxy_decoder, proxy_layer = (adapter.trio_proxy(sel.proxy_layer) if plan.cut_rule == "trio"
                                          else (decoder, sel.proxy_layer))
            modules[sel.name] = SelectStage(proxy_decoder, proxy_layer, sel.tokens_in, sel.keep, plan.schedule,
                                            plan.nms_iterations, method=plan.cut_rule, seed=seed,
                                            runtime_form=runtime_form, carries_deepstack=plan.gives_deepstack(sel),
                                            item_tokens=sel.item_tokens, item_keeps=sel.item_keeps)
    return {name: module.eval() for name, module in modules.items()}
