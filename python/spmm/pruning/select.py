"""Keep-masks from importance scores (higher = more important). Every pruner picks its mask through these, so the
tie rules are the same everywhere: stable sorts, ties go to the lower index (kept for N:M, pruned first otherwise)."""

from __future__ import annotations

import torch
from torch import Tensor


def keep_n_of_m(score: Tensor, n: int, m: int) -> Tensor:
    """Keep the n highest scores of every group of m consecutive elements along the last dim (its size % m == 0)."""
    groups = score.reshape(*score.shape[:-1], score.shape[-1] // m, m)
    keep_idx = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep_idx, True).reshape(score.shape)


def prune_lowest(score: Tensor, count: int) -> Tensor:
    """Drop exactly `count` lowest scores of the whole tensor."""
    mask = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    mask[torch.sort(score.flatten(), stable=True).indices[:count]] = False
    return mask.reshape(score.shape)


def prune_lowest_per_row(score: Tensor, count: int) -> Tensor:
    """Drop exactly `count` lowest scores of every row of a 2-D score."""
    drop_idx = torch.sort(score, dim=1, stable=True).indices[:, :count]
    return torch.ones_like(score, dtype=torch.bool).scatter_(1, drop_idx, False)


def split_count(total: int, start: int, end: int, length: int) -> int:
    """The share of `total` falling to the slice [start, end) of `length` when it is spread evenly with cumulative
    rounding: the shares of consecutive slices always add up to `total` exactly."""
    return round(total * end / length) - round(total * start / length)
