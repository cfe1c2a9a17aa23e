"""nn.Linear with an unstructured sparse weight in Tiled-CSL."""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor

from .. import ops
from ..formats import TiledCSLWeight, tiled_csl_layouts
from ..formats.tiled_csl import num_tiles
from .base import SparseLinear

_STREAM = ("values", "locations", "tile_offsets")
_LAYOUTS = {"words": ("words", "word_offsets"), "delta": ("delta_values", "delta_codes", "delta_offsets")}


class TiledCSLLinear(SparseLinear):
    """y = x @ W.T + b with W in Tiled-CSL. What is saved: the stream (values, locations, tile_offsets) and bias.

    On CUDA (fp16/bf16) the layer derives the kernel layout of the C++ rule (ops.tiled_csl_layer_layout) whenever
    its weight is set, moves, changes dtype or loads a state dict, and forward passes it to ops.tiled_csl_mm:
      - "words" (the default): words, word_offsets beside the stream (4 bytes per nonzero each);
      - "delta" (where SPMM_TILED_CSL_DELTA=1): delta_values, delta_codes, delta_offsets (~2.5 bytes per nonzero)
        *instead of* the stream -- one copy of the weight: the stream buffers are None, and state_dict, weight_format
        and the gradient decode the layout back (spmm.formats.tiled_csl_layouts).
    On CPU the layer derives the CPU kernels' bitmap (cpu_bitmap: 1 bit per element, read beside the stream's values
    in place, not saved) the same way.
    A fresh layer holds nnz = 0 and takes the nnz of the state dict it loads. Edit the weight through
    load_state_dict, not in place."""

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

    def _format_from(self, tensors) -> TiledCSLWeight:
        return TiledCSLWeight(tensors["values"], tensors["locations"], tensors["tile_offsets"],
                              (self.out_features, self.in_features), self.tile_m, self.tile_k)

    def format_kwargs(self) -> Dict[str, Any]:
        return {"tile_m": self.tile_m, "tile_k": self.tile_k}  # without decoding a layout the layer may hold alone

    @property
    def weight_format(self) -> TiledCSLWeight:
        if self.tile_offsets is not None:
            return self._format_from(self._buffers)
        shape = (self.out_features, self.in_features)  # the delta layout held alone: decoded back to the stream
        return tiled_csl_layouts.delta_to_weight(self.delta_values, self.delta_codes, self.delta_offsets, shape,
                                                 self.tile_m, self.tile_k)

    def _refresh_kernel_layout(self) -> None:
        weight = self.weight_format  # the stream: the buffers', or decoded from the layout held alone
        self._nnz = weight.nnz
        for name, tensor in weight.tensors().items():
            self.register_buffer(name, tensor)
        layout = ops.tiled_csl_layer_layout(self.tile_m, self.tile_k, weight.dtype, weight.device)
        kernel: Dict[str, Any] = {name: None for names in _LAYOUTS.values() for name in names}
        if layout == "words":
            kernel.update(zip(_LAYOUTS["words"], ops.tiled_csl_words(*weight.tensors().values(), self.tile_m,
                                                                     self.tile_k)))
        elif layout == "delta":
            kernel.update(zip(_LAYOUTS["delta"], tiled_csl_layouts.delta_layout(weight)))
            for name in _STREAM:
                self.register_buffer(name, None)  # one copy on the GPU: the layout alone
        for name, tensor in kernel.items():
            self.register_buffer(name, tensor, persistent=False)
        # CPU: the kernels read `values` in place through a bitmap of the stored elements (1 bit per element).
        cpu_bitmap = None
        if weight.device.type == "cpu" and self.tile_offsets is not None:
            cpu_bitmap = ops.tiled_csl_cpu_layout(self.locations, self.tile_offsets, self.out_features,
                                                  self.in_features, self.tile_m, self.tile_k)
        self.register_buffer("cpu_bitmap", cpu_bitmap, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.tile_offsets is None:  # the delta layout alone: the stream is not read on CUDA
            empty = self.delta_offsets.new_empty(0)
            stream = (self.delta_values.new_empty(0), empty.short(), empty)
        else:
            stream = (self.values, self.locations, self.tile_offsets)
        if x.is_cuda:
            layout = {name: getattr(self, name) for names in _LAYOUTS.values() for name in names}
        else:  # the CPU op reads the stream, through the bitmap where the layer holds one
            layout = {"cpu_bitmap": self.cpu_bitmap if x.device.type == "cpu" else None}
        return ops.tiled_csl_mm(x, *stream, self.out_features, self.tile_m, self.tile_k, self.bias, **layout)

    # ---- the stream in the state dict also where the layer holds the delta layout alone
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.tile_offsets is None:
            for name, tensor in self.weight_format.tensors().items():
                destination[prefix + name] = tensor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.cpu_bitmap = None  # a failed load leaves no stale bitmap: the op then derives and checks its own
        if self.tile_offsets is None:  # back to stream buffers, which load as usual; the post-hook derives the layout
            for name, tensor in self.weight_format.tensors().items():
                self.register_buffer(name, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def nbytes(self) -> int:
        """Bytes of the saved stream (values, 16-bit locations, tile offsets)."""
        tiles = num_tiles((self.out_features, self.in_features), self.tile_m, self.tile_k)
        itemsize = (self.values if self.values is not None else self.delta_values).element_size()
        return self._nnz * (itemsize + 2) + (tiles + 1) * 4

    def format_repr(self) -> str:
        sparsity = 1.0 - self._nnz / max(self.out_features * self.in_features, 1)
        return f"format=tiled_csl, tile=({self.tile_m}, {self.tile_k}), sparsity={sparsity:.3f}"
