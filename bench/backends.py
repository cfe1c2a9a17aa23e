"""Who computes y = x @ W.T + b: one small function per backend.

`prepare(case)` packs the weight once (outside any timing) and returns a Prepared whose `bind(x)` gives the
zero-argument callable that is checked and timed; it returns y as [N, M].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .problems import Case


@dataclass
class Prepared:
    bind: Callable[[Tensor], Callable[[], Tensor]]  # x [N, K] -> fn() -> y [N, M]
    weight_bytes: int  # bytes of the stored weight (what the op must read besides x and y)
    # bytes the backend holds on the device for this weight: every layout and buffer, the bias (None: not known)
    resident_bytes: Optional[int] = None
    # a backend that runs a differently pruned weight of the same shape (a timing comparison, e.g. 2:4 beside Spense)
    # gives the fp32 reference of its own weight; None: the case's reference
    reference: Optional[Callable[[Tensor], Tensor]] = None


@dataclass(frozen=True)
class Backend:
    name: str
    prepare: Callable[[Case], Prepared]
    cuda_only: bool = False
    always_graph: bool = False  # measured "at its best": CUDA graph even without --graph
    cpu_only: bool = False


def _nbytes(*tensors: Optional[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ------------------------------------------------------------------------------------------------ dense ------------
def _dense(c: Case) -> Prepared:
    return Prepared(lambda x: lambda: F.linear(x, c.w, c.bias), _nbytes(c.w), _nbytes(c.w, c.bias))


def dense_backend(device: torch.device) -> Backend:
    """The denominator of every speedup: F.linear on the dense masked weight (cuBLAS on GPU)."""
    return Backend("cublas" if device.type == "cuda" else "torch_cpu", _dense)


# ------------------------------------------------------------------------------------------ torch peers ------------
def _torch_semi_structured(c: Case) -> Prepared:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    # PyTorch's CUTLASS 2:4 path refuses sm90; its cuSPARSELt path runs everywhere cuSPARSELt does.
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    ws = to_sparse_semi_structured(c.w)
    nbytes = _nbytes(getattr(ws, "packed", None), getattr(ws, "meta", None))
    return Prepared(lambda x: lambda: F.linear(x, ws, c.bias), nbytes, nbytes + _nbytes(c.bias))


def _cusparselt(c: Case) -> Prepared:
    """cuSPARSELt at its best: compressed once, algorithm searched once per shape, x given as a contiguous [K, N]."""
    wc = torch._cslt_compress(c.w)

    def bind(x: Tensor) -> Callable[[], Tensor]:
        xt = x.t().contiguous()
        found = torch._cslt_sparse_mm_search(wc, xt, bias=c.bias)
        alg_id = int(found[0] if isinstance(found, (tuple, list)) else found)  # some versions return a tuple
        return lambda: torch._cslt_sparse_mm(wc, xt, bias=c.bias, alg_id=alg_id).t()  # [M, N] -> [N, M] view

    return Prepared(bind, _nbytes(wc), _nbytes(wc, c.bias))


def _torch_csr(c: Case) -> Prepared:
    """torch's own sparse path on CPU: the dense masked weight as CSR, torch.addmm (MKL sparse; fp32 and fp64 only)."""
    wc = c.w.to_sparse_csr()
    bias = c.bias[:, None]
    nbytes = _nbytes(wc.values(), wc.col_indices(), wc.crow_indices())
    return Prepared(lambda x: lambda: torch.addmm(bias, wc, x.t()).t(), nbytes, nbytes + _nbytes(c.bias))


TORCH_SEMI_STRUCTURED = Backend("torch_semi_structured", _torch_semi_structured, cuda_only=True)
TORCH_CSR = Backend("torch_csr", _torch_csr, cpu_only=True)
CUSPARSELT = Backend("cusparselt", _cusparselt, cuda_only=True, always_graph=True)


# ------------------------------------------------------------------------------------------------- spmm ------------
def _ops():
    import spmm.ops  # imported late: a failed import marks the spmm backends unavailable instead of stopping the bench

    return spmm.ops


def _pack(packer, dense: Tensor, *args):
    """Run a packer on the weight's device; where it has no kernel there yet, pack on CPU and move the result."""
    try:
        return packer(dense, *args)
    except NotImplementedError:
        moved = packer(dense.cpu(), *(a.cpu() if isinstance(a, Tensor) else a for a in args))
        return tuple(t.to(dense.device) for t in moved)


def _layer_prepared(layer, weight_bytes: int) -> Prepared:
    """A layer as a backend: what a model gets; it holds resident_bytes (format, kernel layouts, bias)."""
    return Prepared(lambda x: lambda: layer(x), weight_bytes, layer.resident_bytes)


def _sparse24_layer(w: Tensor, mask: Tensor, bias: Tensor):
    from spmm.formats import Sparse24Weight
    from spmm.nn import Sparse24Linear

    values, meta = _pack(_ops().sparse24_compress, w, mask)
    return Sparse24Linear.from_format(Sparse24Weight(values, meta, tuple(w.shape)), bias)


def _decode_bytes(layer) -> int:
    """What the 2:4 kernels read per call: the decode kernel's layout on CUDA, the canonical weight elsewhere."""
    return _nbytes(layer.dvalues, layer.dmeta) if layer.dvalues is not None else _nbytes(layer.values, layer.meta)


def _spmm_sparse24(c: Case) -> Prepared:
    """Sparse24Linear: its kernel layouts made once, ops.sparse24_mm choosing the kernel in C++ (decode kernel up to
    8-32 tokens, the device's GEMM above)."""
    layer = _sparse24_layer(c.w, c.mask, c.bias)
    return _layer_prepared(layer, _decode_bytes(layer))


def _spmm_sparse24_direct(c: Case) -> Prepared:
    """The 2:4 kernels called directly, as Sparse24Linear did before its forward became ops.sparse24_mm: the private
    op of the kernel the rule names for N (decided when x is bound), on the layer's layouts. Beside `spmm` it shows
    what the public op's dispatch costs, and it keeps today's kernels measurable next to new ones."""
    ops = _ops()
    _require_cuda_kernel(c, "_sparse24_decode_mm", "the decode kernel")
    layer = _sparse24_layer(c.w, c.mask, c.bias)
    m, k = c.w.shape
    gemm = "sm90" if layer.sm90_e is not None else "sm80" if layer.sm80_a is not None else None

    def bind(x: Tensor) -> Callable[[], Tensor]:
        kernel = ops.sparse24_pick_kernel(m, k, x.shape[0], True, gemm)
        if kernel == "sm90":
            return lambda: ops.sparse24_sm90_mm(x, layer.values, layer.sm90_e, m, layer.bias)
        if kernel == "sm80":
            return lambda: ops.sparse24_sm80_mm(x, layer.sm80_a, layer.sm80_e, m, layer.bias)
        return lambda: ops.sparse24_decode_mm(x, layer.dvalues, layer.dmeta, m, layer.bias)

    return Prepared(bind, _decode_bytes(layer), layer.resident_bytes)


def _require_cuda_kernel(c: Case, op: str, what: str) -> None:
    """Backends that call one CUDA kernel directly: refuse (the harness skips them) without it, before packing."""
    if not (c.w.is_cuda and _ops().has_cuda_kernel(op)):
        raise NotImplementedError(f"{what} needs a CUDA build")


def _spmm_sparse24_decode(c: Case, loader: str = "auto", splits: int = 0) -> Prepared:
    """The decode kernel called directly at any N, with the given weight loader (and split-K factor; 0: its own)."""
    ops = _ops()
    _require_cuda_kernel(c, "_sparse24_decode_mm", "the decode kernel")
    dvalues, dmeta = ops.sparse24_decode_pack(*ops.sparse24_compress(c.w, c.mask))
    m = c.w.shape[0]
    splits = min(splits, -(-c.w.shape[1] // 128))  # no more splits than 128-column chunks (small probe shapes)
    return Prepared(lambda x: lambda: ops.sparse24_decode_mm(x, dvalues, dmeta, m, c.bias, loader=loader,
                                                             splits=splits), _nbytes(dvalues, dmeta),
                    _nbytes(dvalues, dmeta, c.bias))


def _spmm_sparse24_sm90(c: Case, config: Optional[str] = None, swizzle: int = 0, splits: int = 0) -> Prepared:
    ops = _ops()
    _require_cuda_kernel(c, "_sparse24_sm90_mm", "the Hopper prefill GEMM (sm_90a kernels)")
    if "sm90_pack" not in c.extra:  # one pack per weight, shared by the config sweep's backends
        values, meta = ops.sparse24_compress(c.w, c.mask)
        c.extra["sm90_pack"] = values, ops.sparse24_sm90_pack(values, meta)  # the GEMM reads the canonical values
    a, e = c.extra["sm90_pack"]
    m = c.w.shape[0]
    return Prepared(lambda x: lambda: ops.sparse24_sm90_mm(x, a, e, m, c.bias, config=config, swizzle=swizzle,
                                                                     splits=splits),
                    _nbytes(a, e), _nbytes(a, e, c.bias))


def sm90_config_backends() -> List[Backend]:
    """The Hopper GEMM pinned to each of its configs (`sm90_<config>`), the persistent ones also with a wider tile
    raster swizzle (`..._sw4`, `..._sw8`), the stream-K ones also as split-K into k slices (`..._k2` .. `_k16`),
    and the decode kernel at any N (`decode`, and with k splits of K: `decode_s<k>`): the sweep that tunes the
    heuristics. Empty where spmm cannot be imported."""
    try:
        names = _ops().SM90_CONFIGS
    except Exception:  # the sweep then has nothing to run; the harness reports the suite as skipped
        return []
    out = [Backend("decode", _spmm_sparse24_decode, cuda_only=True)]
    out += [Backend(f"decode_s{k}", partial(_spmm_sparse24_decode, splits=k), cuda_only=True)
            for k in (1, 2, 3, 4, 6, 8)]
    for name in names:
        out.append(Backend(f"sm90_{name}", partial(_spmm_sparse24_sm90, config=name), cuda_only=True))
        if "streamk" not in name:
            out += [Backend(f"sm90_{name}_sw{s}", partial(_spmm_sparse24_sm90, config=name, swizzle=s), cuda_only=True)
                    for s in (4, 8)]
        else:  # split-K into k slices instead of stream-K
            out += [Backend(f"sm90_{name}_k{k}", partial(_spmm_sparse24_sm90, config=name, splits=k), cuda_only=True)
                    for k in (2, 4, 8, 16)]
    return out


TILE_M, TILE_K = 256, 64  # Flash-LLM's tile


def _spmm_tiled_csl(c: Case, tile_m: int = TILE_M, source: str = "layer", kernel: str = "auto") -> Prepared:
    """source: "layer" (TiledCSLLinear with the kernel layout the C++ rule gives it, what a model gets; on CPU the bitmap over
    the values), "words" (the
    word-layout kernel), "delta" (the delta kernels on the layer's delta layout: what SPMM_TILED_CSL_DELTA=1 gives a
    model; `kernel` pins one of them) or "stream" (the kernel on the Tiled-CSL stream itself). weight_bytes: what the
    kernel reads (the layer's kernel layout where it has one)."""
    ops = _ops()
    m = c.w.shape[0]
    if source != "layer":
        _require_cuda_kernel(c, {"stream": "tiled_csl_mm", "words": "_tiled_csl_words",
                                 "delta": "_tiled_csl_delta_mm"}[source], f"the {source} kernel")
    values, locations, offsets = _pack(ops.tiled_csl_compress, c.w, c.mask, tile_m, TILE_K)  # GPU packer on CUDA
    if source == "layer":
        from spmm.formats import TiledCSLWeight
        from spmm.nn import TiledCSLLinear

        layer = TiledCSLLinear.from_format(TiledCSLWeight(values, locations, offsets, tuple(c.w.shape), tile_m, TILE_K),
                                           c.bias)
        layouts = ([layer.delta_values, layer.delta_codes, layer.delta_offsets], [layer.words, layer.word_offsets],
                   [values, offsets, layer.cpu_bitmap])  # the CPU kernels read the values in place through the bitmap
        read = next((ts for ts in layouts if ts[-1] is not None), [values, locations, offsets])
        return _layer_prepared(layer, _nbytes(*read))
    if source == "words":
        words, word_offsets = ops.tiled_csl_words(values, locations, offsets, tile_m, TILE_K)
        empty = (values.new_empty(0), locations.new_empty(0), offsets.new_empty(0))  # the op reads the words alone
        return Prepared(lambda x: lambda: ops.tiled_csl_mm(x, *empty, m, tile_m, TILE_K, c.bias, words=words,
                                                           word_offsets=word_offsets),
                        _nbytes(words, word_offsets), _nbytes(words, word_offsets, c.bias))
    if source == "delta":
        from spmm.formats import TiledCSLWeight, tiled_csl_layouts

        layout = tiled_csl_layouts.delta_layout(TiledCSLWeight(values, locations, offsets, tuple(c.w.shape), tile_m,
                                                               TILE_K))
        del values, locations, offsets
        return Prepared(lambda x: lambda: ops.tiled_csl_delta_mm(x, *layout, m, c.bias, kernel), _nbytes(*layout),
                        _nbytes(*layout, c.bias))

    def bind(x: Tensor) -> Callable[[], Tensor]:
        return lambda: ops.tiled_csl_mm(x, values, locations, offsets, m, tile_m, TILE_K, c.bias)

    return Prepared(bind, _nbytes(values, locations, offsets), _nbytes(values, locations, offsets, c.bias))


def _spmm_spense(c: Case) -> Prepared:
    """SpenseLinear (what a model gets): the 2:4 block's kernel layouts made once, ops.spense_mm on them."""
    from spmm.formats import Sparse24Weight, SpenseWeight
    from spmm.nn import SpenseLinear

    ops = _ops()
    dense_rows, sparse_rows = c.extra["dense_rows"], c.extra["sparse_rows"]
    values, meta = _pack(ops.sparse24_compress, c.w[sparse_rows].contiguous(), c.mask[sparse_rows].contiguous())
    row_index = torch.cat([dense_rows, sparse_rows]).to(torch.int32)  # original row of each block row, dense first
    sparse = Sparse24Weight(values, meta, (len(sparse_rows), c.w.shape[1]))
    layer = SpenseLinear.from_format(SpenseWeight(c.w[dense_rows].contiguous(), sparse, row_index), c.bias)
    read = [layer.dense_weight, layer.row_index]
    read += [layer.dvalues, layer.dmeta] if layer.dvalues is not None else [layer.values, layer.meta]
    return _layer_prepared(layer, _nbytes(*read))


def _spmm_spense_beside_24(c: Case) -> Prepared:
    """Sparse24Linear on the same shape with every row 2:4 (the case's dense rows pruned 2:4 too): the 2:4 end of the
    Spense sweep, in the same run. Checked against its own weight's reference."""
    from .problems import mask_24

    w24 = c.w.masked_fill(~mask_24(c.w), 0)
    layer = _sparse24_layer(w24, mask_24(c.w), c.bias)
    w32, b32 = w24.float(), c.bias.float()
    prepared = _layer_prepared(layer, _decode_bytes(layer))
    prepared.reference = lambda x: F.linear(x.float(), w32, b32)
    return prepared


def _spmm_spense_decode(c: Case, spense: bool, fragments: bool = False, loader: str = "auto") -> Prepared:
    """The Spense decode kernel called directly at any N, on the saved layouts (one copy of the weight): a Spense
    case's dense rows and canonical 2:4 rows with row_index, or (spense=False) a 2:4 case's canonical values and
    metadata alone -- the one-copy 2:4 decode kernel. fragments: read the 2:4 decode layout's metadata instead of
    the canonical bytes (its bytes counted too)."""
    ops = _ops()
    _require_cuda_kernel(c, "_spense_decode_mm", "the Spense decode kernel")
    if spense:
        dense_rows, sparse_rows = c.extra["dense_rows"], c.extra["sparse_rows"]
        dense_w = c.w[dense_rows].contiguous() if dense_rows.numel() else None
        values, meta = ops.sparse24_compress(c.w[sparse_rows].contiguous(), c.mask[sparse_rows].contiguous())
        row_index = torch.cat([dense_rows, sparse_rows]).to(torch.int32)
    else:
        dense_w, row_index = None, None
        values, meta = ops.sparse24_compress(c.w, c.mask)
    frags = ops.sparse24_decode_pack(values, meta)[1] if fragments and values.shape[0] else None

    def bind(x: Tensor) -> Callable[[], Tensor]:
        return lambda: ops.spense_decode_mm(x, dense_w, values, meta, row_index, c.bias, meta_fragments=frags,
                                            loader=loader)

    return Prepared(bind, _nbytes(dense_w, values, meta, row_index, frags))


SPMM_SPARSE24 = Backend("spmm", _spmm_sparse24)
# Today's path kept beside the public op: the kernels called directly (what Sparse24Linear ran before issue 19).
SPMM_SPARSE24_DIRECT = Backend("spmm_direct", _spmm_sparse24_direct, cuda_only=True)
# Kernel against kernel at any N: today's decode kernel on its reordered copy, and the Spense decode kernel on the
# canonical layout alone (the one-copy 2:4 decode; `_fr`: with the reordered metadata; `_cp`: the cp.async loader).
SPMM_SPARSE24_DECODE = Backend("spmm_decode", _spmm_sparse24_decode, cuda_only=True)
SPMM_SPARSE24_ONE_COPY = Backend("spmm_onecopy", partial(_spmm_spense_decode, spense=False), cuda_only=True)
SPMM_SPARSE24_ONE_COPY_FR = Backend("spmm_onecopy_fr", partial(_spmm_spense_decode, spense=False, fragments=True),
                                    cuda_only=True)
SPMM_SPARSE24_ONE_COPY_CP = Backend("spmm_onecopy_cp", partial(_spmm_spense_decode, spense=False, loader="cp_async"),
                                    cuda_only=True)
# The Hopper CUTLASS GEMM called directly, whatever N (sparse24_mm picks it for prefill-sized N on its own).
SPMM_SPARSE24_SM90 = Backend("spmm_sm90", _spmm_sparse24_sm90, cuda_only=True)
# The decode kernel with the sm_80 loader (cp.async, split-K through global memory), run on whatever GPU this is.
SPMM_SPARSE24_CP_ASYNC = Backend("spmm_cp_async", partial(_spmm_sparse24_decode, loader="cp_async"), cuda_only=True)
SPMM_TILED_CSL = Backend("spmm", _spmm_tiled_csl)
# The kernel reading the Tiled-CSL stream itself (what the op runs on CUDA given nothing else), next to the layer's.
SPMM_TILED_CSL_STREAM = Backend("spmm_stream", lambda c: _spmm_tiled_csl(c, source="stream"), cuda_only=True)
# The delta kernels on the delta layout (~2.5 bytes per nonzero): what the layer runs with SPMM_TILED_CSL_DELTA=1
# (the C++ rule: CUDA cores up to 8 tokens, tensor cores above), and each kernel pinned at every N (to place the rule).
SPMM_TILED_CSL_DELTA = Backend("spmm_delta", lambda c: _spmm_tiled_csl(c, source="delta"), cuda_only=True)
SPMM_TILED_CSL_DELTA_CORES = Backend("spmm_delta_cores", lambda c: _spmm_tiled_csl(c, source="delta",
                                                                                  kernel="cuda_cores"), cuda_only=True)
SPMM_TILED_CSL_DELTA_TC = Backend("spmm_delta_tc", lambda c: _spmm_tiled_csl(c, source="delta", kernel="tensor_cores"),
                                  cuda_only=True)
# 128-row tiles: twice the row tiles, so fewer K splits and partials for the same SM fill; a tuning comparison.
SPMM_TILED_CSL_TM128 = Backend("spmm_tm128", lambda c: _spmm_tiled_csl(c, tile_m=128, source="words"),
                                cuda_only=True)
SPMM_SPENSE = Backend("spmm", _spmm_spense)
# 2:4 beside Spense at the same shapes (every row 2:4): the end of the sweep that the dense rows are added to.
SPMM_SPENSE_BESIDE_24 = Backend("spmm_sparse24", _spmm_spense_beside_24)
# The Spense decode kernel: dense and 2:4 row tiles in one launch (`_fr`: reading the reordered 2:4 metadata).
SPMM_SPENSE_DECODE = Backend("spmm_decode", partial(_spmm_spense_decode, spense=True), cuda_only=True)
SPMM_SPENSE_DECODE_FR = Backend("spmm_decode_fr", partial(_spmm_spense_decode, spense=True, fragments=True),
                                cuda_only=True)


def probe(backend: Backend, tiny_case: Callable[[], Case]) -> Optional[str]:
    """Run the backend once on a tiny problem: None if it works, else why not (no kernel, no library, ...)."""
    try:
        c = tiny_case()
        if backend.cuda_only and c.w.device.type != "cuda":
            return "needs a CUDA device"
        if backend.cpu_only and c.w.device.type != "cpu":
            return "a CPU baseline"
        x = torch.randn(16, c.w.shape[1], device=c.w.device).to(c.w.dtype)
        backend.prepare(c).bind(x)()
        if c.w.device.type == "cuda":
            torch.cuda.synchronize(c.w.device)
        return None
    except Exception as e:  # NotImplementedError (no kernel for the device), RuntimeError, ImportError, ...
        why = error_text(e)
        if torch.cuda.is_initialized():
            try:
                torch.cuda.synchronize()
            except Exception:  # the sweep's first CUDA call will abort the run; say which backend did it
                why += " (and the CUDA context is now broken)"
        return why


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
