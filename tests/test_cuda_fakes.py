"""Each CUDA op of the 2:4 and Spense families against its fake (meta) implementation, which torch.compile traces
with: on awkward shapes (padding in every direction, empty weights, leading dims) the fake must promise exactly the
shapes and dtypes the real op returns. (opcheck checks the same on one shape per op, in the kernels' test files.)
The CPU side of this (the fakes against the kernels' exported size functions): tests/test_ops.py."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import spmm
from conftest import gen, int_weight, random_24_mask
from spmm import ops
from spmm.formats import SpenseWeight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
]

_spmm = torch.ops.spmm


def assert_fake_matches_real(op, *args):
    """op(*args) on the GPU, and op on fake copies of the same tensors: the same number of outputs, each of the same
    shape, dtype and device."""
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    real, fake = (list(t) if isinstance(t, (tuple, list)) else [t] for t in (real, fake))
    assert [(t.shape, t.dtype, t.device) for t in fake] == [(t.shape, t.dtype, t.device) for t in real], op


def canonical(m, k, dtype=torch.float16, seed=0):
    g = gen(seed)
    return ops.sparse24_compress(int_weight(m, k, dtype, g).cuda(), random_24_mask(m, k, g).cuda())


def activation(k, lead, dtype=torch.float16, seed=1):
    return torch.randint(-3, 4, (*lead, k), generator=gen(seed)).to(dtype).cuda()


def requires(op):
    return pytest.mark.skipif(not ops.has_cuda_kernel(op), reason=f"spmm::{op} is not in this build")


def device_runs(gemm, m, k):
    """Whether this device runs `gemm` ("sm90" or "sm80") for a weight [m, k] (the C++ rule, that family alone)."""
    major, minor = torch.cuda.get_device_capability()
    return spmm._C.sparse24_prefill_gemm(m, k, major * 10 + minor, gemm == "sm90", gemm == "sm80") == gemm


# (M, K): one group, a row past a 128-row group, K not a multiple of 8 / 64 / 128, and an empty weight.
SHAPES = [(1, 4), (129, 100), (300, 520), (64, 12), (0, 64)]
LEADS = [(1,), (7,), (2, 9), (65,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_sparse24_compress(dtype, m, k, with_mask):
    g = gen(2)
    mask = random_24_mask(m, k, g).cuda()
    dense = int_weight(m, k, dtype, g).cuda()
    if not with_mask:  # without a mask the op keeps the nonzeros: the weight must already be 2:4
        dense, mask = dense * mask, None
    assert_fake_matches_real(_spmm.sparse24_compress, dense, mask)


@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("meta_layout", [0, 1])
def test_sparse24_decode_pack(m, k, meta_layout):
    assert_fake_matches_real(_spmm._sparse24_decode_pack, *canonical(m, k), meta_layout)


@pytest.mark.parametrize("m,k", [s for s in SHAPES if s[0] > 0])
@pytest.mark.parametrize("lead", LEADS)
def test_sparse24_decode_mm_and_sparse24_mm(m, k, lead):
    values, meta = canonical(m, k)
    x, bias = activation(k, lead), int_weight(1, m, torch.float16, gen(3))[0].cuda()
    dvalues, dmeta = ops.sparse24_decode_pack(values, meta)
    assert_fake_matches_real(_spmm._sparse24_decode_mm, x, dvalues, dmeta, m, bias, "auto", 0)
    assert_fake_matches_real(_spmm.sparse24_mm, x, values, meta, bias)
    layouts = ops.sparse24_kernel_layouts(values, meta)
    assert_fake_matches_real(_spmm.sparse24_mm, x, values, meta, None, *layouts.values())


@pytest.mark.parametrize("gemm,m,k", [("sm90", 8, 16), ("sm90", 136, 400), ("sm90", 304, 208),
                                      ("sm80", 1, 4), ("sm80", 300, 100), ("sm80", 33, 520)])
def test_sparse24_gemm_pack_and_mm(gemm, m, k):
    """The prefill GEMMs' pack ops (Hopper: its metadata e; Ampere: a padded copy a, e) and matmuls."""
    if not ops.has_cuda_kernel(f"_sparse24_{gemm}_mm") or not device_runs(gemm, m, k):
        pytest.skip(f"this build or device does not run the {gemm} GEMM")
    values, meta = canonical(m, k)
    pack, mm = getattr(_spmm, f"_sparse24_{gemm}_pack"), getattr(_spmm, f"_sparse24_{gemm}_mm")
    assert_fake_matches_real(pack, values, meta)
    layout = pack(values, meta)
    layout = layout if isinstance(layout, tuple) else (values, layout)  # the Hopper GEMM reads the canonical values
    for lead in LEADS:
        assert_fake_matches_real(mm, activation(k, lead), *layout, m, None)


def spense(md, ms, k, seed=4):
    g = gen(seed)
    m = md + ms
    return SpenseWeight.from_dense(int_weight(m, k, torch.float16, g), torch.randperm(m, generator=g)[:md],
                                   random_24_mask(m, k, g)).to("cuda")


@pytest.mark.parametrize("md,ms,k", [(0, 40, 100), (16, 37, 256), (20, 0, 64), (70, 130, 520)])
@pytest.mark.parametrize("lead", LEADS)
def test_spense_mm(md, ms, k, lead):
    w = spense(md, ms, k)
    x = activation(k, lead)
    args = (x, w.dense, w.sparse.values, w.sparse.meta, w.row_index)
    assert_fake_matches_real(_spmm.spense_mm, *args)
    layouts = ops.sparse24_kernel_layouts(w.sparse.values, w.sparse.meta)
    assert_fake_matches_real(_spmm.spense_mm, *args, None, *layouts.values())


@requires("_spense_decode_mm")
@pytest.mark.parametrize("md,ms,k", [(0, 40, 100), (16, 37, 256), (20, 0, 64), (70, 130, 520)])
@pytest.mark.parametrize("lead", LEADS)
def test_spense_decode_mm(md, ms, k, lead):
    w = spense(md, ms, k)
    x = activation(k, lead)
    dense = w.dense if md > 0 else None
    assert_fake_matches_real(_spmm._spense_decode_mm, x, dense, w.sparse.values, w.sparse.meta, w.row_index, None,
                             None, "auto", 0)
    assert_fake_matches_real(_spmm._spense_decode_mm, x, None, w.sparse.values, w.sparse.meta, None, None, None,
                             "auto", 0)
