"""python -m bench.host_overhead [--cpu] [--out DIR]   (run from the repository root)

Two costs that are not kernel time (CUDA), or with --cpu the first alone, on the CPU:
- Host overhead per eager call, on a tiny layer at 1 to 2048 tokens (every kernel Sparse24Linear picks; SpenseLinear's
  composed path; at 1 token also the decode kernel's private op called directly, what Sparse24Linear called before
  its forward became the public op), two ways:
  the CPU time to enqueue a short burst of calls (fewer than the launch queue holds, no synchronization inside: what
  the host itself spends per call), and the wall time of a long back-to-back loop (bounded by the host or by the
  GPU, whichever is slower). The same call replayed in a CUDA graph gives the GPU's own time per call. cuBLAS
  F.linear is the yardstick.
- Packing: how long the GPU packers take for the linears of a Llama-2-7B model (4 layer shapes x 32 blocks),
  timed on one block and multiplied by 32, for 2:4 (Sparse24Linear, with its kernel layouts) and 80% Tiled-CSL.
- --cpu: the host's cost per eager call of a tiny layer of each format (and F.linear) on the CPU, where the kernel
  is short enough that the dispatch around it shows: under torch.inference_mode (no autograd key at all),
  torch.no_grad (what Hugging Face generate() runs under), grad enabled with nothing requiring grad (a frozen model
  called outside no_grad), and grad enabled with x requiring grad (the training path: the backward node is built).
  Rounds interleave every call and mode; each figure is the median over the rounds, with the spread.
Writes host_overhead.json (--cpu: host_overhead_cpu.json) to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import spmm
from spmm.formats import TiledCSLWeight
from spmm.nn import Sparse24Linear

from .__main__ import device_name
from .problems import mask_24, mask_random
from .timing import Timer

OUT = Path(__file__).with_name("out") / "host_overhead"
# On Hopper a 256 x 256 layer runs the decode kernel up to 16 tokens, then the GEMM: the 32-token stream-K tile to
# 64 tokens, and the 128x128 stream-K tile at 2048.
TOKENS = (1, 16, 17, 64, 2048)
LLAMA2_7B = [("qkv", 12288, 4096), ("o", 4096, 4096), ("gate_up", 22016, 4096), ("down", 4096, 11008)]


def us_per_call(fn, calls: int, include_gpu: bool) -> float:
    """Wall time per call of `calls` back-to-back calls: until the GPU has finished them all (include_gpu), or until
    the host has issued them (a burst shorter than the launch queue: the host's own cost per call)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if include_gpu:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def kernel_of(layer, tokens: int) -> str:
    """Which 2:4 kernel a Sparse24Linear (or SpenseLinear's 2:4 block) runs for `tokens` rows: the C++ rule
    (spmm.ops.sparse24_pick_kernel) over the layouts the layer holds."""
    if layer.dvalues is None:
        return "cpu reference"
    gemm = "sm90" if layer.sm90_e is not None else "sm80" if layer.sm80_a is not None else None
    kernel = spmm.ops.sparse24_pick_kernel(layer.values.shape[0], layer.in_features, tokens, True, gemm)
    return {"decode": "decode kernel", "sm90": "hopper gemm", "sm80": "ampere gemm"}[kernel]


def host_overhead(dtype) -> list:
    """Each call at each token count: the decode kernel (1 token) and both sides of every dispatch threshold of
    Sparse24Linear, so the CUTLASS GEMM's host path (TMA descriptors, stream-K workspace) is measured too."""
    m = k = 256
    w = torch.randn(m, k, device="cuda", dtype=dtype)
    mask = mask_24(w)
    w = torch.where(mask, w, torch.zeros_like(w))
    bias = torch.randn(m, device="cuda", dtype=dtype)
    linear = torch.nn.Linear(k, m, device="cuda", dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    sparse24 = Sparse24Linear.from_dense(linear, mask)
    spense = spmm.nn.SpenseLinear.from_dense(linear, mask, dense_fraction=0.25)
    tcsl = spmm.nn.TiledCSLLinear.from_dense(linear, mask)
    timer = Timer(torch.device("cuda"), reps=200, warmup=20, flush="none")
    rows = []
    for tokens in TOKENS:
        x = torch.randn(tokens, k, device="cuda", dtype=dtype)
        calls = [("cublas F.linear", "cublas", lambda: F.linear(x, w, bias)),
                 ("Sparse24Linear", kernel_of(sparse24, tokens), lambda: sparse24(x)),
                 ("SpenseLinear 25%", "cublas + " + kernel_of(spense, tokens), lambda: spense(x)),
                 ("TiledCSLLinear", "tiled-csl", lambda: tcsl(x))]
        if tokens == 1:
            calls.append(("spmm.ops.sparse24_decode_mm", "decode kernel", lambda: spmm.ops.sparse24_decode_mm(
                x, sparse24.dvalues, sparse24.dmeta, m, bias)))
        for name, kernel, fn in calls:
            with torch.no_grad():
                enqueue = us_per_call(fn, 200, include_gpu=False)  # 200: well under the launch queue's depth
                host = us_per_call(fn, 2000, include_gpu=True)
                gpu = timer.time_us(timer.runner(fn, graph=True)[0])
            rows.append(dict(call=name, kernel=kernel, shape=f"{m}x{k}", tokens=tokens,
                             host_enqueue_us_per_call=enqueue, eager_wall_us_per_call=host, graph_gpu_us=gpu))
            print(f"{name:28s} N={tokens:<5d} {kernel:14s} host {enqueue:6.1f} us/call   eager loop {host:6.1f} "
                  f"us/call   graph replay (GPU) {gpu:6.1f} us")
    return rows


def packing(dtype) -> list:
    rows = []
    for fmt in ("2:4 Sparse24Linear", "tiled_csl 80%"):
        total = 0.0
        for name, m, k in LLAMA2_7B:
            w = torch.randn(m, k, device="cuda", dtype=dtype)
            mask = mask_24(w) if fmt.startswith("2:4") else mask_random((m, k), 0.8, w.device)
            linear = torch.nn.Linear(k, m, bias=False, device="cuda", dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(w)
            pack = ((lambda: Sparse24Linear.from_dense(linear, mask)) if fmt.startswith("2:4")
                    else (lambda: TiledCSLWeight.from_dense(w, mask)))
            pack()  # first call: lazy CUDA init, allocator growth
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            pack()
            torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            total += sec
            rows.append(dict(format=fmt, layer=name, M=m, K=k, seconds=sec))
        rows.append(dict(format=fmt, layer="llama2-7b, 32 blocks", seconds=32 * total))
        print(f"{fmt:20s} pack of Llama-2-7B's 128 block linears: {32 * total:.2f} s ({total * 1e3:.0f} ms per block)")
    return rows


# --cpu: the grad modes a call runs under, and whether x requires grad in each.
CPU_MODES = {
    "inference_mode": (torch.inference_mode, False),
    "no_grad": (torch.no_grad, False),
    "grad, x frozen": (torch.enable_grad, False),
    "grad, x trains": (torch.enable_grad, True),
}


def cpu_call_overhead(rounds: int, calls: int) -> list:
    """Microseconds per eager call on the CPU, per layer and grad mode: a 32 x 32 fp32 layer of each format (bias
    frozen, as in a model whose base is not trained) on one token, where the kernel itself takes little; F.linear on
    the dense weight is the yardstick. Besides each figure's median over the rounds, `extra_us`: the median over
    the rounds of the call's time in that mode minus its time under inference_mode in the same round (measured
    back to back, so a shared host's changing load cancels): the cost of the grad mode itself."""
    m = k = 32
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(k, m).requires_grad_(False)
    mask = mask_24(linear.weight)
    layers = {
        "F.linear": lambda x: F.linear(x, linear.weight, linear.bias),
        "Sparse24Linear": Sparse24Linear.from_dense(linear, mask),
        "TiledCSLLinear": spmm.nn.TiledCSLLinear.from_dense(linear, mask),
        "SpenseLinear 25%": spmm.nn.SpenseLinear.from_dense(linear, mask, dense_fraction=0.25),
    }
    inputs = {trains: torch.randn(1, k, generator=g).requires_grad_(trains) for trains in (False, True)}
    samples = {(name, mode): [] for name in layers for mode in CPU_MODES}
    for _ in range(rounds):  # interleaved: every call and mode once per round, a call's modes back to back
        for (name, mode), times in samples.items():
            context, trains = CPU_MODES[mode]
            fn, x = layers[name], inputs[trains]
            with context():
                for _ in range(calls // 10):  # warm-up
                    fn(x)
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                times.append((time.perf_counter() - t0) / calls * 1e6)
    rows = []
    for (name, mode), times in samples.items():
        extra = [t - base for t, base in zip(times, samples[name, "inference_mode"])]
        q, qe = statistics.quantiles(times, n=4), statistics.quantiles(extra, n=4)
        rows.append(dict(call=name, mode=mode, shape=f"{m}x{k}", tokens=1, us_per_call=statistics.median(times),
                         p25=q[0], p75=q[2], extra_us=statistics.median(extra), extra_p25=qe[0], extra_p75=qe[2],
                         rounds=rounds, calls=calls))
    print(f"{'us per call: median (+ over inference_mode)':44s}" + "".join(f"{mode:>20s}" for mode in CPU_MODES))
    for name in layers:
        cells = [next(r for r in rows if r["call"] == name and r["mode"] == mode) for mode in CPU_MODES]
        print(f"{name:44s}" + "".join(f"{c['us_per_call']:10.2f} ({c['extra_us']:+6.2f})" for c in cells))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--cpu", action="store_true", help="the host's cost per eager call on the CPU, per grad mode")
    p.add_argument("--rounds", type=int, default=100, help="--cpu: interleaved rounds (median over them)")
    p.add_argument("--calls", type=int, default=200, help="--cpu: calls per round and mode")
    p.add_argument("--threads", type=int, default=1, help="--cpu: torch threads (1: no thread-pool wake-ups in the "
                   "figures, which a shared host makes erratic)")
    a = p.parse_args()
    if a.cpu:
        torch.set_num_threads(a.threads)
        result = dict(device=device_name(torch.device("cpu")), torch=torch.__version__,
                      threads=torch.get_num_threads(), cpu_call_overhead=cpu_call_overhead(a.rounds, a.calls))
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "host_overhead_cpu.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {a.out / 'host_overhead_cpu.json'}")
        return 0
    if not torch.cuda.is_available():
        print("host_overhead: needs a CUDA device (--cpu: the CPU's cost per call)")
        return 1
    dtype = torch.float16
    result = dict(device=device_name(torch.device("cuda")), torch=torch.__version__,
                  host_overhead=host_overhead(dtype), packing=packing(dtype))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "host_overhead.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out / 'host_overhead.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
