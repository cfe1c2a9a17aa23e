"""The Spense decode kernel's index math, checked on the CPU: csrc/kernels/spense/spense_decode_emulate.cpp replays
a whole launch (every block, stage, warp and lane) with the kernel's own address and fragment rules
(spense_decode_layout.h) around models of TMA, cp.async, ldmatrix, mma.sp and mma.sync written from the PTX ISA, on
a SpenseWeight packed by the library; its y must equal x @ W.to_dense().T (+ bias) exactly (small integers), every
output written once. Deliberate mistakes in the emulation (mutations) must be caught, so the check can fail."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gen, int_weight, random_24_mask

from spmm.formats import SpenseWeight

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc/kernels/spense/spense_decode_emulate.cpp"
HEADERS = [ROOT / "csrc/kernels/spense/spense_decode_layout.h", ROOT / "csrc/kernels/spense/spense_tiles.h",
           ROOT / "csrc/kernels/sparse24/sparse24_layout.h"]
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"needs a C++ compiler ({CXX})")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in [SOURCE, *HEADERS])).hexdigest()[:12]
    exe = tmp_path_factory.mktemp("emulator") / f"spense_decode_emulate_{digest}"
    subprocess.run([CXX, "-std=c++17", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}", str(SOURCE), "-o", str(exe)],
                   check=True)
    return exe


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.int16).numpy().tobytes()


def run_emulator(exe: Path, tmp_path: Path, *, x, dense, values, meta, row_index, bias, dtype, splits, tma,
                 fragments=False, cluster=True, dense_ld=None, x_ld=None, y_ld=None, mutation=0):
    md, k = dense.shape
    ms = values.shape[0]
    n, m = x.shape[0], md + ms
    dense_ld = dense_ld or k
    x_ld = x_ld or k
    y_ld = y_ld or m
    header = [md, ms, k, n, int(dtype == torch.bfloat16), int(bias is not None), int(row_index is not None), splits,
              int(tma), int(fragments), int(cluster), dense_ld, x_ld, y_ld, mutation, 0]
    dense_p = torch.zeros(md, dense_ld, dtype=dtype)
    dense_p[:, :k] = dense
    x_p = torch.zeros(n, x_ld, dtype=dtype)
    x_p[:, :k] = x
    blob = struct.pack("<16q", *header) + bits(dense_p) + bits(values) + meta.contiguous().numpy().tobytes() + bits(x_p)
    if bias is not None:
        blob += bits(bias)
    if row_index is not None:
        blob += row_index.contiguous().numpy().tobytes()
    problem, out = tmp_path / "problem.bin", tmp_path / "y.bin"
    problem.write_bytes(blob)
    proc = subprocess.run([str(exe), str(problem), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.returncode, proc.stderr, None, None
    raw = out.read_bytes()
    y = torch.from_numpy(np.frombuffer(raw[: 4 * n * y_ld], dtype=np.float32).copy()).reshape(n, y_ld)
    writes = torch.from_numpy(np.frombuffer(raw[4 * n * y_ld:], dtype=np.int32).copy()).reshape(n, y_ld)
    return 0, proc.stderr, y, writes


def spense_case(md, ms, k, n, dtype, seed, with_bias=True, permute=True):
    """A SpenseWeight of small integers (md dense rows at random positions, the rest 2:4 under a random mask),
    x and bias: every product and sum is exact in fp32."""
    g = gen(seed)
    m = md + ms
    w = int_weight(m, k, dtype, g)
    mask = random_24_mask(m, k, g)
    dense_rows = torch.randperm(m, generator=g)[:md] if permute else torch.arange(md)
    weight = SpenseWeight.from_dense(w, dense_rows, mask)
    x = torch.randint(-3, 4, (n, k), generator=g).to(dtype)
    bias = int_weight(1, m, dtype, g)[0] if with_bias else None
    return weight, x, bias


def check(exe, tmp_path, weight, x, bias, dtype, **kw):
    rc, err, y, writes = run_emulator(exe, tmp_path, x=x, dense=weight.dense, values=weight.sparse.values,
                                      meta=weight.sparse.meta, row_index=weight.row_index, bias=bias, dtype=dtype, **kw)
    assert rc == 0, err
    m = weight.shape[0]
    ref = x.double() @ weight.to_dense().double().T
    if bias is not None:
        ref = ref + bias.double()
    assert torch.equal(writes[:, :m], torch.ones_like(writes[:, :m])), "every output written exactly once"
    assert int(writes[:, m:].sum()) == 0, "nothing written past the output rows (y_ld padding)"
    assert torch.equal(y[:, :m].double(), ref), f"max |diff| {float((y[:, :m].double() - ref).abs().max())}"


# (md, ms): dense fraction 0, one row tile, 12.5%, 25%, 50%, 100%; M and Md not multiples of 16.
MIXES = [(0, 256), (16, 240), (32, 224), (64, 192), (128, 128), (256, 0), (20, 37), (70, 130), (0, 5)]


@pytest.mark.parametrize("md,ms", MIXES)
@pytest.mark.parametrize("tma", [True, False])
def test_mixes(emulator, tmp_path, md, ms, tma):
    weight, x, bias = spense_case(md, ms, 256, 3, torch.float16, md * 1000 + ms)
    check(emulator, tmp_path, weight, x, bias, torch.float16, splits=1, tma=tma)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 33, 64, 70])
def test_token_counts(emulator, tmp_path, n):
    """Every token-tile config (1, 2, 4, 8 tiles of 8), and N > 64 (the launcher's slices)."""
    weight, x, bias = spense_case(48, 100, 128, n, torch.bfloat16, n)
    check(emulator, tmp_path, weight, x, bias, torch.bfloat16, splits=1, tma=True)


@pytest.mark.parametrize("k", [4, 36, 72, 160, 200, 264, 1056])
@pytest.mark.parametrize("tma", [True, False])
def test_k_tails(emulator, tmp_path, k, tma):
    """K not a multiple of the 128-column chunk; the cp.async path also at strides that need 8- and 4-byte pieces
    (K % 16 != 0) and byte loads of the metadata (ceil(K / 8) odd), and K % 8 == 4 (a spare metadata nibble)."""
    if tma and (k % 16 or ((k + 7) // 8) % 16):
        pytest.skip("TMA needs 16-byte row strides (the launcher takes cp.async there)")
    weight, x, bias = spense_case(24, 40, k, 5, torch.float16, k)
    check(emulator, tmp_path, weight, x, bias, torch.float16, splits=1, tma=tma)


@pytest.mark.parametrize("splits", [2, 3, 5, 8])
@pytest.mark.parametrize("cluster", [True, False])
def test_split_k(emulator, tmp_path, splits, cluster):
    """Split-K: each block of a cluster sums its share; or one block sums all (the workspace path)."""
    weight, x, bias = spense_case(70, 150, 1024, 11, torch.float16, splits)
    check(emulator, tmp_path, weight, x, bias, torch.float16, splits=splits, tma=cluster, cluster=cluster)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dtypes_bias_and_strides(emulator, tmp_path, dtype, with_bias):
    """Rows of x, y and the dense block with leading dimensions past K / M."""
    weight, x, bias = spense_case(40, 88, 384, 10, dtype, int(with_bias), with_bias=with_bias)
    check(emulator, tmp_path, weight, x, bias, dtype, splits=2, tma=False, dense_ld=392, x_ld=400, y_ld=140)


def test_identity_row_index(emulator, tmp_path):
    weight, x, bias = spense_case(32, 96, 256, 4, torch.float16, 5, permute=False)
    rc, err, y, writes = run_emulator(emulator, tmp_path, x=x, dense=weight.dense, values=weight.sparse.values,
                                      meta=weight.sparse.meta, row_index=None, bias=bias, dtype=torch.float16,
                                      splits=1, tma=True)
    assert rc == 0, err
    ref = x.double() @ weight.to_dense().double().T + bias.double()
    assert torch.equal(y.double(), ref) and bool((writes == 1).all())


@pytest.mark.parametrize("tma", [True, False])
def test_fragment_metadata(emulator, tmp_path, tma):
    """The optional fragment-order metadata (sparse24_decode_pack's layout) read instead of the canonical bytes."""
    weight, x, bias = spense_case(20, 300, 416, 9, torch.float16, 9)
    check(emulator, tmp_path, weight, x, bias, torch.float16, splits=3, tma=tma, fragments=True)


@pytest.mark.parametrize("mutation,what", [(1, "metadata halves of the other lane"), (2, "A read unswizzled"),
                                           (3, "zero-filled metadata codes left invalid"),
                                           (4, "dense half-chunks not summed")])
def test_mutations_are_caught(emulator, tmp_path, mutation, what):
    """Each deliberate mistake makes the emulated launch wrong (or trips the mma.sp code check)."""
    weight, x, bias = spense_case(20, 37, 200, 3, torch.float16, 1)
    rc, err, y, writes = run_emulator(emulator, tmp_path, x=x, dense=weight.dense, values=weight.sparse.values,
                                      meta=weight.sparse.meta, row_index=weight.row_index, bias=bias,
                                      dtype=torch.float16, splits=1, tma=False, mutation=mutation)
    if rc != 0:
        assert rc == 3 and mutation in (1, 3), (rc, err)
        return
    ref = x.double() @ weight.to_dense().double().T + bias.double()
    assert not torch.equal(y.double(), ref), f"mutation {what} went unnoticed"
