"""nn.Linear with a 2:4 sparse weight."""

from __future__ import annotations

from torch import Tensor

from .. import ops
from ..formats import Sparse24Weight
from .base import SparseLinear


class Sparse24Linear(SparseLinear):
    """y = x @ W.T + b with W 2:4 sparse (in_features % 4 == 0). Buffers: values, meta (canonical layout, saved),
    bias; on CUDA also the kernels' layouts (ops.sparse24_kernel_layouts), rebuilt from the canonical one whenever the
    layer moves or loads a state dict (not saved): dvalues, dmeta for the decode kernel, and those of the prefill GEMM
    the device runs for this shape (ops.sparse24_prefill_gemm): on Hopper only the metadata sm90_e (wgmma.sp, with
    stream-K tiles for decode-sized N; it reads the canonical values themselves), else the Ampere GEMM's padded copy
    sm80_a, sm80_e (mma.sp; compute capability 8.x and 9.0). forward is ops.sparse24_mm on all of them: which kernel
    runs is decided in C++ (the decode kernel up to ops.sparse24_decode_max_tokens: 8-16 tokens on Hopper, 32 on
    Ampere; the GEMM above), and gradients flow to x and bias on every path.
    Memory per weight element, fp16: canonical 1.125 bytes, decode layout 1.125, Hopper GEMM 0.125 (Ampere 1.125),
    i.e. 1.19x of the dense weight's 2 bytes on Hopper (resident_bytes counts them). Pass prefill_kernel=False (or
    call use_prefill_kernel(False)) to skip the GEMM's part: prefill then runs the decode kernel 64 tokens at a time.
    Edit the weight through load_state_dict, not in place."""

    format_cls = Sparse24Weight

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, prefill_kernel=True
    ):
        self.prefill_kernel = prefill_kernel
        super().__init__(in_features, out_features, bias, device, dtype)
        self._set_format(Sparse24Weight.empty((out_features, in_features), dtype=dtype, device=device))

    def _format_from(self, tensors) -> Sparse24Weight:
        return Sparse24Weight(tensors["values"], tensors["meta"], (self.out_features, self.in_features))

    def use_prefill_kernel(self, enabled: bool) -> "Sparse24Linear":
        """Keep (True) or drop (False) the prefill GEMM's layout of the weight; returns self."""
        self.prefill_kernel = bool(enabled)
        self._refresh_kernel_layout()
        return self

    def _refresh_kernel_layout(self) -> None:
        for name, layout in ops.sparse24_kernel_layouts(self.values, self.meta, self.prefill_kernel).items():
            self.register_buffer(name, layout, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return ops.sparse24_mm(x, self.values, self.meta, self.bias, dvalues=self.dvalues, dmeta=self.dmeta,
                               sm90_e=self.sm90_e, sm80_a=self.sm80_a, sm80_e=self.sm80_e)
