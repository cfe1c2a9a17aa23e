"""Tuning aid for the 2:4 decode kernel: times its knobs (ring depth, split-K) per layer and token count against
cuBLAS and against the kernel's own choice, as CUDA-graph replays with L2 flushed (like the bench).

    python -m bench.decode_sweep [--layers SUBSTR ...] [--tokens 1 16 64] [--stages 2 3 4 5] [--splits 0 2 4 8]

Prints one line per (layer, N): dense µs, the default's µs and speedup, then every knob setting's speedup; the best
setting is marked. Knob 0 is the kernel's own choice.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from . import problems as P
from .shapes import load
from .timing import Timer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="+", metavar="SUBSTR")
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--stages", nargs="+", type=int, default=[0, 2, 3, 4, 5])
    p.add_argument("--splits", nargs="+", type=int, default=[0])
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    from spmm import ops

    device, dtype = torch.device("cuda"), torch.float16
    timer = Timer(device, args.reps, 5)
    for layer in load()["layers"]:
        if args.layers and not any(s in layer.name for s in args.layers):
            continue
        case = P.sparse24_case(layer, dtype, device)
        dv, dm = ops.sparse24_decode_pack(*ops.sparse24_compress(case.w, case.mask))
        for n in args.tokens:
            x = P.activations(n, layer.K, dtype, device)
            dense = timer.time_us(timer.runner(lambda: F.linear(x, case.w, case.bias), graph=True)[0])
            times = {}
            for stages, splits in itertools.product(args.stages, args.splits):
                chunks = -(-layer.K // 128)
                if splits > chunks:
                    continue
                fn = (lambda st=stages, sp=splits: ops.sparse24_decode_mm(x, dv, dm, layer.M, case.bias, sp, st))
                try:
                    times[(stages, splits)] = timer.time_us(timer.runner(fn, graph=True)[0])
                except RuntimeError as e:  # e.g. a ring deeper than this GPU's shared memory
                    print(f"  {layer.name} N={n} stages={stages} splits={splits}: {str(e).splitlines()[0][:80]}")
            best = min(times, key=times.get)
            cells = " ".join(f"{'*' if k == best else ''}s{k[0]}/k{k[1]}:{dense / t:.2f}" for k, t in times.items())
            default = times.get((0, 0), float("nan"))
            print(f"{layer.name:20s} N={n:3d} dense {dense:7.1f}us default {default:7.1f}us {dense / default:.2f}x | {cells}")


if __name__ == "__main__":
    main()
