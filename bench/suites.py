"""The sweeps: for each suite, layer and level, one pruned weight; for each token count, every backend is checked
against the fp32 reference and then timed. One record per (case, N, backend)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import backends as B
from . import problems as P
from .shapes import Layer
from .timing import Timer


@dataclass(frozen=True)
class Suite:
    name: str
    op: str
    make_case: Callable  # (layer, dtype, device, level) -> Case
    backends: Sequence[B.Backend]  # besides the dense baseline
    probe_level: Optional[float]
    in_all: bool = True  # part of `all` (the default); tuning sweeps run only when named


SUITES: Dict[str, Suite] = {
    s.name: s
    for s in [
        Suite("sparse24", "sparse24_mm", lambda l, dt, dev, _: P.sparse24_case(l, dt, dev),
              [B.TORCH_SEMI_STRUCTURED, B.CUSPARSELT, B.SPMM_SPARSE24, B.SPMM_SPARSE24_DIRECT, B.SPMM_SPARSE24_SM90,
               B.SPMM_SPARSE24_CP_ASYNC], None),
        # The Hopper GEMM's configs and the decode kernel side by side, to tune the config and kernel choice.
        Suite("sparse24_sm90", "sparse24_mm", lambda l, dt, dev, _: P.sparse24_case(l, dt, dev),
              B.sm90_config_backends(), None, in_all=False),
        Suite("tiled_csl", "tiled_csl_mm", P.tiled_csl_case,
              [B.SPMM_TILED_CSL, B.SPMM_TILED_CSL_DELTA, B.SPMM_TILED_CSL_DELTA_CORES, B.SPMM_TILED_CSL_DELTA_TC,
               B.SPMM_TILED_CSL_STREAM, B.SPMM_TILED_CSL_TM128],
              0.8),
        # SpenseLinear, and Sparse24Linear on the same shapes with every row 2:4 (the sweep's 2:4 end, same run).
        Suite("spense", "spense_mm", P.spense_case, [B.SPMM_SPENSE, B.SPMM_SPENSE_BESIDE_24], 0.25),
        # Decode kernels side by side at decode-sized N (tuning sweeps, run when named): the layer, today's 2:4 decode
        # kernel on its reordered copy, and the Spense decode kernel on the saved layouts (one copy of the weight).
        Suite("sparse24_decode", "sparse24_mm", lambda l, dt, dev, _: P.sparse24_case(l, dt, dev),
              [B.SPMM_SPARSE24, B.SPMM_SPARSE24_DECODE, B.SPMM_SPARSE24_ONE_COPY, B.SPMM_SPARSE24_ONE_COPY_FR,
               B.SPMM_SPARSE24_ONE_COPY_CP], None, in_all=False),
        Suite("spense_decode", "spense_mm", P.spense_case, [B.SPMM_SPENSE, B.SPMM_SPENSE_DECODE,
                                                             B.SPMM_SPENSE_DECODE_FR], 0.25, in_all=False),
    ]
}


class Fatal(RuntimeError):
    """The CUDA context is broken (e.g. an illegal address): nothing after this can be trusted."""


def tolerance(ref: Tensor, dtype: torch.dtype, k: int, dense_err: Optional[float], is_dense: bool) -> float:
    """Allowed max |y - ref|. Floor: output rounding (2 eps of the dtype) + fp32 accumulation-order noise
    (sqrt(K) fp32 eps), relative to max |ref|. Other backends may add 2x the dense backend's own error (STYLE.md).
    The dense baseline only has to be sane (4x the floor): cuBLAS may sum split-K partials in fp16 (torch's
    default allow_fp16_reduced_precision_reduction), and failing it would void every speedup."""
    scale = ref.abs().max().item()
    floor = (2 * torch.finfo(dtype).eps + math.sqrt(k) * torch.finfo(torch.float32).eps) * scale
    if is_dense:
        return 4 * floor
    return floor + (2 * dense_err if dense_err is not None else 0.0)


class Runner:
    def __init__(self, timer: Timer, dtype: torch.dtype, graph: bool, meta: dict):
        self.timer, self.dtype, self.graph, self.meta = timer, dtype, graph, meta
        self.device = timer.device
        self.dense = B.dense_backend(self.device)

    def available(self, suite: Suite) -> Dict[str, Optional[str]]:
        """backend name -> None if it runs here, else the reason it is skipped."""
        def tiny():
            return suite.make_case(Layer("probe", 256, 256), self.dtype, self.device, suite.probe_level)

        return {b.name: B.probe(b, tiny) for b in suite.backends}

    def run_case(self, suite: Suite, backends: Sequence[B.Backend], layer: Layer, level, tokens: Sequence[int],
                 on_done: Callable[[List[dict]], None]) -> None:
        case = suite.make_case(layer, self.dtype, self.device, level)
        prepared = {b.name: self._prepare(b, case) for b in [self.dense, *backends]}
        for n in tokens:
            # The dense baseline is timed afresh for every case, right before the backends it is compared with:
            # one noisy (or throttled) dense figure must not skew the speedups of every later case.
            x = P.activations(n, layer.K, self.dtype, self.device)
            ref = case.reference(x)
            dense = self._measure(self.dense, prepared[self.dense.name], case, x, ref, None, None)
            recs = [dense]
            for b in backends:
                recs.append(self._measure(b, prepared[b.name], case, x, ref, dense["max_abs_err"], dense["time_us"]))
            del ref, x
            on_done(recs)
        del case, prepared
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prepare(self, b: B.Backend, case: P.Case):
        try:
            return b.prepare(case)
        except Exception as e:
            self.check_alive()
            return e

    def check_alive(self) -> None:
        if self.device.type != "cuda":
            return
        try:
            torch.cuda.synchronize(self.device)
        except Exception as e:
            raise Fatal(B.error_text(e)) from e
        torch.cuda.empty_cache()  # an out-of-memory backend should not starve the next one

    def _measure(self, b: B.Backend, prepared, case: P.Case, x: Tensor, ref: Tensor,
                 dense_err: Optional[float], dense_us: Optional[float]) -> dict:
        n, m, k = x.shape[0], case.layer.M, case.layer.K
        graph = self.graph or b.always_graph
        is_dense = b is self.dense
        rec = dict(
            self.meta, op=case.op, backend=b.name, dtype=str(self.dtype), layer=case.layer.name, M=m, K=k, N=n,
            sparsity=case.sparsity, dense_fraction=case.dense_fraction, graph=graph,
            time_us=None, dense_us=dense_us, speedup=None, gbps=None, pct_copy_bw=None, tflops=None,
            weight_bytes=None, resident_bytes=None, max_abs_err=None, tol=None, correct=None, error=None,
        )
        try:
            if isinstance(prepared, Exception):
                raise prepared
            rec["weight_bytes"], rec["resident_bytes"] = prepared.weight_bytes, prepared.resident_bytes
            if prepared.reference is not None:
                ref = prepared.reference(x)
            run, result = self.timer.runner(prepared.bind(x), graph)
            run()
            out = result()
            if tuple(out.shape) != tuple(ref.shape):
                raise RuntimeError(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
            err = (out.float() - ref).abs().max().item()
            tol = tolerance(ref, self.dtype, k, dense_err, is_dense)
            rec.update(max_abs_err=err, tol=tol, correct=bool(err <= tol))  # NaN compares False: wrong
            del out
            if not rec["correct"]:
                rec["error"] = f"wrong result: max_abs_err {err:.3g} > tol {tol:.3g}"
                return rec
            t = self.timer.time_us(run)
            if is_dense:
                rec["dense_us"] = dense_us = t
            moved = prepared.weight_bytes + x.numel() * x.element_size() + n * m * x.element_size()
            gbps = moved / t / 1e3
            rec.update(
                time_us=t, gbps=gbps, pct_copy_bw=100 * gbps / self.meta["copy_gbps"],
                tflops=2 * m * k * n / t / 1e6,  # dense-equivalent FLOPs, comparable across formats
                speedup=dense_us / t if dense_us else None,
            )
        except Fatal:
            raise
        except Exception as e:
            rec["error"] = B.error_text(e)
            self.check_alive()
        return rec
