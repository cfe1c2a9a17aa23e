"""One 2:4 op, one rule, on CPU: the C++ kernel-choice rule as spmm._C exports it, the public ops with kernel layouts
(schema, fake, autograd through every argument), the layers' layouts and resident bytes. The CUDA side of the same
(each path taken, backward on the GPU, memory): tests/test_cuda_sparse24_layer.py and tests/test_cuda_spense.py."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.library import opcheck

import spmm
from conftest import gen, int_weight, random_24_mask
from spmm import _C, ops
from spmm.nn import Sparse24Linear, SpenseLinear


# ------------------------------------------------------------------------------------------------- the rule ------
@pytest.mark.parametrize(
    "m, k, capability, built, expected",
    [
        ((4096, 4096, 90, (True, True), "sm90")),
        ((4096, 4096, 90, (False, True), "sm80")),   # Hopper without the sm_90a GEMM: the Ampere GEMM's sm_90a build
        ((4100, 4096, 90, (True, True), "sm80")),    # out_features % 8 != 0: not the Hopper GEMM
        ((4096, 4104, 90, (True, True), "sm80")),    # in_features % 16 != 0
        ((4096, 4096, 80, (True, True), "sm80")),
        ((4096, 4096, 86, (True, True), "sm80")),
        ((4096, 4096, 89, (True, True), "sm80")),
        ((4096, 4096, 75, (True, True), None)),      # Turing: the decode kernel serves every N
        ((4096, 4096, 100, (True, True), None)),     # Blackwell: no GEMM built for it (yet)
        ((4096, 4096, 80, (True, False), None)),
        ((0, 4096, 90, (True, True), None)),         # an empty weight
        ((4096, 0, 80, (True, True), None)),
    ],
)
def test_prefill_gemm_rule(m, k, capability, built, expected):
    assert _C.sparse24_prefill_gemm(m, k, capability, *built) == expected


def test_prefill_gemm_of_this_build_and_device():
    """Without the built flags the rule reads this build's kernel families; ops asks it with the device's capability."""
    assert ops.sparse24_prefill_gemm(4096, 4096, torch.device("cpu")) is None
    cuda_families = {f for f in ("sm90", "sm80") if ops.has_cuda_kernel(f"_sparse24_{f}_mm")}
    assert (_C.sparse24_prefill_gemm(4096, 4096, 90) == "sm90") == ("sm90" in cuda_families)
    assert (_C.sparse24_prefill_gemm(4096, 4096, 80) == "sm80") == ("sm80" in cuda_families)


@pytest.mark.parametrize(
    "m, k, n, has_decode, gemm, expected",
    [
        (4096, 4096, 16, True, "sm90", "decode"),    # Hopper: a small weight keeps the decode kernel up to 16 tokens
        (4096, 4096, 17, True, "sm90", "sm90"),
        (4096, 11008, 8, True, "sm90", "decode"),    # a large one up to 8
        (4096, 11008, 9, True, "sm90", "sm90"),
        (4096, 11008, 32, True, "sm80", "decode"),   # Ampere GEMM: 32 tokens
        (4096, 11008, 33, True, "sm80", "sm80"),
        (4096, 4096, 2048, True, None, "decode"),    # no GEMM's layout: the decode kernel at every N
        (4096, 4096, 1, False, "sm90", "sm90"),      # no decode layout: the GEMM at every N
        (4096, 4096, 1, False, "sm80", "sm80"),
    ],
)
def test_pick_kernel_rule(m, k, n, has_decode, gemm, expected):
    assert ops.sparse24_pick_kernel(m, k, n, has_decode, gemm) == expected


def test_pick_kernel_agrees_with_decode_max_tokens():
    for m, k in [(12288, 4096), (4096, 4096), (6144, 4096), (57344, 8192), (128, 256)]:
        for gemm in ("sm90", "sm80"):
            limit = ops.sparse24_decode_max_tokens(m, k, gemm == "sm90")
            assert ops.sparse24_pick_kernel(m, k, limit, True, gemm) == "decode"
            assert ops.sparse24_pick_kernel(m, k, limit + 1, True, gemm) == gemm


def test_pick_kernel_rejects_an_unknown_gemm():
    with pytest.raises(ValueError, match="gemm must be"):
        ops.sparse24_pick_kernel(64, 64, 1, True, "sm100")


# --------------------------------------------------------------------------------------- ops with layouts ------
def _operands(g, m=12, k=32, dense_rows=(0, 5)):
    w, mask = int_weight(m, k, torch.float32, g), random_24_mask(m, k, g)
    is_dense = torch.zeros(m, dtype=torch.bool)
    is_dense[list(dense_rows)] = True
    order = torch.cat([is_dense.nonzero().flatten(), (~is_dense).nonzero().flatten()]).to(torch.int32)
    values, meta = ops.sparse24_compress(w[~is_dense], mask[~is_dense])
    full = torch.where(is_dense[:, None], w, torch.where(mask, w, torch.zeros_like(w)))
    sparse_only = ops.sparse24_compress(w, mask)
    return w, mask, full, (w[is_dense], values, meta, order), sparse_only


def _stand_in_layouts(values):
    """Tensors in the layout arguments' places: the CPU ops compute from the canonical weight and must not read them."""
    return (torch.full((3, 8), float("nan"), dtype=values.dtype), torch.zeros(3, 4, dtype=torch.int32),
            torch.zeros(16, dtype=torch.uint8), None, None)


def test_cpu_ops_compute_from_the_canonical_weight_whatever_layouts_they_get():
    g = gen(3)
    w, mask, full, spense, (values, meta) = _operands(g)
    x, bias = torch.randint(-3, 4, (5, 32), generator=g).float(), int_weight(1, 12, torch.float32, g)[0]
    layouts = dict(zip(ops.SPARSE24_LAYOUTS, _stand_in_layouts(values)))
    wm = torch.where(mask, w, torch.zeros_like(w))
    assert torch.equal(ops.sparse24_mm(x, values, meta, bias, **layouts), F.linear(x, wm, bias))
    assert torch.equal(ops.spense_mm(x, *spense, bias, **layouts), F.linear(x, full, bias))


def test_opcheck_with_layout_arguments():
    """Schema, fake and autograd registration of the public ops with every argument given (the CUDA side:
    tests/test_cuda_sparse24_layer.py and tests/test_cuda_spense.py run opcheck on real layouts)."""
    g = gen(4)
    _, _, _, spense, (values, meta) = _operands(g)
    x, bias = torch.randn(2, 3, 32, generator=g), torch.randn(12, generator=g)
    layouts = _stand_in_layouts(values)
    opcheck(torch.ops.spmm.sparse24_mm, (x, values, meta, bias, *layouts))
    opcheck(torch.ops.spmm.spense_mm, (x, *spense, bias, *layouts))
    opcheck(torch.ops.spmm.sparse24_mm, (x[0], values, meta, None, *layouts))


@pytest.mark.parametrize("op", ["sparse24_mm", "spense_mm"])
@pytest.mark.parametrize("with_layouts", [False, True])
def test_gradients_with_layout_arguments(op, with_layouts):
    g = gen(5)
    w, mask, full, spense, (values, meta) = _operands(g)
    dense = torch.where(mask, w, torch.zeros_like(w)) if op == "sparse24_mm" else full
    layouts = dict(zip(ops.SPARSE24_LAYOUTS, _stand_in_layouts(values))) if with_layouts else {}
    x = torch.randn(2, 5, 32, generator=g, requires_grad=True)
    bias = torch.randn(12, generator=g, requires_grad=True)
    grad_out = torch.randn(2, 5, 12, generator=g)
    y = (ops.sparse24_mm(x, values, meta, bias, **layouts) if op == "sparse24_mm"
         else ops.spense_mm(x, *spense, bias, **layouts))
    y.backward(grad_out)
    x_ref, b_ref = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    F.linear(x_ref, dense, b_ref).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(bias.grad, b_ref.grad)


def test_gradient_of_a_layout_is_refused():
    g = gen(6)
    _, _, _, _, (values, meta) = _operands(g)
    dvalues = torch.zeros(3, 8, requires_grad=True)
    y = ops.sparse24_mm(torch.randn(3, 32), values, meta, dvalues=dvalues, dmeta=torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"spmm::sparse24_mm: the packed weight is not differentiable"):
        y.sum().backward()


# ------------------------------------------------------------------------------------------------- layers ------
def test_layouts_and_resident_bytes_on_cpu():
    """Off CUDA a layer holds only its format and bias: no kernel layouts, resident bytes = format + bias."""
    linear = nn.Linear(64, 32)
    mask = random_24_mask(32, 64, gen(7))
    assert ops.sparse24_kernel_layouts(*ops.sparse24_compress(linear.weight.detach(), mask)) == dict.fromkeys(
        ops.SPARSE24_LAYOUTS)
    for layer in (Sparse24Linear.from_dense(linear, mask),
                  SpenseLinear.from_dense(linear, mask, dense_rows=torch.tensor([3, 1]))):
        assert all(getattr(layer, name) is None for name in ops.SPARSE24_LAYOUTS)
        assert layer.resident_bytes == layer.nbytes + 32 * 4
        assert not set(ops.SPARSE24_LAYOUTS) & set(layer.state_dict())  # layouts are never saved


def test_resident_bytes_counts_every_buffer():
    layer = Sparse24Linear.from_dense(nn.Linear(64, 32, bias=False), random_24_mask(32, 64, gen(8)))
    before = layer.resident_bytes
    layer.register_buffer("dvalues", torch.zeros(10, 4), persistent=False)  # a stand-in layout of 160 bytes
    assert layer.resident_bytes == before + 160 == 32 * 32 * 4 + 32 * 8 + 160


@pytest.mark.parametrize("kind", ["sparse24", "spense"])
def test_layers_call_the_public_op_only(kind, monkeypatch):
    """forward goes through ops.sparse24_mm / ops.spense_mm with every layout argument (None here), nothing private."""
    linear = nn.Linear(64, 32)
    mask = random_24_mask(32, 64, gen(9))
    layer = (Sparse24Linear.from_dense(linear, mask) if kind == "sparse24"
             else SpenseLinear.from_dense(linear, mask, dense_rows=torch.tensor([2])))
    calls = []
    name = "sparse24_mm" if kind == "sparse24" else "spense_mm"
    real = getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *a, **kw: calls.append(sorted(kw)) or real(*a, **kw))
    for private in ("sparse24_decode_mm", "sparse24_sm90_mm", "sparse24_sm80_mm"):
        monkeypatch.setattr(ops, private, lambda *a, **kw: pytest.fail("a layer called a private op"))
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense_weight(), layer.bias))
    assert calls == [sorted(ops.SPARSE24_LAYOUTS)]


@pytest.mark.parametrize("kind", ["sparse24", "spense"])
def test_layer_backward_on_cpu(kind):
    linear = nn.Linear(64, 32)
    mask = random_24_mask(32, 64, gen(10))
    layer = (Sparse24Linear.from_dense(linear, mask) if kind == "sparse24"
             else SpenseLinear.from_dense(linear, mask, dense_rows=torch.tensor([4, 9])))
    layer.bias.requires_grad_(True)
    x = torch.randn(7, 64, requires_grad=True)
    layer(x).square().sum().backward()
    dense = layer.to_dense_linear()
    x_ref = x.detach().clone().requires_grad_()
    dense(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad)


def test_compiled_layers_trace_the_public_ops():
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    sparse = spmm.sparsify(model, spmm.SpenseConfig(dense_fraction=0.25))
    x = torch.randn(5, 64)
    torch.testing.assert_close(torch.compile(sparse, fullgraph=True, backend="aot_eager")(x), sparse(x))
