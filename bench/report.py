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
  weight_bytes                     bytes of the weight the backend's kernel reads per call (its stored layout)
  resident_bytes                   bytes the backend holds on the device for the weight: every layout and buffer,
                                   the bias (a layer's resident_bytes); compare with the dense baseline's
  max_abs_err, tol, correct        vs the fp32 reference; a wrong backend is not timed
  error                            why there is no time (failure or wrong result); None when fine
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

FIELDS = [
    "device", "torch", "cuda", "op", "backend", "dtype", "graph", "layer", "M", "K", "N", "sparsity",
    "dense_fraction", "threads", "time_us", "dense_us", "speedup", "speedup_lo", "speedup_hi", "rounds", "gbps",
    "copy_gbps", "pct_copy_bw", "tflops",
    "weight_bytes", "resident_bytes", "max_abs_err", "tol", "correct", "reps", "flush", "error",
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


# --------------------------------------------------------------------------------- Spense vs dense fraction -----
SPENSE, SPENSE_24 = "spmm", "spmm_sparse24"  # the spense suite's backends: SpenseLinear, Sparse24Linear beside it


def spense_sweep(records: List[dict]) -> Tuple[Dict[int, Dict[float, dict]], Dict[int, float]]:
    """Medians over layers of the spense suite, per N and dense fraction f: Spense's speedup over the dense baseline,
    the ideal mix's (time f x dense + (1 - f) x 2:4, both measured in the same case) and Spense's time over the ideal
    time; and per N the 2:4 layer's median speedup at the same shapes."""
    ok = [r for r in records if r["op"] == "spense_mm" and r["speedup"] and r["correct"] and not r["error"]]
    time_24 = {(r["layer"], r["N"], r["dense_fraction"]): r["time_us"] for r in ok if r["backend"] == SPENSE_24}
    cells: Dict[Tuple[int, float], List[dict]] = defaultdict(list)
    for r in ok:
        if r["backend"] == SPENSE:
            f, t24 = r["dense_fraction"], time_24.get((r["layer"], r["N"], r["dense_fraction"]))
            ideal_us = f * r["dense_us"] + (1 - f) * t24 if t24 else None
            cells[(r["N"], f)].append(dict(speedup=r["speedup"], time_us=r["time_us"], dense_us=r["dense_us"],
                                           ideal_us=ideal_us))
    sweep: Dict[int, Dict[float, dict]] = defaultdict(dict)
    for (n, f), rows in sorted(cells.items()):
        mixed = [c for c in rows if c["ideal_us"]]
        sweep[n][f] = dict(
            speedup=statistics.median(c["speedup"] for c in rows),
            of_ideal=statistics.median(c["time_us"] / c["ideal_us"] for c in mixed) if mixed else None,
            ideal_speedup=statistics.median(c["dense_us"] / c["ideal_us"] for c in mixed) if mixed else None,
        )
    by_n = defaultdict(list)
    for r in ok:
        if r["backend"] == SPENSE_24:
            by_n[r["N"]].append(r["speedup"])
    return dict(sweep), {n: statistics.median(v) for n, v in sorted(by_n.items())}


def spense_table(records: List[dict]) -> str:
    """One line per N: the 2:4 layer's speedup, then per dense fraction Spense's speedup and its time over the ideal
    mix's (1.00 = the mix exactly; the issue 17 target is <= 1.03)."""
    sweep, s24 = spense_sweep(records)
    lines = []
    for n, row in sweep.items():
        cells = [f"{100 * f:g}%: {v['speedup']:.2f}x" + (f" ({v['of_ideal']:.2f} of ideal)" if v["of_ideal"] else "")
                 for f, v in row.items()]
        lines.append(f"N={n:<5d} 2:4 {_fmt(s24.get(n), '.2f')}x | " + "  ".join(cells))
    return "\n".join(lines)


def plot_spense(records: List[dict], path: Path) -> None:
    """Speedup over cuBLAS against the dense fraction, one colour per N: Spense (solid), the ideal mix of cuBLAS and
    2:4 (dashed), the 2:4 layer (a star at 0%), dense (the line at 1.0); medians over layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, s24 = spense_sweep(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (n, row) in enumerate(sweep.items()):
        xs = sorted(row)
        ax.plot([100 * f for f in xs], [row[f]["speedup"] for f in xs], marker="o", color=f"C{i}", label=f"Spense N={n}")
        ideal = [(100 * f, row[f]["ideal_speedup"]) for f in xs if row[f]["ideal_speedup"]]
        if ideal:
            ax.plot(*zip(*ideal), ls="--", color=f"C{i}", alpha=0.6)
        if n in s24:
            ax.plot([0], [s24[n]], marker="*", markersize=13, color=f"C{i}", ls="none", label=f"2:4 N={n}")
    ax.axhline(1.0, color="k", lw=0.8, label="dense")
    ax.set_xlabel("dense rows (%)")
    ax.set_ylabel("speedup vs dense (median over layers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    r0 = records[0] if records else {}
    ax.set_title(f"Spense vs dense fraction (dashed: ideal mix) · {r0.get('device', '')} · {r0.get('dtype', '')}",
                 fontsize=9)
    fig.tight_layout()
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
