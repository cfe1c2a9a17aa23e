"""Medians over layers of a bench run: one line per (op, backend, sparsity), speedup vs dense and % of copy bandwidth
per token count, and how many layers each backend wins against the first one given.

    python -m bench.summary bench/out/bench.json [--backends spmm spmm_ring]
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from .report import DENSE


def summarize(records, backends=None):
    rows = [r for r in records if r["backend"] not in DENSE and r["correct"] and not r["error"]]
    # Ops share backend names (spmm): every line is one op's backend, compared with that op's first backend.
    ops_of = {r["op"] for r in rows}
    wanted = backends or sorted({r["backend"] for r in rows}, key=lambda b: (b != "spmm", b))
    names = [f"{op}:{b}" for op in sorted(ops_of) for b in wanted if any(r["op"] == op and r["backend"] == b for r in rows)]
    speed, copy, by_layer = defaultdict(list), defaultdict(list), {}
    for r in rows:
        key = (r["op"] + ":" + r["backend"], r["sparsity"], r["N"])
        speed[key].append(r["speedup"])
        copy[key].append(r["pct_copy_bw"])
        by_layer[key + (r["layer"],)] = r["time_us"]
    tokens = sorted({r["N"] for r in rows})
    lines = ["op:backend                  sparsity  " + "  ".join(f"N={n:<11}" for n in tokens)]
    for b in names:
        for s in sorted({r["sparsity"] for r in rows if f"{r['op']}:{r['backend']}" == b}):
            cells = []
            for n in tokens:
                v = speed.get((b, s, n))
                cells.append(f"{statistics.median(v):.2f}x {statistics.median(copy[(b, s, n)]):3.0f}%  " if v else "-" * 11)
                first = next(x for x in names if x.split(":")[0] == b.split(":")[0])  # the op's first backend
                if v and b != first:
                    base = [(l, t) for (bb, ss, nn, l), t in by_layer.items() if (bb, ss, nn) == (first, s, n)]
                    wins = sum(by_layer.get((b, s, n, l), float("inf")) < t for l, t in base)
                    cells[-1] = cells[-1].rstrip() + f" w{wins}/{len(base)} "
            lines.append(f"{b:<27} {s:<8}  " + "  ".join(cells))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path)
    p.add_argument("--backends", nargs="+", help="first = the one the others are compared to (default: spmm)")
    a = p.parse_args()
    print(summarize(json.loads(a.path.read_text()), a.backends))


if __name__ == "__main__":
    main()
