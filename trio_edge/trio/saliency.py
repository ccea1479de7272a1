"""TRIO's layer-local proxy loss and gradient saliency (DESIGN.md section 1, steps 2-4)."""

from __future__ import annotations

import torch

# Supervised positions: the 4 "shifted" positions S-5 .. S-2 (the final prompt token is excluded).
NUM_SUPERVISED = 4


def supervised_rows(seq_len, dtype, device) -> torch.Tensor:
    """One-hot rows (4, S) picking positions S-5 .. S-2; a contraction, not a slice, so that the
    traced backward has no Scatter."""
    columns = torch.arange(seq_len, device=device)
    wanted = seq_len - 1 - NUM_SUPERVISED + torch.arange(NUM_SUPERVISED, device=device)
    return (columns[None, :] == wanted[:, None]).to(dtype)


def proxy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (Q, V) against their own argmax, written as a one-hot contraction."""
    logits = logits.float()
    labels = logits.detach().argmax(dim=-1)
    one_hot = (torch.arange(logits.shape[-1], device=logits.device)[None, :] == labels[:, None]).float()
    return -(torch.log_softmax(logits, dim=-1) * one_hot).sum(dim=-1).mean()


def proxy_saliency(proxy_logits_fn, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Per-position saliency ||dLoss/dh_i||_2 (S,) for hidden (S, D) entering the proxy layer.

    `proxy_logits_fn(h, position_ids, rows)` evaluates the proxy layer for the queries `rows` picks.
    """
    with torch.enable_grad():
        h = hidden.detach().requires_grad_(True)
        rows = supervised_rows(h.shape[0], h.dtype, h.device)
        loss = proxy_loss(proxy_logits_fn(h, position_ids, rows))
        (grad,) = torch.autograd.grad(loss, h)
    return grad.float().norm(dim=-1)
