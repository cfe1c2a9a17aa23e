"""Magnitude pruning: keep the largest |w|. Ties go to the lower index (stable sorts), so masks are deterministic."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .registry import parse_sparsity, register_pruner


@register_pruner("magnitude")
def magnitude_mask(weight: Tensor, sparsity: Union[str, float], **_unused) -> Tensor:
    """Keep-mask (bool, weight's shape) of `weight` [M, K].

    sparsity "N:M" (e.g. "2:4"): keep the N largest |w| of every group of M along K (K % M == 0).
    sparsity float in [0, 1]: zero exactly round(sparsity * numel) smallest-|w| elements of the matrix.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    spec = parse_sparsity(sparsity)
    score = weight.detach().abs()
    if isinstance(spec, tuple):
        n, m = spec
        rows, k = weight.shape
        if k % m:
            raise ValueError(f"weight: in_features (K={k}) must be a multiple of {m} for {n}:{m} sparsity")
        groups = score.reshape(rows, k // m, m)
        keep_idx = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep_idx, True)
        return mask.reshape(rows, k)
    num_pruned = round(spec * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[torch.sort(score.flatten(), stable=True).indices[:num_pruned]] = False
    return mask.reshape(weight.shape)


def select_dense_rows(weight: Tensor, dense_fraction: float, mask: Optional[Tensor] = None) -> Tensor:
    """Spense row choice: the round(dense_fraction * M) output rows whose 2:4 pruning drops the most energy
    (sum of squared pruned weights), ascending. `mask` is the 2:4 keep-mask to judge (default: magnitude 2:4)."""
    if not 0.0 <= dense_fraction <= 1.0:
        raise ValueError(f"dense_fraction must lie in [0, 1], got {dense_fraction}")
    if mask is None:
        mask = magnitude_mask(weight, "2:4")
    dropped = torch.where(mask, 0.0, weight.detach().float().square()).sum(dim=1)
    count = round(dense_fraction * weight.shape[0])
    rows = torch.sort(dropped, descending=True, stable=True).indices[:count]
    return torch.sort(rows).values
