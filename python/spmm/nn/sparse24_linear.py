"""nn.Linear with a 2:4 sparse weight."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ..formats import Sparse24Weight
from .base import SparseLinear

_DECODE_DTYPES = (torch.float16, torch.bfloat16)


class Sparse24Linear(SparseLinear):
    """y = x @ W.T + b with W 2:4 sparse (in_features % 4 == 0). Buffers: values, meta (canonical layout, saved),
    bias; on CUDA also the kernels' layouts, rebuilt from the canonical one whenever the layer moves or loads a
    state dict (not saved): dvalues, dmeta for the decode kernel (a few tokens: ops.sparse24_decode_max_tokens, 8-16
    on Hopper, 32 on Ampere), and what a CUTLASS GEMM needs for more tokens: on Hopper (wgmma.sp, with stream-K
    tiles for decode-sized N) only its metadata prefill_e, as it reads the canonical values themselves; else the
    Ampere GEMM's padded copy prefill_a, prefill_e (mma.sp; any shape, on compute capability 8.x and 9.0).
    Memory per weight element, fp16: canonical 1.125 bytes, decode layout 1.125, Hopper GEMM 0.125 (Ampere 1.125),
    i.e. 1.19x of the dense weight's 2 bytes on Hopper. Pass prefill_kernel=False (or call
    use_prefill_kernel(False)) to skip the GEMM's part: prefill then runs the decode kernel 64 tokens at a time.
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
        """Keep (True) or drop (False) the Hopper prefill GEMM's copy of the weight; returns self."""
        self.prefill_kernel = bool(enabled)
        self._refresh_kernel_layout()
        return self

    def _refresh_kernel_layout(self) -> None:
        layout = (None, None)
        if self.values.is_cuda and self.values.dtype in _DECODE_DTYPES and ops.has_cuda_kernel("_sparse24_decode_mm"):
            layout = ops.sparse24_decode_pack(self.values, self.meta)
        self.register_buffer("dvalues", layout[0], persistent=False)
        self.register_buffer("dmeta", layout[1], persistent=False)
        prefill, self._prefill_gemm = (None, None), None
        m, k = self.out_features, self.in_features
        if self.prefill_kernel and self.values.dtype in _DECODE_DTYPES:
            if ops.sparse24_sm90_supported(m, k, self.values.device):  # reads `values`: no copy of them
                prefill = (None, ops.sparse24_sm90_pack(self.values, self.meta))
                self._prefill_gemm = ops.sparse24_sm90_mm
            elif ops.sparse24_sm80_supported(m, k, self.values.device):
                prefill, self._prefill_gemm = ops.sparse24_sm80_pack(self.values, self.meta), ops.sparse24_sm80_mm
        # A plain int, read in forward (traceable by torch.compile); set once per layout.
        self._decode_max_tokens = ops.sparse24_decode_max_tokens(m, k, self._prefill_gemm is ops.sparse24_sm90_mm)
        self.register_buffer("prefill_a", prefill[0], persistent=False)
        self.register_buffer("prefill_e", prefill[1], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.dvalues is not None and x.is_cuda:
            if self.prefill_e is not None and x.numel() > self._decode_max_tokens * self.in_features:
                a = self.values if self.prefill_a is None else self.prefill_a
                return self._prefill_gemm(x, a, self.prefill_e, self.out_features, self.bias)
            return ops.sparse24_decode_mm(x, self.dvalues, self.dmeta, self.out_features, self.bias)
        return ops.sparse24_mm(x, self.values, self.meta, self.bias)
