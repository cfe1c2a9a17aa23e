"""nn.Linear with a 2:4 sparse weight."""

from __future__ import annotations

from torch import Tensor

from .. import ops
from ..formats import Sparse24Weight
from .base import SparseLinear


class Sparse24Linear(SparseLinear):
    """y = x @ W.T + b with W 2:4 sparse (in_features % 4 == 0). Buffers: values, meta, bias."""

    format_cls = Sparse24Weight

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._set_format(Sparse24Weight.empty((out_features, in_features), dtype=dtype, device=device))

    @property
    def weight_format(self) -> Sparse24Weight:
        return Sparse24Weight(self.values, self.meta, (self.out_features, self.in_features))

    def forward(self, x: Tensor) -> Tensor:
        return ops.sparse24_mm(x, self.values, self.meta, self.bias)
