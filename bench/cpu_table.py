"""python -m bench.cpu_table RESULTS_JSON: the README's CPU tables from a `python -m bench --device cpu --full` file.

Kernels: one line per (dtype, format, threads); per token count the median over layers of the speedup against
dense F.linear (each layer's own figure is the median over rounds), with the smallest and largest layer's. Then the
same for torch's CSR path where it runs (fp32), and the MiniLM encode throughput per (threads, batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _fmt(values) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.2f}x" if len(values) == 1 else f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})"


def _format_name(r: dict) -> str:
    if r["op"] == "sparse24_mm":
        return "2:4"
    if r["op"] == "tiled_csl_mm":
        return f"unstructured {round(100 * r['sparsity'])}%"
    return f"Spense {round(100 * r['dense_fraction'])}% dense"


def kernel_table(records: list, backend: str = "spmm") -> str:
    rows = [r for r in records if r["backend"] == backend and r["speedup"] is not None and r["correct"]]
    tokens = sorted({r["N"] for r in rows})
    cells = defaultdict(list)
    for r in rows:
        cells[(r["dtype"].replace("torch.", ""), _format_name(r), r["threads"], r["N"])].append(r["speedup"])
    keys = sorted({k[:3] for k in cells}, key=lambda k: (k[0], k[2], k[1]))
    lines = ["| dtype | format | threads | " + " | ".join(f"N = {n}" for n in tokens) + " |",
             "|---|---|---|" + "---|" * len(tokens)]
    for dtype, fmt, threads in keys:
        lines.append(f"| {dtype} | {fmt} | {threads} | " +
                     " | ".join(_fmt(cells.get((dtype, fmt, threads, n), [])) for n in tokens) + " |")
    return "\n".join(lines)


def minilm_table(records: list) -> str:
    lines = ["| variant | threads | batch 1: sentences/s (x dense) | batch 32: sentences/s (x dense) |",
             "|---|---|---|---|"]
    by = {(r["variant"], r["threads"], r["batch"]): r for r in records}
    for variant in dict.fromkeys(r["variant"] for r in records):
        for threads in sorted({r["threads"] for r in records}):
            cells = []
            for batch in (1, 32):
                r = by.get((variant, threads, batch))
                cells.append("-" if r is None else
                             f"{r['sentences_per_s']:.1f} ({r['speedup']:.2f}x, {r['speedup_lo']:.2f}-{r['speedup_hi']:.2f})")
            lines.append(f"| {variant} | {threads} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    args = p.parse_args(argv)
    data = json.loads(args.results.read_text())
    meta = data["meta"]
    print(f"{meta['cpu'].get('model')} (family {meta['cpu'].get('family')}), CPU kernels {meta['cpu_kernels']}, "
          f"torch {meta['torch']}, load average {meta['load_average_before']} -> {meta['load_average_after']}, "
          f"{meta['minutes']} min: `{meta['command']}`\n")
    print("spmm (the layers as a model holds them) vs dense F.linear:\n")
    print(kernel_table(data["kernels"]))
    if any(r["backend"] == "torch_csr" and r["speedup"] for r in data["kernels"]):
        print("\ntorch's CSR path (to_sparse_csr + addmm; fp32 only) vs dense F.linear:\n")
        print(kernel_table(data["kernels"], "torch_csr"))
    if data.get("minilm"):
        print("\nall-MiniLM-L6-v2 encode throughput (fp32):\n")
        print(minilm_table(data["minilm"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
