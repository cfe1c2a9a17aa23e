"""python -m bench.plot_sparsity TILED_CSL_JSON [SPARSE24_JSON] --out PNG

Speedup over cuBLAS against sparsity, one line per token count N: the median over layers of a `tiled_csl` bench
run, and, if given, the 2:4 kernel's median at the same N from a `sparse24` run drawn at 50% (2:4 is 50% sparse),
so the crossover where unstructured Tiled-CSL overtakes 2:4 can be read off. Also prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def medians(path: Path, backend: str = "spmm"):
    """{N: {sparsity: median speedup}} of `backend`'s correct rows."""
    groups = defaultdict(list)
    for r in json.loads(Path(path).read_text()):
        if r.get("backend") == backend and r.get("speedup") and r.get("correct"):
            groups[(int(r["N"]), float(r["sparsity"]))].append(float(r["speedup"]))
    out = defaultdict(dict)
    for (n, s), v in sorted(groups.items()):
        out[n][s] = statistics.median(v)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.plot_sparsity", description=__doc__.splitlines()[0])
    p.add_argument("tiled_csl", type=Path)
    p.add_argument("sparse24", type=Path, nargs="?")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    tcsl = medians(a.tiled_csl)
    s24 = medians(a.sparse24) if a.sparse24 else {}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (n, curve) in enumerate(sorted(tcsl.items())):
        color = f"C{i}"
        xs = sorted(curve)
        ax.plot([100 * x for x in xs], [curve[x] for x in xs], marker="o", color=color, label=f"Tiled-CSL N={n}")
        line = f"N={n:3d}  Tiled-CSL " + "  ".join(f"{100 * x:.0f}%: {curve[x]:.2f}x" for x in xs)
        if n in s24:
            v = next(iter(s24[n].values()))
            ax.plot([50], [v], marker="*", markersize=13, color=color, linestyle="none", label=f"2:4 N={n}")
            line += f"   | 2:4: {v:.2f}x"
        print(line)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("speedup vs cuBLAS dense (median over layers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    rows = json.loads(Path(a.tiled_csl).read_text())
    ax.set_title(f"Tiled-CSL vs sparsity (2:4 as stars at 50%) · {rows[0].get('device', '') if rows else ''}",
                 fontsize=9)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
