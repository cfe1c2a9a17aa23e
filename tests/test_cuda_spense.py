"""spense_mm and SpenseLinear on CUDA (the composed path: the 2:4 rows through the 2:4 dispatch, the dense rows
through cuBLAS, each into its own columns of y) against torch.matmul on the dense masked weight (fp32 reference):
every dense fraction from none to all, random row_index, N = 1 .. 2048, K off the tiles, fp16/bf16, bias or not,
strided x; the 2:4 path the rule picks; CUDA graphs, torch.compile, opcheck, backward; bad input named as on CPU."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spmm
from conftest import (assert_exact_on_leading_dims_strided_x_and_graph, cuda_kernel_names, gen, int_weight,
                      random_24_mask, sparse24_path)
from spmm import ops
from spmm.formats import SpenseWeight
from spmm.nn import SpenseLinear

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
    pytest.mark.usefixtures("cublas_fp32_reductions"),  # the dense rows compare exactly too
]

DTYPES = [torch.float16, torch.bfloat16]
TILE = ops.SPENSE_ROW_TILE
# fraction of dense rows -> how many of M: none, one row tile, 12.5%, 25%, 50%, all
FRACTIONS = ["none", "one_tile", 0.125, 0.25, 0.5, 1.0]


def dense_row_count(fraction, m):
    if fraction == "none":
        return 0
    return TILE if fraction == "one_tile" else round(fraction * m)


def int_case(m, k, tokens, dtype, fraction, seed):
    """Small-integer weight (exact in fp32 accumulation), a 2:4 mask, random dense rows (random row_index order),
    x, bias; on the GPU. Returns the SpenseWeight, its dense masked weight, x and bias."""
    g = gen(seed)
    w, mask = int_weight(m, k, dtype, g), random_24_mask(m, k, g)
    rows = torch.randperm(m, generator=g)[: dense_row_count(fraction, m)]
    fmt = SpenseWeight.from_dense(w.cuda(), rows.cuda(), mask.cuda())
    x = torch.randint(-3, 4, (*tokens, k), generator=g).to(dtype).cuda()
    bias = int_weight(1, m, dtype, g)[0].cuda()
    return fmt, fmt.to_dense(), x, bias


def reference(x, full, bias=None):
    y = x.float() @ full.float().T
    return (y if bias is None else y + bias.float()).to(x.dtype)


def layer_of(fmt, bias):
    return SpenseLinear.from_format(fmt, bias)


# ------------------------------------------------------------------------------------------------- exactness -----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", [(256, 260), (4096, 1040)])  # K off the 128-column chunk (and off 16 for the first)
@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("n", [1, 7, 16, 33, 64, 2048])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_exact(dtype, mk, fraction, n, with_bias):
    fmt, full, x, bias = int_case(*mk, (n,), dtype, fraction, hash((mk, n, str(fraction))) % 997)
    b = bias if with_bias else None
    layer = layer_of(fmt, b)
    assert (layer.dvalues is not None) == (fmt.sparse.shape[0] > 0)  # the 2:4 block's layouts, where it has rows
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (n, mk[0]) and y.dtype == dtype
    assert torch.equal(y, reference(x, full, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fraction", ["one_tile", 0.25, 1.0])
@pytest.mark.parametrize("n", [1, 33, 2048])
def test_op_without_layouts_exact(dtype, fraction, n):
    """The functional op packs the 2:4 block's kernel layout for the call; same results."""
    fmt, full, x, bias = int_case(512, 1024, (n,), dtype, fraction, n)
    y = ops.spense_mm(x, fmt.dense, fmt.sparse.values, fmt.sparse.meta, fmt.row_index, bias)
    assert torch.equal(y, reference(x, full, bias))


def test_leading_dims_strided_x_graph_and_empty_x():
    fmt, full, x, bias = int_case(384, 512, (48,), torch.float16, 0.25, 5)
    layer = layer_of(fmt, bias)
    with torch.no_grad():  # x under leading dims, a column-strided x, a CUDA graph replayed after x changes
        assert_exact_on_leading_dims_strided_x_and_graph(layer, full, torch.ones_like(full, dtype=torch.bool), x, bias)
        assert layer(x[:0]).shape == (0, 384)


@pytest.mark.parametrize("dtype", DTYPES)
def test_real_values_within_twice_dense_error(dtype):
    g = gen(6)
    w = (torch.randn(2048, 4096, generator=g) * 0.02).to(dtype).cuda()
    mask = spmm.pruning.magnitude_mask(w, "2:4")
    fmt = SpenseWeight.from_dense(w, torch.randperm(2048, generator=g)[:512].cuda(), mask)
    full = fmt.to_dense()
    x = torch.randn(37, 4096, generator=g).to(dtype).cuda()
    ref = x.double() @ full.double().T
    dense_err = (F.linear(x, full).double() - ref).abs().max()
    err = (layer_of(fmt, None)(x).double() - ref).abs().max()
    assert err <= 2 * dense_err


# ------------------------------------------------------------------------------------------------ dispatch -------
@pytest.mark.parametrize("n", [1, 16, 17, 2048])
def test_each_token_count_takes_the_path_the_rule_picks(n):
    """Where the 2:4 rule would run the layer's whole shape (4096 x 4096) through the decode kernel, one launch of the
    Spense decode kernel; above, the 2:4 block (3072 x 4096 at 25% dense rows) runs the GEMM the rule names for its
    layouts and the dense rows run cuBLAS beside it."""
    fmt, full, x, bias = int_case(4096, 4096, (n,), torch.float16, 0.25, n)
    layer = layer_of(fmt, bias)
    gemm = "sm90" if layer.sm90_e is not None else "sm80" if layer.sm80_a is not None else None
    with torch.no_grad():
        names = cuda_kernel_names(lambda: layer(x))
        if ops.sparse24_pick_kernel(4096, 4096, n, True, gemm) == "decode":
            assert any("spense_decode_kernel" in name for name in names), names
            assert not any("decode_mm_kernel" in name or "Sparse" in name or "gemm" in name.lower() for name in names)
        else:
            assert sparse24_path(names) == ops.sparse24_pick_kernel(3072, 4096, n, True, gemm), names
        assert torch.equal(layer(x), reference(x, full, bias))


# ------------------------------------------------------------------------------ graphs, compile, opcheck, grad -----
def test_capture_before_any_call_asks_for_one():
    """row_index is read back once (a sync), which a capture forbids: a capture that comes first is refused, named."""
    fmt, _, x, bias = int_case(512, 1024, (16,), torch.float16, 0.25, 8)
    layer = layer_of(fmt, bias)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match=r"`row_index` must be checked .* make one call with this row_index"):
        with torch.no_grad(), torch.cuda.graph(graph):
            layer(x)


def test_compile_fullgraph():
    fmt, full, x, bias = int_case(512, 1024, (9,), torch.float16, 0.25, 9)
    layer = layer_of(fmt, bias)
    with torch.no_grad():
        assert torch.equal(torch.compile(layer, fullgraph=True)(x), reference(x, full, bias))


@pytest.mark.parametrize("n", [1, 100])
def test_opcheck_with_and_without_layouts(n):
    fmt, _, x, bias = int_case(256, 512, (n,), torch.float16, 0.25, 10)
    layouts = ops.sparse24_kernel_layouts(fmt.sparse.values, fmt.sparse.meta)
    args = (x, fmt.dense, fmt.sparse.values, fmt.sparse.meta, fmt.row_index, bias)
    torch.library.opcheck(torch.ops.spmm.spense_mm, (*args, *layouts.values()))
    torch.library.opcheck(torch.ops.spmm.spense_mm, args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 16, 2048])
def test_backward_matches_the_dense_masked_layer(dtype, n):
    g = gen(n)
    w = (torch.randn(1024, 2048, generator=g) * 0.05).to(dtype).cuda()
    mask = spmm.pruning.magnitude_mask(w, "2:4")
    fmt = SpenseWeight.from_dense(w, torch.randperm(1024, generator=g)[:256].cuda(), mask)
    bias = (0.1 * torch.randn(1024, generator=g)).to(dtype).cuda()
    layer = layer_of(fmt, bias)
    dense = layer.to_dense_linear()
    layer.bias.requires_grad_(True)
    x = torch.randn(n, 2048, generator=g).to(dtype).cuda().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad_out = torch.randn(n, 1024, generator=g).to(dtype).cuda()
    layer(x).backward(grad_out)
    dense(x_ref).backward(grad_out)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, **tol)


def test_sparsified_model_memory_and_resident_bytes():
    """SpenseConfig on the GPU: each layer holds its format, the 2:4 block's kernel layouts and its bias; the GPU
    memory the layers take is their resident_bytes (up to the allocator's rounding)."""
    import gc

    model = nn.Sequential(nn.Linear(1024, 2048), nn.GELU(), nn.Linear(2048, 512)).half().cuda()
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    spmm.sparsify(model, spmm.SpenseConfig(dense_fraction=0.25))
    gc.collect()
    torch.cuda.synchronize()
    sparse_bytes = torch.cuda.memory_allocated() - before + dense_bytes
    resident = model[0].resident_bytes + model[2].resident_bytes
    assert abs(sparse_bytes - resident) <= 512 * 20, (sparse_bytes, resident)


# ----------------------------------------------------------------------------------------------- bad input -------
@pytest.fixture
def operands():
    fmt, _, x, bias = int_case(64, 128, (3,), torch.float16, 0.25, 11)
    return x, fmt.dense, fmt.sparse.values, fmt.sparse.meta, fmt.row_index


def _duplicate_row(r):
    bad = r.clone()
    bad[1] = bad[0]
    return bad


def _row_out_of_range(r):
    bad = r.clone()
    bad[0] = r.numel()
    return bad


# (error, message, the call on the operands x, dense_weight, values, meta, row_index)
BAD_INPUT = [
    (ValueError, r"`row_index` names output row \d+ twice; it must be a permutation",
     lambda x, d, v, m, r: ops.spense_mm(x, d, v, m, _duplicate_row(r))),
    (ValueError, r"`row_index`\[0\] = 64 is outside \[0, 64\)",
     lambda x, d, v, m, r: ops.spense_mm(x, d, v, m, _row_out_of_range(r))),
    (ValueError, r"`dense_weight` must have K = 128 columns",
     lambda x, d, v, m, r: ops.spense_mm(x, d[:, :64].contiguous(), v, m, r)),
    (TypeError, r"`dense_weight` must be Half", lambda x, d, v, m, r: ops.spense_mm(x, d.bfloat16(), v, m, r)),
    (TypeError, r"`values` must be Half", lambda x, d, v, m, r: ops.spense_mm(x, d, v.bfloat16(), m, r)),
    (TypeError, r"`row_index` must be Int", lambda x, d, v, m, r: ops.spense_mm(x, d, v, m, r.long())),
    (ValueError, r"`row_index` must have one entry per output row",
     lambda x, d, v, m, r: ops.spense_mm(x, d, v, m, r[:-1])),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUT)))
def test_bad_input_is_named_as_on_cpu(operands, case):
    error, message, call = BAD_INPUT[case]
    ops.spense_mm(*operands)  # nothing wrong with the operands themselves
    for device in ("cuda", "cpu"):
        with pytest.raises(error, match=r"spmm::spense_mm: " + message):
            call(*(t.to(device) for t in operands))


def test_cuda_only_rules(operands):
    x, dense, values, meta, row_index = operands
    with pytest.raises(TypeError, match=r"spmm::spense_mm: `x` must be float16 or bfloat16"):
        ops.spense_mm(x.float(), dense.float(), values.float(), meta, row_index)
    layouts = ops.sparse24_kernel_layouts(values, meta)
    with pytest.raises(ValueError, match=r"spmm::spense_mm: `dvalues` and `dmeta` .* got only `dmeta`"):
        ops.spense_mm(x, dense, values, meta, row_index, dmeta=layouts["dmeta"])


def test_row_index_edited_in_place_is_checked_again(operands):
    """row_index is read back once per version: an in-place edit after a good call is caught on the next call."""
    x, dense, values, meta, row_index = operands
    row_index = row_index.clone()
    ops.spense_mm(x, dense, values, meta, row_index)
    row_index[1] = row_index[0]
    with pytest.raises(ValueError, match=r"names output row .* twice"):
        ops.spense_mm(x, dense, values, meta, row_index)
