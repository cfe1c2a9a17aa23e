"""nn.Linear with an unstructured sparse weight in Tiled-CSL."""

from __future__ import annotations

from torch import Tensor

from .. import ops
from ..formats import TiledCSLWeight
from .base import SparseLinear


class TiledCSLLinear(SparseLinear):
    """y = x @ W.T + b with W in Tiled-CSL. Buffers: values, locations, tile_offsets, bias. A fresh layer holds
    nnz = 0 and takes the nnz of the state dict it loads."""

    format_cls = TiledCSLWeight
    resizable_buffers = ("values", "locations")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, tile_m: int = 256, tile_k: int = 64,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.tile_m, self.tile_k = tile_m, tile_k
        self._set_format(TiledCSLWeight.empty((out_features, in_features), tile_m, tile_k, dtype=dtype, device=device))

    @staticmethod
    def kwargs_of(fmt: TiledCSLWeight):
        return {"tile_m": fmt.tile_m, "tile_k": fmt.tile_k}

    @property
    def weight_format(self) -> TiledCSLWeight:
        return TiledCSLWeight(self.values, self.locations, self.tile_offsets, (self.out_features, self.in_features),
                              self.tile_m, self.tile_k)

    def forward(self, x: Tensor) -> Tensor:
        return ops.tiled_csl_mm(x, self.values, self.locations, self.tile_offsets, self.out_features,
                                self.tile_m, self.tile_k, self.bias)

    def format_repr(self) -> str:
        return f"format=tiled_csl, tile=({self.tile_m}, {self.tile_k}), sparsity={self.weight_format.sparsity:.3f}"
