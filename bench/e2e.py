"""python -m bench.e2e [options]   (run from the repository root)

End-to-end decode speed of a Llama-style decoder (bench/decoder.py, random weights) with every block linear
dense, 2:4 (spmm.Sparse24Config), Spense with 25% dense rows (spmm.SpenseConfig) or 80% unstructured Tiled-CSL
(spmm.TiledCSLConfig); lm_head stays dense.
On CUDA: fp16, one decode step (greedy: the argmax is fed back, the position advances) captured in a CUDA graph
and replayed, CUDA events, median over --steps after --warmup. Without CUDA: the "tiny" preset in fp32, eager,
perf_counter (a smoke run, not a measurement). linear_share = time of all linears alone (same shapes, one
graph) / full step time. speedup = tokens/s / dense tokens/s at the same batch.
Exit status: 0 fine (skipped variants included), 2 some variant failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import spmm

from . import report
from .__main__ import device_name
from .decoder import PRESETS, Decoder, linears
from .timing import Timer

# variant -> (sparsify config or None for dense, op whose CUDA kernel it needs)
VARIANTS = {
    "dense": (None, None),
    "2:4": (spmm.Sparse24Config(), "sparse24_mm"),
    "spense25": (spmm.SpenseConfig(dense_fraction=0.25), "spense_mm"),
    "tcsl80": (spmm.TiledCSLConfig(sparsity=0.8), "tiled_csl_mm"),
}
FIELDS = ["device", "torch", "cuda", "preset", "variant", "dtype", "graph", "compiled", "batch", "context", "steps",
          "tokens_per_s", "step_ms", "linear_ms", "linear_share", "speedup", "linear_gb", "linear_resident_gb", "linear_gbps", "error"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OUT = Path(__file__).with_name("out") / "e2e"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, help="model shape (default: llama2-7b on CUDA, tiny on CPU)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8, 16], metavar="B")
    p.add_argument("--context", type=int, default=128, help="position of the first timed step (KV cache filled "
                   "up to here); attention reads the whole static cache, so this sets its cost")
    p.add_argument("--steps", type=int, help="timed decode steps, median reported (default 50 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 CUDA, 1 CPU)")
    p.add_argument("--dtype", choices=DTYPES, help="default fp16 on CUDA, fp32 on CPU")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--out", type=Path, default=OUT, help="where e2e.json, e2e.csv, e2e.png go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (fullgraph; inductor fuses the norms, rotary and other small "
                   "kernels between the linears) before it is captured in the CUDA graph")
    a = p.parse_args(argv)
    a.device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = a.device.type == "cuda"
    a.preset = a.preset or ("llama2-7b" if cuda else "tiny")
    a.dtype = DTYPES[a.dtype or ("fp16" if cuda else "fp32")]
    a.steps = a.steps or (50 if cuda else 5)
    a.warmup = a.warmup if a.warmup is not None else (10 if cuda else 1)
    if a.variants and a.variants[0] != "dense" and "dense" in a.variants:  # dense first: the others divide by it
        a.variants = ["dense"] + [v for v in a.variants if v != "dense"]
    return a


def build(preset: str, variant: str, device, dtype, seed: int) -> Decoder:
    """The same random weights for every variant (same seed); sparsified block by block as it is built."""
    config = VARIANTS[variant][0]
    torch.manual_seed(seed)
    transform = None if config is None else (lambda block: spmm.sparsify(block, config))
    return Decoder(PRESETS[preset], device=device, dtype=dtype, transform=transform).eval()


def linear_bytes(model: Decoder) -> int:
    """Stored weight bytes of all linears (a sparse layer's format only, not its kernel layouts)."""
    return sum(m.nbytes if hasattr(m, "nbytes") else m.weight.numel() * m.weight.element_size()
               for _, m in linears(model))


def linear_resident_bytes(model: Decoder) -> int:
    """Bytes all linears hold on the device: a sparse layer's resident_bytes (format, kernel layouts, bias), a dense
    one's weight and bias."""
    return sum(m.resident_bytes if hasattr(m, "resident_bytes")
               else sum(t.numel() * t.element_size() for t in m.parameters()) for _, m in linears(model))


def measure(model: Decoder, batch: int, timer: Timer, context: int, compile_step: bool = False):
    """(step µs, linears-alone µs) for one decode step at `batch`."""
    dev = model.lm_head.weight.device
    graph = timer.cuda
    model.setup_cache(batch, context + timer.warmup + timer.reps + 8)  # + graph warm-up runs on the side stream
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    pos = torch.full((1,), context, dtype=torch.long, device=dev)

    # compiled per batch size (static shapes); the timer's warm-up runs compile it before the graph capture
    decode = torch.compile(model.decode_step, fullgraph=True, dynamic=False) if compile_step else model.decode_step

    def step():
        logits = decode(tokens, pos)
        tokens.copy_(logits[:, -1].argmax(-1, keepdim=True))  # greedy decoding feeds its output back
        pos.add_(1)  # on the device: each replay decodes the next position
        return logits

    run, last = timer.runner(step, graph)
    pos.fill_(context)
    step_us = timer.time_us(run)
    if not torch.isfinite(last()).all():
        raise RuntimeError("non-finite logits")
    # The linears alone, same shapes and weights, as one graph: their share of the step without instrumenting it.
    pairs = [(m, torch.randn(batch, 1, m.in_features, device=dev, dtype=model.lm_head.weight.dtype))
             for _, m in linears(model)]
    run, _ = timer.runner(lambda: [m(x) for m, x in pairs], graph)
    return step_us, timer.time_us(run)


def add_speedups(records) -> None:
    dense = {r["batch"]: r["tokens_per_s"] for r in records if r["variant"] == "dense" and r["tokens_per_s"]}
    for r in records:
        base = dense.get(r["batch"])
        r["speedup"] = r["tokens_per_s"] / base if r["tokens_per_s"] and base else None


def table(records) -> str:
    cols = [("variant", 8, "variant", "s"), ("batch", 5, "batch", "d"), ("tokens/s", 10, "tokens_per_s", ".1f"),
            ("step ms", 9, "step_ms", ".3f"), ("linear ms", 9, "linear_ms", ".3f"),
            ("lin share", 9, "linear_share", ".1%"), ("speedup x", 9, "speedup", ".2f"),
            ("lin GB/s", 8, "linear_gbps", ".0f"), ("resid GB", 8, "linear_resident_gb", ".2f")]
    lines = ["  ".join(n.rjust(w) for n, w, _, _ in cols) + "  note"]
    for r in records:
        cells = ["-" if r[k] is None else format(r[k], f) for _, _, k, f in cols]
        lines.append("  ".join(c.rjust(w) for c, (_, w, _, _) in zip(cells, cols)) + "  " + (r["error"] or "ok"))
    return "\n".join(lines)


def plot(records, path: Path) -> None:
    """Tokens/s and speedup vs batch, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant in dict.fromkeys(r["variant"] for r in records):
        pts = sorted((r["batch"], r["tokens_per_s"], r["speedup"]) for r in records
                     if r["variant"] == variant and r["tokens_per_s"])
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=variant)
            axes[1].plot([p[0] for p in pts], [p[2] or float("nan") for p in pts], marker="o", label=variant)
    for ax, ylabel in zip(axes, ("decode tokens/s", "speedup vs dense (x)")):
        ax.set_xticks(sorted({r["batch"] for r in records}))
        ax.set_xlabel("batch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    r0 = records[0] if records else {}
    fig.suptitle(f"end-to-end decode · {r0.get('preset', '')} · {r0.get('device', '')} · {r0.get('dtype', '')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def main(argv=None) -> int:
    a = parse_args(argv)
    cuda = a.device.type == "cuda"
    # No flush: a decode step streams every weight once, far more than any cache; graph replays on CUDA.
    timer = Timer(a.device, a.steps, a.warmup, flush="none")
    meta = dict(device=device_name(a.device), torch=torch.__version__, cuda=torch.version.cuda, preset=a.preset,
                dtype=str(a.dtype), graph=cuda, compiled=a.compile, context=a.context, steps=a.steps)
    print(f"{meta['device']} | torch {meta['torch']} cuda {meta['cuda']} | {a.preset} {a.dtype} | "
          f"{'CUDA graph' if cuda else 'eager'} | median of {a.steps} steps after {a.warmup}")
    records, status = [], 0
    if a.compile:  # one compile per batch size and variant: keep them all compiled, never fall back to eager
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)

    def record(variant, batch, **kw):
        r = dict(meta, variant=variant, batch=batch, tokens_per_s=None, step_ms=None, linear_ms=None,
                 linear_share=None, speedup=None, linear_gb=None, linear_resident_gb=None, linear_gbps=None, error=None)
        r.update(kw)
        records.append(r)

    for variant in a.variants:
        op = VARIANTS[variant][1]
        if cuda and op and not spmm.ops.has_cuda_kernel(op):
            for b in a.batch:
                record(variant, b, error=f"skipped: spmm::{op} has no CUDA kernel in this build")
            print(f"skipped {variant}: spmm::{op} has no CUDA kernel in this build")
            continue
        model = None
        try:
            model = build(a.preset, variant, a.device, a.dtype, a.seed)
            gb, resident_gb = linear_bytes(model) / 1e9, linear_resident_bytes(model) / 1e9
            for b in a.batch:
                try:
                    step_us, lin_us = measure(model, b, timer, a.context, a.compile)
                    record(variant, b, tokens_per_s=b / step_us * 1e6, step_ms=step_us / 1e3,
                           linear_ms=lin_us / 1e3, linear_share=lin_us / step_us, linear_gb=gb,
                           linear_resident_gb=resident_gb, linear_gbps=gb / lin_us * 1e6)
                except Exception as e:  # one batch size failing (e.g. out of memory) keeps the others
                    record(variant, b, error=f"{type(e).__name__}: {e}"[:300])
                    status = 2
                last = records[-1]
                print(f"{variant} batch {b}: " + (last["error"] or f"{last['tokens_per_s']:.1f} tokens/s"))
        except Exception as e:  # the variant cannot even be built
            for b in a.batch:
                record(variant, b, error=f"{type(e).__name__}: {e}"[:300])
            print(f"FAILED {variant}: {records[-1]['error']}")
            status = 2
        finally:
            del model
            if a.compile:
                torch._dynamo.reset()  # compiled code holds the model (its guards): free it with the variant
            if cuda:
                torch.cuda.empty_cache()
        add_speedups(records)
        report.write_data(records, a.out, FIELDS, "e2e")  # after every variant: a killed run keeps its results

    add_speedups(records)
    report.write_data(records, a.out, FIELDS, "e2e")
    plot(records, a.out / "e2e.png")
    print(table(records))
    print("speedup = tokens/s / dense tokens/s (same batch); lin share = linears alone (lm_head included) / step; "
          "lin GB/s = stored linear weight bytes / linears-alone time; resid GB = what the linears hold on the device "
          "(kernel layouts included)")
    print(f"wrote {a.out / 'e2e.json'}, {a.out / 'e2e.csv'}, {a.out / 'e2e.png'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
