"""Timing: CUDA events (optionally CUDA-graph replays) or perf_counter, median of reps, caches flushed between reps.

The flush runs before each timed rep, outside the timed region. By default it *reads* a buffer of twice the L2
size: writing one (the usual zero_()) leaves up to a whole L2 of dirty lines, and writing those back to memory
while the next kernel runs steals bandwidth from exactly the weight-streaming kernels we measure
(`--flush write` keeps the classic behaviour for comparison).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

DEFAULT_L2_BYTES = 50 * 2**20  # H100; used when the device does not report its L2 size
CPU_LLC_BYTES = 32 * 2**20  # a typical last-level cache; the CPU suite only needs "weights not in cache"


class Timer:
    def __init__(self, device: torch.device, reps: int, warmup: int, flush: str = "read"):
        self.device, self.reps, self.warmup, self.flush_mode = device, reps, warmup, flush
        self.cuda = device.type == "cuda"
        if self.cuda:
            cache = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or DEFAULT_L2_BYTES
        else:
            cache = CPU_LLC_BYTES
        self.flush_bytes = 2 * cache
        self._buf = torch.ones(self.flush_bytes // 4, dtype=torch.float32, device=device)

    def flush(self) -> None:
        if self.flush_mode == "read":
            self._buf.sum()
        elif self.flush_mode == "write":
            self._buf.fill_(1.0)

    def runner(self, fn: Callable[[], Tensor], graph: bool) -> Tuple[Callable[[], None], Callable[[], Tensor]]:
        """(run, result): `run` is what gets timed; `result` returns the output of the last run.

        In graph mode fn is captured once and `run` replays it; the output is the graph's static tensor, so the
        correctness check sees exactly what the timed replays compute.
        """
        if not graph:
            box = [None]

            def run():
                box[0] = fn()

            return run, lambda: box[0]
        if not self.cuda:
            raise RuntimeError("CUDA-graph mode needs a CUDA device")
        # Warm up on a side stream before capture (lazy init, workspaces, algorithm caches), as torch documents.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        return g.replay, lambda: out

    def time_us(self, run: Callable[[], None]) -> float:
        """Median time of one call of `run`, in µs."""
        for _ in range(self.warmup):
            self.flush()
            run()
        if not self.cuda:
            times = []
            for _ in range(self.reps):
                self.flush()
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1e6)
            return statistics.median(times)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for start, end in zip(starts, ends):
            self.flush()  # queued before `start`, so outside the timed region
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))

    def time_interleaved(self, runs: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, List[float]]:
        """CPU: per-round median µs of each callable. Each round warms every callable up, then makes `reps` passes
        that call every callable once (caches flushed before each call), the order rotating from pass to pass, so
        load from other processes, clock changes and cache state fall on all of them alike."""
        names = list(runs)
        per_round: Dict[str, List[float]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                for _ in range(self.warmup):
                    self.flush()
                    runs[name]()
            times: Dict[str, List[float]] = {name: [] for name in names}
            for rep in range(self.reps):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    self.flush()
                    t0 = time.perf_counter()
                    runs[name]()
                    times[name].append((time.perf_counter() - t0) * 1e6)
            for name in names:
                per_round[name].append(statistics.median(times[name]))
        return per_round

    def copy_gbps(self, nbytes: int = 0) -> float:
        """Device copy bandwidth: bytes read + written per second (GB/s) for a large copy, median of reps."""
        nbytes = nbytes or (1 << 30 if self.cuda else 1 << 28)
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=self.device)
        dst = torch.empty_like(src)
        saved, self.flush_mode = self.flush_mode, "none"  # far larger than any cache already
        try:
            us = self.time_us(lambda: dst.copy_(src))
        finally:
            self.flush_mode = saved
        del src, dst
        return 2 * nbytes / us / 1e3
