"""2:4 semi-structured weights in the canonical layout of spmm.ops (see ops.py for the byte layout)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .. import ops
from .base import PackedWeight
from ._checks import check_same_device, check_shape2d, check_tensor, check_weight, plus_zero

_FILL_CODE = 0 | 1 << 2  # idx0 = 0, idx1 = 1: the code of an all-zero group


def meta_cols(shape: Sequence[int]) -> int:
    return (shape[1] + 7) // 8


class Sparse24Weight(PackedWeight):
    """W [M, K] keeping at most 2 of every 4 elements along K: values [M, K/2] + meta uint8 [M, ceil(K/8)]."""

    format_name = "2:4"

    def __init__(self, values: Tensor, meta: Tensor, shape: Sequence[int]):
        m, k = check_shape2d(shape)
        if k % 4:
            raise ValueError(f"shape: in_features (K) must be a multiple of 4 for 2:4 sparsity, got K={k}")
        check_tensor(values, "values", shape=(m, k // 2), floating=True)
        check_tensor(meta, "meta", shape=(m, meta_cols(shape)), dtype=torch.uint8)
        check_same_device(values=values, meta=meta)
        self.values, self.meta, self.shape = values, meta, torch.Size((m, k))

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Optional[Tensor] = None) -> "Sparse24Weight":
        """Compress `weight` keeping `mask` (bool [M, K], at most 2 of every 4 along K); mask=None keeps the nonzeros."""
        check_weight(weight, mask)
        values, meta = ops.sparse24_compress(weight, mask)
        return cls(values, meta, weight.shape)

    @classmethod
    def empty(cls, shape: Sequence[int], dtype=None, device=None) -> "Sparse24Weight":
        """An all-zero weight in canonical layout (placeholder for layers that will load a state dict)."""
        m, k = check_shape2d(shape)
        codes = torch.full((m, 2 * meta_cols(shape)), _FILL_CODE, dtype=torch.uint8, device=device)
        codes[:, k // 4 :] = 0  # the unused high nibble of an odd group count is 0
        meta = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return cls(torch.zeros(m, k // 2, dtype=dtype, device=device), meta, (m, k))

    def validate(self) -> "Sparse24Weight":
        """Every group's code names two columns idx0 < idx1; the unused high nibble of an odd group count is 0.
        (The CPU matmul's own check, run on a CPU copy of meta: a few ms for a 4096 x 4096 weight.)"""
        if not self._holds_data():
            return self
        try:
            ops.sparse24_check(self.meta.cpu(), self.shape[1])
        except ValueError as e:
            raise ValueError(str(e).replace("spmm::_sparse24_check: ", "")) from None
        return self

    def to_dense(self, check: bool = True) -> Tensor:
        """Back to dense in pure torch (independent of the C++ compressor, so tests cross-check the two). check=False skips
        validate(), for a layout already checked (the ops' backward: no host sync, traceable)."""
        if check:
            self.validate()
        m, k = self.shape
        groups = k // 4
        nibbles = torch.stack((self.meta & 0xF, self.meta >> 4), dim=-1).reshape(m, 2 * self.meta.shape[1])
        nibbles = nibbles[:, :groups].long()
        cols = torch.stack((nibbles & 3, nibbles >> 2), dim=-1)  # [M, G, 2]
        dense = torch.zeros(m, groups, 4, dtype=self.dtype, device=self.device)
        dense.scatter_(2, cols, self.values.reshape(m, groups, 2))
        return plus_zero(dense.reshape(m, k))

    def matmul(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """y = x @ W.T (+ bias), x [..., K] -> y [..., M]."""
        return ops.sparse24_mm(x, self.values, self.meta, bias)

    @property
    def density(self) -> float:
        return 0.5

    @property
    def sparsity(self) -> float:
        return 0.5

    def to(self, device=None, dtype=None) -> "Sparse24Weight":
        return Sparse24Weight(self.values.to(device=device, dtype=dtype), self.meta.to(device=device), self.shape)

    def tensors(self) -> Dict[str, Tensor]:
        return {"values": self.values, "meta": self.meta}

    @classmethod
    def from_tensors(cls, tensors: Dict[str, Tensor], shape: Sequence[int]) -> "Sparse24Weight":
        """The weight of stored tensors (e.g. a state dict's), validated."""
        return cls(tensors["values"], tensors["meta"], shape).validate()

    def __repr__(self) -> str:
        return (f"Sparse24Weight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, "
                f"nbytes={self.nbytes})")
