"""Peer (baseline) token-selection rules that TRIO is compared against.

Each rule returns the kept image-token indices, sorted ascending, int64, shape (keep,).
"""

import torch
import torch.nn.functional as nnf

from ..errors import InputError
from .selection import check_keep


def _top_indices(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest values; equal values go to the lower index."""
    # A stable descending sort keeps equal values in index order (topk promises nothing).
    return torch.sort(values, descending=True, stable=True).indices[:count]


def _sorted_long(indices: torch.Tensor) -> torch.Tensor:
    return torch.sort(indices.long()).values


def _check_1d(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 1:
        raise InputError(f"{name} must be 1-D (one value per image token), got shape {tuple(tensor.shape)}")


def fastv_select(attention_to_image: torch.Tensor, keep: int) -> torch.Tensor:
    """FastV: keep the image tokens the last token attends to most at the cut layer.

    attention_to_image: (M,) head-averaged attention from the last token to each image token.
    """
    _check_1d("attention_to_image", attention_to_image)
    keep = check_keep(keep, attention_to_image.shape[0])
    return _sorted_long(_top_indices(attention_to_image, keep))


def dart_select(keys: torch.Tensor, features: torch.Tensor, keep: int, num_pivots: int = 8) -> torch.Tensor:
    """DART-style duplicate-aware selection.

    Pivots are the ``num_pivots`` tokens with the largest key L2 norm; the rest of the
    budget goes to the tokens least similar (cosine on ``features``) to their closest
    pivot, so near-duplicates of the pivots are the ones dropped.
    """
    if keys.dim() != 2 or features.dim() != 2 or keys.shape[0] != features.shape[0]:
        raise InputError(
            f"keys {tuple(keys.shape)} and features {tuple(features.shape)} must both be 2-D "
            "with one row per image token"
        )
    if num_pivots < 1:
        raise InputError(f"num_pivots={num_pivots} must be at least 1")
    num_tokens = keys.shape[0]
    keep = check_keep(keep, num_tokens)
    pivots = _top_indices(keys.float().norm(dim=-1), min(num_pivots, num_tokens))
    if keep <= pivots.numel():
        return _sorted_long(pivots[:keep])

    unit = nnf.normalize(features.float(), dim=-1)
    closeness = (unit @ unit[pivots].T).amax(dim=-1)  # similarity to the nearest pivot
    # Pivots must not compete for the remaining slots: push them to the bottom.
    is_pivot = torch.zeros(num_tokens, dtype=torch.bool, device=keys.device)
    is_pivot[pivots] = True
    distinctness = torch.where(is_pivot, torch.tensor(-torch.inf, device=keys.device), -closeness)
    others = _top_indices(distinctness, keep - pivots.numel())
    return _sorted_long(torch.cat([pivots, others]))


def random_select(num_tokens: int, keep: int, seed: int) -> torch.Tensor:
    """A uniformly random subset, reproducible from ``seed``."""
    keep = check_keep(keep, num_tokens)
    generator = torch.Generator().manual_seed(int(seed))
    return _sorted_long(torch.randperm(num_tokens, generator=generator)[:keep])


def uniform_select(num_tokens: int, keep: int) -> torch.Tensor:
    """Evenly strided tokens: floor(i * M / keep) for i < keep (distinct since keep <= M)."""
    keep = check_keep(keep, num_tokens)
    return torch.arange(keep, dtype=torch.long) * num_tokens // keep
