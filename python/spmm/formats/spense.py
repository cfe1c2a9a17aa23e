"""Spense weights: some output rows kept dense, the rest 2:4 sparse (see ops.py for the layout)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .. import ops
from .base import PackedWeight
from ._checks import check_same_device, check_tensor, check_weight, plus_zero
from .sparse24 import Sparse24Weight


def split_rows(dense_rows: Tensor, out_features: int) -> Tensor:
    """row_index (int32): the given dense rows in the given order, then the remaining rows ascending."""
    check_tensor(dense_rows, "dense_rows")
    if dense_rows.dim() != 1 or dense_rows.is_floating_point() or dense_rows.dtype == torch.bool:
        raise ValueError(f"dense_rows must be a 1-D integer tensor of row indices, got {dense_rows.dtype} "
                         f"shape {tuple(dense_rows.shape)}")
    rows = dense_rows.long().cpu()
    if rows.numel() and (rows.min() < 0 or rows.max() >= out_features):
        raise ValueError(f"dense_rows must lie in [0, {out_features}), got min {rows.min()} max {rows.max()}")
    if rows.unique().numel() != rows.numel():
        raise ValueError("dense_rows must not repeat a row")
    is_dense = torch.zeros(out_features, dtype=torch.bool)
    is_dense[rows] = True
    return torch.cat((rows, (~is_dense).nonzero().flatten())).to(torch.int32)


class SpenseWeight(PackedWeight):
    """W [M, K] split by output row: dense [Md, K] + 2:4 sparse [Ms, K]; row_index [M] int32 maps block rows
    (dense first) to original rows."""

    format_name = "spense"

    def __init__(self, dense: Tensor, sparse: Sparse24Weight, row_index: Tensor):
        if not isinstance(sparse, Sparse24Weight):
            raise ValueError(f"sparse must be a Sparse24Weight, got {type(sparse).__name__}")
        ms, k = sparse.shape
        check_tensor(dense, "dense", dtype=sparse.dtype)
        if dense.dim() != 2 or dense.shape[1] != k:
            raise ValueError(f"dense must be [Md, {k}] (K of the sparse block), got {tuple(dense.shape)}")
        check_tensor(row_index, "row_index", shape=(dense.shape[0] + ms,), dtype=torch.int32)
        check_same_device(dense=dense, sparse_values=sparse.values, row_index=row_index)
        self.dense, self.sparse, self.row_index = dense, sparse, row_index
        self.shape = torch.Size((row_index.numel(), k))

    @classmethod
    def from_dense(cls, weight: Tensor, dense_rows: Tensor, mask: Optional[Tensor] = None) -> "SpenseWeight":
        """Keep the output rows `dense_rows` dense; pack the others as 2:4 with `mask` (bool [M, K], only the sparse
        rows are read; None keeps the nonzeros)."""
        check_weight(weight, mask)
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("weight must not hold NaN or Inf")
        row_index = split_rows(dense_rows, weight.shape[0]).to(weight.device)
        md = dense_rows.numel()
        dense_idx, sparse_idx = row_index[:md].long(), row_index[md:].long()
        sparse_mask = None if mask is None else mask[sparse_idx]
        sparse = Sparse24Weight.from_dense(weight[sparse_idx], sparse_mask)
        return cls(weight[dense_idx].contiguous(), sparse, row_index)

    @classmethod
    def empty(cls, shape: Sequence[int], num_dense_rows: int = 0, dtype=None, device=None) -> "SpenseWeight":
        """An all-zero weight whose first `num_dense_rows` rows are dense (placeholder for loading)."""
        m, k = shape
        if not 0 <= num_dense_rows <= m:
            raise ValueError(f"num_dense_rows must lie in [0, {m}], got {num_dense_rows}")
        sparse = Sparse24Weight.empty((m - num_dense_rows, k), dtype=dtype, device=device)
        dense = torch.zeros(num_dense_rows, k, dtype=sparse.dtype, device=device)
        return cls(dense, sparse, torch.arange(m, dtype=torch.int32, device=device))

    def validate(self) -> "SpenseWeight":
        """row_index is a permutation of the output rows (each written once); the 2:4 block is valid."""
        if not self._holds_data():
            return self
        m = self.shape[0]
        rows = self.row_index.long()
        outside = (rows < 0) | (rows >= m)
        if bool(outside.any()):
            i = int(outside.nonzero()[0])
            raise ValueError(f"row_index[{i}] = {int(rows[i])} lies outside the {m} output rows")
        repeated = torch.bincount(rows, minlength=m) > 1
        if bool(repeated.any()):
            raise ValueError(f"row_index names output row {int(repeated.nonzero()[0])} more than once; it must be a "
                             f"permutation of the output rows")
        try:
            self.sparse.validate()
        except ValueError as e:
            raise ValueError(f"the 2:4 block's {e}") from None
        return self

    def to_dense(self, check: bool = True) -> Tensor:
        """The dense weight; check=False skips validate(), for a layout already checked (the ops' backward)."""
        if check:
            self.validate()
        rows = self.row_index.long()
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        out[rows] = torch.cat((self.dense, self.sparse.to_dense(check=False)))
        return plus_zero(out)

    def matmul(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """y = x @ W.T (+ bias), x [..., K] -> y [..., M]."""
        return ops.spense_mm(x, self.dense, self.sparse.values, self.sparse.meta, self.row_index, bias)

    @property
    def num_dense_rows(self) -> int:
        return self.dense.shape[0]

    @property
    def dense_fraction(self) -> float:
        return self.num_dense_rows / max(self.shape[0], 1)

    def to(self, device=None, dtype=None) -> "SpenseWeight":
        return SpenseWeight(
            self.dense.to(device=device, dtype=dtype), self.sparse.to(device, dtype), self.row_index.to(device=device)
        )

    def tensors(self) -> Dict[str, Tensor]:
        return {"dense_weight": self.dense, **self.sparse.tensors(), "row_index": self.row_index}

    @classmethod
    def from_tensors(cls, tensors: Dict[str, Tensor]) -> "SpenseWeight":
        """The weight of stored tensors (e.g. a state dict's), validated."""
        dense = tensors["dense_weight"]
        ms = tensors["values"].shape[0]
        sparse = Sparse24Weight(tensors["values"], tensors["meta"], (ms, dense.shape[1]))
        return cls(dense, sparse, tensors["row_index"]).validate()

    def __repr__(self) -> str:
        return (
            f"SpenseWeight(shape={tuple(self.shape)}, dense_rows={self.num_dense_rows}, dtype={self.dtype}, "
            f"device={self.device}, nbytes={self.nbytes})"
        )
