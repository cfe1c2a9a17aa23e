"""Sparse24Linear on CUDA through the public op: the C++ rule takes every path (checked by the kernels that ran),
backward matches the dense masked layer on every path, opcheck and bad layouts on the public op, and the memory a
sparsified Llama-2-7B-shaped decoder holds."""

import gc

import pytest
import torch
from torch import nn

import spmm
from conftest import cuda_int_case as int_case, cuda_kernel_names, masked_reference as reference, sparse24_path
from spmm import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
]

DTYPES = [torch.float16, torch.bfloat16]


def layer_of(w, mask, bias, prefill_kernel=True):
    m, k = w.shape
    linear = nn.Linear(k, m, bias=bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(bias)
    return spmm.nn.Sparse24Linear.from_dense(linear, mask).use_prefill_kernel(prefill_kernel)


def gemm_of(layer):
    return "sm90" if layer.sm90_e is not None else "sm80" if layer.sm80_a is not None else None


# ------------------------------------------------------------------------------------------------ dispatch -------
@pytest.mark.parametrize("mk", [(4096, 4096), (4096, 11008), (300, 520), (264, 1040)])
@pytest.mark.parametrize("n", [1, 8, 9, 16, 17, 32, 33, 64, 2048])
@pytest.mark.parametrize("prefill_kernel", [True, False])
def test_each_path_is_taken_where_the_rule_says(mk, n, prefill_kernel):
    """The kernel that runs is the one ops.sparse24_pick_kernel names for the layer's layouts (decode kernel up to
    8-16 / 32 tokens, the device's GEMM above), and the result is exact on integer inputs."""
    w, mask, x, bias = int_case(*mk, n, torch.float16, n + mk[0])
    layer = layer_of(w, mask, bias, prefill_kernel)
    expected_kernel = ops.sparse24_pick_kernel(*mk, n, True, gemm_of(layer))
    with torch.no_grad():
        names = cuda_kernel_names(lambda: layer(x))
        assert sparse24_path(names) == expected_kernel, names
        assert torch.equal(layer(x), reference(x, w, mask, bias))


def test_every_path_runs_on_the_gpus_it_is_for():
    """On Hopper a 4096 x 4096 layer takes the decode kernel at N = 1 and the Hopper GEMM at N = 2048; a 300 x 520
    one (not a Hopper GEMM shape) the Ampere GEMM; on Ampere both take the Ampere GEMM."""
    capability = torch.cuda.get_device_capability()
    gemm = {(9, 0): "sm90", (8, 0): "sm80", (8, 6): "sm80", (8, 9): "sm80"}.get(capability)
    if gemm is None:
        pytest.skip(f"no 2:4 GEMM is built for compute capability {capability}")
    for mk, want in (((4096, 4096), gemm), ((300, 520), "sm80")):
        w, mask, x, bias = int_case(*mk, 2048, torch.float16, 1)
        layer = layer_of(w, mask, bias)
        with torch.no_grad():
            assert sparse24_path(cuda_kernel_names(lambda: layer(x))) == want
            assert sparse24_path(cuda_kernel_names(lambda: layer(x[:1]))) == "decode"


@pytest.mark.parametrize("given", ["none", "decode", "gemm"])
def test_the_op_runs_the_layouts_it_is_given(given):
    """Without layouts sparse24_mm packs what its kernel reads; with only the decode layout the decode kernel runs
    every N; with only a GEMM's layout the GEMM runs every N (down to one token)."""
    w, mask, x, bias = int_case(4096, 4096, 2048, torch.float16, 2)
    values, meta = ops.sparse24_compress(w, mask)
    layouts = ops.sparse24_kernel_layouts(values, meta)
    gemm = "sm90" if layouts["sm90_e"] is not None else "sm80" if layouts["sm80_a"] is not None else None
    if given == "gemm" and gemm is None:
        pytest.skip("this device runs no 2:4 GEMM")
    kept = {"none": (), "decode": ("dvalues", "dmeta"), "gemm": ("sm90_e", "sm80_a", "sm80_e")}[given]
    args = {name: t for name, t in layouts.items() if name in kept and t is not None}
    for n in (1, 2048):
        xn = x[:n]
        names = cuda_kernel_names(lambda: ops.sparse24_mm(xn, values, meta, bias, **args))
        want = ops.sparse24_pick_kernel(4096, 4096, n, given != "gemm", None if given == "decode" else gemm)
        assert sparse24_path(names) == want, (n, names)
        assert torch.equal(ops.sparse24_mm(xn, values, meta, bias, **args), reference(xn, w, mask, bias))


# ------------------------------------------------------------------------------------------------ backward -------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 16, 2048])
@pytest.mark.parametrize("prefill_kernel", [True, False])
def test_backward_matches_the_dense_masked_layer(dtype, n, prefill_kernel):
    """Gradients to x and bias through Sparse24Linear (whatever kernel ran forward) equal those through nn.Linear on
    the dense masked weight."""
    g = torch.Generator().manual_seed(n)
    w = (torch.randn(1024, 2048, generator=g) * 0.05).to(dtype).cuda()
    mask = spmm.pruning.magnitude_mask(w, "2:4")
    bias = (0.1 * torch.randn(1024, generator=g)).to(dtype).cuda()
    layer = layer_of(w, mask, bias, prefill_kernel)
    dense = layer.to_dense_linear()
    layer.bias.requires_grad_(True)
    x = torch.randn(n, 2048, generator=g).to(dtype).cuda().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad_out = torch.randn(n, 1024, generator=g).to(dtype).cuda()
    y, y_ref = layer(x), dense(x_ref)
    y.backward(grad_out)
    y_ref.backward(grad_out)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, **tol)


# ------------------------------------------------------------------------------------- opcheck, bad layouts -------
@pytest.mark.parametrize("n", [1, 100])
def test_opcheck_with_the_layers_layouts(n):
    w, mask, x, bias = int_case(512, 1024, n, torch.float16, 3)
    values, meta = ops.sparse24_compress(w, mask)
    layouts = ops.sparse24_kernel_layouts(values, meta)
    torch.library.opcheck(torch.ops.spmm.sparse24_mm, (x, values, meta, bias, *layouts.values()))
    torch.library.opcheck(torch.ops.spmm.sparse24_mm, (x, values, meta, None))


def test_bad_layouts_are_named():
    w, mask, x, bias = int_case(512, 1024, 4, torch.float16, 4)
    values, meta = ops.sparse24_compress(w, mask)
    layouts = ops.sparse24_kernel_layouts(values, meta)
    with pytest.raises(ValueError, match=r"spmm::sparse24_mm: `dvalues` and `dmeta` .* got only `dvalues`"):
        ops.sparse24_mm(x, values, meta, dvalues=layouts["dvalues"])
    with pytest.raises(ValueError, match=r"`sm80_a` and `sm80_e` .* got only `sm80_e`"):
        ops.sparse24_mm(x, values, meta, sm80_e=torch.zeros(16, dtype=torch.int16, device="cuda"))
    with pytest.raises(TypeError, match=r"spmm::sparse24_mm: `dvalues` must be BFloat16"):
        ops.sparse24_mm(x.bfloat16(), values.bfloat16(), meta, dvalues=layouts["dvalues"], dmeta=layouts["dmeta"])
    other_values, other_meta = ops.sparse24_compress(w[:256], mask[:256])
    other = ops.sparse24_kernel_layouts(other_values, other_meta)
    with pytest.raises(ValueError, match=r"spmm::sparse24_mm: `dvalues`/`dmeta` do not hold the decode layout"):
        ops.sparse24_mm(x, values, meta, dvalues=other["dvalues"], dmeta=other["dmeta"])
    if layouts["sm90_e"] is not None:
        with pytest.raises(ValueError, match=r"spmm::sparse24_mm: `sm90_e` does not hold the Hopper GEMM metadata"):
            ops.sparse24_mm(x[:1].expand(64, -1), values, meta, sm90_e=other["sm90_e"])
        with pytest.raises(ValueError, match=r"`sm90_e` is the Hopper GEMM's layout, but for a 300 x 1024 weight"):
            ops.sparse24_mm(x, values[:300].contiguous(), meta[:300].contiguous(), sm90_e=layouts["sm90_e"])


# -------------------------------------------------------------------------------------------------- memory -------
# A model's linears sparsified to 2:4 must hold at most this fraction of the dense fp16 bytes: values (0.5) and one
# copy of the metadata (0.0625), i.e. every kernel reads the canonical values and shares one metadata layout.
MEMORY_TARGET = 0.6
LLAMA2_7B_BLOCK = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]  # qkv, o, gate_up, down: (M, K)


def allocated_by(build):
    """(what build() returns, bytes it leaves allocated on the GPU)."""
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    made = build()
    gc.collect()
    torch.cuda.synchronize()
    return made, torch.cuda.memory_allocated() - before


def dense_linears(blocks):
    return nn.ModuleList(nn.Linear(k, m, bias=False, device="cuda", dtype=torch.float16)
                         for _ in range(blocks) for m, k in LLAMA2_7B_BLOCK)


def test_resident_bytes_is_what_the_layers_hold_on_the_gpu():
    """One block's linears: the GPU memory freed when the sparse layers go equals the sum of their resident_bytes
    (up to the allocator's 512-byte rounding per tensor). Measured on release, so that what a first call leaves
    behind once per process (a kernel workspace, a library handle) is not counted as the layers'."""
    held = [spmm.sparsify(dense_linears(1), spmm.Sparse24Config())]
    resident = sum(layer.resident_bytes for layer in held[0])
    assert all(isinstance(layer, spmm.nn.Sparse24Linear) for layer in held[0])
    _, change = allocated_by(held.clear)
    assert abs(-change - resident) <= 512 * 8 * len(LLAMA2_7B_BLOCK), (-change, resident)


@pytest.mark.xfail(strict=True, reason="issue 19: a 2:4 layer still holds the decode kernel's reordered copy of the "
                                       "weight beside the canonical one (1.19x of dense fp16 on Hopper); passes when "
                                       "every kernel reads the canonical values with one metadata layout")
def test_sparsified_llama2_7b_linears_hold_at_most_0_6x_of_dense():
    model, dense_bytes = allocated_by(lambda: dense_linears(32))
    assert dense_bytes >= sum(2 * m * k for m, k in LLAMA2_7B_BLOCK) * 32  # 13.0 GB of fp16 weights
    _, change = allocated_by(lambda: spmm.sparsify(model, spmm.Sparse24Config()))
    sparse_bytes = dense_bytes + change
    del model
    assert sparse_bytes <= MEMORY_TARGET * dense_bytes, f"{sparse_bytes / dense_bytes:.3f}x of dense"
