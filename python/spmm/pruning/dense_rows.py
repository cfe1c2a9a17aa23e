"""Spense row choice: which output rows of a 2:4-pruned layer stay dense, and how many in each layer.

Scores (higher = keep dense) are on one scale for every layer, so that a single budget can be spread over a
model: each estimates the share of some output's energy that pruning the row to 2:4 takes away.

- "error": the row's output error on the calibration inputs, sum over x of ((w - w') . x)^2 with w' the pruner's
  2:4 row (SparseGPT's updated weights included): exact with the Gram matrix X^T X, the diagonal estimate from the
  per-column norms otherwise, and the dropped weight energy without calibration. Divided by the layer's output
  energy, sum over x of ||W x||^2 (computed the same way).
- "block_error": the same error carried to the output of the block (transformer layer) the linear sits in: the
  mean error per token times the row's sensitivity, the mean squared gradient of the block output with respect to
  that output unit (see sensitivity.py), both relative to the block output's energy. Where no sensitivity was
  measured (a linear outside a chain of blocks), it is the "error" score.
- "saliency": before pruning, the Wanda-style importance (|w| ||x_j||)^2 summed over the weights a 2:4 mask by
  that same importance would remove, divided by the layer's diagonal output energy; without calibration, ||x_j|| = 1.
- "random": the control: a seeded uniform draw per row, times the row's weight count, so that per weight no layer
  is favoured and a global budget spreads the rows like a uniform one.

Counts are whole row tiles (the GPU kernels' row-tile height), or all of a layer's rows.
"""

from __future__ import annotations

import heapq
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .calibration import InputStats
from .select import keep_n_of_m

STRATEGIES = ("error", "block_error", "saliency", "random")
BUDGETS = ("uniform", "global")


def strategy_needs(strategy: str) -> Optional[str]:
    """The input statistics the strategy reads when calibration data is given: "gram" (exact output error),
    "norms" (saliency) or None (random)."""
    check_strategy(strategy)
    return {"error": "gram", "block_error": "gram", "saliency": "norms", "random": None}[strategy]


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _output_error(delta: Tensor, stats: Optional[InputStats]) -> Tensor:
    """Per row, sum over the calibration inputs of (delta_r . x)^2 (no calibration: ||delta_r||^2)."""
    if stats is None:
        return delta.float().square().sum(1)
    return stats.output_error(delta)


def row_scores(strategy: str, weight: Tensor, pruned: Tensor, stats: Optional[InputStats] = None,
               sensitivity: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Float32 scores [M] of the rows of `weight` [M, K] (the dense layer) for `strategy` (see the module
    docstring), `pruned` being the pruner's 2:4 weight (zeros where pruned). `stats`: the layer's calibration
    input statistics or None; `sensitivity` [M]: block_error's per-output-unit sensitivity; `generator`: random's."""
    check_strategy(strategy)
    weight = weight.detach().float()
    if strategy == "random":
        draw = torch.rand(weight.shape[0], generator=generator, dtype=torch.float32)
        return (draw * weight.shape[1]).to(weight.device)
    if strategy == "saliency":
        col_sq = torch.ones_like(weight[0]) if stats is None else stats.sq_norms.to(weight.device)
        importance = weight.square() * col_sq  # (|w| ||x_j||)^2
        removed = ~keep_n_of_m(importance, 2, 4)
        return _relative(torch.where(removed, importance, 0.0).sum(1), importance.sum())
    error = _output_error(weight - pruned.float(), stats)
    if strategy == "block_error" and sensitivity is not None:
        if sensitivity.shape != error.shape:
            raise ValueError(f"sensitivity must have shape {tuple(error.shape)}, got {tuple(sensitivity.shape)}")
        tokens = 1 if stats is None else stats.count
        return error / tokens * sensitivity.to(error.device, torch.float32)
    return _relative(error, _output_error(weight, stats).sum())


def _relative(score: Tensor, energy: Tensor) -> Tensor:
    return score / energy if float(energy) > 0 else score


def top_rows(scores: Tensor, count: int) -> Tensor:
    """The `count` rows of highest score, ascending (ties go to the lower index)."""
    if not 0 <= count <= scores.shape[0]:
        raise ValueError(f"count must lie in [0, {scores.shape[0]}], got {count}")
    rows = torch.sort(scores, descending=True, stable=True).indices[:count]
    return torch.sort(rows).values


def nearest_tile_count(rows: float, out_features: int, tile: int) -> int:
    """The dense row count nearest to `rows` that the kernels take: a multiple of `tile`, or all `out_features`
    rows (the last tile of a layer whose height is not a multiple of the tile is partial). Halves round up."""
    if tile <= 0:
        raise ValueError(f"tile must be a positive integer, got {tile}")
    below = min(math.floor(rows / tile) * tile, out_features)
    above = min(below + tile, out_features)
    return above if above - rows <= rows - below else below


def uniform_row_count(out_features: int, dense_fraction: float, tile: int) -> int:
    """The uniform budget: dense_fraction of the layer's rows, to the nearest tile (nearest_tile_count)."""
    return nearest_tile_count(dense_fraction * out_features, out_features, tile)


def global_budget(shapes: Sequence[Tuple[int, int]], dense_fraction: float, tile: int) -> Tuple[int, int]:
    """(budget, unit) of the global budget over layers of `shapes` [(out_features, in_features)]: the dense weights
    to place, dense_fraction of all the layers' weights rounded to the nearest whole `unit`, one row tile of the
    narrowest layer (tile x the smallest in_features)."""
    unit = tile * min(k for _, k in shapes)
    total = sum(m * k for m, k in shapes)
    return math.floor(dense_fraction * total / unit + 0.5) * unit, unit


def allocate_rows(scores: Sequence[Tensor], widths: Sequence[int], dense_fraction: float, tile: int,
                  bounds: Tuple[float, float] = (0.0, 1.0)) -> List[int]:
    """The global budget: dense row counts of layers whose rows have `scores` [M_l] (on one scale across layers)
    and in_features `widths`, spending global_budget's dense weights where they buy the most score per weight.

    Each layer starts at its lower bound (nearest_tile_count of bounds[0] * M_l) and grows one row tile at a time,
    its top-scored rows first, up to its upper bound: the step with the highest score per weight goes next; a step
    that would exceed the budget is passed over and the layer grows no further. Exact: the dense weights equal the
    budget whenever every layer's tile is a whole number of units (in_features a multiple of the smallest, rows a
    multiple of the tile) and the layers of the smallest in_features have room left; otherwise they fall short by
    less than the smallest step still open, and never exceed the budget."""
    if len(scores) != len(widths) or not scores:
        raise ValueError("allocate_rows needs one width per score vector and at least one layer")
    lo, hi = bounds
    shapes = [(s.shape[0], k) for s, k in zip(scores, widths)]
    budget, _ = global_budget(shapes, dense_fraction, tile)
    counts = [nearest_tile_count(lo * m, m, tile) for m, _ in shapes]
    limits = [nearest_tile_count(hi * m, m, tile) for m, _ in shapes]
    used = sum(c * k for c, (_, k) in zip(counts, shapes))
    if used > budget:
        raise ValueError(f"layer_bounds: the lower bound {lo} keeps {used} weights dense, over the budget of "
                         f"{budget} (dense_fraction={dense_fraction})")
    gains = [torch.cat([s.new_zeros(1), torch.sort(s.double(), descending=True).values.cumsum(0)]).tolist()
             for s in scores]
    steps: List[Tuple[float, int, int]] = []  # (-score per weight, layer, rows after the step)

    def push(layer: int) -> None:
        rows, k = shapes[layer]
        now = counts[layer]
        if now < limits[layer]:
            after = min(now + tile, rows)
            heapq.heappush(steps, (-(gains[layer][after] - gains[layer][now]) / ((after - now) * k), layer, after))

    for layer in range(len(shapes)):
        push(layer)
    while steps:
        _, layer, after = heapq.heappop(steps)
        cost = (after - counts[layer]) * shapes[layer][1]
        if used + cost <= budget:
            used += cost
            counts[layer] = after
            push(layer)
    return counts
