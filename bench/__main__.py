"""python -m bench [sparse24|tiled_csl|spense|all ...] [options]   (run from the repository root)

Without a GPU (or with --device cpu) it runs the CPU suite: the spmm reference ops vs torch's dense matmul on
scaled-down layers (--shrink 8, the two smallest layers, decode token counts); a few minutes on 2 cores.
Exit status: 0 fine, 1 aborted (broken CUDA context, Ctrl-C), 2 some backend computed a wrong result, or bad
arguments (one line on stderr says which).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from . import report
from . import shapes as S
from .suites import SUITES, Fatal, Runner
from .timing import Timer

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OUT = Path(__file__).with_name("out")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line on stderr and exit status 2 (argparse's own errors too), instead of the usage block."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _check_ranges(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.tokens is not None and min(args.tokens) < 1:
        p.error(f"--tokens must be positive token counts, got {args.tokens}")
    if args.sparsity is not None and not all(0.0 <= s < 1.0 for s in args.sparsity):
        p.error(f"--sparsity levels must lie in [0, 1), got {args.sparsity}")
    if args.dense_fraction is not None and not all(0.0 <= f <= 1.0 for f in args.dense_fraction):
        p.error(f"--dense-fraction values must lie in [0, 1], got {args.dense_fraction}")
    if args.shrink is not None and args.shrink < 1:
        p.error(f"--shrink must be >= 1, got {args.shrink}")
    if args.reps is not None and args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        p.error("--device cuda, but torch sees no CUDA device here (use --device cpu)")
    if args.graph and (args.device == "cpu" or not cuda):
        p.error("--graph needs a CUDA device")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"{', '.join(SUITES)} or all (default: all, which leaves out the tuning sweep sparse24_sm90)")
    p.add_argument("--layers", nargs="+", metavar="SUBSTR", help="keep layers whose name contains any of these")
    p.add_argument("--tokens", nargs="+", type=int, metavar="N", help="token counts (default: shapes.json's)")
    p.add_argument("--backends", nargs="+", metavar="NAME", help="run only these backends (the dense baseline always runs)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16")
    p.add_argument("--sparsity", nargs="+", type=float, metavar="S", help="tiled_csl levels (fraction of zeros)")
    p.add_argument("--dense-fraction", nargs="+", type=float, metavar="F", help="spense: fraction of rows kept dense")
    p.add_argument("--graph", action="store_true", help="time every backend as CUDA-graph replays")
    p.add_argument("--reps", type=int, help="timed repetitions, median reported (default 100 GPU, 10 CPU)")
    p.add_argument("--warmup", type=int, help="untimed repetitions first (default 10 GPU, 2 CPU)")
    p.add_argument("--flush", choices=["read", "write", "none"], default="read",
                   help="how caches are flushed before each rep (see bench/timing.py)")
    p.add_argument("--out", type=Path, default=OUT, help="where bench.json, bench.csv, speedup.png go")
    p.add_argument("--quick", action="store_true", help="a small subset: fewer layers, tokens, levels, reps")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--shrink", type=int, help="divide every layer's M and K by this (default 1 GPU, 8 CPU)")
    p.add_argument("--shapes", type=Path, default=S.SHAPES_JSON)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bad = [s for s in args.suites if s not in (*SUITES, "all")]
    if bad:
        p.error(f"unknown suite(s) {bad}; choose from {list(SUITES)} or all")
    _check_ranges(p, args)
    return args


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the device and on --quick."""
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    args.device = torch.device("cuda" if cuda else "cpu")
    shapes = S.load(args.shapes)
    q = args.quick
    if args.shrink is None:
        args.shrink = 1 if cuda else 8
    count = (2 if q else None) if cuda else (1 if q else 2)  # CPU: the smallest layers only
    args.layers = [S.shrink(l, args.shrink) for l in S.select_layers(shapes["layers"], args.layers, count)]
    if args.tokens is None:
        decode, prefill = shapes["decode_tokens"], shapes["prefill_tokens"]
        args.tokens = ([1, 16, 64, 2048] if q else decode + prefill) if cuda else ([1, 16] if q else decode)
    args.sparsity = args.sparsity or ([0.8] if q else shapes["unstructured_sparsity"])
    args.dense_fraction = args.dense_fraction or ([0.25] if q else shapes["spense_dense_fraction"])
    args.reps = args.reps or ((50 if q else 100) if cuda else (5 if q else 10))
    args.warmup = args.warmup if args.warmup is not None else ((5 if q else 10) if cuda else (1 if q else 2))
    names = args.suites if args.suites and "all" not in args.suites else [n for n, s in SUITES.items() if s.in_all]
    args.suites = [SUITES[n] for n in dict.fromkeys(names)]
    return args


def levels(suite, args):
    return {"tiled_csl_mm": args.sparsity, "spense_mm": args.dense_fraction}.get(suite.op, [None])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.machine()
    return f"cpu: {model}"


def main(argv=None) -> int:
    args = resolve(parse_args(argv))
    torch.manual_seed(args.seed)
    dtype = DTYPES[args.dtype]
    timer = Timer(args.device, args.reps, args.warmup, args.flush)
    copy_gbps = timer.copy_gbps()
    meta = dict(device=device_name(args.device), torch=torch.__version__, cuda=torch.version.cuda,
                copy_gbps=copy_gbps, reps=args.reps, flush=args.flush)
    print(f"{meta['device']} | torch {meta['torch']} cuda {meta['cuda']} | {dtype} | reps {args.reps} "
          f"(median), warm-up {args.warmup}, flush {args.flush} {timer.flush_bytes >> 20} MiB | "
          f"copy bandwidth {copy_gbps:.0f} GB/s")
    runner = Runner(timer, dtype, args.graph, meta)

    plan, skipped = [], []
    for suite in args.suites:
        avail = runner.available(suite)
        skipped += [f"{suite.name}/{name}: {why}" for name, why in avail.items() if why]
        usable = [b for b in suite.backends if avail[b.name] is None and (not args.backends or b.name in args.backends)]
        if usable:
            plan.append((suite, usable))
        else:
            skipped.append(f"{suite.name}: suite skipped, no backend besides the dense baseline runs here")
    for line in skipped:
        print(f"skipped {line}")

    records, problems, status = [], [], 0
    total = sum(len(args.layers) * len(levels(s, args)) * len(args.tokens) for s, _ in plan)
    try:
        # Logged (not a terminal): refresh rarely, so the bar does not bury the table in a captured log.
        with tqdm(total=total, unit="shape", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30) as bar:
            for suite, usable in plan:
                for layer in args.layers:
                    for level in levels(suite, args):
                        bar.set_postfix_str(f"{suite.name} {layer.name} {'' if level is None else level}")
                        before = bar.n
                        try:
                            runner.run_case(suite, usable, layer, level, args.tokens,
                                            lambda recs: (records.extend(recs), bar.update(1)))
                        except (Fatal, KeyboardInterrupt):
                            raise
                        except Exception as e:  # a case that cannot even be built (e.g. out of memory)
                            problems.append(f"{suite.name} {layer.name} level={level}: {type(e).__name__}: {e}")
                            tqdm.write(f"FAILED {problems[-1]}")
                            bar.update(len(args.tokens) - (bar.n - before))
                            runner.check_alive()
                        report.write_data(records, args.out)
    except Fatal as e:
        problems.append(f"aborted, CUDA context broken: {e}")
        status = 1
    except KeyboardInterrupt:
        problems.append("interrupted")
        status = 1

    report.write_data(records, args.out)
    report.plot(records, args.out / "speedup.png")
    print(report.table(records))
    print(report.legend(copy_gbps))
    if any(r["op"] == "spense_mm" for r in records):
        report.plot_spense(records, args.out / "spense.png")
        print("Spense: median speedup per dense fraction (its time over the ideal mix f x dense + (1 - f) x 2:4):")
        print(report.spense_table(records))
    for line in skipped:
        print(f"skipped {line}")
    failed = sorted({f"{r['op']}/{r['backend']}" for r in records if r["error"] and r["correct"] is not False})
    if failed:
        print(f"backends that failed on some shapes (error column / JSON 'error'): {', '.join(failed)}")
    wrong = [r for r in records if r["correct"] is False]
    if wrong:
        print(f"WRONG RESULTS: {len(wrong)} measurements ({sorted({r['op'] + '/' + r['backend'] for r in wrong})})")
        status = status or 2
    for line in problems:
        print(f"problem: {line}")
    spense_png = f", {args.out / 'spense.png'}" if any(r["op"] == "spense_mm" for r in records) else ""
    print(f"wrote {args.out / 'bench.json'}, {args.out / 'bench.csv'}, {args.out / 'speedup.png'}{spense_png}")
    return status


if __name__ == "__main__":
    sys.exit(main())
