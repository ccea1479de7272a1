"""The saliency-and-select stage of one cut, as a module with fixed kept-token count.

hidden (1, S, D), position_ids (1, S), image_start () -> kept (K,), converged (), hidden (1, S', D),
position_ids (1, S'), saliency (M,), with S' = S - M + K. The image span is [image_start, image_start + M).
"""

from __future__ import annotations

import torch
from torch import nn

from .saliency import proxy_saliency
from .selection import nms_select_fixed


def pruned_index_map(seq_len, image_start, num_image: int, kept: torch.Tensor) -> torch.Tensor:
    """Rows of the pruned sequence [text before | kept image | text after] as indices into the old one."""
    keep = kept.shape[0]
    new_len = seq_len - num_image + keep
    j = torch.arange(new_len, device=kept.device)
    in_image = kept.index_select(0, (j - image_start).clamp(0, keep - 1)) + image_start
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
    def __init__(self, decoder, proxy_layer: int, num_image_tokens: int, keep: int, threshold: float,
                 positions: str, nms_iterations: int):
        super().__init__()
        self.decoder_layer = decoder.layers[proxy_layer]  # registered so export sees the weights
        self.norm, self.lm_head, self.rotary = decoder.norm, decoder.lm_head, decoder.rotary
        self._decoder, self.proxy_layer = decoder, proxy_layer
        self.num_image_tokens, self.keep, self.threshold = num_image_tokens, keep, threshold
        self.renumber = positions == "renumber"
        self.nms_iterations = nms_iterations

    def saliency(self, hidden, position_ids):
        proxy = lambda h, pos, rows: self._decoder.proxy_logits(self.proxy_layer, h, pos, rows)  # noqa: E731
        return proxy_saliency(proxy, hidden[0], position_ids)  # (S,)

    def forward(self, hidden, position_ids, image_start):
        m = self.num_image_tokens
        span = image_start + torch.arange(m, device=hidden.device)  # (M,)
        scores = self.saliency(hidden, position_ids).index_select(0, span)  # (M,)
        features = hidden[0].index_select(0, span)  # (M, D)
        kept, converged = nms_select_fixed(scores, features, self.keep, self.threshold, self.nms_iterations)
        hidden_out, position_out = apply_selection(hidden, position_ids, image_start, m, kept, self.renumber)
        return kept, converged, hidden_out, position_out, scores
