"""nn.Linear with an unstructured sparse weight in Tiled-CSL."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ..formats import TiledCSLWeight
from .base import SparseLinear

_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


class TiledCSLLinear(SparseLinear):
    """y = x @ W.T + b with W in Tiled-CSL. Buffers: values, locations, tile_offsets (the stream, saved), bias; on
    CUDA also the kernel's word layout (words, word_offsets: 4 bytes per nonzero like the stream, not saved), on CPU
    the CPU kernels' bitmap (cpu_bitmap: 1 bit per element, read beside the values in place, not saved), rebuilt
    whenever the layer moves or loads a state dict. A fresh layer holds nnz = 0 and takes the nnz of the state dict
    it loads. Edit the weight through load_state_dict, not in place."""

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

    def _refresh_kernel_layout(self) -> None:
        layout = (None, None)
        if self.values.dtype in _KERNEL_DTYPES and ops.tiled_csl_words_supported(self.tile_m, self.tile_k,
                                                                                 self.values.device):
            layout = ops.tiled_csl_words(self.values, self.locations, self.tile_offsets, self.tile_m, self.tile_k)
        self.register_buffer("words", layout[0], persistent=False)
        self.register_buffer("word_offsets", layout[1], persistent=False)
        # CPU: the kernels read `values` in place through a bitmap of the stored elements (1 bit per element).
        cpu_bitmap = None
        if self.values.device.type == "cpu":
            cpu_bitmap = ops.tiled_csl_cpu_layout(self.locations, self.tile_offsets, self.out_features,
                                                  self.in_features, self.tile_m, self.tile_k)
        self.register_buffer("cpu_bitmap", cpu_bitmap, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.cpu_bitmap = None  # a failed load leaves no stale bitmap: the op then derives and checks its own
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self.words is not None and x.is_cuda:
            return ops.tiled_csl_mm_words(x, self.words, self.word_offsets, self.out_features, self.tile_m, self.bias)
        return ops.tiled_csl_mm(x, self.values, self.locations, self.tile_offsets, self.out_features,
                                self.tile_m, self.tile_k, self.bias, self.cpu_bitmap if x.device.type == "cpu" else None)

    def format_repr(self) -> str:
        return f"format=tiled_csl, tile=({self.tile_m}, {self.tile_k}), sparsity={self.weight_format.sparsity:.3f}"
