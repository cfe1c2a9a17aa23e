"""python -m bench.load_checks [--size 4096] [--reps 7] [--threads T] [--out FILE]: what each check of
spmm.load_sparsified costs on one layer of each format (CPU, fp16): the crc32 of the layer's tensors, format.validate(), and a whole load with
and without checksums, beside reading the file alone. Medians and min..max over the repetitions, interleaved."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

import spmm
from spmm.serialization import tensor_checksum

CONFIGS = {
    "2:4": spmm.Sparse24Config(),
    "tiled_csl 80%": spmm.TiledCSLConfig(sparsity=0.8),
    "tiled_csl 50%": spmm.TiledCSLConfig(sparsity=0.5),
    "spense 25% dense": spmm.SpenseConfig(dense_fraction=0.25),
}


def layer_model(size: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(size, size, dtype=torch.float16))


def timed(fn, setup=None) -> float:
    arg = setup() if setup else None  # untimed
    start = time.perf_counter()
    fn(arg) if setup else fn()
    return (time.perf_counter() - start) * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load_checks", description=__doc__)
    p.add_argument("--size", type=int, default=4096, help="the layer is size x size (default 4096)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"size": args.size, "dtype": "float16", "reps": args.reps, "torch_threads": torch.get_num_threads(),
               "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            model = spmm.sparsify(layer_model(args.size), config)
            path = Path(tmp) / "layer.safetensors"
            spmm.save_sparsified(model, path)
            fmt, tensors = model[0].weight_format, model.state_dict()
            fresh = lambda: layer_model(args.size)  # noqa: E731  (built untimed before each load)
            steps = {
                "read the file (safetensors load_file)": (lambda: load_file(str(path)), None),
                "crc32 of the layer's tensors": (lambda: [tensor_checksum(t) for t in tensors.values()], None),
                "validate()": (fmt.validate, None),
                "load_sparsified, checksums on": (lambda m: spmm.load_sparsified(m, path), fresh),
                "load_sparsified, checksums off": (lambda m: spmm.load_sparsified(m, path, verify_checksums=False),
                                                   fresh),
            }
            times = {step: [] for step in steps}
            for _ in range(args.reps):  # interleaved, so machine noise spreads over every step alike
                for step, (fn, setup) in steps.items():
                    times[step].append(timed(fn, setup))
            mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
            row = {"file_mb": round(mb, 1)}
            for step, ts in times.items():
                row[step] = {"median_ms": round(statistics.median(ts), 2), "min_ms": round(min(ts), 2),
                             "max_ms": round(max(ts), 2)}
            results["formats"][name] = row
            steps_text = [f"{s} {v['median_ms']:.1f} ms ({v['min_ms']:.1f}..{v['max_ms']:.1f})"
                          for s, v in row.items() if s != "file_mb"]
            print(f"{name} ({mb:.1f} MB): " + "; ".join(steps_text))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
