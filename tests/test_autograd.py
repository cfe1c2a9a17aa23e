"""The matmul ops' autograd (csrc/ops/matmul_autograd.cpp) on CPU: gradients of x and bias against the dense masked
layer for each input that trains, eager and under torch.compile; opcheck with inputs that need gradients; no node
(and no Python) on a call that needs none; the _*_dense ops that rebuild W."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from conftest import gen, random_24_mask, random_mask
from spmm import ops
from spmm.formats import TiledCSLWeight, tiled_csl_layouts

M, K = 12, 32
OPS = ["sparse24_mm", "tiled_csl_mm", "spense_mm"]


def _operands(op, g):
    """(the op's arguments after x and before bias, the keyword layouts, the dense weight they stand for)."""
    w = torch.randn(M, K, generator=g, dtype=torch.float64).float()
    if op == "tiled_csl_mm":
        mask = random_mask(M, K, 0.4, g)
        return (*ops.tiled_csl_compress(w, mask, 8, 16), M, 8, 16), torch.where(mask, w, torch.zeros_like(w))
    mask = random_24_mask(M, K, g)
    values, meta = ops.sparse24_compress(w, mask)
    if op == "sparse24_mm":
        return (values, meta), torch.where(mask, w, torch.zeros_like(w))
    dense_rows = torch.tensor([2, 7])
    sparse_rows = torch.tensor([r for r in range(M) if r not in (2, 7)])
    values, meta = ops.sparse24_compress(w[sparse_rows], mask[sparse_rows])
    row_index = torch.cat((dense_rows, sparse_rows)).to(torch.int32)
    full = torch.where(mask, w, torch.zeros_like(w))
    full[dense_rows] = w[dense_rows]
    return (w[dense_rows], values, meta, row_index), full


def _call(op, x, args, bias):
    return getattr(torch.ops.spmm, op)(x, *args, bias)


def _check_grads(op, fn, trains, shape=(2, 5)):
    g = gen(1)
    args, dense = _operands(op, g)
    x = torch.randn(*shape, K, generator=g).requires_grad_("x" in trains)
    bias = torch.randn(M, generator=g).requires_grad_("bias" in trains)
    grad_y = torch.randn(*shape, M, generator=g)
    fn(x, args, bias).backward(grad_y)
    x_ref, b_ref = x.detach().clone().requires_grad_("x" in trains), bias.detach().clone().requires_grad_("bias" in trains)
    F.linear(x_ref, dense, b_ref).backward(grad_y)
    for got, want in ((x.grad, x_ref.grad), (bias.grad, b_ref.grad)):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("trains", ["x", "bias", "x bias"])
@pytest.mark.parametrize("op", OPS)
def test_gradients_of_whatever_trains(op, trains):
    _check_grads(op, lambda x, args, bias: _call(op, x, args, bias), trains)
    _check_grads(op, lambda x, args, bias: _call(op, x, args, bias), trains, shape=())  # x a single vector


@pytest.mark.parametrize("op", OPS)
def test_gradients_without_bias(op):
    g = gen(2)
    args, dense = _operands(op, g)
    x = torch.randn(3, K, generator=g, requires_grad=True)
    _call(op, x, args, None).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.linear(x_ref, dense).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("op", OPS)
def test_backward_under_torch_compile(op):
    """aot_autograd traces the C++ backward with fake tensors (W through the _*_dense ops' fakes); two token counts,
    the second through a dynamic-shape recompile."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, args, bias: _call(op, x, args, bias), fullgraph=True, backend="aot_eager")
    for shape in ((4,), (9,), (2, 9)):
        _check_grads(op, compiled, "x bias", shape)


@pytest.mark.parametrize("op", OPS)
def test_opcheck_with_inputs_that_train(op):
    """test_autograd_registration and the aot-dispatch gradient checks run only on inputs that need gradients."""
    g = gen(3)
    args, _ = _operands(op, g)
    x, bias = torch.randn(2, 3, K, generator=g, requires_grad=True), torch.randn(M, generator=g, requires_grad=True)
    opcheck(getattr(torch.ops.spmm, op), (x, *args, bias))


@pytest.mark.parametrize("op", OPS)
def test_packed_weight_gradient_is_refused(op):
    g = gen(4)
    args, _ = _operands(op, g)
    args = (args[0].clone().requires_grad_(), *args[1:])  # values (2:4, Tiled-CSL), dense_weight (Spense)
    y = _call(op, torch.randn(3, K, generator=g), args, None)
    with pytest.raises(RuntimeError, match=rf"spmm::{op}: the packed weight is not differentiable"):
        y.sum().backward()


@pytest.mark.parametrize("op", OPS)
def test_no_node_where_nothing_trains(op):
    """The Autograd kernel is the C++ one (a Python kernel there would cost microseconds per inference call) and
    builds a backward node only where an input needs a gradient."""
    autograd_line = next(line for line in torch._C._dispatch_dump(f"spmm::{op}").splitlines()
                         if line.startswith("Autograd"))
    assert "matmul_autograd.cpp" in autograd_line
    g = gen(5)
    args, dense = _operands(op, g)
    x, bias = torch.randn(3, K, generator=g), torch.randn(M, generator=g)
    want = F.linear(x, dense, bias)
    with torch.no_grad():
        trained = _call(op, x.requires_grad_(), args, bias)
    x.requires_grad_(False)
    frozen = _call(op, x, args, bias)
    with torch.inference_mode():
        inference = _call(op, x, args, bias)
    for y in (trained, frozen, inference):
        assert y.grad_fn is None and not y.requires_grad
        torch.testing.assert_close(y, want)
    assert _call(op, x.requires_grad_(), args, bias).grad_fn is not None


# ------------------------------------------------------------------------------------ the _*_dense ops ---------------
def test_dense_ops_rebuild_the_weight():
    g = gen(6)
    (values, meta), dense = _operands("sparse24_mm", g)
    assert torch.equal(torch.ops.spmm._sparse24_dense(values, meta), dense)
    spense, full = _operands("spense_mm", g)
    assert torch.equal(torch.ops.spmm._spense_dense(*spense), full)
    stream, csl_dense = _operands("tiled_csl_mm", g)
    stream, tiles = stream[:3], stream[4:]
    assert torch.equal(torch.ops.spmm._tiled_csl_dense(*stream, M, K, *tiles, None, None, None, None, None), csl_dense)
    # an empty stream (a layer holding only a kernel layout): W from the delta layout
    delta = tiled_csl_layouts.delta_layout(TiledCSLWeight(*stream, (M, K), *tiles))
    empty = (stream[0][:0], stream[1][:0], stream[2][:0])
    assert torch.equal(torch.ops.spmm._tiled_csl_dense(*empty, M, K, *tiles, None, None, *delta), csl_dense)


def test_opcheck_dense_ops():
    g = gen(7)
    (values, meta), _ = _operands("sparse24_mm", g)
    spense, _ = _operands("spense_mm", g)
    stream, _ = _operands("tiled_csl_mm", g)
    opcheck(torch.ops.spmm._sparse24_dense, (values, meta))
    opcheck(torch.ops.spmm._spense_dense, spense)
    opcheck(torch.ops.spmm._tiled_csl_dense, (*stream[:3], M, K, *stream[4:], None, None, None, None, None))
