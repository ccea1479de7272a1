"""Model-free baselines a cut can apply (random, uniform). The published peers that read the model live
where they act: FastV and DART in select_module.LAYER_RULES (layer N-1), DART's rule in dart.py.

Each rule returns the kept image-token indices, sorted ascending, int64, shape (keep,).
"""

import torch

from .selection import check_keep


def _sorted_long(indices: torch.Tensor) -> torch.Tensor:
    return torch.sort(indices.long()).values


def random_select(num_tokens: int, keep: int, seed: int) -> torch.Tensor:
    """A uniformly random subset, reproducible from ``seed``."""
    keep = check_keep(keep, num_tokens)
    generator = torch.Generator().manual_seed(int(seed))
    return _sorted_long(torch.randperm(num_tokens, generator=generator)[:keep])


def uniform_select(num_tokens: int, keep: int) -> torch.Tensor:
    """Evenly strided tokens: floor(i * M / keep) for i < keep (distinct since keep <= M)."""
    keep = check_keep(keep, num_tokens)
    return torch.arange(keep, dtype=torch.long) * num_tokens // keep
