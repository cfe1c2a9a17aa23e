"""Results out: a terminal table, JSON (list of records), CSV and a PNG of speedup vs tokens.

Record fields (one per op x backend x layer x N x level):
  device, torch, cuda, copy_gbps   where it ran; copy_gbps = device copy bandwidth (bytes read + written / s)
  op, backend, dtype, graph        spmm op benchmarked; who computed it; torch dtype; timed as CUDA-graph replays
  layer, M, K, N                   y[N, M] = x[N, K] @ W[M, K]^T + b
  sparsity, dense_fraction         fraction of zero weights; fraction of output rows kept dense (Spense)
  time_us, dense_us, speedup       median µs of this backend and of the dense baseline; speedup = dense_us / time_us
                                   (CPU: the median over rounds of the rounds' dense / backend ratios)
  threads, speedup_lo/hi, rounds   CPU: torch threads; the smallest and largest round's ratio; rounds timed
  gbps, pct_copy_bw                (weight_bytes + x + y bytes) / time, in GB/s and as % of copy_gbps
  tflops                           dense-equivalent 2*M*N*K / time, TFLOP/s
  weight_bytes                     bytes of the stored weight format
  max_abs_err, tol, correct        vs the fp32 reference; a wrong backend is not timed
  error                            why there is no time (failure or wrong result); None when fine
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import List

FIELDS = [
    "device", "torch", "cuda", "op", "backend", "dtype", "graph", "layer", "M", "K", "N", "sparsity",
    "dense_fraction", "threads", "time_us", "dense_us", "speedup", "speedup_lo", "speedup_hi", "rounds", "gbps",
    "copy_gbps", "pct_copy_bw", "tflops",
    "weight_bytes", "max_abs_err", "tol", "correct", "reps", "flush", "error",
]
DENSE = ("cublas", "torch_cpu")


def write_data(records: List[dict], out: Path, fields: List[str] = FIELDS, name: str = "bench") -> None:
    """JSON + CSV; cheap, so the sweep rewrites them after every case and a killed run keeps what it measured.
    `fields` and `name` let other suites (bench/e2e.py) write their own records the same way."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def _level(r: dict) -> str:
    if r["op"] == "tiled_csl_mm":
        return f"sparsity {r['sparsity']:g}"
    if r["op"] == "spense_mm":
        return f"dense rows {r['dense_fraction']:.3g}"
    return "2:4"


def plot(records: List[dict], path: Path) -> None:
    """Speedup vs tokens: one panel per (op, level, backend), one line per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (ScalarFormatter for plain token counts)

    panels: dict = {}
    for r in records:
        if r["backend"] not in DENSE and r["speedup"] is not None:
            key = (r["op"], _level(r), r["backend"] + (" (graph)" if r["graph"] else ""))
            panels.setdefault(key, {}).setdefault(r["layer"], []).append((r["N"], r["speedup"]))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    # tab20 pairs dark/light shades: the first ten layers get the dark ones, so few lines stay distinct.
    colors = {name: matplotlib.colormaps["tab20"]((2 * i) % 20 + (i // 10) % 2) for i, name in enumerate(layers)}
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows + 1), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if not panels:
        axes[0][0].text(0.5, 0.5, "no successful sparse measurement to plot", ha="center", va="center")
    for ax, ((op, level, backend), lines) in zip(axes.flat, panels.items()):  # in sweep order
        for layer, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=colors[layer], label=layer)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({n for pts in lines.values() for n, _ in pts}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"{op} · {level} · {backend}", fontsize=9)
        ax.set_xlabel("tokens N")
        ax.set_ylabel("speedup vs dense (x)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[name], marker="o", ms=3) for name in layers]
    fig.legend(handles, layers, loc="lower center", ncol=min(4, max(1, len(layers))), fontsize=8)
    r0 = records[0] if records else {}
    fig.suptitle(f"spmm vs dense · {r0.get('device', '')} · {r0.get('dtype', '')}", fontsize=10)
    legend_rows = math.ceil(len(layers) / 4)
    fig.tight_layout(rect=(0, min(0.4, 0.35 * legend_rows / (3.8 * rows + 1)) + 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _num(v) -> str:
    """Three significant digits without exponents: 3352, 41.7, 0.125."""
    return "-" if v is None else f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def table(records: List[dict]) -> str:
    us = "µs" if "utf" in (getattr(sys.stdout, "encoding", "") or "").lower() else "us"
    cols = [
        ("op", 12, lambda r: r["op"]), ("layer", 22, lambda r: r["layer"]),
        ("M", 6, lambda r: str(r["M"])), ("K", 6, lambda r: str(r["K"])), ("N", 5, lambda r: str(r["N"])),
        ("sparsity", 8, lambda r: _fmt(r["sparsity"], ".3g")), ("dense_rows", 10, lambda r: _fmt(r["dense_fraction"], ".3g")),
        ("backend", 21, lambda r: r["backend"] + ("*" if r["graph"] else "")),
        (f"time {us}", 10, lambda r: _fmt(r["time_us"], ".1f")), (f"dense {us}", 10, lambda r: _fmt(r["dense_us"], ".1f")),
        ("speedup x", 9, lambda r: _fmt(r["speedup"], ".2f")),
        ("range", 11, lambda r: f"{r['speedup_lo']:.2f}-{r['speedup_hi']:.2f}" if r.get("speedup_lo") else "-"),
        ("thr", 3, lambda r: str(r["threads"]) if r.get("threads") else "-"),
        ("GB/s", 7, lambda r: _num(r["gbps"])),
        ("% copy BW", 9, lambda r: _num(r["pct_copy_bw"])), ("TFLOP/s", 8, lambda r: _num(r["tflops"])),
    ]
    lines = ["  ".join(name.rjust(w) if i > 1 else name.ljust(w) for i, (name, w, _) in enumerate(cols)) + "  check"]
    for r in records:
        cells = [get(r).rjust(w) if i > 1 else get(r).ljust(w) for i, (_, w, get) in enumerate(cols)]
        check = "ok" if r["correct"] and not r["error"] else (r["error"] or "?")
        lines.append("  ".join(cells) + "  " + check[:90])
    return "\n".join(lines)


def legend(copy_gbps: float, cpu: bool = False) -> str:
    spread = (" CPU: speedup = median over rounds of interleaved reps (range = the extreme rounds); threads = torch's."
              if cpu else "")
    return ("* = timed as CUDA-graph replays. speedup = dense time / time. GB/s = (weight + x + y bytes) / time; "
            f"% copy BW is of the measured device copy bandwidth {copy_gbps:.0f} GB/s. "
            "TFLOP/s counts dense-equivalent 2*M*N*K." + spread)
