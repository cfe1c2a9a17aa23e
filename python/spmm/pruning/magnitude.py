"""Magnitude pruning: keep the largest |w|. Ties go to the lower index (stable sorts), so masks are deterministic."""

from __future__ import annotations

from typing import Union

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

