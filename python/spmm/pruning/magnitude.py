"""Magnitude pruning: keep the largest |w|. Ties go to the lower index (stable sorts), so masks are deterministic."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .registry import check_n_of_m, check_weight_2d, parse_sparsity, register_pruner
from .select import keep_n_of_m, prune_lowest


@register_pruner("magnitude")
def magnitude_mask(weight: Tensor, sparsity: Union[str, float], **_unused) -> Tensor:
    """Keep-mask (bool, weight's shape) of `weight` [M, K].

    sparsity "N:M" (e.g. "2:4"): keep the N largest |w| of every group of M along K (K % M == 0).
    sparsity float in [0, 1]: zero exactly round(sparsity * numel) smallest-|w| elements of the matrix.
    """
    check_weight_2d(weight)
    spec = parse_sparsity(sparsity)
    score = weight.detach().abs()
    if isinstance(spec, tuple):
        check_n_of_m(weight.shape[1], *spec)
        return keep_n_of_m(score, *spec)
    return prune_lowest(score, round(spec * weight.numel()))


def select_dense_rows(weight: Tensor, dense_fraction: float, mask: Optional[Tensor] = None,
                      row_loss: Optional[Tensor] = None) -> Tensor:
    """Spense row choice: the round(dense_fraction * M) output rows whose 2:4 pruning costs most, ascending.

    The cost of a row is `row_loss` [M] when given (e.g. its output error on calibration data), else the energy
    the 2:4 keep-`mask` drops from it (sum of squared pruned weights; default mask: magnitude 2:4)."""
    if not 0.0 <= dense_fraction <= 1.0:
        raise ValueError(f"dense_fraction must lie in [0, 1], got {dense_fraction}")
    if row_loss is None:
        if mask is None:
            mask = magnitude_mask(weight, "2:4")
        row_loss = torch.where(mask, 0.0, weight.detach().float().square()).sum(dim=1)
    elif row_loss.shape != weight.shape[:1]:
        raise ValueError(f"row_loss must have shape ({weight.shape[0]},), got {tuple(row_loss.shape)}")
    count = round(dense_fraction * weight.shape[0])
    rows = torch.sort(row_loss, descending=True, stable=True).indices[:count]
    return torch.sort(rows).values
