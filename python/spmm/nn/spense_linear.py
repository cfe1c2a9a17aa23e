"""nn.Linear with some output rows dense and the rest 2:4 sparse (Spense)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import ops
from ..formats import Sparse24Weight, SpenseWeight
from .base import SparseLinear


class SpenseLinear(SparseLinear):
    """y = x @ W.T + b with `num_dense_rows` output rows dense, the rest 2:4 (in_features % 4 == 0).
    Buffers: dense_weight, values, meta, row_index, bias (saved; the dense/sparse split follows a loaded state dict);
    on CUDA also the 2:4 block's kernel layouts (dvalues .. sm80_e, as in Sparse24Linear: ops.sparse24_kernel_layouts),
    rebuilt whenever the layer moves or loads a state dict (not saved). forward is ops.spense_mm on all of them: the
    2:4 rows take the kernel the 2:4 rule picks in C++, the dense rows cuBLAS."""

    format_cls = SpenseWeight
    resizable_buffers = ("dense_weight", "values", "meta")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, num_dense_rows: int = 0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._set_format(SpenseWeight.empty((out_features, in_features), num_dense_rows, dtype=dtype, device=device))

    @staticmethod
    def kwargs_of(fmt: SpenseWeight):
        return {"num_dense_rows": fmt.num_dense_rows}

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[Tensor] = None, *, dense_rows: Tensor) -> "SpenseLinear":
        """Keep the rows `dense_rows` (indices) dense; pack the other rows as 2:4 with `mask` (None: keep the
        nonzeros). Which rows to keep is the pruning side's choice (spmm.sparsify with SpenseConfig,
        spmm.pruning.row_scores / top_rows)."""
        return cls.from_format(SpenseWeight.from_dense(linear.weight.detach(), dense_rows, mask), linear.bias)

    def _format_from(self, tensors) -> SpenseWeight:
        sparse = Sparse24Weight(tensors["values"], tensors["meta"], (tensors["values"].shape[0], self.in_features))
        return SpenseWeight(tensors["dense_weight"], sparse, tensors["row_index"])

    def _refresh_kernel_layout(self) -> None:
        for name, layout in ops.sparse24_kernel_layouts(self.values, self.meta).items():
            self.register_buffer(name, layout, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return ops.spense_mm(x, self.dense_weight, self.values, self.meta, self.row_index, self.bias,
                             dvalues=self.dvalues, dmeta=self.dmeta, sm90_e=self.sm90_e, sm80_a=self.sm80_a,
                             sm80_e=self.sm80_e)

    def format_repr(self) -> str:
        fmt = self.weight_format
        return f"format=spense, dense_rows={fmt.num_dense_rows} ({fmt.dense_fraction:.3f})"
