"""Layers: outputs equal F.linear on the dense masked weight; state dicts, dtype moves and torch.compile work."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_bitwise_equal, gen, int_weight, random_24_mask, random_mask
from spmm.formats import masked_weight
from spmm.nn import Sparse24Linear, SpenseLinear, TiledCSLLinear

KINDS = ["sparse24", "tiled_csl", "tiled_csl_default_tiles", "spense"]
CPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_layer(kind, linear: nn.Linear, g):
    """The sparse layer for `linear` and the dense weight it must behave as (built without the layer's to_dense)."""
    w = linear.weight.detach()
    m, k = w.shape
    if kind == "sparse24":
        mask = random_24_mask(m, k, g)
        return Sparse24Linear.from_dense(linear, mask), masked_weight(w, mask)
    if kind.startswith("tiled_csl"):
        mask = random_mask(m, k, 0.3, g)
        tiles = {} if kind.endswith("default_tiles") else {"tile_m": 16, "tile_k": 32}
        return TiledCSLLinear.from_dense(linear, mask, **tiles), masked_weight(w, mask)
    mask, rows = random_24_mask(m, k, g), torch.tensor([m - 1, 0, m // 2])
    expected = masked_weight(w, mask)
    expected[rows] = w[rows]
    return SpenseLinear.from_dense(linear, mask, dense_rows=rows), masked_weight(expected)


def int_linear(k, m, bias, dtype, g):
    linear = nn.Linear(k, m, bias=bias, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(int_weight(m, k, dtype, g))
        if bias:
            linear.bias.copy_(int_weight(1, m, dtype, g)[0])
    return linear


def int_input(*shape, dtype, g):
    return torch.randint(-1, 2, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_exact_with_integer_inputs(kind, bias, dtype):
    g = gen(10)
    linear = int_linear(64, 37, bias, dtype, g)
    layer, w = make_layer(kind, linear, g)
    b = linear.bias.detach() if bias else None
    for shape in [(1, 64), (7, 64), (33, 64), (2, 5, 64)]:
        x = int_input(*shape, dtype=dtype, g=g)
        y = layer(x)
        assert y.shape == (*shape[:-1], 37) and y.dtype == dtype
        assert torch.equal(y, F.linear(x, w, b)), shape


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_input(kind):
    g = gen(11)
    linear = int_linear(64, 20, True, torch.float32, g)
    layer, w = make_layer(kind, linear, g)
    wide = int_input(9, 128, dtype=torch.float32, g=g)
    for x in (wide[:, ::2], wide[:, 64:], int_input(64, 9, dtype=torch.float32, g=g).T):
        assert not x.is_contiguous()
        assert torch.equal(layer(x), F.linear(x.contiguous(), w, linear.bias.detach()))


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_real_valued_error_within_twice_dense(kind, dtype):
    """Error vs an fp64 reference at most 2x that of torch's dense op in the same dtype. The error is the RMS over
    the outputs: the max of a few hundred rounding errors is too noisy a statistic to hold to a 2x bound."""
    g = gen(12)
    linear = nn.Linear(256, 48, dtype=dtype)
    layer, w = make_layer(kind, linear, g)
    x = torch.randn(17, 256, generator=g).to(dtype)
    b = linear.bias.detach()
    ref = F.linear(x.double(), w.double(), b.double())

    def rms_error(y):
        return (y.double() - ref).square().mean().sqrt().item()

    ours, dense = rms_error(layer(x)), rms_error(F.linear(x, w, b))
    assert 0 < dense and ours <= 2 * dense, (ours, dense)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_roundtrip_into_fresh_layer(kind):
    g = gen(13)
    linear = nn.Linear(32, 40)
    layer, _ = make_layer(kind, linear, g)
    fresh = type(layer)(32, 40, bias=True, **layer.format_kwargs() if kind.startswith("tiled") else {})
    fresh.load_state_dict(layer.state_dict())  # strict; TiledCSL/Spense resize their packed buffers
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[name], t) for name, t in layer.state_dict().items())
    x = torch.randn(5, 32, generator=g)
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("kind", KINDS)
def test_whole_layer_pickles(kind):
    """torch.save(model) of a sparsified model: the layers hold no unpicklable hooks."""
    layer, _ = make_layer(kind, nn.Linear(32, 40), gen(14))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(5, 32, generator=gen(15))
    assert type(loaded) is type(layer) and torch.equal(loaded(x), layer(x))


def test_state_dict_shape_mismatch_raises():
    layer = Sparse24Linear.from_dense(nn.Linear(16, 8), random_24_mask(8, 16, gen(14)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        Sparse24Linear(16, 4).load_state_dict(layer.state_dict())
    tiled = TiledCSLLinear.from_dense(nn.Linear(16, 8), tile_m=4, tile_k=4)
    with pytest.raises(RuntimeError, match="tile_offsets"):
        TiledCSLLinear(16, 8, tile_m=8, tile_k=4).load_state_dict(tiled.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_move_and_dense_views(kind):
    g = gen(15)
    linear = nn.Linear(32, 24)
    layer, w = make_layer(kind, linear, g)
    assert_bitwise_equal(layer.to_dense_weight(), w)
    dense = layer.to_dense_linear()
    x = torch.randn(3, 32, generator=g)
    assert torch.equal(dense.weight, w) and torch.equal(dense.bias, linear.bias)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
    layer = layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16 and layer.weight_format.dtype == torch.bfloat16
    assert_bitwise_equal(layer.to_dense_weight(), w.bfloat16())


@pytest.mark.parametrize("kind", KINDS)
def test_compile_fullgraph(kind):
    g = gen(16)
    layer, _ = make_layer(kind, nn.Linear(64, 32), g)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), layer, nn.GELU())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():  # inference: the ops have no autograd formula
        for n in (1, 9):  # a second token count exercises a recompile / dynamic shape
            x = torch.randn(n, 16, generator=g)
            assert torch.equal(compiled(x), model(x))


def test_extra_repr_and_attributes():
    layer = Sparse24Linear.from_dense(nn.Linear(16, 8, bias=False), random_24_mask(8, 16, gen(17)))
    assert (layer.in_features, layer.out_features, layer.bias) == (16, 8, None)
    text = repr(layer)
    assert "in_features=16" in text and "bias=False" in text and "2:4" in text and f"nbytes={layer.nbytes}" in text
    tiled = TiledCSLLinear.from_dense(nn.Linear(16, 8), random_mask(8, 16, 0.25, gen(18)))
    assert "tiled_csl" in repr(tiled) and "sparsity=" in repr(tiled)
    spense = SpenseLinear.from_dense(nn.Linear(16, 8), random_24_mask(8, 16, gen(19)), dense_rows=torch.tensor([1, 6]))
    assert "dense_rows=2" in repr(spense)


@pytest.mark.parametrize("kind", KINDS)
def test_bias_is_a_parameter_and_the_packed_weight_frozen_buffers(kind):
    layer, _ = make_layer(kind, nn.Linear(16, 8), gen(20))
    assert [name for name, _ in layer.named_parameters()] == ["bias"]  # as nn.Linear's bias: optimizers take it
    assert isinstance(layer.bias, nn.Parameter) and layer.bias.requires_grad
    packed = set(layer.weight_format.tensors())
    assert packed <= {name for name, _ in layer.named_buffers()} and set(layer.state_dict()) == packed | {"bias"}
    assert not any(t.requires_grad for t in layer.weight_format.tensors().values())
    frozen = nn.Linear(16, 8).requires_grad_(False)  # a frozen source bias stays frozen
    assert not type(layer).from_format(layer.weight_format, frozen.bias).bias.requires_grad
    assert Sparse24Linear(16, 8, bias=False).bias is None and list(Sparse24Linear(16, 8, bias=False).parameters()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_layers_validate_the_formats_they_are_built_from_and_load(kind):
    layer, _ = make_layer(kind, nn.Linear(32, 24), gen(21))
    state = layer.state_dict()
    broken = {k: t.clone() for k, t in state.items()}
    if "row_index" in broken:
        broken["row_index"][1] = broken["row_index"][0]
        rule = "more than once"
    elif "meta" in broken:
        broken["meta"][2, 1] = 0x00
        rule = "canonical 2:4"
    else:
        e = int(broken["tile_offsets"][1]) - 1  # the first tile's last element repeats the one before it
        broken["locations"][e] = broken["locations"][e - 1]
        rule = "repeats or precedes"
    fresh = type(layer)(32, 24, **layer.format_kwargs())
    before = {k: t.clone() for k, t in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=f"^{type(layer).__name__}: the state dict's packed weight is not valid: .*{rule}"):
        fresh.load_state_dict(broken)
    for key, t in fresh.state_dict().items():  # refused before anything was copied in
        assert_bitwise_equal(t, before[key])
    parent = nn.Sequential(nn.Identity(), type(layer)(32, 24, **layer.format_kwargs()))
    with pytest.raises(ValueError, match=f"^1: the state dict's packed weight is not valid: .*{rule}"):
        parent.load_state_dict({f"1.{k}": t for k, t in broken.items()})
    fresh.load_state_dict(state)  # the layer's own state loads
    with pytest.raises(ValueError, match=rule):
        type(layer).from_format(fresh._format_from(broken))


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 4"):
        Sparse24Linear(6, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        SpenseLinear(10, 8)
    with pytest.raises(TypeError, match="dense_rows"):
        SpenseLinear.from_dense(nn.Linear(8, 8))
