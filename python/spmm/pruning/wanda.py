"""Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"): a weight matters as much as
|w_ij| * ||X_j||_2, its size times the norm of the input feature it multiplies. No weight updates, so one pass of
statistics (per-column input norms) is all it needs."""

from __future__ import annotations

from typing import Union

from torch import Tensor

from .calibration import InputStats
from .registry import check_n_of_m, check_weight_2d, parse_sparsity, register_pruner, require_stats
from .select import keep_n_of_m, prune_lowest_per_row


@register_pruner("wanda", needs="norms")
def wanda_mask(weight: Tensor, sparsity: Union[str, float], stats: InputStats = None, **_unused) -> Tensor:
    """Keep-mask of `weight` [M, K] by the score |W| * ||X_j||_2 (`stats`: the layer's input statistics).

    "N:M": keep the N best of every group of M along K. A float: every output row loses exactly
    round(sparsity * K) weights (Wanda compares weights within a row, which beats a whole-matrix threshold for
    LLMs), so the matrix loses M * round(sparsity * K).
    """
    check_weight_2d(weight)
    spec = parse_sparsity(sparsity)
    score = weight.detach().float().abs() * require_stats(stats, "wanda", weight).col_norms()
    if isinstance(spec, tuple):
        check_n_of_m(weight.shape[1], *spec)
        return keep_n_of_m(score, *spec)
    return prune_lowest_per_row(score, round(spec * weight.shape[1]))
