"""The saliency-and-select stage of one cut, as a module with fixed kept-token count.

hidden (1, S, D), position_ids (1, S), image_start () -> kept (K,), converged (), hidden (1, S', D),
position_ids (1, S'), saliency (M,), with S' = S - M + K. The image span is [image_start, image_start + M).
"""

from __future__ import annotations

import torch
from torch import nn

from ..graph_ops import clamp_index
from . import peers
from .methods import METHODS
from .saliency import proxy_saliency
from .schedule import Schedule
from .selection import nms_select_fixed


def pruned_index_map(seq_len, image_start, num_image: int, kept: torch.Tensor) -> torch.Tensor:
    """Rows of the pruned sequence [text before | kept image | text after] as indices into the old one."""
    keep = kept.shape[0]
    new_len = seq_len - num_image + keep
    j = torch.arange(new_len, device=kept.device)
    in_image = kept.index_select(0, clamp_index(j - image_start, keep - 1)) + image_start
    after = j - keep + num_image
    return torch.where(j < image_start, j, torch.where(j < image_start + keep, in_image, after))


def apply_selection(hidden, position_ids, image_start, num_image: int, kept, renumber: bool):
    """Gather [text before | kept image | text after] rows and their positions (renumbered or original)."""
    rows = pruned_index_map(hidden.shape[1], image_start, num_image, kept)  # (S',)
    hidden_out = hidden.index_select(1, rows)
    if renumber:
        return hidden_out, torch.arange(rows.shape[0], device=hidden.device)[None]
    return hidden_out, position_ids.index_select(1, rows)


class SelectStage(nn.Module):
    def __init__(self, decoder, proxy_layer: int, num_image_tokens: int, keep: int, schedule: Schedule,
                 nms_iterations: int, method: str = "trio", seed: int = 0, runtime_form: bool = False):
        """The cut's rule and budget; `schedule` gives the NMS threshold, positions mode and precision.

        `runtime_form` (the torch runtime, not export) iterates Cluster-NMS to its fixed point and stops
        there: always exact, never needs the host fallback, and no wasted iterations."""
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
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
        proxy = lambda h, pos, rows: self._decoder.proxy_logits(self.proxy_layer, h, pos, rows)  # noqa: E731
        return proxy_saliency(proxy, hidden[0], position_ids)  # (S,)

    def peer_kept(self, hidden, position_ids, span):
        """A baseline's kept indices at this cut (same budget, same cut layer as TRIO)."""
        m, h = self.num_image_tokens, hidden[0]
        if self.method == "fastv":
            attention = self._decoder.last_token_attention(self.proxy_layer, h, position_ids)
            return peers.fastv_select(attention.index_select(0, span), self.keep)
        if self.method == "dart":
            keys = self._decoder.keys(self.proxy_layer, h, position_ids).index_select(0, span)
            return peers.dart_select(keys, h.index_select(0, span), self.keep)
        if self.method == "random":
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.random))
            return peers.random_select(m, self.keep, seed)
        return peers.uniform_select(m, self.keep)

    def forward(self, hidden, position_ids, image_start):
        m = self.num_image_tokens
        span = image_start + torch.arange(m, device=hidden.device)  # (M,)
        proxy_hidden = hidden.to(self.proxy_dtype)
        if self.method != "trio":
            kept = self.peer_kept(proxy_hidden, position_ids, span).to(hidden.device)
            hidden_out, position_out = apply_selection(hidden, position_ids, image_start, m, kept, self.renumber)
            return kept, torch.tensor(True), hidden_out, position_out, torch.zeros(m)
        scores = self.saliency(proxy_hidden, position_ids).index_select(0, span)  # (M,)
        features = proxy_hidden[0].index_select(0, span)  # (M, D)
        kept, converged = nms_select_fixed(scores, features, self.keep, self.threshold, self.nms_iterations,
                                           stop_at_fixed_point=self.runtime_form)
        hidden_out, position_out = apply_selection(hidden, position_ids, image_start, m, kept, self.renumber)
        return kept, converged, hidden_out, position_out, scores
