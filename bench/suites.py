"""The sweeps: for each suite, layer and level, one pruned weight; for each token count, every backend is checked
against the fp32 reference and then timed. One record per (case, N, backend)."""

from __future__ import annotations

import math
import statistics
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
               B.SPMM_SPARSE24_CP_ASYNC, B.TORCH_CSR], None),
        # The Hopper GEMM's configs and the decode kernel side by side, to tune the config and kernel choice.
        Suite("sparse24_sm90", "sparse24_mm", lambda l, dt, dev, _: P.sparse24_case(l, dt, dev),
              B.sm90_config_backends(), None, in_all=False),
        Suite("tiled_csl", "tiled_csl_mm", P.tiled_csl_case,
              [B.SPMM_TILED_CSL, B.SPMM_TILED_CSL_DELTA, B.SPMM_TILED_CSL_DELTA_CORES, B.SPMM_TILED_CSL_DELTA_TC,
               B.SPMM_TILED_CSL_STREAM, B.SPMM_TILED_CSL_TM128, B.TORCH_CSR],
              0.8),
        # SpenseLinear, and Sparse24Linear on the same shapes with every row 2:4 (the sweep's 2:4 end, same run).
        Suite("spense", "spense_mm", P.spense_case, [B.SPMM_SPENSE, B.SPMM_SPENSE_BESIDE_24, B.TORCH_CSR], 0.25),
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
    def __init__(self, timer: Timer, dtype: torch.dtype, graph: bool, meta: dict, rounds: int = 1):
        self.timer, self.dtype, self.graph, self.meta = timer, dtype, graph, meta
        self.device = timer.device
        self.dense = B.dense_backend(self.device)
        self.rounds = rounds  # CPU: rounds of interleaved reps (the spread of the speedup is over rounds)

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
            x = P.activations(n, layer.K, self.dtype, self.device)
            ref = case.reference(x)
            if self.device.type == "cpu":
                recs = self._measure_interleaved([self.dense, *backends], prepared, case, x, ref)
            else:
                # The dense baseline is timed afresh for every case, right before the backends it is compared
                # with: one noisy (or throttled) dense figure must not skew the speedups of every later case.
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

    def _record(self, b: B.Backend, case: P.Case, n: int, graph: bool, dense_us: Optional[float]) -> dict:
        return dict(
            self.meta, op=case.op, backend=b.name, dtype=str(self.dtype), layer=case.layer.name, M=case.layer.M,
            K=case.layer.K, N=n, sparsity=case.sparsity, dense_fraction=case.dense_fraction, graph=graph,
            threads=torch.get_num_threads() if self.device.type == "cpu" else None,
            time_us=None, dense_us=dense_us, speedup=None, speedup_lo=None, speedup_hi=None, rounds=None,
            gbps=None, pct_copy_bw=None, tflops=None, weight_bytes=None, resident_bytes=None, max_abs_err=None,
            tol=None, correct=None, error=None,
        )

    def _check(self, b: B.Backend, prepared, case: P.Case, x: Tensor, ref: Tensor, dense_err: Optional[float],
               rec: dict, graph: bool) -> Optional[Callable[[], None]]:
        """Run once and compare with the reference; returns what to time, or None (rec says why)."""
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
            tol = tolerance(ref, self.dtype, x.shape[1], dense_err, b is self.dense)
            rec.update(max_abs_err=err, tol=tol, correct=bool(err <= tol))  # NaN compares False: wrong
            del out
            if not rec["correct"]:
                rec["error"] = f"wrong result: max_abs_err {err:.3g} > tol {tol:.3g}"
                return None
            return run
        except Fatal:
            raise
        except Exception as e:
            rec["error"] = B.error_text(e)
            self.check_alive()
            return None

    def _rates(self, rec: dict, x: Tensor, t: float) -> None:
        n, m, k = x.shape[0], rec["M"], rec["K"]
        moved = rec["weight_bytes"] + x.numel() * x.element_size() + n * m * x.element_size()
        gbps = moved / t / 1e3
        rec.update(time_us=t, gbps=gbps, pct_copy_bw=100 * gbps / self.meta["copy_gbps"],
                   tflops=2 * m * k * n / t / 1e6)  # dense-equivalent FLOPs, comparable across formats

    def _measure(self, b: B.Backend, prepared, case: P.Case, x: Tensor, ref: Tensor,
                 dense_err: Optional[float], dense_us: Optional[float]) -> dict:
        graph = self.graph or b.always_graph
        rec = self._record(b, case, x.shape[0], graph, dense_us)
        run = self._check(b, prepared, case, x, ref, dense_err, rec, graph)
        if run is None:
            return rec
        try:
            t = self.timer.time_us(run)
        except Fatal:
            raise
        except Exception as e:
            rec["error"] = B.error_text(e)
            self.check_alive()
            return rec
        if b is self.dense:
            rec["dense_us"] = t
        self._rates(rec, x, t)
        rec["speedup"] = rec["dense_us"] / t if rec["dense_us"] else None
        return rec

    def _measure_interleaved(self, backends: Sequence[B.Backend], prepared, case: P.Case, x: Tensor,
                             ref: Tensor) -> List[dict]:
        """CPU: every backend checked, then all timed together (Timer.time_interleaved); speedup = median over
        rounds of (dense / backend) of the round's medians, speedup_lo/hi = the smallest and largest round's."""
        recs, runs = [], {}
        dense_err = None
        for b in backends:
            rec = self._record(b, case, x.shape[0], False, None)
            run = self._check(b, prepared[b.name], case, x, ref, dense_err, rec, False)
            if b is self.dense:
                dense_err = rec["max_abs_err"]
            if run is not None:
                runs[b.name] = run
            recs.append(rec)
        if self.dense.name not in runs:
            return recs
        per_round = self.timer.time_interleaved(runs, self.rounds)
        dense_rounds = per_round[self.dense.name]
        dense_us = statistics.median(dense_rounds)
        for rec in recs:
            rec["dense_us"] = dense_us
            if rec["backend"] not in per_round:
                continue
            rounds = per_round[rec["backend"]]
            ratios = [d / t for d, t in zip(dense_rounds, rounds)]
            self._rates(rec, x, statistics.median(rounds))
            rec.update(speedup=statistics.median(ratios), speedup_lo=min(ratios), speedup_hi=max(ratios),
                       rounds=len(rounds))
        return recs
