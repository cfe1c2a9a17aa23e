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
    return Prepared(lambda x: lambda: F.linear(x, c.w, c.bias), _nbytes(c.w))


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
    return Prepared(lambda x: lambda: F.linear(x, ws, c.bias), nbytes)


def _cusparselt(c: Case) -> Prepared:
    """cuSPARSELt at its best: compressed once, algorithm searched once per shape, x given as a contiguous [K, N]."""
    wc = torch._cslt_compress(c.w)

    def bind(x: Tensor) -> Callable[[], Tensor]:
        xt = x.t().contiguous()
        found = torch._cslt_sparse_mm_search(wc, xt, bias=c.bias)
        alg_id = int(found[0] if isinstance(found, (tuple, list)) else found)  # some versions return a tuple
        return lambda: torch._cslt_sparse_mm(wc, xt, bias=c.bias, alg_id=alg_id).t()  # [M, N] -> [N, M] view

    return Prepared(bind, _nbytes(wc))


def _torch_csr(c: Case) -> Prepared:
    """torch's own sparse path on CPU: the dense masked weight as CSR, torch.addmm (MKL sparse; fp32 and fp64 only)."""
    wc = c.w.to_sparse_csr()
    bias = c.bias[:, None]
    nbytes = _nbytes(wc.values(), wc.col_indices(), wc.crow_indices())
    return Prepared(lambda x: lambda: torch.addmm(bias, wc, x.t()).t(), nbytes)


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


def _spmm_sparse24(c: Case) -> Prepared:
    ops = _ops()
    values, meta = _pack(ops.sparse24_compress, c.w, c.mask)
    if c.w.is_cuda and ops.has_cuda_kernel("_sparse24_decode_mm"):
        # What a model gets: Sparse24Linear with its kernel layouts made once (decode kernel up to 32 tokens, the
        # Hopper GEMM above where there is one).
        from spmm.formats import Sparse24Weight
        from spmm.nn import Sparse24Linear

        layer = Sparse24Linear.from_format(Sparse24Weight(values, meta, tuple(c.w.shape)), c.bias)
        stored = [layer.dvalues, layer.dmeta]
        return Prepared(lambda x: lambda: layer(x), _nbytes(*stored))
    return Prepared(lambda x: lambda: ops.sparse24_mm(x, values, meta, c.bias), _nbytes(values, meta))


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
                                                             splits=splits), _nbytes(dvalues, dmeta))


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
                    _nbytes(a, e))


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


def _spmm_tiled_csl(c: Case, tile_m: int = TILE_M, source: str = "layer") -> Prepared:
    """source: "layer" (TiledCSLLinear: its kernel layout, what a model gets: the word layout on CUDA, the bitmap over
    the values on CPU), "words" (the word-layout kernel),
    "bitmap" (the Hopper pair-bitmap kernel, experimental) or "stream" (the kernel on the Tiled-CSL stream itself,
    what the functional op runs on CUDA)."""
    ops = _ops()
    m = c.w.shape[0]
    if source == "bitmap":
        _require_cuda_kernel(c, "_tiled_csl_bitmap_mm", "the pair-bitmap kernel")
        if not ops.tiled_csl_bitmap_supported(c.w.device):
            raise NotImplementedError("the pair-bitmap kernel needs an sm_90a build and a compute capability 9.0 GPU")
        records, record_offsets, longest = ops.tiled_csl_bitmap(c.w)  # c.w: the dense masked weight
        return Prepared(lambda x: lambda: ops.tiled_csl_bitmap_mm(x, records, record_offsets, m, longest, c.bias),
                        _nbytes(records, record_offsets))
    if source == "stream":
        _require_cuda_kernel(c, "tiled_csl_mm", "the stream kernel")
    values, locations, offsets = _pack(ops.tiled_csl_compress, c.w, c.mask, tile_m, TILE_K)  # GPU packer on CUDA
    if source == "layer":
        from spmm.formats import TiledCSLWeight
        from spmm.nn import TiledCSLLinear

        layer = TiledCSLLinear.from_format(TiledCSLWeight(values, locations, offsets, tuple(c.w.shape), tile_m, TILE_K),
                                           c.bias)
        if layer.words is not None:
            layout = [layer.words, layer.word_offsets]
        elif layer.cpu_bitmap is not None:  # the CPU kernels read the values in place through the bitmap
            layout = [values, offsets, layer.cpu_bitmap]
        else:
            layout = [values, locations, offsets]
        return Prepared(lambda x: lambda: layer(x), _nbytes(*layout))
    if source == "words":
        _require_cuda_kernel(c, "_tiled_csl_mm_words", "the word-layout kernel")
        words, word_offsets = ops.tiled_csl_words(values, locations, offsets, tile_m, TILE_K)
        return Prepared(lambda x: lambda: ops.tiled_csl_mm_words(x, words, word_offsets, m, tile_m, c.bias),
                        _nbytes(words, word_offsets))

    def bind(x: Tensor) -> Callable[[], Tensor]:
        return lambda: ops.tiled_csl_mm(x, values, locations, offsets, m, tile_m, TILE_K, c.bias)

    return Prepared(bind, _nbytes(values, locations, offsets))


def _spmm_spense(c: Case) -> Prepared:
    ops = _ops()
    dense_rows, sparse_rows = c.extra["dense_rows"], c.extra["sparse_rows"]
    dense_w = c.w[dense_rows].contiguous()
    values, meta = _pack(ops.sparse24_compress, c.w[sparse_rows].contiguous(), c.mask[sparse_rows].contiguous())
    row_index = torch.cat([dense_rows, sparse_rows]).to(torch.int32)  # original row of each block row, dense first

    def bind(x: Tensor) -> Callable[[], Tensor]:
        return lambda: ops.spense_mm(x, dense_w, values, meta, row_index, c.bias)

    return Prepared(bind, _nbytes(dense_w, values, meta, row_index))


SPMM_SPARSE24 = Backend("spmm", _spmm_sparse24)
# The Hopper CUTLASS GEMM called directly, whatever N (sparse24_mm picks it for prefill-sized N on its own).
SPMM_SPARSE24_SM90 = Backend("spmm_sm90", _spmm_sparse24_sm90, cuda_only=True)
# The decode kernel with the sm_80 loader (cp.async, split-K through global memory), run on whatever GPU this is.
SPMM_SPARSE24_CP_ASYNC = Backend("spmm_cp_async", partial(_spmm_sparse24_decode, loader="cp_async"), cuda_only=True)
SPMM_TILED_CSL = Backend("spmm", _spmm_tiled_csl)
# The kernel reading the Tiled-CSL stream itself (what the functional op runs on CUDA), next to the layer's words.
SPMM_TILED_CSL_STREAM = Backend("spmm_stream", lambda c: _spmm_tiled_csl(c, source="stream"), cuda_only=True)
# The experimental Hopper pair-bitmap kernel (sm_90a), next to the layer's word layout.
SPMM_TILED_CSL_BITMAP = Backend("spmm_bitmap", lambda c: _spmm_tiled_csl(c, source="bitmap"), cuda_only=True)
# 128-row tiles: twice the row tiles, so fewer K splits and partials for the same SM fill; a tuning comparison.
SPMM_TILED_CSL_TM128 = Backend("spmm_tm128", lambda c: _spmm_tiled_csl(c, tile_m=128, source="words"),
                                cuda_only=True)
SPMM_SPENSE = Backend("spmm", _spmm_spense)


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
