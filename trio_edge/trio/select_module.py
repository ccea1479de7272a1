"""The saliency-and-select stage of one cut, as a module with fixed kept-token count.

hidden (1, S, D), position_ids (1, S), image_positions (M,) -> kept (K,), converged (), hidden (1, S', D),
position_ids (1, S'), saliency (M,), with S' = S - M + K. `image_positions`: the ascending rows of the M image
tokens entering the cut (one span, or one per image / video frame group with text between them).
A cut before the last DeepStack layer of Qwen3-VL also takes deepstack (1, S, k*D) and returns the kept rows'
deepstack_out (1, S', k*D) (carried_rows), last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..graph_ops import add_deepstack_plane, pruned_index_map
from . import peers
from .dart import dart_select_fixed
from .methods import METHODS, method_info
from .saliency import proxy_saliency
from .schedule import Schedule
from .selection import nms_select_fixed, top_k_fixed


def carried_rows(planes, image_positions, kept):
    """The rows of per-token planes (1, S, C) that the pruned sequence keeps (Qwen3-VL's DeepStack planes still to
    be added after a cut before layer k follow their tokens): (1, S', C)."""
    return planes.index_select(1, pruned_index_map(planes.shape[1], image_positions, kept))


def apply_selection(hidden, position_ids, image_positions, kept, renumber: bool):
    """Gather the text and the kept image rows (in order) and their positions (renumbered or original)."""
    rows = pruned_index_map(hidden.shape[1], image_positions, kept)  # (S',)
    hidden_out = hidden.index_select(1, rows)
    if renumber:  # (1, S') or, for multi-row positions (M-RoPE), every row 0..S'-1
        return hidden_out, torch.arange(rows.shape[0], device=hidden.device).expand(*position_ids.shape[:-1], -1)
    return hidden_out, position_ids.index_select(-1, rows)


def per_item(rule, scores: torch.Tensor, item_tokens: tuple[int, ...], item_keeps: tuple[int, ...]):
    """Apply `rule(item_scores, lo, hi, keep) -> kept (keep,) local, converged ()` to each item's slice of the image
    tokens with its own budget: kept (sum keeps,) ascending over all items, and whether every item converged."""
    kept, converged, offset = [], torch.tensor(True), 0
    for tokens, keep in zip(item_tokens, item_keeps):
        item_kept, item_converged = rule(scores[offset:offset + tokens], offset, offset + tokens, keep)
        kept.append(item_kept + offset)
        converged = converged & item_converged
        offset += tokens
    return torch.cat(kept), converged


class SelectStage(nn.Module):
    def __init__(self, decoder, proxy_layer: int, num_image_tokens: int, keep: int, schedule: Schedule,
                 nms_iterations: int, method: str = "trio", seed: int = 0, runtime_form: bool = False,
                 carries_deepstack: bool = False, item_tokens: tuple[int, ...] = (), item_keeps: tuple[int, ...] = ()):
        """The cut's rule and budget; `schedule` gives the NMS threshold, positions mode and precision.

        `runtime_form` (the torch runtime, not export) iterates Cluster-NMS to its fixed point and stops
        there: always exact, never needs the host fallback, and no wasted iterations. `carries_deepstack`: the
        cut comes before the last DeepStack layer, so the graph also takes the planes (1, S, k*D) and returns the
        kept tokens' (deepstack_out); the proxy itself does not add them (no authors' code defines that).
        `item_tokens` / `item_keeps` (--budget-per-image): the image tokens of each image (or video frame group)
        entering the cut and the budget of each; the rule then runs on every item's tokens alone. Empty: one
        budget over the union of all image tokens."""
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
        self.item_tokens, self.item_keeps = (tuple(item_tokens), tuple(item_keeps)) if item_keeps else (
            (num_image_tokens,), (keep,))
        self.renumber = schedule.positions == "renumber"
        self.nms_iterations = num_image_tokens + 1 if runtime_form else nms_iterations  # M + 1 always converges
        self.runtime_form = runtime_form

    def saliency(self, hidden, position_ids):
        proxy = lambda h, pos, rows: self._decoder.proxy_logits(self.proxy_layer, h, pos, rows,  # noqa: E731
                                                                eager=self.runtime_form)
        # squeeze, not hidden[0]: indexing the batch exports to a Gather that copies all S rows
        return proxy_saliency(proxy, hidden.squeeze(0), position_ids)  # (S,)

    def scores(self, hidden, position_ids, span):
        """Each image token's score under the cut's rule (M,) float32: TRIO's saliency, PyramidDrop's last-token
        attention in the layer after the cut; none for the model-free baselines (zeros)."""
        if self.method == "trio":
            return self.saliency(hidden, position_ids).index_select(0, span).float()
        if self.method == "pdrop":
            return self._decoder.last_token_attention(self.proxy_layer, hidden[0], position_ids).index_select(0, span).float()
        return torch.zeros(span.shape[0], device=hidden.device)

    def forward(self, hidden, position_ids, image_positions, deepstack=None):
        proxy_hidden = hidden.to(self.proxy_dtype)
        scores = self.scores(proxy_hidden, position_ids, image_positions)  # (M,)
        features = proxy_hidden.squeeze(0).index_select(0, image_positions) if self.method == "trio" else None

        def rule(item_scores, lo: int, hi: int, keep: int):  # one item's (or the union's) kept tokens
            if self.method == "trio":  # TRIO: feature-space NMS in saliency order (trio.selection)
                return nms_select_fixed(item_scores, features[lo:hi], keep, self.threshold, self.nms_iterations,
                                        stop_at_fixed_point=self.runtime_form)
            if self.method == "pdrop":  # PyramidDrop: the top KEEP by attention
                return top_k_fixed(item_scores, keep), torch.tensor(True)
            if self.method == "random":
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.random))
                return peers.random_select(hi - lo, keep, seed).to(hidden.device), torch.tensor(True)
            return peers.uniform_select(hi - lo, keep).to(hidden.device), torch.tensor(True)

        kept, converged = per_item(rule, scores, self.item_tokens, self.item_keeps)
        hidden_out, position_out = apply_selection(hidden, position_ids, image_positions, kept, self.renumber)
        carried = (carried_rows(deepstack, image_positions, kept),) if self.carries_deepstack else ()
        return kept, converged, hidden_out, position_out, scores, *carried


@dataclass(frozen=True)
class LayerView:
    """What a rule may read from the layer before its cut (run on all S tokens): softmax attention probs
    (H, S, S) float32, rotated keys (KVH, S, hd), the layer's normalised input `states` (S, D), its input and
    output hidden states (S, D), the output through the model's final norm `normed_out` (S, D); the image
    tokens are the rows `image_positions` (M,), ascending."""

    probs: torch.Tensor
    keys: torch.Tensor
    states: torch.Tensor
    hidden_in: torch.Tensor
    hidden_out: torch.Tensor
    normed_out: torch.Tensor
    image_positions: torch.Tensor


def fastv_rule(view: LayerView, keep: int, item_tokens: tuple[int, ...], item_keeps: tuple[int, ...]):
    """FastV: the last token's attention to each image token, averaged over heads (M,); keep the top KEEP (of
    each item, with per-item budgets)."""
    last = torch.full((1,), view.probs.shape[1] - 1, device=view.image_positions.device)
    scores = view.probs.index_select(1, last)[:, 0].mean(dim=0).index_select(0, view.image_positions)
    kept, _ = per_item(lambda item, lo, hi, k: (top_k_fixed(item, k), torch.tensor(True)), scores, item_tokens,
                       item_keeps)
    return kept, scores


def dart_rule(view: LayerView, keep: int, item_tokens: tuple[int, ...], item_keeps: tuple[int, ...]):
    """DART (trio/dart.py): key-norm pivots, then each pivot's least-similar image tokens (over all image tokens:
    its pivots are chosen among all of them, so it takes no per-item budgets)."""
    if len(item_keeps) > 1:
        raise ValueError("DART's pivots span all image tokens: it has no per-item budgets")
    keys = view.keys.transpose(0, 1).reshape(view.keys.shape[1], -1)  # (S, KVH*hd)
    return dart_select_fixed(keys, view.normed_out, view.image_positions, keep)


# rule name -> rule(view, keep, item_tokens, item_keeps) -> (kept (KEEP,) sorted image indices, scores (M,) the
# rule's per-token score)
LAYER_RULES = {"fastv": fastv_rule, "dart": dart_rule}


class LayerOwningSelectStage(nn.Module):
    """A cut N:K whose rule scores with decoder layer N-1 (FastV, DART, ...): the stage runs layer N-1 on all
    tokens (writing its KV buffer), scores the image tokens from that layer and keeps K of its output.

    hidden (1, S, D) entering layer N-1, position_ids (1, S), image_positions (M,), kv (1, 2, KVH, N, hd) of the
    one-layer segment [N-1, N) -> kept (K,), converged () always True, hidden (1, S', D) entering layer N,
    position_ids (1, S'), saliency (M,) the rule's scores, kv_out (1, 2, KVH, N, hd)."""

    def __init__(self, decoder, owned_layer: int, num_image_tokens: int, keep: int, schedule: Schedule,
                 method: str, runtime_form: bool = False, deepstack_layers: int = 0,
                 item_tokens: tuple[int, ...] = (), item_keeps: tuple[int, ...] = ()):
        """`deepstack_layers` (Qwen3-VL's DeepStack, k): the graph takes the planes (1, S, k*D) when its layer is
        below k (it adds that layer's plane to the layer's output, after the rule scored the output) and returns
        the kept tokens' planes (deepstack_out) when the cut is before layer k. `item_tokens` / `item_keeps`: per-
        item budgets (SelectStage)."""
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
        self.item_tokens, self.item_keeps = (tuple(item_tokens), tuple(item_keeps)) if item_keeps else (
            (num_image_tokens,), (keep,))
        self.renumber = schedule.positions == "renumber"
        self.runtime_form = runtime_form  # writes the KV buffer in place (the torch runtime)
        self.in_place_inputs = ("kv",) if runtime_form else ()

    def forward(self, hidden, position_ids, image_positions, kv, deepstack=None):
        h = hidden[0]
        h_out, new_kv, probs, keys, states = self._decoder.layer_with_attention(self.owned_layer, h, position_ids)
        view = LayerView(probs, keys, states, h, h_out, self.norm(h_out), image_positions)
        kept, scores = self.rule(view, self.keep, self.item_tokens, self.item_keeps)
        if self.adds_plane:  # the layer's output as the next layer receives it (the rule read the layer's own)
            h_out = add_deepstack_plane(h_out, deepstack.squeeze(0), self.owned_layer, h_out.shape[1])
        hidden_out, position_out = apply_selection(h_out[None], position_ids, image_positions, kept, self.renumber)
        kv_out = self._decoder.write_owned_layer_kv(kv, new_kv, in_place=self.runtime_form)
        carried = (carried_rows(deepstack, image_positions, kept),) if self.carries_deepstack else ()
        return kept, torch.tensor(True), hidden_out, position_out, scores.float(), kv_out, *carried
