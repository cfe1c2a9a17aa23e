"""Python entry points of the spmm operators, and their fake (meta) implementations.

The schemas are registered in C++ (csrc/ops/registration.cpp). On CPU the matmul ops run fast kernels (fp32 sums, bias
added before the one rounding to the input dtype; see "CPU kernels" below); their fp64 references (exact products,
fp64 sums, one rounding) stay as spmm::_*_mm_reference, the tests' oracle. CUDA implementations come from
csrc/ops/*_cuda.cpp. The fake implementations below only compute
output shapes, so torch.compile(fullgraph=True) can trace models that use the ops; backward formulas (for x and
bias) are in autograd.py.

Errors: a wrong dtype raises TypeError, any other broken rule ValueError; every message names the op, the
argument and the rule. Packers refuse a weight with NaN or Inf anywhere (also where the mask drops it), and
store no zeros: a zero or -0.0 that the mask keeps is left out of Tiled-CSL and is a +0.0 filler in 2:4.

Conventions (nn.Linear): y = x @ W.T (+ bias), W is [M out_features, K in_features], x is [..., K].

2:4 canonical layout (what `sparse24_compress` produces, what save/load stores):
  values [M, K/2], W's dtype: the two kept elements of each group of 4 along K, in ascending column order.
  meta   [M, ceil(K/8)] uint8: one 4-bit code per group, group g in byte g // 2, low nibble for even g;
         code = idx0 | idx1 << 2 with idx0 < idx1 the in-group columns of values[:, 2g] and values[:, 2g+1].
         A group with fewer than two kept elements is filled with its lowest unused columns (value +0.0);
         an unused high nibble (K/4 odd) is 0.

Tiled-CSL layout (Flash-LLM): W is cut into tiles of tile_m x tile_k, numbered row-tile major
(tile = (r // tile_m) * ceil(K / tile_k) + c // tile_k); tile_offsets[t] .. tile_offsets[t + 1] is the slice of
values / locations that holds tile t's nonzeros, ordered by location = (r % tile_m) * tile_k + c % tile_k,
stored as int16 holding the unsigned 16-bit location.

Spense layout: the output rows split into a dense block [Md, K] and a 2:4 block [Ms, K] (canonical layout);
row_index [Md + Ms] int32 gives the original output row of each block row, dense rows first.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _C  # loads the library that registers the spmm:: ops; exports the kernel-choice rules

_ops = torch.ops.spmm


def has_cuda_kernel(op: str) -> bool:
    """Whether spmm::`op` has a CUDA implementation in this build (the dispatcher's own answer)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"spmm::{op}", "CUDA")


# --------------------------------------------------------------------------------------------- 2:4 ------------
def sparse24_compress(dense: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Pack a 2:4-sparse weight [M, K] into the canonical (values, meta) layout.

    `mask` (bool [M, K]) selects the kept elements; without it the nonzeros of `dense` are kept (-0.0 counts as
    zero). Every group of 4 along K may keep at most 2. Runs on CPU and CUDA.
    """
    return _ops.sparse24_compress(dense, mask)


def sparse24_mm(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ W.T (+ bias) with W given in the canonical 2:4 layout. x [..., K] -> y [..., M]."""
    return _ops.sparse24_mm(x, values, meta, bias)


def sparse24_decode_pack(values: Tensor, meta: Tensor, meta_layout: int = 0) -> Tuple[Tensor, Tensor]:
    """Canonical 2:4 layout -> the CUDA decode kernel's layout (fragment order, padded to 128 rows x 128 columns).
    CUDA only; made once per weight (layers cache it)."""
    return _ops._sparse24_decode_pack(values, meta, meta_layout)


def sparse24_decode_mm(
    x: Tensor,
    dvalues: Tensor,
    dmeta: Tensor,
    out_features: int,
    bias: Optional[Tensor] = None,
    loader: str = "auto",
    splits: int = 0,
) -> Tensor:
    """y = x @ W.T (+ bias) with W in the decode layout: the weight-streaming mma.sp kernel (CUDA, fp16/bf16).
    loader: how the weight reaches shared memory -- "bulk" (the sm_90 copy engine), "cp_async" (the sm_80 path as a
    whole, split-K partials through global memory; runs on sm_90 too, for testing), or "auto" (sm_90: bulk up to 32
    tokens, cp.async above, split-K partials summed in a thread block cluster; before sm_90: cp.async).
    For tuning only: `splits` (1 .. the weight's 128-column chunks) sets the split-K factor; 0 leaves the kernel's
    rule (up to 8 splits summed in a cluster on sm_90, more through global memory)."""
    return _ops._sparse24_decode_mm(x, dvalues, dmeta, out_features, bias, loader, splits)


def sparse24_sm90_pack(values: Tensor, meta: Tensor) -> Tensor:
    """Canonical 2:4 layout -> the Hopper prefill GEMM's metadata `e` (CUTLASS's reordered layout, uint8); the GEMM
    reads the canonical `values` themselves, so this is all the extra memory it needs (1/8 byte per weight element).
    CUDA, sm_90a builds only; needs out_features % 8 == 0 and in_features % 16 == 0."""
    return _ops._sparse24_sm90_pack(values, meta)


def sparse24_sm90_supported(out_features: int, in_features: int, device: torch.device) -> bool:
    """Whether the Hopper prefill GEMM can take a weight [out_features, in_features] on `device`: a build with the
    sm_90a kernels, a compute capability 9.0 GPU, out_features % 8 == 0 and in_features % 16 == 0."""
    device = torch.device(device)
    return (
        device.type == "cuda"
        and has_cuda_kernel("_sparse24_sm90_mm")
        and torch.cuda.get_device_capability(device) == (9, 0)
        and out_features > 0
        and in_features > 0
        and out_features % _C.sm90_row_multiple == 0
        and in_features % _C.sm90_col_multiple == 0
    )


def sparse24_sm80_pack(values: Tensor, meta: Tensor) -> Tuple[Tensor, Tensor]:
    """Canonical 2:4 layout -> the Ampere prefill GEMM's layout: values `a` [M to 32, K to 64 / 2] (zero padded) and
    CUTLASS 2.x's reordered metadata `e` (int16). CUDA builds with the sm_80 kernel family only."""
    return _ops._sparse24_sm80_pack(values, meta)


def sparse24_sm80_supported(out_features: int, in_features: int, device: torch.device) -> bool:
    """Whether the Ampere prefill GEMM runs a weight [out_features, in_features] on `device`: a build with the sm_80
    kernel family and a GPU of compute capability 8.x (or 9.0, where the build has its sm_90a code)."""
    device = torch.device(device)
    if device.type != "cuda" or not has_cuda_kernel("_sparse24_sm80_mm") or out_features <= 0 or in_features <= 0:
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return major == 8 or (major, minor) == (9, 0)


def sparse24_sm80_mm(x: Tensor, a: Tensor, e: Tensor, out_features: int, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ W.T (+ bias) on the Ampere prefill GEMM (CUTLASS 2.x mma.sp), W in the layout of sparse24_sm80_pack."""
    return _ops._sparse24_sm80_mm(x, a, e, out_features, bias)


def sparse24_decode_max_tokens(out_features: int, in_features: int, hopper_gemm: bool) -> int:
    """Up to how many tokens the 2:4 decode kernel runs for a weight [out_features, in_features]; above it a GEMM
    (the Hopper one where `hopper_gemm`, i.e. sparse24_sm90_supported, else the Ampere one), where there is one (the
    decode kernel takes any N). The C++ rule itself (csrc/kernels/sparse24/sparse24_dispatch_rules.h)."""
    return _C.sparse24_decode_max_tokens(out_features, in_features, hopper_gemm)


# The Hopper GEMM's kernel configs by name (index = config number); csrc/kernels/sparse24/sparse24_sm90_configs.h.
SM90_CONFIGS: Tuple[str, ...] = _C.sm90_configs


def sparse24_sm90_mm(
    x: Tensor,
    values: Tensor,
    e: Tensor,
    out_features: int,
    bias: Optional[Tensor] = None,
    config: Optional[str] = None,
    swizzle: int = 0,
    splits: int = 0,
) -> Tensor:
    """y = x @ W.T (+ bias) on the Hopper prefill GEMM (CUTLASS wgmma.sp): W's canonical `values` and the metadata
    `e` of sparse24_sm90_pack.

    For tuning only: `config` (a name of SM90_CONFIGS; default: the built-in heuristic's pick by M, N, K),
    `swizzle` (the tile raster's max swizzle: 1, 2, 4, 8) and `splits` (stream-K configs: force split-K into this
    many K slices); 0 leaves the tile scheduler's own choice."""
    if config is None:
        number = -1
    elif config in SM90_CONFIGS:
        number = SM90_CONFIGS.index(config)
    else:
        raise ValueError(f"spmm.ops.sparse24_sm90_mm: `config` must be one of {SM90_CONFIGS} or None, got {config!r}")
    return _ops._sparse24_sm90_mm(x, values, e, out_features, bias, number, swizzle, splits)


# ------------------------------------------------------------------------------------------ Tiled-CSL ------------
def tiled_csl_compress(
    dense: Tensor, mask: Optional[Tensor] = None, tile_m: int = 256, tile_k: int = 64
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pack a weight [M, K] of any sparsity into Tiled-CSL: (values [nnz], locations int16 [nnz], tile_offsets int32).
    Runs on CPU and CUDA (same output bit for bit)."""
    return _ops.tiled_csl_compress(dense, mask, tile_m, tile_k)


def tiled_csl_mm(
    x: Tensor,
    values: Tensor,
    locations: Tensor,
    tile_offsets: Tensor,
    out_features: int,
    tile_m: int,
    tile_k: int,
    bias: Optional[Tensor] = None,
    cpu_bitmap: Optional[Tensor] = None,
) -> Tensor:
    """y = x @ W.T (+ bias) with W [out_features, K] in Tiled-CSL. x [..., K] -> y [..., out_features].
    On CPU the fast kernels read the values through `cpu_bitmap` (tiled_csl_cpu_layout of this weight; derived on
    every call when None, a pass over the locations that TiledCSLLinear saves by holding it). On CUDA:
    float16/bfloat16 and tiles of 256 x 64 or 128 x 64 (others raise NotImplementedError); the stream's contents are
    trusted there (the CPU op checks them)."""
    return _ops.tiled_csl_mm(x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias, cpu_bitmap)


def tiled_csl_cpu_layout(
    locations: Tensor, tile_offsets: Tensor, out_features: int, in_features: int, tile_m: int, tile_k: int
) -> Tensor:
    """The CPU kernels' layout of a Tiled-CSL weight: int64 [tiles * tile_m * ceil(tile_k / 64)], one bit per element
    of each tile row (set where the stream stores a value). With it the kernels read the stream's values in place
    (1 bit per element instead of a 16-bit location per stored value). Checks the stream (offsets, locations inside
    their tile, no location twice). CPU tensors."""
    return _ops.tiled_csl_cpu_layout(locations, tile_offsets, out_features, in_features, tile_m, tile_k)


def tiled_csl_words(
    values: Tensor, locations: Tensor, tile_offsets: Tensor, tile_m: int, tile_k: int
) -> Tuple[Tensor, Tensor]:
    """Tiled-CSL stream -> the CUDA kernel's word layout: (words [capacity, 2] of the weight's dtype, word_offsets
    int32 [tiles + 1]); one 32-bit word per pair (value, swizzled offset in the kernel's shared tile), each tile's
    run padded to 16 bytes. CUDA only; made once per weight (TiledCSLLinear caches it)."""
    return _ops._tiled_csl_words(values, locations, tile_offsets, tile_m, tile_k)


def tiled_csl_mm_words(
    x: Tensor, words: Tensor, word_offsets: Tensor, out_features: int, tile_m: int, bias: Optional[Tensor] = None
) -> Tensor:
    """y = x @ W.T (+ bias) with W [out_features, K] in the word layout of tiled_csl_words (tile_k = 64)."""
    return _ops._tiled_csl_mm_words(x, words, word_offsets, out_features, tile_m, bias)


def tiled_csl_words_supported(tile_m: int, tile_k: int, device: torch.device) -> bool:
    """Whether this build has the word-layout kernel for these tiles on `device`."""
    return device.type == "cuda" and has_cuda_kernel("_tiled_csl_mm_words") and tile_k == 64 and tile_m in (128, 256)


def tiled_csl_bitmap(dense: Tensor):
    """Dense [M, K] float16/bfloat16 weight -> the Hopper kernel's pair-bitmap layout (records, record_offsets,
    max_record_words): per 8 x 8 block a mask of the element pairs an mma lane holds and the nonzero pairs. Built in
    torch on the weight's device (CPU or CUDA). Experimental: TiledCSLLinear runs the word layout (see
    csrc/kernels/tiled_csl/NOTES.md)."""
    from .formats import tiled_csl_bitmap as bitmap

    return bitmap.build(dense)


def tiled_csl_bitmap_mm(
    x: Tensor, records: Tensor, record_offsets: Tensor, out_features: int, max_record_words: int,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """y = x @ W.T (+ bias) with W [out_features, K] in the pair-bitmap layout of tiled_csl_bitmap (CUDA, sm_90a)."""
    return _ops._tiled_csl_bitmap_mm(x, records, record_offsets, out_features, max_record_words, bias)


def tiled_csl_bitmap_supported(device: torch.device) -> bool:
    """Whether this build has the pair-bitmap kernel and `device` runs it (compute capability 9.0)."""
    return (device.type == "cuda" and has_cuda_kernel("_tiled_csl_bitmap_mm")
            and torch.cuda.get_device_capability(device) == (9, 0))


# ------------------------------------------------------------------------------------------- CPU kernels ---------
# The matmul ops' CPU implementations run fast kernels (csrc/kernels/cpu): the instruction set is picked once by the
# CPU's features (AVX-512 with BF16/VBMI2, AVX2, portable C++), and each call's path by one rule in C++
# (csrc/kernels/cpu/cpu_dispatch_rules.h): x with a NaN/Inf -> the portable kernels (which, like the reference, never
# multiply a pruned element); up to cpu_register_max_tokens tokens -> kernels that stream the packed weight once and
# expand it in registers; more -> the weight expanded block by block for torch's GEMM. Sums in fp32 (the fp64
# reference stays as spmm::_*_mm_reference, the tests' oracle).
CPU_FORMATS = {"sparse24": 0, "tiled_csl": 1, "spense": 2}
_CPU_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def cpu_isa() -> str:
    """The instruction set the CPU kernels run now: "avx512", "avx2" or "portable"."""
    return _C.cpu_isa()


def cpu_isa_detected() -> str:
    """The best instruction set this CPU and build run (what cpu_isa() is unless forced)."""
    return _C.cpu_isa_detected()


def set_cpu_isa(name: str) -> None:
    """Force the CPU kernels' instruction set ("avx512", "avx2", "portable"), or "auto" for the detected one; also
    read once from the environment variable SPMM_CPU_ISA. A set above what the CPU runs raises ValueError."""
    _C.set_cpu_isa(name)


def set_cpu_path(name: str) -> None:
    """For tuning the rule and for tests: make every CPU matmul call with finite x take the register kernels
    ("register"), torch's GEMM on expanded blocks ("gemm") or, for Tiled-CSL on AVX-512, the kernel vectorized over
    tokens ("tokens"; the other formats then take the GEMM); "auto" restores the rule."""
    _C.set_cpu_path(name)


def cpu_register_max_tokens(fmt: str, dtype: torch.dtype, density: float = 0.5) -> int:
    """Up to how many tokens the CPU ops run their register kernels for a weight of format `fmt` ("sparse24",
    "tiled_csl", "spense"), `dtype` and `density` (stored / dense elements); above it torch's GEMM on expanded weight
    blocks. The C++ rule itself."""
    return _C.cpu_register_max_tokens(CPU_FORMATS[fmt], _CPU_DTYPE_CODES[dtype], float(density))


def sparse24_mm_reference(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """The fp64 reference of sparse24_mm (CPU): exact products, fp64 sums in stored order, one rounding."""
    return _ops._sparse24_mm_reference(x, values, meta, bias)


def tiled_csl_mm_reference(x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias=None) -> Tensor:
    """The fp64 reference of tiled_csl_mm (CPU)."""
    return _ops._tiled_csl_mm_reference(x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias)


def spense_mm_reference(x, dense_weight, values, meta, row_index, bias=None) -> Tensor:
    """The fp64 reference of spense_mm (CPU)."""
    return _ops._spense_mm_reference(x, dense_weight, values, meta, row_index, bias)


# --------------------------------------------------------------------------------------------- Spense ------------
# The Spense kernels' row tile (csrc/kernels/spense/spense_tiles.h): dense row counts that are multiples of it keep
# every tile of the GPU decode kernel all dense or all 2:4.
SPENSE_ROW_TILE: int = _C.spense_row_tile


def spense_mm(
    x: Tensor,
    dense_weight: Tensor,
    values: Tensor,
    meta: Tensor,
    row_index: Tensor,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """y = x @ W.T (+ bias) with W split into a dense row block and a 2:4 row block; each output row written once
    at its original position row_index[i]. x [..., K] -> y [..., Md + Ms]."""
    return _ops.spense_mm(x, dense_weight, values, meta, row_index, bias)


# ---------------------------------------------------------------------------------------- fake kernels -----------
@torch.library.register_fake("spmm::sparse24_compress")
def _sparse24_compress_fake(dense, mask):
    m, k = dense.shape
    return dense.new_empty(m, k // 2), dense.new_empty(m, (k + 7) // 8, dtype=torch.uint8)


@torch.library.register_fake("spmm::sparse24_mm")
def _sparse24_mm_fake(x, values, meta, bias):
    return x.new_empty(*x.shape[:-1], values.shape[0])


@torch.library.register_fake("spmm::_sparse24_mm_reference")
def _sparse24_mm_reference_fake(x, values, meta, bias):
    return x.new_empty(*x.shape[:-1], values.shape[0])


@torch.library.register_fake("spmm::_sparse24_decode_pack")
def _sparse24_decode_pack_fake(values, meta, meta_layout=0):
    m, k = values.shape[0], values.shape[1] * 2
    tiles, chunks = -(-m // 128) * 8, -(-k // 128)
    return values.new_empty(tiles, chunks * 4 * 32 * 8), values.new_empty(tiles, chunks * 64, dtype=torch.int32)


@torch.library.register_fake("spmm::_sparse24_decode_mm")
def _sparse24_decode_mm_fake(x, dvalues, dmeta, out_features, bias, loader="auto", splits=0):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::_sparse24_sm90_pack")
def _sparse24_sm90_pack_fake(values, meta):
    m, k = values.shape[0], values.shape[1] * 2
    e_bytes = -(-m // 64) * 64 * (-(-k // 128) * 128) // 8  # CUTLASS's metadata: rows to 64, columns to 128
    return values.new_empty(e_bytes, dtype=torch.uint8)


@torch.library.register_fake("spmm::_sparse24_sm90_mm")
def _sparse24_sm90_mm_fake(x, values, e, out_features, bias, config=-1, swizzle=0, splits=0):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::_sparse24_sm80_pack")
def _sparse24_sm80_pack_fake(values, meta):
    m, k = values.shape[0], values.shape[1] * 2
    m_pad, k_pad = -(-m // 32) * 32, -(-k // 64) * 64
    return values.new_empty(m_pad, k_pad // 2), values.new_empty(m_pad * k_pad // 16, dtype=torch.int16)


@torch.library.register_fake("spmm::_sparse24_sm80_mm")
def _sparse24_sm80_mm_fake(x, a, e, out_features, bias):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::tiled_csl_compress")
def _tiled_csl_compress_fake(dense, mask, tile_m, tile_k):
    m, k = dense.shape
    nnz = torch.library.get_ctx().new_dynamic_size()
    n_tiles = -(-m // tile_m) * -(-k // tile_k)
    return (
        dense.new_empty(nnz),
        dense.new_empty(nnz, dtype=torch.int16),
        dense.new_empty(n_tiles + 1, dtype=torch.int32),
    )


@torch.library.register_fake("spmm::tiled_csl_mm")
def _tiled_csl_mm_fake(x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias, cpu_bitmap=None):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::_tiled_csl_mm_reference")
def _tiled_csl_mm_reference_fake(x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::tiled_csl_cpu_layout")
def _tiled_csl_cpu_layout_fake(locations, tile_offsets, out_features, in_features, tile_m, tile_k):
    return tile_offsets.new_empty(_C.cpu_bitmap_words(out_features, in_features, tile_m, tile_k), dtype=torch.int64)


@torch.library.register_fake("spmm::_tiled_csl_words")
def _tiled_csl_words_fake(values, locations, tile_offsets, tile_m, tile_k):
    tiles = tile_offsets.shape[0] - 1
    capacity = max(-(-(values.shape[0] + 3 * tiles) // 4) * 4, 4)
    return values.new_empty(capacity, 2), tile_offsets.new_empty(tiles + 1)


@torch.library.register_fake("spmm::_tiled_csl_mm_words")
def _tiled_csl_mm_words_fake(x, words, word_offsets, out_features, tile_m, bias):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::_tiled_csl_bitmap_mm")
def _tiled_csl_bitmap_mm_fake(x, records, record_offsets, out_features, max_record_words, bias):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::spense_mm")
def _spense_mm_fake(x, dense_weight, values, meta, row_index, bias):
    return x.new_empty(*x.shape[:-1], row_index.shape[0])


@torch.library.register_fake("spmm::_spense_mm_reference")
def _spense_mm_reference_fake(x, dense_weight, values, meta, row_index, bias):
    return x.new_empty(*x.shape[:-1], row_index.shape[0])
