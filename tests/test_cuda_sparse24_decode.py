"""The 2:4 decode kernel (weight-streaming mma.sp) against torch.matmul on the dense masked weight."""

import pytest
import torch
import torch.nn.functional as F

import spmm
from conftest import cuda_int_case as int_case, gen, masked, masked_reference as reference, random_24_mask
from spmm import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
]

DTYPES = [torch.float16, torch.bfloat16]


def packed(w, mask, meta_layout=0):
    values, meta = ops.sparse24_compress(w, mask)
    return ops.sparse24_decode_pack(values, meta, meta_layout)


@pytest.mark.parametrize("meta_layout", [0, 1])
def test_metadata_register_layout(meta_layout):
    """Which lane/bit order mma.sp reads the metadata in: layout 0 is the one the kernel uses (layout 1, the
    alternative reading of the PTX figures, must then be wrong -- proving the test can tell them apart)."""
    w, mask, x, _ = int_case(64, 256, 8, torch.float16, 0)
    y = ops.sparse24_decode_mm(x, *packed(w, mask, meta_layout), 64)
    exact = torch.equal(y, reference(x, w, mask))
    assert exact == (meta_layout == 0), f"meta_layout {meta_layout} exact={exact}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", [(16, 128), (67, 260), (256, 4096), (4096, 4096), (11008, 512), (1024, 14336)])
@pytest.mark.parametrize("n", [1, 5, 8, 16, 33, 64, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_integer_inputs(dtype, mk, n, with_bias):
    w, mask, x, bias = int_case(*mk, n, dtype, hash((mk, n)) % 1000)
    b = bias if with_bias else None
    y = ops.sparse24_decode_mm(x, *packed(w, mask), mk[0], b)
    assert y.shape == (n, mk[0]) and y.dtype == dtype
    assert torch.equal(y, reference(x, w, mask, b))


LOADERS = ["cp_async"] + (["bulk"] if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 else [])


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", [(67, 260), (256, 4096), (4096, 4096), (11008, 512), (1024, 14336)])
@pytest.mark.parametrize("n", [1, 17, 33, 64, 100])
def test_each_loader_exact(loader, dtype, mk, n):
    """Both ways of filling the pipeline (sm_90 bulk copies with cluster split-K; the sm_80 path, cp.async with the
    global workspace split-K), whichever "auto" would pick on this GPU (test_exact_integer_inputs runs "auto")."""
    w, mask, x, bias = int_case(*mk, n, dtype, hash((mk, n, 2)) % 1000)
    y = ops.sparse24_decode_mm(x, *packed(w, mask), mk[0], bias, loader=loader)
    assert torch.equal(y, reference(x, w, mask, bias))


@pytest.mark.parametrize("splits", [1, 2, 3, 5, 8, 12])
@pytest.mark.parametrize("n", [1, 16, 40])
def test_every_split_factor_exact(splits, n):
    """The tuning knob: any split of K (up to 8 summed in a cluster on sm_90, more through the global workspace),
    including splits that leave some blocks a single 128-column chunk (K = 1536: 12 chunks)."""
    w, mask, x, bias = int_case(1024, 1536, n, torch.bfloat16, splits * 100 + n)
    y = ops.sparse24_decode_mm(x, *packed(w, mask), 1024, bias, splits=splits)
    assert torch.equal(y, reference(x, w, mask, bias))


def test_leading_dims_non_contiguous_and_unaligned_x():
    w, mask, x, bias = int_case(128, 512, 12, torch.float16, 3)
    dv, dm = packed(w, mask)
    x3 = x.reshape(3, 4, 512)
    assert torch.equal(ops.sparse24_decode_mm(x3, dv, dm, 128, bias), reference(x, w, mask, bias).reshape(3, 4, 128))
    strided = torch.stack([x, x], dim=-1).reshape(12, 1024)[:, ::2]  # x's values at a column stride of 2
    assert not strided.is_contiguous() and torch.equal(strided, x)
    assert torch.equal(ops.sparse24_decode_mm(strided, dv, dm, 128, bias), reference(x, w, mask, bias))
    shifted = torch.empty(12 * 512 + 1, dtype=x.dtype, device="cuda")[1:].view(12, 512)  # 2-byte aligned rows
    shifted.copy_(x)
    assert torch.equal(ops.sparse24_decode_mm(shifted, dv, dm, 128, bias), reference(x, w, mask, bias))


@pytest.mark.parametrize("dtype", DTYPES)
def test_real_values_within_twice_dense_error(dtype):
    g = gen(5)
    w = torch.randn(4096, 4096, generator=g).to(dtype).cuda()
    mask = random_24_mask(4096, 4096, g).cuda()
    x = torch.randn(16, 4096, generator=g).to(dtype).cuda()
    wm = masked(w, mask)
    ref = x.double() @ wm.double().T
    dense_err = (F.linear(x, wm).double() - ref).abs().max()
    y = ops.sparse24_decode_mm(x, *packed(w, mask), 4096)
    assert (y.double() - ref).abs().max() <= 2 * dense_err
    assert torch.equal(y, ops.sparse24_decode_mm(x, *packed(w, mask), 4096))  # deterministic split-K


def test_opcheck():
    w, mask, x, bias = int_case(64, 256, 5, torch.float16, 11)
    values, meta = ops.sparse24_compress(w, mask)
    torch.library.opcheck(torch.ops.spmm._sparse24_decode_pack, (values, meta, 0))
    dv, dm = ops.sparse24_decode_pack(values, meta)
    torch.library.opcheck(torch.ops.spmm._sparse24_decode_mm, (x, dv, dm, 64, bias, "auto"))
    torch.library.opcheck(torch.ops.spmm.sparse24_mm, (x, values, meta, bias))


def test_cuda_graph_capture():
    w, mask, x, bias = int_case(1024, 2048, 8, torch.float16, 7)
    dv, dm = packed(w, mask)
    static_x = x.clone()
    ops.sparse24_decode_mm(static_x, dv, dm, 1024, bias)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sparse24_decode_mm(static_x, dv, dm, 1024, bias)
    for sign in (-1, 1):
        static_x.copy_(sign * x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, reference(sign * x, w, mask, bias))


def test_rejects_bad_input():
    w, mask, x, _ = int_case(64, 256, 4, torch.float16, 9)
    dv, dm = packed(w, mask)
    with pytest.raises(TypeError, match=r"`dvalues` must be BFloat16"):
        ops.sparse24_decode_mm(x.bfloat16(), dv, dm, 64)
    with pytest.raises(ValueError, match=r"do not hold the decode layout of a 200 x 256 weight"):
        ops.sparse24_decode_mm(x, dv, dm, 200)
    with pytest.raises(ValueError, match=r"`loader` must be \"auto\", \"bulk\" or \"cp_async\", got \"tma\""):
        ops.sparse24_decode_mm(x, dv, dm, 64, loader="tma")
    with pytest.raises(TypeError, match=r"`x` must be float16 or bfloat16"):
        ops.sparse24_decode_mm(x.float(), dv.float(), dm, 64)
    with pytest.raises(ValueError, match=r"`splits` must be 0 \(the kernel's choice\) or 1\.\.2 .*got 3"):
        ops.sparse24_decode_mm(x, dv, dm, 64, splits=3)
