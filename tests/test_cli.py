"""python -m spmm prune / info on small models saved by transformers (with a tokenizer made locally): the result
loads and generates like the same pruning done in Python; the tables of prune and info agree; every bad input gets
one clear line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spmm
from hf_helpers import greedy, model, save_tokenizer, text
from spmm import cli
from spmm.nn import SparseLinear, SpenseLinear, TiledCSLLinear


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A Llama saved by transformers, with its tokenizer."""
    path = tmp_path_factory.mktemp("llama")
    model("llama", seed=5).save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "calibration.txt"
    path.write_text(text(200))
    return path


def run_cli(*args: str):
    return subprocess.run([sys.executable, "-m", "spmm", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def table_rows(output: str):
    return [line for line in output.splitlines() if line.startswith("model.")]


@pytest.mark.slow
def test_prune_then_info_then_load(model_dir, text_file, tmp_path):
    out = tmp_path / "sparse"
    done = run_cli("prune", model_dir, out, "--format", "2:4", "--pruner", "sparsegpt", "--calibration", text_file,
                   "--tokens", 96, "--seqlen", 32)
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert len(rows) == 14 and all(" 2:4 " in row for row in rows)  # 7 linears x 2 layers; the head stays dense
    assert done.stdout.splitlines()[-1].startswith("total")
    info = run_cli("info", out)
    assert info.returncode == 0, info.stderr
    assert info.stdout == done.stdout  # the same table, read back from the file headers

    # the same pruning in Python, on the same calibration tokens, gives the same model
    tokenizer = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(model_dir)
    data = cli.calibration_batches(tokenizer, text_file, 96, 32)
    assert [b["input_ids"].shape for b in data] == [torch.Size([1, 32])] * 3
    expected = model("llama", seed=5)
    spmm.sparsify(expected, spmm.Sparse24Config(pruner="sparsegpt"), calibration=data,
                  filter_fn=lambda name, mod: name != "lm_head")
    loaded = spmm.from_pretrained(out)
    assert torch.equal(greedy(loaded), greedy(expected))
    errors = {row.name: row.output_error for row in spmm.summary(loaded).layers}
    assert errors == {row.name: row.output_error for row in spmm.summary(expected).layers}
    assert all(0 < e < 1 for e in errors.values())
    assert (out / "tokenizer.json").is_file()  # the tokenizer came along


@pytest.mark.parametrize("fmt, pruner, layer", [("unstructured:0.8", "magnitude", TiledCSLLinear),
                                                 ("spense:0.25", "wanda", SpenseLinear)])
def test_prune_other_formats_in_process(model_dir, text_file, tmp_path, capsys, fmt, pruner, layer):
    args = ["prune", str(model_dir), str(tmp_path / "out"), "--format", fmt, "--pruner", pruner]
    if pruner != "magnitude":
        args += ["--calibration", str(text_file), "--tokens", "64", "--seqlen", "16"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    loaded = spmm.from_pretrained(tmp_path / "out")
    sparse = [m for m in loaded.modules() if isinstance(m, SparseLinear)]
    assert len(sparse) == 14 and all(type(m) is layer for m in sparse)
    if layer is TiledCSLLinear:
        assert all(abs(m.weight_format.sparsity - 0.8) < 0.01 for m in sparse)
        assert all(row.endswith(" -") for row in table_rows(printed))  # no calibration: no error measured
    else:
        # dense rows in whole 16-row tiles (SpenseConfig's default tile): exactly 25% where that is whole tiles
        assert all(m.weight_format.num_dense_rows % spmm.ops.SPENSE_ROW_TILE == 0 for m in sparse)
        rows = {row.split()[0]: row for row in table_rows(printed)}
        whole = [name for name, m in loaded.named_modules() if m in sparse and m.out_features % 64 == 0]
        assert whole and all("spense 25.0% dense" in rows[name] for name in whole)
        assert all(m.output_error is not None for m in sparse)


# ---- bad inputs: one line on stderr, exit status 2

def expect_error(capsys, args, message):
    with pytest.raises(SystemExit) as raised:  # argparse's own errors exit through SystemExit(2)
        raise SystemExit(cli.main([str(a) for a in args]))
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_unknown_format_and_bad_numbers(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(capsys, ["prune", model_dir, out, "--format", "3:4"], "unknown format '3:4'; use 2:4, unstructured")
    expect_error(capsys, ["prune", model_dir, out, "--format", "unstructured:1.5"], "must be a number in [0, 1]")
    expect_error(capsys, ["prune", model_dir, out, "--format", "spense:x"], "must be a number in [0, 1]")
    expect_error(capsys, ["prune", model_dir, out, "--format", "2:4", "--tokens", "0"], "must be a positive integer")
    expect_error(capsys, ["prune", model_dir, out, "--format", "2:4", "--pruner", "wanda"],
                 "--pruner wanda needs calibration data: pass --calibration TEXT_FILE")
    expect_error(capsys, ["prune", model_dir, out, "--format", "2:4", "--tokens", "64"],
                 "--tokens and --seqlen choose calibration data: pass --calibration TEXT_FILE")
    expect_error(capsys, ["prune", model_dir, model_dir, "--format", "2:4"], "OUT_DIR must differ from MODEL_DIR")
    assert not out.exists()


def test_a_directory_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["prune", tmp_path / "empty", tmp_path / "out", "--format", "2:4"],
                 "is not a model directory (no config.json)")
    expect_error(capsys, ["prune", tmp_path / "missing", tmp_path / "out", "--format", "2:4"], "is not a directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    expect_error(capsys, ["prune", broken, tmp_path / "out", "--format", "2:4"], "transformers cannot read its config")
    no_weights = tmp_path / "no_weights"
    model("opt").config.save_pretrained(no_weights)
    expect_error(capsys, ["prune", no_weights, tmp_path / "out", "--format", "2:4"],
                 "transformers cannot load it as a causal LM")
    expect_error(capsys, ["info", tmp_path / "empty"], "holds no model.safetensors")
    expect_error(capsys, ["info", no_weights], "holds no model.safetensors")


def test_info_on_a_dense_model(model_dir, capsys):
    expect_error(capsys, ["info", model_dir], "holds no spmm-sparsified model")


def test_calibration_text_too_short_or_missing(model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text(text(50))
    expect_error(capsys, ["prune", model_dir, tmp_path / "out", "--format", "2:4", "--pruner", "wanda",
                          "--calibration", short, "--tokens", "64"],
                 "holds 50 tokens (by MODEL_DIR's tokenizer), fewer than --tokens 64")
    expect_error(capsys, ["prune", model_dir, tmp_path / "out", "--format", "2:4", "--calibration",
                          tmp_path / "none.txt"], "is not a file")
    no_tokenizer = tmp_path / "no_tokenizer"
    model("llama").save_pretrained(no_tokenizer)
    expect_error(capsys, ["prune", no_tokenizer, tmp_path / "out", "--format", "2:4", "--calibration", short,
                          "--tokens", "16"], "has no usable tokenizer")
    assert not (tmp_path / "out").exists()


def test_a_model_no_layer_of_which_the_format_can_take(tmp_path, capsys):
    odd = tmp_path / "odd"  # every linear reads 18, 6 or 30 features: none is a multiple of 4, as 2:4 needs
    model("llama", hidden_size=18, num_attention_heads=1, num_key_value_heads=1, head_dim=6,
          intermediate_size=30).save_pretrained(odd)
    for fmt in ("2:4", "spense:0.25"):
        expect_error(capsys, ["prune", odd, tmp_path / "out", "--format", fmt],
                     f"no linear layer of MODEL_DIR can take --format {fmt} (skipped 'model.layers.0.self_attn.q_proj' "
                     f"(SpenseConfig): 2:4 needs in_features % 4 == 0, got in_features=18; and 13 more)"
                     if fmt != "2:4" else "(skipped 'model.layers.0.self_attn.q_proj' (Sparse24Config)")
    assert not (tmp_path / "out").exists()
    assert cli.main(["prune", str(odd), str(tmp_path / "out"), "--format", "unstructured:0.5"]) == 0  # this one can
    capsys.readouterr()


@pytest.mark.slow
def test_exit_status_of_the_real_command(tmp_path):
    done = run_cli("prune", tmp_path, tmp_path / "out", "--format", "2:5")
    assert done.returncode == 2 and "unknown format '2:5'" in done.stderr
    done = run_cli("info", tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("python -m spmm info: error: OUT_DIR:")
