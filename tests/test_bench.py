"""The benchmark harness on CPU: end to end on a tiny shape, and the rule that a wrong or failing backend is
reported as such and never timed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `bench` is a folder of the repository, not an installed package

from bench import backends as B  # noqa: E402
from bench.shapes import Layer  # noqa: E402
from bench.suites import SUITES, Runner  # noqa: E402
from bench.timing import Timer  # noqa: E402

REQUIRED = ["device", "torch", "cuda", "op", "backend", "dtype", "layer", "M", "K", "N", "sparsity",
            "dense_fraction", "dense_us", "time_us", "speedup", "speedup_lo", "speedup_hi", "rounds", "threads",
            "gbps", "copy_gbps", "pct_copy_bw", "tflops", "max_abs_err", "correct", "graph", "error"]


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_cpu_end_to_end(tmp_path, dtype):
    """The quick CPU run: bf16 by default (where torch's CSR path has no kernel: skipped), fp32 with torch_csr."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--shrink", "64", "--out", str(out)]
    cmd += ["--dtype", dtype] if dtype else []
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads((out / "bench.json").read_text())
    assert (out / "bench.csv").read_text().count("\n") == len(records) + 1
    assert (out / "speedup.png").stat().st_size > 1000
    ops = {"sparse24_mm", "tiled_csl_mm", "spense_mm"}
    backends = ("torch_cpu", "spmm") + (("torch_csr",) if dtype == "fp32" else ())
    assert {(r["op"], r["backend"]) for r in records} == {(op, b) for op in ops for b in backends}
    assert {r["N"] for r in records} == {1, 16}
    for r in records:
        assert set(REQUIRED) <= r.keys()
        assert r["error"] is None and r["correct"] is True, r
        assert r["time_us"] > 0 and r["dense_us"] > 0 and r["speedup"] > 0
        assert r["speedup_lo"] <= r["speedup"] <= r["speedup_hi"] and r["rounds"] == 1
        assert r["threads"] == torch.get_num_threads()
        assert r["gbps"] > 0 and r["tflops"] > 0 and 0 < r["pct_copy_bw"] and r["copy_gbps"] > 0
        assert r["dtype"] == ("torch.float32" if dtype else "torch.bfloat16") and r["graph"] is False
        assert r["cuda"] == torch.version.cuda
        assert r["M"] % 64 == 0 and r["K"] % 64 == 0 and r["M"] * r["K"] <= 2**16  # shrunk by 64
        assert 0 <= r["max_abs_err"] <= r["tol"]
    assert "skipped sparse24/cusparselt: needs a CUDA device" in proc.stdout
    if not dtype:
        assert "skipped sparse24/torch_csr: NotImplementedError" in proc.stdout
    assert "time µs" in proc.stdout or "time us" in proc.stdout


def test_wrong_or_failing_backend_is_reported_not_timed():
    wrong = B.Backend("wrong", lambda c: B.Prepared(lambda x: lambda: torch.zeros(x.shape[0], c.w.shape[0],
                                                                                   dtype=x.dtype), 0))
    failing = B.Backend("failing", lambda c: B.Prepared(lambda x: lambda: 1 / 0, 0))
    runner = Runner(Timer(torch.device("cpu"), reps=3, warmup=1), torch.float16, False,
                    dict(device="cpu", torch=torch.__version__, cuda=None, copy_gbps=1.0))
    records = []
    runner.run_case(SUITES["sparse24"], [wrong, failing], Layer("tiny", 64, 64), None, [4], records.extend)
    dense, w, f = records
    assert dense["backend"] == "torch_cpu" and dense["correct"] and dense["time_us"] > 0
    assert w["correct"] is False and w["time_us"] is None and w["speedup"] is None
    assert w["error"].startswith("wrong result")
    assert f["correct"] is None and f["time_us"] is None and f["error"].startswith("ZeroDivisionError")


def test_summary_medians_per_op_and_layer_wins():
    from bench.summary import summarize

    def rec(op, backend, layer, n, time_us, dense_us, correct=True):
        return {"op": op, "backend": backend, "layer": layer, "N": n, "sparsity": 0.8, "time_us": time_us,
                "speedup": dense_us / time_us, "pct_copy_bw": 50.0, "correct": correct, "error": None}

    records = [rec("tiled_csl_mm", "cublas", "a", 1, 10.0, 10.0)]
    records += [rec("tiled_csl_mm", "spmm", layer, 1, t, 10.0) for layer, t in (("a", 5.0), ("b", 8.0), ("c", 10.0))]
    records += [rec("tiled_csl_mm", "spmm_x", layer, 1, t, 10.0) for layer, t in (("a", 4.0), ("b", 9.0), ("c", 9.0))]
    records += [rec("sparse24_mm", "spmm", "a", 1, 2.0, 10.0), rec("sparse24_mm", "spmm", "b", 1, 1.0, 10.0, False)]
    lines = summarize(records).splitlines()
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert set(by_name) == {"sparse24_mm:spmm", "tiled_csl_mm:spmm", "tiled_csl_mm:spmm_x"}  # no dense rows
    assert "1.25x" in by_name["tiled_csl_mm:spmm"]       # median of 2.0, 1.25, 1.0
    assert "w2/3" in by_name["tiled_csl_mm:spmm_x"]      # faster than spmm on layers a and c
    assert "5.00x" in by_name["sparse24_mm:spmm"]        # the incorrect row is left out
