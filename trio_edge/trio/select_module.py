"""The saliency-and-select stage of one cut, as a module with fixed kept-token count.

hidden (1, S, D), position_ids (1, S), image_start () -> kept (K,), converged (), hidden (1, S', D),
position_ids (1, S'), saliency (M,), with S' = S - M + K. The image span is [image_start, image_start + M).
A cut before the last DeepStack layer of Qwen3-VL also takes deepstack (1, S, k*D) and returns the kept rows'
deepstack_out (1, S', k*D) (carried_rows), last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..graph_ops import add_deepstack_plane, clamp_index
from . import peers
from .dart import dart_select_fixed
from .methods import METHODS, method_info
from .saliency import proxy_saliency
from .schedule import Schedule
from .selection import nms_select_fixed, top_k_fixed


def pruned_index_map(seq_len, image_start, num_image: int, kept: torch.Tensor) -> torch.Tensor:
    """Rows of the pruned sequence [text before | kept image | text after] as indices into the old one."""
    keep = kept.shape[0]
    new_len = seq_len - num_image + keep
    j = torch.arange(new_len, device=kept.device)
    in_image = kept.index_select(0, clamp_index(j - image_start, keep - 1)) + image_start
    after = j - keep + num_image
    return torch.where(j < image_start, j, torch.where(j < image_start + keep, in_image, after))


def carried_rows(planes, image_start, num_image: int, kept):
    """The rows of per-token planes (1, S, C) that the pruned sequence keeps (Qwen3-VL's DeepStack planes still to
    be added after a cut before layer k follow their tokens): (1, S', C)."""
    return planes.index_select(1, pruned_index_map(planes.shape[1], image_start, num_image, kept))


def apply_selection(hidden, position_ids, image_start, num_image: int, kept, renumber: bool):
    """Gather [text before | kept image | text after] rows and their positions (renumbered or original)."""
    rows = pruned_index_map(hidden.shape[1], image_start, num_image, kept)  # (S',)
    hidden_out = hidden.index_select(1, rows)
    if renumber:  # (1, S') or, for multi-row positions (M-RoPE), every row 0..S'-1
        return hidden_out, torch.arange(rows.shape[0], device=hidden.device).expand(*position_ids.shape[:-1], -1)
    return hidden_out, position_ids.index_select(-1, rows)


class SelectStage(nn.Module):
    def __init__(self, decoder, proxy_layer: int, num_image_tokens: int, keep: int, schedule: Schedule,
                 nms_iterations: int, method: str = "trio", seed: int = 0, runtime_form: bool = False,
                 carries_deepstack: bool = False):
        """The cut's rule and budget; `schedule` gives the NMS threshold, positions mode and precision.

        `runtime_form` (the torch runtime, not export) iterates Cluster-NMS to its fixed point and stops
        there: always exact, never needs the host fallback, and no wasted iterations. `carries_deepstack`: the
        cut comes before the last DeepStack layer, so the graph also takes the planes (1, S, k*D) and returns the
        kept tokens' (deepstack_out); the proxy itself does not add them (no authors' code defines that)."""
        super().__init__()
        self.carries_deepstack = carries_deepstack
        if method not in METHODS or method_info(method).owns_layer:
            raise ValueError(f"SelectStage runs proxy / any-cut rules, not {method!r} (see LayerOwningSelectStage)")
        self.method = method
        self.random = torch.Generator().manual_seed(seed)
        if schedule.precision == "fp32" and decoder.lm_head.weight.dtype != torch.float32:
            # Saliency in fp32: reduced precision could flip near-tied tokens, and the selection must equal
            # the fp32 reference exactly. Costs an fp32 copy of one layer + lm_head, and fp32 compute.
            decoder, proxy_layer = decoder.proxy_copy(proxy_layer, torch.float32), 0
        self.proxy_dtype = decoder.lm_head.weight.dtype  # NMS similarities are fp32 either way
        self.decoder_layer = decoder.layers[proxy_layer]  # registered so export sees the weights
        self.norm, self.lm_head, self.rotary = decoder.norm, decoder.lm_head, decoder.rotary
        self._decoder, self.proxy_layer = decoder, proxy_layer
        self.num_image_tokens, self.keep, self.threshold = num_image_tokens, keep, schedule.threshold
        self.renumber = schedule.positions == "renumber"
        self.nms_iterations = num_image_tokens + 1 if runtime_form else nms_iterations  # M + 1 always converges
        self.runtime_form = runtime_form

    def saliency(self, hidden, position_ids):
        proxy = lambda h, pos, rows: self._decoder.proxy_logits(self.proxy_layer, h, pos, rows,  # noqa: E731
                                                                eager=self.runtime_form)
        # squeeze, not hidden[0]: indexing the batch exports to a Gather that copies all S rows
        return proxy_saliency(proxy, hidden.squeeze(0), position_ids)  # (S,)

    def peer_kept(self, hidden, position_ids, span):
        """A peer's kept indices at this cut (and its per-token scores)."""
        m = self.num_image_tokens
        if self.method == "pdrop":  # PyramidDrop: the last token's attention in the layer after the cut
            scores = self._decoder.last_token_attention(self.proxy_layer, hidden[0], position_ids).index_select(0, span)
            return top_k_fixed(scores, self.keep), scores
        if self.method == "random":
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.random))
            return peers.random_select(m, self.keep, seed), torch.zeros(m)
        return peers.uniform_select(m, self.keep), torch.zeros(m)

    def forward(self, hidden, position_ids, image_start, deepstack=None):
        m = self.num_image_tokens
        span = image_start + torch.arange(m, device=hidden.device)  # (M,)
        proxy_hidden = hidden.to(self.proxy_dtype)
        if self.method != "trio":
            kept, scores = self.peer_kept(proxy_hidden, position_ids, span)
            kept, converged, scores = kept.to(hidden.device), torch.tensor(True), scores.float()
        else:
            scores = self.saliency(proxy_hidden, position_ids).index_select(0, span)  # (M,)
            features = proxy_hidden.squeeze(0).index_select(0, span)  # (M, D)
            kept, converged = nms_select_fixed(scores, features, self.keep, self.threshold, self.nms_iterations,
                                               stop_at_fixed_point=self.runtime_form)
        hidden_out, position_out = apply_selection(hidden, position_ids, image_start, m, kept, self.renumber)
        carried = (carried_rows(deepstack, image_start, m, kept),) if self.carries_deepstack else ()
        return kept, converged, hidden_out, position_out, scores, *carried


@dataclass(frozen=True)
class LayerView:
    """What a rule may read from the layer before its cut (run on all S tokens): softmax attention probs
    (H, S, S) float32, rotated keys (KVH, S, hd), the layer's normalised input `states` (S, D), its input and
    output hidden states (S, D), the output through the model's final norm `normed_out` (S, D); the image
    tokens are rows image_start + 0..M-1 (`span`)."""

    probs: torch.Tensor
    keys: torch.Tensor
    states: torch.Tensor
    hidden_in: torch.Tensor
    hidden_out: torch.Tensor
    normed_out: torch.Tensor
    image_start: torch.Tensor
    span: torch.Tensor


def fastv_rule(view: LayerView, keep: int):
    """FastV: the last token's attention to each image token, averaged over heads (M,); keep the top KEEP."""
    last = torch.full((1,), view.probs.shape[1] - 1, device=view.span.device)
    scores = view.probs.index_select(1, last)[:, 0].mean(dim=0).index_select(0, view.span)
    return top_k_fixed(scores, keep), scores


def dart_rule(view: LayerView, keep: int):
    """DART (trio/dart.py): key-norm pivots, then each pivot's least-similar image tokens."""
    keys = view.keys.transpose(0, 1).reshape(view.keys.shape[1], -1)  # (S, KVH*hd)
    return dart_select_fixed(keys, view.normed_out, view.image_start, view.span.shape[0], keep)


# rule name -> rule(view, keep) -> (kept (KEEP,) sorted image indices, scores (M,) the rule's per-token score)
LAYER_RULES = {"fastv": fastv_rule, "dart": dart_rule}


class LayerOwningSelectStage(nn.Module):
    """A cut N:K whose rule scores with decoder layer N-1 (FastV, DART, ...): the stage runs layer N-1 on all
    tokens (writing its KV buffer), scores the image tokens from that layer and keeps K of its output.

    hidden (1, S, D) entering layer N-1, position_ids (1, S), image_start (), kv (1, 2, KVH, N, hd) of the
    one-layer segment [N-1, N) -> kept (K,), converged () always True, hidden (1, S', D) entering layer N,
    position_ids (1, S'), saliency (M,) the rule's scores, kv_out (1, 2, KVH, N, hd)."""

    def __init__(self, decoder, owned_layer: int, num_image_tokens: int, keep: int, schedule: Schedule,
                 method: str, runtime_form: bool = False, deepstack_layers: int = 0):
        """`deepstack_layers` (Qwen3-VL's DeepStack, k): the graph takes the planes (1, S, k*D) when its layer is
        below k (it adds that layer's plane to the layer's output, after the rule scored the output) and returns
        the kept tokens' planes (deepstack_out) when the cut is before layer k."""
        super().__init__()
        self.adds_plane = owned_layer < deepstack_layers
        self.carries_deepstack = owned_layer + 1 < deepstack_layers
        if method not in LAYER_RULES:
            raise ValueError(f"{method!r} has no layer-owning rule; these do: {', '.join(LAYER_RULES)}")
        self.method, self.rule = method, LAYER_RULES[method]
        self.layer = decoder.layers[owned_layer]  # registered so export sees the weights
        self.rotary, self.norm = decoder.rotary, decoder.norm
        self._decoder, self.owned_layer = decoder, owned_layer
        self.num_image_tokens, self.keep = num_image_tokens, keep
        self.renumber = schedule.positions == "renumber"
        self.runtime_form = runtime_form  # writes the KV buffer in place (the torch runtime)
        self.in_place_inputs = ("kv",) if runtime_form else ()

    def forward(self, hidden, position_ids, image_start, kv, deepstack=None):
        m, h = self.num_image_tokens, hidden[0]
        span = image_start + torch.arange(m, device=hidden.device)  # (M,)
        h_out, new_kv, probs, keys, states = self._decoder.layer_with_attention(self.owned_layer, h, position_ids)
        view = LayerView(probs, keys, states, h, h_out, self.norm(h_out), image_start, span)
        kept, scores = self.rule(view, self.keep)
        if self.adds_plane:  # the layer's output as the next layer receives it (the rule read the layer's own)
            h_out = add_deepstack_plane(h_out, deepstack.squeeze(0), self.owned_layer, h_out.shape[1])
        hidden_out, position_out = apply_selection(h_out[None], position_ids, image_start, m, kept, self.renumber)
        kv_out = self._decoder.write_owned_layer_kv(kv, new_kv, in_place=self.runtime_form)
        carried = (carried_rows(deepstack, image_start, m, kept),) if self.carries_deepstack else ()
        return kept, torch.tensor(True), hidden_out, position_out, scores.float(), kv_out, *carried
