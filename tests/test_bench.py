"""The benchmark harness on CPU: end to end on a tiny shape, and the rule that a wrong or failing backend is
reported as such and never timed."""

import json
import re
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
            "gbps", "copy_gbps", "pct_copy_bw", "tflops", "weight_bytes", "resident_bytes", "max_abs_err", "correct",
            "graph", "error"]


@pytest.mark.slow
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
    expected = {(op, b) for op in ops for b in backends} | {("spense_mm", "spmm_sparse24")}
    assert {(r["op"], r["backend"]) for r in records} == expected
    assert (out / "spense.png").stat().st_size > 1000 and "Spense: median speedup per dense fraction" in proc.stdout
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
        assert r["resident_bytes"] >= r["weight_bytes"] > 0  # what it holds: at least what it reads, and the bias
    cuda_only = next(line for line in proc.stdout.splitlines() if line.startswith("skipped (needs a CUDA device): "))
    assert "sparse24/cusparselt" in cuda_only and "tiled_csl/spmm_delta" in cuda_only
    if not dtype:
        assert re.search(r"^skipped \(NotImplementedError: .*BFloat16.*\): sparse24/torch_csr", proc.stdout, re.M)
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


def test_spense_sweep_against_the_ideal_mix():
    """Spense's time over the ideal mix f x dense + (1 - f) x 2:4 (the same case's records), medians over layers."""
    from bench.report import spense_sweep, spense_table

    def rec(backend, layer, f, time_us, dense_us=10.0, n=1):
        return {"op": "spense_mm", "backend": backend, "layer": layer, "N": n, "dense_fraction": f,
                "time_us": time_us, "dense_us": dense_us, "speedup": dense_us / time_us, "correct": True,
                "error": None}

    records = [rec("spmm_sparse24", "a", 0.25, 6.0), rec("spmm", "a", 0.25, 7.7),  # ideal 7.0: 1.1x of it
               rec("spmm_sparse24", "b", 0.25, 5.0), rec("spmm", "b", 0.25, 6.25),  # ideal 6.25: exactly it
               rec("spmm_sparse24", "c", 0.25, 5.0), rec("spmm", "c", 0.25, 6.0),  # ideal 6.25: 0.96x of it
               rec("cublas", "a", 0.25, 10.0), rec("spmm", "d", 0.25, 1.0) | {"correct": False}]
    sweep, s24 = spense_sweep(records)
    cell = sweep[1][0.25]
    assert cell["of_ideal"] == pytest.approx(1.0)  # median of 1.1, 1.0, 0.96
    assert cell["speedup"] == pytest.approx(10 / 6.25)  # median of 10/7.7, 10/6.25, 10/6.0
    assert cell["ideal_speedup"] == pytest.approx(10 / 6.25)  # median of 10/7, 10/6.25, 10/6.25
    assert s24 == {1: pytest.approx(2.0)}
    assert "25%: 1.60x (1.00 of ideal)" in spense_table(records) and "2:4 2.00x" in spense_table(records)


BAD_ARGUMENTS = [
    (["--tokens", "0"], "--tokens must be positive token counts, got [0]"),
    (["--tokens", "1", "-3"], "--tokens must be positive"),
    (["--sparsity", "1.0"], "--sparsity levels must lie in [0, 1), got [1.0]"),
    (["--sparsity", "-0.1"], "--sparsity levels must lie in [0, 1)"),
    (["--sparsity", "nan"], "--sparsity levels must lie in [0, 1)"),
    (["--dense-fraction", "1.5"], "--dense-fraction values must lie in [0, 1], got [1.5]"),
    (["--shrink", "0"], "--shrink must be >= 1, got 0"),
    (["--reps", "0"], "--reps must be >= 1"),
    (["--tokens", "x"], "argument --tokens: invalid int value: 'x'"),
    (["nope"], "unknown suite(s) ['nope']"),
]


def test_bench_cli_rejects_bad_arguments_in_one_line_with_status_2(capsys):
    from bench.__main__ import parse_args

    cases = BAD_ARGUMENTS + ([] if torch.cuda.is_available() else
                             [(["--device", "cuda"], "--device cuda, but torch sees no CUDA device here"),
                              (["--graph"], "--graph needs a CUDA device")])
    for argv, message in cases:
        try:
            parse_args(argv)
        except SystemExit as e:
            assert e.code == 2, argv
        else:
            raise AssertionError(f"accepted {argv}")
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m bench: error: ") and message in err, err
    assert parse_args(["--tokens", "1", "--sparsity", "0", "0.9", "--dense-fraction", "0", "1", "--shrink", "1"])


def test_bench_cli_bad_argument_exit_status_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "bench", "--shrink", "0"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr == "python -m bench: error: --shrink must be >= 1, got 0 (see --help)\n"


def test_results_index_lists_every_results_file_and_no_other():
    """bench/results/README.md has a row for every file in bench/results/ and names none that is not there (first
    column: file names, `{a,b}` for alternatives, `.*` for a measurement's json/csv/png)."""
    import re

    results = REPO / "bench" / "results"
    patterns = []
    for line in (results / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            for name in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
                regex = re.escape(name).replace(r"\.\*", r"\.(json|csv|png)")
                regex = re.sub(r"\\\{([^}]*)\\\}", lambda m: "(" + m.group(1).replace(",", "|") + ")", regex)
                patterns.append((name, re.compile(regex)))
    files = sorted(p.name for p in results.iterdir() if p.name != "README.md" and not p.name.startswith("."))
    assert [f for f in files if not any(r.fullmatch(f) for _, r in patterns)] == []
    assert [n for n, r in patterns if not any(r.fullmatch(f) for f in files)] == []
