"""VisionZip (dvlab-research/VisionZip, visionzip/clip_encoder.py), per tile, with fixed shapes.

In the vision tower's second-to-last layer (the authors' `attentions[-2]` and `layers[-2]` key metric; LLaVA's
feature layer), for every tile of S tokens ([CLS] + patches):
- dominant: [CLS] plus the DOMINANT - 1 patches with the largest [CLS] attention summed over heads, in token
  order (their mask + masked_select);
- contextual: the other S - DOMINANT tokens, in token order, get the keys of that layer averaged over heads and
  L2-normalised; CONTEXTUAL targets are every step-th of them (step = max(1, (S - DOMINANT) // CONTEXTUAL), the
  first CONTEXTUAL), every other one joins the target of largest dot product (first on ties), and a contextual
  token is its target's hidden state + the mean of the hidden states that joined it.
Output per tile: [dominant (token order) | contextual (target order)] feature-layer hidden states.
"""

from __future__ import annotations

import torch
from torch import nn


def contextual_targets(remaining: int, contextual: int) -> tuple[list[int], list[int]]:
    """(targets, merged): positions among the `remaining` non-dominant tokens, as the authors pick them."""
    if contextual == 0:
        return [], list(range(remaining))
    step = max(1, remaining // contextual)
    targets = list(range(0, remaining, step))[:contextual]
    return targets, [i for i in range(remaining) if i not in set(targets)]


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (T, S, D), index (T, K) -> (T, K, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class VisionZipRule(nn.Module):
    """features (T, S, Dv), attentions ((T, H, S, S),), keys ((T, H, S, dh),) -> tokens (T, keep, Dv),
    kept (T, keep) int64: each token's index in its tile (0 = [CLS]), -1 for the contextual (merged) ones."""

    attention_layers = (-2,)  # the layers (of the tower's encoder) whose attention probabilities the rule reads
    key_layers = (-2,)  # ... and whose keys

    def __init__(self, keep: int, dominant: int):
        super().__init__()
        if not 1 <= dominant <= keep:
            raise ValueError(f"VisionZip needs 1 <= dominant <= keep, got {dominant} of {keep}")
        self.keep, self.dominant = keep, dominant

    def forward(self, features, attentions, keys):
        tiles, tokens, _ = features.shape
        # scores in fp32 (fp16/bf16 models too: a rounding flip would change the kept set between backends)
        attention, key = attentions[0].float(), keys[0].float()
        cls_attention = attention[:, :, 0, 1:].sum(dim=1)  # (T, S-1)
        top = cls_attention.topk(self.dominant - 1, dim=1).indices + 1  # (T, dominant-1)
        cls = torch.zeros((tiles, 1), dtype=top.dtype, device=top.device)
        dominant = torch.sort(torch.cat([cls, top], dim=1), dim=1).values  # (T, dominant), token order
        positions = torch.arange(tokens, device=features.device)
        is_dominant = (positions[None, None, :] == dominant[:, :, None]).any(dim=1)  # (T, S)
        # the non-dominant tokens in token order: sort by (is dominant, position), take the first S - dominant
        order = torch.sort(is_dominant.to(torch.int64) * tokens + positions[None], dim=1).indices
        remaining = order[:, :tokens - self.dominant]  # (T, R)
        hidden_rest = _gather_tokens(features, remaining)  # (T, R, Dv)
        metric = _gather_tokens(key.mean(dim=1), remaining)  # (T, R, dh)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        targets, merged = contextual_targets(tokens - self.dominant, self.keep - self.dominant)
        parts = [_gather_tokens(features, dominant)]
        if targets:
            contextual = hidden_rest[:, targets]
            if merged:
                similarity = metric[:, merged] @ metric[:, targets].transpose(1, 2)  # (T, merged, C)
                choice = similarity.argmax(dim=2)  # (T, merged)
                columns = torch.arange(len(targets), device=features.device)
                assign = (choice[..., None] == columns).float()  # (T, merged, C) one-hot
                counts = assign.sum(dim=1).clamp(min=1)[..., None]  # (T, C, 1)
                # the mean in fp32 (fp16/bf16 models: a sum of many states in half precision differs by backend)
                mean = assign.transpose(1, 2) @ hidden_rest[:, merged].float() / counts
                contextual = (contextual.float() + mean).to(features.dtype)
            parts.append(contextual)
        merged_ids = torch.full((tiles, len(targets)), -1, dtype=dominant.dtype, device=dominant.device)
        return torch.cat(parts, dim=1), torch.cat([dominant, merged_ids], dim=1)

