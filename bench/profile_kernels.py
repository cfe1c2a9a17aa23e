"""python -m bench.profile_kernels [--layers SUBSTR ...] [--tokens N ...] [--sparsity S]   (CUDA)

A driver for Nsight Compute: calls the 2:4 decode kernel and the Tiled-CSL kernel once per (layer, N), each call
inside an NVTX range named `spmm <kernel> <layer> N=<n>` (so the report says which launch is which). Run it under
ncu, e.g. scripts/device_profile.sh, which keeps only those kernels (`-k regex:...`) and lets ncu flush the caches
before every replay pass (its default), so the weights come from memory as in a model.
"""

from __future__ import annotations

import argparse

import torch

from . import problems as P
from .shapes import load


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="+", default=["llama2-7b.o", "llama2-7b.gate_up"])
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--sparsity", type=float, default=0.8, help="Tiled-CSL's unstructured sparsity")
    a = p.parse_args()
    from spmm import ops
    from spmm.formats import TiledCSLWeight, tiled_csl_layouts

    device, dtype = torch.device("cuda"), torch.float16
    for layer in load()["layers"]:
        if not any(s == layer.name for s in a.layers):
            continue
        case24 = P.sparse24_case(layer, dtype, device)
        dv, dm = ops.sparse24_decode_pack(*ops.sparse24_compress(case24.w, case24.mask))
        tcsl = P.tiled_csl_case(layer, dtype, device, a.sparsity)
        packed = ops.tiled_csl_compress(tcsl.w, tcsl.mask, 256, 64)
        words, word_offsets = ops.tiled_csl_words(*packed, 256, 64)
        delta = tiled_csl_layouts.delta_layout(TiledCSLWeight(*packed, (layer.M, layer.K)))
        calls = {
            "sparse24_decode": lambda x: ops.sparse24_decode_mm(x, dv, dm, layer.M, case24.bias),
            f"tiled_csl_{a.sparsity:g}": lambda x: ops.tiled_csl_mm(x, *packed, layer.M, 256, 64, tcsl.bias),
            f"tiled_csl_words_{a.sparsity:g}": lambda x: ops.tiled_csl_mm(x, *packed, layer.M, 256, 64, tcsl.bias,
                                                                          words=words, word_offsets=word_offsets),
            f"tiled_csl_delta_{a.sparsity:g}": lambda x: ops.tiled_csl_delta_mm(x, *delta, layer.M, tcsl.bias),
        }
        for n in a.tokens:
            x = P.activations(n, layer.K, dtype, device)
            for name, call in calls.items():
                torch.cuda.nvtx.range_push(f"spmm {name} {layer.name} N={n}")
                call(x)
                torch.cuda.nvtx.range_pop()
                torch.cuda.synchronize()
    print("profile_kernels: done")


if __name__ == "__main__":
    main()
