"""Test problems: a random weight, its pruning mask, a bias, activations, and the fp32 reference output.

Masks are made here (not by spmm.pruning) so the bench depends only on the ops: 2:4 keeps the two largest |w| of
every group of 4 along K; unstructured keeps a random round((1 - s) * K) entries of every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import Tensor

from .shapes import Layer


@dataclass
class Case:
    """One pruned weight; every token count of a sweep reuses it."""

    op: str  # spmm op this case benchmarks
    layer: Layer
    w: Tensor  # dense masked weight [M, K] (what cuBLAS multiplies)
    mask: Tensor  # bool [M, K], True = kept
    bias: Tensor  # [M]
    sparsity: float  # fraction of zero weights
    dense_fraction: float  # fraction of output rows kept dense (Spense); 0 elsewhere
    extra: Dict[str, Tensor] = field(default_factory=dict)  # format-specific inputs (Spense row split)
    w32: Optional[Tensor] = None  # fp32 copy for the reference, made once

    def reference(self, x: Tensor) -> Tensor:
        """fp32 F.linear on the dense masked weight (TF32 off: the reference must be true fp32)."""
        if self.w32 is None:
            self.w32 = self.w.float()
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return torch.nn.functional.linear(x.float(), self.w32, self.bias.float())
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved


def _pruned(w: Tensor, mask: Tensor) -> Tensor:
    # masked_fill gives +0.0; w * mask would leave -0.0, whose sign bit some packers count as a nonzero.
    return w.masked_fill(~mask, 0)


def _weight(layer: Layer, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Scaled like a trained layer so outputs stay O(1) in every dtype.
    return (torch.randn(layer.M, layer.K, device=device) * layer.K**-0.5).to(dtype)


def _bias(layer: Layer, dtype: torch.dtype, device: torch.device) -> Tensor:
    return (0.1 * torch.randn(layer.M, device=device)).to(dtype)


def mask_24(w: Tensor) -> Tensor:
    """Keep the 2 largest |w| of every group of 4 along K."""
    m, k = w.shape
    groups = w.abs().float().view(m, k // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.view(m, k)


def mask_random(shape, sparsity: float, device: torch.device) -> Tensor:
    """Keep round((1 - sparsity) * K) random entries of every row (exact per-row density)."""
    m, k = shape
    keep = round((1.0 - sparsity) * k)
    mask = torch.zeros(m, k, dtype=torch.bool, device=device)
    mask.scatter_(1, torch.rand(m, k, device=device).argsort(dim=1)[:, :keep], True)
    return mask


def sparse24_case(layer: Layer, dtype, device) -> Case:
    w = _weight(layer, dtype, device)
    mask = mask_24(w)
    return Case("sparse24_mm", layer, _pruned(w, mask), mask, _bias(layer, dtype, device), 0.5, 0.0)


def tiled_csl_case(layer: Layer, dtype, device, sparsity: float) -> Case:
    w = _weight(layer, dtype, device)
    mask = mask_random(w.shape, sparsity, device)
    return Case("tiled_csl_mm", layer, _pruned(w, mask), mask, _bias(layer, dtype, device), sparsity, 0.0)


def spense_case(layer: Layer, dtype, device, dense_fraction: float) -> Case:
    """Rows with the largest 2:4 pruning loss stay dense (what Spense is for); the rest are 2:4."""
    from spmm.ops import SPENSE_ROW_TILE  # whole row tiles of the Spense kernels, as SpenseConfig rounds them

    w = _weight(layer, dtype, device)
    mask = mask_24(w)
    md = round(dense_fraction * layer.M / SPENSE_ROW_TILE) * SPENSE_ROW_TILE
    loss = (w.float() * ~mask).pow(2).sum(dim=1)
    dense_rows = loss.topk(md).indices.sort().values
    is_dense = torch.zeros(layer.M, dtype=torch.bool, device=device)
    is_dense[dense_rows] = True
    mask = mask | is_dense[:, None]
    sparse_rows = (~is_dense).nonzero().squeeze(1)
    return Case(
        "spense_mm", layer, _pruned(w, mask), mask, _bias(layer, dtype, device),
        sparsity=0.5 * (layer.M - md) / layer.M,
        dense_fraction=md / layer.M,
        extra={"dense_rows": dense_rows, "sparse_rows": sparse_rows},
    )


def activations(n: int, k: int, dtype, device) -> Tensor:
    return torch.randn(n, k, device=device).to(dtype)
