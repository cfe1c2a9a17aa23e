"""Python entry points of the spmm operators, and their fake (meta) implementations.

The schemas are registered in C++ (csrc/ops/registration.cpp). On CPU the matmul ops run fast kernels (fp32 sums,
bias added before the one rounding to the input dtype; see "CPU kernels" below); their fp64 references (exact
products, fp64 sums, one rounding) stay as spmm::_*_mm_reference, the tests' oracle. CUDA implementations come from
csrc/ops/*_cuda.cpp. The fake implementations below only compute output shapes, so torch.compile(fullgraph=True) can
trace models that use the ops. The matmul ops' autograd (for x and bias) is in C++ (csrc/ops/matmul_autograd.cpp),
with W rebuilt by the internal _*_dense ops (spmm/formats/dense_ops.py).

Words: *compress* makes a format's stored layout from a dense weight (sparse24_compress, tiled_csl_compress);
*pack* makes a kernel's own layout from a stored one, once per weight (sparse24_decode_pack, ...; the layers hold
them).

Errors: a wrong dtype raises TypeError, any other broken rule ValueError; every message names the op, the
argument and the rule. The compress ops refuse a weight with NaN or Inf anywhere (also where the mask drops it),
and store no zeros: a zero or -0.0 that the mask keeps is left out of Tiled-CSL and is a +0.0 filler in 2:4.

What is checked and what is trusted: every op checks its arguments' types, shapes, devices and integer ranges
(for any integer: bounds come before arithmetic, products are overflow-checked). The CPU ops also check the
packed contents they read (2:4 codes, Tiled-CSL offsets and in-tile locations in increasing order, Spense
row_index a permutation); the CUDA ops trust the contents: they are meant for layouts made by the library's
compress and pack ops (formats' validate() checks a layout, and the layers run it whenever they are built or load
weights).
A layout does not record its own tile shape or out_features: those are the caller's word, as in any GEMM. The
CUDA-only ops (leading underscore) called on CPU tensors raise NotImplementedError naming the CPU op to use.

NaN and Inf in x: a weight that is not stored contributes nothing, so a NaN or Inf of x reaches exactly the
outputs whose stored weights read its column, and there propagates as in the dense masked matmul; where the
dense matmul multiplies it by a pruned zero (giving NaN) the sparse output stays as the stored weights make it.
What is stored: Tiled-CSL stores no zeros; a 2:4 group keeping fewer than two elements stores +0.0 fillers, which
do read their columns (0 * NaN = NaN; tested on CPU, the CUDA kernels multiply the fillers too); Spense's dense
rows read every column.

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
stored as int16 holding the unsigned 16-bit location. The CUDA kernels read layouts derived from it once per weight:
the word layout (tiled_csl_words) and the delta layout (spmm.formats.tiled_csl_layouts.delta_layout); tiled_csl_mm
takes either beside the stream, and TiledCSLLinear derives the one the C++ rule names (tiled_csl_layer_layout).

Spense layout: the output rows split into a dense block [Md, K] and a 2:4 block [Ms, K] (canonical layout);
row_index [Md + Ms] int32 gives the original output row of each block row, dense rows first.
"""

from __future__ import annotations

import operator
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import _C  # loads the library that registers the spmm:: ops; exports the kernel-choice rules

_ops = torch.ops.spmm


_INT64_BOUND = 1 << 63


def _int64(op: str, name: str, value):
    """An integer argument as the schemas take it (int64): a TypeError for a non-integer, a ValueError outside int64,
    instead of the dispatcher's parse error. The C++ checks then bound every value (overflow-safe)."""
    if type(value) is int and -_INT64_BOUND <= value < _INT64_BOUND:  # the common case, kept cheap (hot path)
        return value
    if isinstance(value, torch.SymInt):  # traced by torch.compile
        return value
    if isinstance(value, bool):
        raise TypeError(f"spmm::{op}: `{name}` must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"spmm::{op}: `{name}` must be an int, got {type(value).__name__}") from None
    if not -_INT64_BOUND <= value < _INT64_BOUND:
        raise ValueError(f"spmm::{op}: `{name}` = {value} is outside int64")
    return value


def has_cuda_kernel(op: str) -> bool:
    """Whether spmm::`op` has a CUDA implementation in this build (the dispatcher's own answer)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"spmm::{op}", "CUDA")


# --------------------------------------------------------------------------------------------- 2:4 ------------
def sparse24_compress(dense: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Compress a 2:4-sparse weight [M, K] into the canonical (values, meta) layout.

    `mask` (bool [M, K]) selects the kept elements; without it the nonzeros of `dense` are kept (-0.0 counts as
    zero). Every group of 4 along K may keep at most 2. Runs on CPU and CUDA.
    """
    return _ops.sparse24_compress(dense, mask)


def sparse24_mm(
    x: Tensor,
    values: Tensor,
    meta: Tensor,
    bias: Optional[Tensor] = None,
    *,
    dvalues: Optional[Tensor] = None,
    dmeta: Optional[Tensor] = None,
    sm90_e: Optional[Tensor] = None,
    sm80_a: Optional[Tensor] = None,
    sm80_e: Optional[Tensor] = None,
) -> Tensor:
    """y = x @ W.T (+ bias) with W given in the canonical 2:4 layout. x [..., K] -> y [..., M].

    On CUDA (fp16/bf16) the kernel is chosen in C++ by one rule (csrc/kernels/sparse24/sparse24_dispatch_rules.h;
    sparse24_pick_kernel says which) from the shape, the device and the kernel layouts given: the decode kernel's
    `dvalues`/`dmeta` up to sparse24_decode_max_tokens tokens, above it the prefill GEMM whose layout is given (the
    Hopper GEMM's metadata `sm90_e`, which reads `values` itself, or the Ampere GEMM's `sm80_a`/`sm80_e`); either
    alone serves every N. sparse24_kernel_layouts builds them once per weight (Sparse24Linear holds them). Without
    layouts the call packs what its kernel reads, for this call only. The CPU computes from values/meta alone."""
    return _ops.sparse24_mm(x, values, meta, bias, dvalues, dmeta, sm90_e, sm80_a, sm80_e)


# The kernel layouts sparse24_mm and spense_mm take (their keyword arguments, in schema order).
SPARSE24_LAYOUTS: Tuple[str, ...] = ("dvalues", "dmeta", "sm90_e", "sm80_a", "sm80_e")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def sparse24_kernel_layouts(values: Tensor, meta: Tensor, prefill_gemm: bool = True) -> Dict[str, Optional[Tensor]]:
    """The kernel layouts of a canonical 2:4 weight (values, meta) for sparse24_mm / spense_mm on CUDA, made once per
    weight: the decode kernel's (dvalues, dmeta) and, if `prefill_gemm`, those of the prefill GEMM this device runs
    for the shape (sparse24_prefill_gemm): the Hopper GEMM's sm90_e, or the Ampere GEMM's sm80_a, sm80_e. A dict
    keyed by SPARSE24_LAYOUTS; all None off CUDA, for dtypes the kernels do not take (fp32), for an empty weight,
    and in a build without the CUDA kernels."""
    layouts: Dict[str, Optional[Tensor]] = dict.fromkeys(SPARSE24_LAYOUTS)
    if not (values.is_cuda and values.dtype in _KERNEL_DTYPES and values.numel() > 0
            and has_cuda_kernel("_sparse24_decode_mm")):
        return layouts
    layouts["dvalues"], layouts["dmeta"] = sparse24_decode_pack(values, meta)
    gemm = sparse24_prefill_gemm(values.shape[0], 2 * values.shape[1], values.device) if prefill_gemm else None
    if gemm == "sm90":  # reads `values`: only its metadata
        layouts["sm90_e"] = sparse24_sm90_pack(values, meta)
    elif gemm == "sm80":
        layouts["sm80_a"], layouts["sm80_e"] = sparse24_sm80_pack(values, meta)
    return layouts


def sparse24_prefill_gemm(out_features: int, in_features: int, device: torch.device) -> Optional[str]:
    """The 2:4 prefill GEMM this build runs on `device` for a weight [out_features, in_features]: "sm90" (the Hopper
    GEMM: sm_90a build, compute capability 9.0, out_features % 8 == 0, in_features % 16 == 0), "sm80" (the Ampere
    GEMM: capability 8.x, or 9.0 for shapes the Hopper one does not take) or None (the decode kernel serves every
    N). The C++ rule itself (sparse24_dispatch_rules.h), asked with the device's capability."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return _C.sparse24_prefill_gemm(out_features, in_features, major * 10 + minor)


def sparse24_pick_kernel(out_features: int, in_features: int, tokens: int, has_decode: bool,
                         gemm: Optional[str]) -> str:
    """Which kernel sparse24_mm runs on CUDA for `tokens` rows, given the layouts it is handed: has_decode (dvalues,
    dmeta) and gemm ("sm90", "sm80" or None: the prefill GEMM whose layout is given). "decode", "sm90" or "sm80".
    The C++ rule itself (sparse24_dispatch_rules.h)."""
    return _C.sparse24_pick_kernel(out_features, in_features, tokens, has_decode, gemm)


def sparse24_check(meta: Tensor, in_features: int) -> None:
    """The checks sparse24_mm's CPU op runs on `meta` (CPU), on their own: every group's code idx0 < idx1 and the
    unused high nibble of an odd group count 0. What Sparse24Weight.validate() runs."""
    _ops._sparse24_check(meta, _int64("_sparse24_check", "in_features", in_features))


def sparse24_decode_pack(values: Tensor, meta: Tensor, meta_layout: int = 0) -> Tuple[Tensor, Tensor]:
    """Canonical 2:4 layout -> the CUDA decode kernel's layout (fragment order, padded to 128 rows x 128 columns).
    CUDA only; made once per weight (layers cache it)."""
    return _ops._sparse24_decode_pack(values, meta, _int64("_sparse24_decode_pack", "meta_layout", meta_layout))


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
    op = "_sparse24_decode_mm"
    return _ops._sparse24_decode_mm(x, dvalues, dmeta, _int64(op, "out_features", out_features), bias, loader,
                                    _int64(op, "splits", splits))


def sparse24_sm90_pack(values: Tensor, meta: Tensor) -> Tensor:
    """Canonical 2:4 layout -> the Hopper prefill GEMM's metadata `e` (CUTLASS's reordered layout, uint8); the GEMM
    reads the canonical `values` themselves, so this is all the extra memory it needs (1/8 byte per weight element).
    CUDA, sm_90a builds only; needs out_features % 8 == 0 and in_features % 16 == 0."""
    return _ops._sparse24_sm90_pack(values, meta)


def sparse24_sm80_pack(values: Tensor, meta: Tensor) -> Tuple[Tensor, Tensor]:
    """Canonical 2:4 layout -> the Ampere prefill GEMM's layout: values `a` [M to 32, K to 64 / 2] (zero padded) and
    CUTLASS 2.x's reordered metadata `e` (int16). CUDA builds with the sm_80 kernel family only."""
    return _ops._sparse24_sm80_pack(values, meta)


def sparse24_sm80_mm(x: Tensor, a: Tensor, e: Tensor, out_features: int, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ W.T (+ bias) on the Ampere prefill GEMM (CUTLASS 2.x mma.sp), W in the layout of sparse24_sm80_pack."""
    return _ops._sparse24_sm80_mm(x, a, e, _int64("_sparse24_sm80_mm", "out_features", out_features), bias)


def sparse24_decode_max_tokens(out_features: int, in_features: int, hopper_gemm: bool) -> int:
    """Up to how many tokens the 2:4 decode kernel runs for a weight [out_features, in_features]; above it a GEMM
    (the Hopper one where `hopper_gemm`, i.e. sparse24_prefill_gemm gives "sm90", else the Ampere one), where there is
    one (the decode kernel takes any N). The C++ rule itself (csrc/kernels/sparse24/sparse24_dispatch_rules.h)."""
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
    op = "_sparse24_sm90_mm"
    return _ops._sparse24_sm90_mm(x, values, e, _int64(op, "out_features", out_features), bias, number,
                                  _int64(op, "swizzle", swizzle), _int64(op, "splits", splits))


# ------------------------------------------------------------------------------------------ Tiled-CSL ------------
def tiled_csl_compress(
    dense: Tensor, mask: Optional[Tensor] = None, tile_m: int = 256, tile_k: int = 64
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pack a weight [M, K] of any sparsity into Tiled-CSL: (values [nnz], locations int16 [nnz], tile_offsets int32).
    Runs on CPU and CUDA (same output bit for bit)."""
    op = "tiled_csl_compress"
    return _ops.tiled_csl_compress(dense, mask, _int64(op, "tile_m", tile_m), _int64(op, "tile_k", tile_k))


def tiled_csl_mm(
    x: Tensor,
    values: Tensor,
    locations: Tensor,
    tile_offsets: Tensor,
    out_features: int,
    tile_m: int,
    tile_k: int,
    bias: Optional[Tensor] = None,
    *,
    words: Optional[Tensor] = None,
    word_offsets: Optional[Tensor] = None,
    delta_values: Optional[Tensor] = None,
    delta_codes: Optional[Tensor] = None,
    delta_offsets: Optional[Tensor] = None,
    cpu_bitmap: Optional[Tensor] = None,
) -> Tensor:
    """y = x @ W.T (+ bias) with W [out_features, K] in Tiled-CSL. x [..., K] -> y [..., out_features].

    On CUDA (float16/bfloat16) the op runs the kernel of the first it is given of: the delta layout (`delta_values`,
    `delta_codes`, `delta_offsets`: spmm.formats.tiled_csl_layouts.delta_layout, any tiles), the word layout (`words`,
    `word_offsets`: tiled_csl_words, tiles of 256 x 64 or 128 x 64), the stream (the same tiles; others raise
    NotImplementedError). With a layout given the stream is not read there and may be empty (a TiledCSLLinear holding
    only the delta layout passes empty tensors); the contents are trusted on CUDA (the CPU op checks the stream). On
    CPU the op reads the stream: its fast kernels read the values through `cpu_bitmap` (tiled_csl_cpu_layout of this
    weight; derived on every call when None, a pass over the locations that TiledCSLLinear saves by holding it)."""
    op = "tiled_csl_mm"
    return _ops.tiled_csl_mm(x, values, locations, tile_offsets, _int64(op, "out_features", out_features),
                             _int64(op, "tile_m", tile_m), _int64(op, "tile_k", tile_k), bias, words, word_offsets,
                             delta_values, delta_codes, delta_offsets, cpu_bitmap)


def tiled_csl_check(locations: Tensor, tile_offsets: Tensor, out_features: int, in_features: int, tile_m: int,
                    tile_k: int) -> None:
    """The checks tiled_csl_mm's CPU op runs on a stream, on their own (CPU tensors): offsets rising from 0 to nnz,
    every location inside its (possibly partial) tile, strictly increasing within it. A ValueError names the first
    rule broken. What TiledCSLWeight.validate() runs."""
    op = "_tiled_csl_check"
    _ops._tiled_csl_check(locations, tile_offsets, _int64(op, "out_features", out_features),
                          _int64(op, "in_features", in_features), _int64(op, "tile_m", tile_m),
                          _int64(op, "tile_k", tile_k))


def tiled_csl_cpu_layout(
    locations: Tensor, tile_offsets: Tensor, out_features: int, in_features: int, tile_m: int, tile_k: int
) -> Tensor:
    """The CPU kernels' layout of a Tiled-CSL weight: int64 [tiles * tile_m * ceil(tile_k / 64)], one bit per element
    of each tile row (set where the stream stores a value). With it the kernels read the stream's values in place
    (1 bit per element instead of a 16-bit location per stored value). Checks the stream (offsets, locations inside
    their tile, no location twice). CPU tensors."""
    op = "tiled_csl_cpu_layout"
    return _ops.tiled_csl_cpu_layout(locations, tile_offsets, _int64(op, "out_features", out_features),
                                     _int64(op, "in_features", in_features), _int64(op, "tile_m", tile_m),
                                     _int64(op, "tile_k", tile_k))


def tiled_csl_words(
    values: Tensor, locations: Tensor, tile_offsets: Tensor, tile_m: int, tile_k: int
) -> Tuple[Tensor, Tensor]:
    """Tiled-CSL stream -> the CUDA word kernel's layout: (words [rows, 2] of the weight's dtype, word_offsets int32
    [tiles + 1]); one 32-bit word per pair (value, swizzled offset in the kernel's shared tile), each tile's run padded
    to 16 bytes. CUDA only; made once per weight (TiledCSLLinear caches it); tiled_csl_mm(..., words=, word_offsets=)
    runs it."""
    op = "_tiled_csl_words"
    return _ops._tiled_csl_words(values, locations, tile_offsets, _int64(op, "tile_m", tile_m),
                                 _int64(op, "tile_k", tile_k))


def tiled_csl_delta_mm(
    x: Tensor, values: Tensor, codes: Tensor, offsets: Tensor, out_features: int, bias: Optional[Tensor] = None,
    kernel: str = "auto", tokens_per_pass: int = 0,
) -> Tensor:
    """y = x @ W.T (+ bias) with W in the delta layout, on a delta kernel itself: what tiled_csl_mm runs when given
    that layout. For tuning: `kernel` ("auto": the C++ rule, CUDA cores up to 8 tokens, tensor cores above;
    "cuda_cores"; "tensor_cores") and `tokens_per_pass` (CUDA cores: 1, 2, 4 or 8; 0 = the rule's). On CPU: that
    kernel emulated lane by lane (same index math; the CUDA-core kernel's fp32 order too), the tests' reference."""
    op = "_tiled_csl_delta_mm"
    return _ops._tiled_csl_delta_mm(x, values, codes, offsets, _int64(op, "out_features", out_features), bias, kernel,
                                    _int64(op, "tokens_per_pass", tokens_per_pass))


_TILED_CSL_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def tiled_csl_layer_layout(tile_m: int, tile_k: int, dtype: torch.dtype, device: torch.device) -> str:
    """The kernel layout a TiledCSLLinear derives from its stream: "delta", "words", or "" (none: the layer keeps the
    stream alone) -- "" off CUDA, for other dtypes, or in a build without CUDA kernels; else the C++ rule
    (spmm._C.tiled_csl_layer_layout: "delta" where the switch SPMM_TILED_CSL_DELTA=1 is set, "words" for the tiles the
    word kernel takes)."""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in _TILED_CSL_KERNEL_DTYPES or not has_cuda_kernel("tiled_csl_mm"):
        return ""
    layout = _C.tiled_csl_layer_layout(tile_m, tile_k)
    return layout if layout != "delta" or has_cuda_kernel("_tiled_csl_delta_mm") else ""


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
# The Spense kernels' row tile (csrc/kernels/spense/spense_tiles.h): dense row counts that are multiples of it fill
# whole mma row tiles of the GPU decode kernel (SpenseConfig rounds to it by default).
SPENSE_ROW_TILE: int = _C.spense_row_tile


def spense_mm(
    x: Tensor,
    dense_weight: Tensor,
    values: Tensor,
    meta: Tensor,
    row_index: Tensor,
    bias: Optional[Tensor] = None,
    *,
    dvalues: Optional[Tensor] = None,
    dmeta: Optional[Tensor] = None,
    sm90_e: Optional[Tensor] = None,
    sm80_a: Optional[Tensor] = None,
    sm80_e: Optional[Tensor] = None,
) -> Tensor:
    """y = x @ W.T (+ bias) with W split into a dense row block and a 2:4 row block; each output row written once
    at its original position row_index[i]. x [..., K] -> y [..., Md + Ms].

    On CUDA (fp16/bf16): at decode token counts (where sparse24_mm's rule would run a weight of the whole shape
    through its decode kernel) one launch of the Spense decode kernel reads the dense and the canonical 2:4 rows as
    they are and writes each output row at row_index. Above, the 2:4 rows run sparse24_mm's GEMM on the 2:4 block's
    kernel layouts (dvalues .. sm80_e: sparse24_kernel_layouts(values, meta); SpenseLinear holds them), the dense rows
    cuBLAS, each into its own columns of y. row_index is checked (a permutation) on the first call that sees it,
    which reads it back to the host: make that call before capturing a CUDA graph."""
    return _ops.spense_mm(x, dense_weight, values, meta, row_index, bias, dvalues, dmeta, sm90_e, sm80_a, sm80_e)


def spense_decode_mm(
    x: Tensor,
    dense_weight: Optional[Tensor],
    values: Tensor,
    meta: Tensor,
    row_index: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    meta_fragments: Optional[Tensor] = None,
    loader: str = "auto",
    splits: int = 0,
) -> Tensor:
    """y = x @ W.T (+ bias) by the Spense decode kernel (CUDA, fp16/bf16, few tokens): one launch over the dense rows
    `dense_weight` [Md, K] (None: plain 2:4) and the canonical 2:4 rows (values, meta) as they are saved, output row
    row_index[i] for block row i (dense first; None: identity; must be a permutation). x [..., K] -> y [..., Md + Ms].
    For measuring: `meta_fragments` (the second output of sparse24_decode_pack(values, meta)) replaces the canonical
    metadata; loader "tma" (sm_90 tensor maps), "cp_async" (the pre-sm_90 path as a whole) or "auto"; `splits` 1..the
    weight's 128-column chunks sets split-K (0: the kernel's rule). spense_mm runs this kernel at decode token counts."""
    return _ops._spense_decode_mm(x, dense_weight, values, meta, row_index, bias, meta_fragments, loader, splits)


# ---------------------------------------------------------------------------------------- fake kernels -----------
@torch.library.register_fake("spmm::sparse24_compress")
def _sparse24_compress_fake(dense, mask):
    m, k = dense.shape
    return dense.new_empty(m, k // 2), dense.new_empty(m, (k + 7) // 8, dtype=torch.uint8)


@torch.library.register_fake("spmm::sparse24_mm")
def _sparse24_mm_fake(x, values, meta, bias=None, dvalues=None, dmeta=None, sm90_e=None, sm80_a=None, sm80_e=None):
    return x.new_empty(*x.shape[:-1], values.shape[0])


@torch.library.register_fake("spmm::_sparse24_check")
def _sparse24_check_fake(meta, in_features):
    return None


@torch.library.register_fake("spmm::_tiled_csl_check")
def _tiled_csl_check_fake(locations, tile_offsets, out_features, in_features, tile_m, tile_k):
    return None


# The pack ops' fakes take their shapes from the kernels' own size functions (csrc/kernels/sparse24/
# sparse24_kernel_layouts.h, through spmm._C), so they cannot drift from what the CUDA ops allocate.
def _pack_shapes(kernel: str, values: Tensor):
    return _C.sparse24_pack_shapes(kernel, values.shape[0], values.shape[1] * 2)


@torch.library.register_fake("spmm::_sparse24_mm_reference")
def _sparse24_mm_reference_fake(x, values, meta, bias):
    return x.new_empty(*x.shape[:-1], values.shape[0])


@torch.library.register_fake("spmm::_sparse24_decode_pack")
def _sparse24_decode_pack_fake(values, meta, meta_layout=0):
    dvalues, dmeta = _pack_shapes("decode", values)
    return values.new_empty(dvalues), values.new_empty(dmeta, dtype=torch.int32)


@torch.library.register_fake("spmm::_sparse24_decode_mm")
def _sparse24_decode_mm_fake(x, dvalues, dmeta, out_features, bias, loader="auto", splits=0):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::_sparse24_sm90_pack")
def _sparse24_sm90_pack_fake(values, meta):
    (e,) = _pack_shapes("sm90", values)
    return values.new_empty(e, dtype=torch.uint8)


@torch.library.register_fake("spmm::_sparse24_sm90_mm")
def _sparse24_sm90_mm_fake(x, values, e, out_features, bias, config=-1, swizzle=0, splits=0):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::_sparse24_sm80_pack")
def _sparse24_sm80_pack_fake(values, meta):
    a, e = _pack_shapes("sm80", values)
    return values.new_empty(a), values.new_empty(e, dtype=torch.int16)


@torch.library.register_fake("spmm::_sparse24_sm80_mm")
def _sparse24_sm80_mm_fake(x, a, e, out_features, bias):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::tiled_csl_compress")
def _tiled_csl_compress_fake(dense, mask, tile_m, tile_k):
    m, k = dense.shape
    nnz = torch.library.get_ctx().new_dynamic_size()
    return (
        dense.new_empty(nnz),
        dense.new_empty(nnz, dtype=torch.int16),
        dense.new_empty(_C.tiled_csl_tile_count(m, k, tile_m, tile_k) + 1, dtype=torch.int32),
    )


@torch.library.register_fake("spmm::tiled_csl_mm")
def _tiled_csl_mm_fake(x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias=None, words=None,
                       word_offsets=None, delta_values=None, delta_codes=None, delta_offsets=None, cpu_bitmap=None):
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
    return values.new_empty(_C.tiled_csl_word_rows(values.shape[0], tiles), 2), tile_offsets.new_empty(tiles + 1)


@torch.library.register_fake("spmm::_tiled_csl_delta_mm")
def _tiled_csl_delta_mm_fake(x, values, codes, offsets, out_features, bias=None, kernel="auto", tokens_per_pass=0):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.register_fake("spmm::spense_mm")
def _spense_mm_fake(x, dense_weight, values, meta, row_index, bias=None, dvalues=None, dmeta=None, sm90_e=None,
                    sm80_a=None, sm80_e=None):
    return x.new_empty(*x.shape[:-1], row_index.shape[0])


@torch.library.register_fake("spmm::_sparse24_dense")
def _sparse24_dense_fake(values, meta):
    return values.new_empty(values.shape[0], 2 * values.shape[1])


@torch.library.register_fake("spmm::_tiled_csl_dense")
def _tiled_csl_dense_fake(values, locations, tile_offsets, out_features, in_features, tile_m, tile_k, words,
                          word_offsets, delta_values, delta_codes, delta_offsets):
    return values.new_empty(out_features, in_features)


@torch.library.register_fake("spmm::_spense_dense")
def _spense_dense_fake(dense_weight, values, meta, row_index):
    return dense_weight.new_empty(row_index.shape[0], dense_weight.shape[1])


@torch.library.register_fake("spmm::_spense_decode_mm")
def _spense_decode_mm_fake(x, dense_weight, values, meta, row_index, bias, meta_fragments=None, loader="auto",
                           splits=0):
    md = 0 if dense_weight is None else dense_weight.shape[0]
    return x.new_empty(*x.shape[:-1], md + values.shape[0])


@torch.library.register_fake("spmm::_spense_mm_reference")
def _spense_mm_reference_fake(x, dense_weight, values, meta, row_index, bias):
    return x.new_empty(*x.shape[:-1], row_index.shape[0])
