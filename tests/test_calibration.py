"""Calibrated pruning: Wanda and SparseGPT on their input statistics, and sparsify(calibration=...) layer by layer
and block by block: masks valid, levels exact, reconstruction error below magnitude's, SparseGPT equal to plain
sequential OBS, calibration sequential, packed layers exact, determinism, bad input named."""

from __future__ import annotations

import copy
import warnings
from collections import UserDict

import pytest
import torch
from torch import nn

import spmm
from conftest import gen
from spmm.formats import masked_weight
from spmm.nn import Sparse24Linear, SpenseLinear, TiledCSLLinear
from spmm.pruning import InputStats, PruneResult, prune, row_scores, top_rows
from spmm.pruning.sequential import run_model, trace_calls

PRUNERS = ["magnitude", "wanda", "sparsegpt"]


def activations(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """LLM-like inputs: correlated features with very unequal scales (a few outlier columns)."""
    g = gen(seed)
    mix = torch.eye(k) + 0.3 * torch.randn(k, k, generator=g) / k ** 0.5
    scale = torch.exp(torch.randn(k, generator=g))
    scale[torch.randperm(k, generator=g)[: max(1, k // 32)]] *= 8
    return (torch.randn(n, k, generator=g) @ mix) * scale


def pruned(result: PruneResult) -> torch.Tensor:
    return masked_weight(result.weight, result.mask)


def output_error(weight, new_weight, x) -> float:
    return float((x @ (weight - new_weight).T).norm() / (x @ weight.T).norm())


# ---- input statistics

def test_input_stats_accumulate_in_batches():
    x = activations(300, 24, seed=1).double().float()
    whole = InputStats.of(x)
    parts = InputStats(24, gram=True)
    for chunk in x.reshape(3, 100, 24):
        parts.add(chunk.reshape(10, 10, 24))  # leading dims are flattened into rows
    assert parts.count == 300
    torch.testing.assert_close(parts.gram, x.T @ x, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(parts.col_norms(), x.norm(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.hessian(), whole.hessian())
    delta = torch.randn(5, 24, generator=gen(2))
    torch.testing.assert_close(parts.output_error(delta), (x @ delta.T).square().sum(0), rtol=1e-4, atol=1e-3)
    norms_only = InputStats(24)
    norms_only.add(x)
    assert norms_only.gram is None
    torch.testing.assert_close(norms_only.output_error(delta), (delta.square() * x.square().sum(0)).sum(1))
    with pytest.raises(ValueError, match="Gram matrix was not collected"):
        norms_only.hessian()
    with pytest.raises(ValueError, match="x: last dim must be in_features=24"):
        parts.add(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="no inputs were seen"):
        InputStats(4).col_norms()


# ---- masks and levels

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pruner", PRUNERS)
def test_24_masks_are_valid(pruner, dtype):
    w = torch.randn(24, 64, generator=gen(3)).to(dtype)
    result = prune(pruner, w, "2:4", stats=InputStats.of(activations(200, 64)))
    assert result.mask.dtype == torch.bool and result.weight.dtype == dtype and result.weight.shape == w.shape
    assert bool((result.mask.reshape(24, 16, 4).sum(-1) == 2).all())
    if pruner == "sparsegpt":
        assert not bool(result.weight[~result.mask].any())  # pruned weights are exact zeros
    else:
        assert result.weight is not w and torch.equal(result.weight, w)  # mask-only pruners leave the weight alone


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("pruner", PRUNERS)
def test_unstructured_level_is_exact(pruner, sparsity):
    """magnitude and sparsegpt count per matrix, wanda per output row. K = 300 is no multiple of SparseGPT's
    block size: the per-block shares must still add up."""
    w = torch.randn(13, 300, generator=gen(4))
    result = prune(pruner, w, sparsity, stats=InputStats.of(activations(400, 300)))
    if pruner == "wanda":
        assert (~result.mask).sum(1).tolist() == [round(sparsity * 300)] * 13
    else:
        assert int((~result.mask).sum()) == round(sparsity * w.numel())


def test_wanda_weighs_weights_by_input_norm():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, -1.0, 5.0, 1.0, 1.0]])
    x = torch.tensor([[10.0, 1, 1, 1, 1, 1, 1, 1]])  # column 0 carries a large input: its small weight matters
    stats = InputStats.of(x)
    assert prune("wanda", w, "2:4", stats).mask.tolist() == [[True, False, False, True, True, True, False, False]]
    assert prune("magnitude", w, "2:4").mask.tolist() == [[False, False, True, True, True, True, False, False]]
    assert (~prune("wanda", w, 0.25, stats).mask).nonzero()[:, 1].tolist() == [4, 6]  # ties: lower index goes


# ---- quality: layer reconstruction error on the calibration activations

@pytest.mark.parametrize("sparsity", ["2:4", 0.5, 0.7])
def test_calibrated_pruners_reconstruct_better_than_magnitude(sparsity):
    x = activations(1024, 256, seed=5)
    w = torch.randn(96, 256, generator=gen(6))
    stats = InputStats.of(x)
    err = {p: output_error(w, pruned(prune(p, w, sparsity, stats)), x) for p in PRUNERS}
    assert err["wanda"] < 0.9 * err["magnitude"], err
    assert err["sparsegpt"] < 0.8 * err["magnitude"], err
    assert err["sparsegpt"] < err["wanda"], err


def obs_reference(weight, hessian, n, m, percdamp=0.01):
    """Plain sequential OBS, no blocking, no Cholesky tricks: drop a column's pruned weights, move their error onto
    the later columns through the inverse Hessian of the remaining columns, eliminate the column (Schur
    complement). The n:m choice scores w^2 / [H^-1 of the columns from here on]_jj after eliminating the group's
    earlier columns, i.e. the squared diagonal of the Cholesky factor of H^-1, as SparseGPT does."""
    w = weight.double().clone()
    h = hessian.double().clone()
    h.diagonal().add_(percdamp * h.diagonal().mean())
    hinv = torch.linalg.inv(h)
    d2 = torch.linalg.cholesky(hinv, upper=True).diagonal().square()
    keep = torch.ones_like(w, dtype=torch.bool)
    for i in range(w.shape[1]):
        if i % m == 0:
            score = w[:, i:i + m].square() / d2[i:i + m]
            top = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :n]
            keep[:, i:i + m] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)
        err = torch.where(keep[:, i], 0.0, w[:, i]) / hinv[0, 0]
        w[:, i:] -= err[:, None] * hinv[0][None, :]
        w[:, i] = torch.where(keep[:, i], w[:, i], 0.0)
        hinv = hinv[1:, 1:] - hinv[1:, :1] @ hinv[:1, 1:] / hinv[0, 0]
    return keep, w


@pytest.mark.parametrize("blocksize", [8, 128])
def test_sparsegpt_equals_sequential_obs(blocksize):
    """Blocked lazy updates through the Cholesky factor compute the same as one column at a time."""
    x = activations(512, 48, seed=7).double()
    w = torch.randn(10, 48, generator=gen(8)).double()
    stats = InputStats.of(x)
    keep, expected = obs_reference(w, stats.hessian(), 2, 4)
    result = prune("sparsegpt", w.float(), "2:4", stats, blocksize=blocksize)
    assert torch.equal(result.mask, keep)
    torch.testing.assert_close(result.weight.double(), expected, rtol=1e-3, atol=1e-3)


def test_sparsegpt_without_pruning_keeps_the_weight_and_handles_dead_inputs():
    x = activations(200, 32, seed=9)
    x[:, 5] = 0.0  # an input that never fires: no curvature, must not break the factorisation
    w = torch.randn(8, 32, generator=gen(10))
    result = prune("sparsegpt", w, 0.0, InputStats.of(x))
    assert bool(result.mask.all())
    torch.testing.assert_close(result.weight, w, rtol=0, atol=1e-5)
    assert bool(torch.isfinite(prune("sparsegpt", w, "2:4", InputStats.of(x)).weight).all())


# ---- bad input names the argument

@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_calibrated_pruners_need_stats(pruner):
    with pytest.raises(ValueError, match=f"pruner '{pruner}' needs calibration data: pass stats="):
        prune(pruner, torch.randn(4, 8), "2:4")
    with pytest.raises(ValueError, match="stats: collected for in_features=16, but weight has in_features=8"):
        prune(pruner, torch.randn(4, 8), "2:4", InputStats.of(torch.randn(3, 16)))


def test_pruner_argument_checks():
    stats = InputStats.of(torch.randn(20, 8))
    with pytest.raises(ValueError, match="percdamp must be > 0"):
        prune("sparsegpt", torch.randn(4, 8), "2:4", stats, percdamp=0.0)
    with pytest.raises(ValueError, match="blocksize must be a positive multiple"):
        prune("sparsegpt", torch.randn(4, 8), "2:4", stats, blocksize=6)
    with pytest.raises(ValueError, match="weight: in_features .K=6. must be a multiple of 4"):
        prune("wanda", torch.randn(4, 6), "2:4", InputStats.of(torch.randn(3, 6)))
    with pytest.raises(ValueError, match="sparsity"):
        prune("sparsegpt", torch.randn(4, 8), 1.5, stats)
    with pytest.raises(ValueError, match="unknown name 'obs'"):
        prune("obs", torch.randn(4, 8), "2:4")
    with pytest.raises(ValueError, match="needs must be one of"):
        spmm.pruning.register_pruner("x", needs="activations")


def test_prune_rejects_a_pruner_returning_garbage():
    spmm.pruning.register_pruner("test_float_mask")(lambda weight, sparsity, **kw: torch.ones_like(weight))
    with pytest.raises(TypeError, match="'test_float_mask' must return a bool mask"):
        prune("test_float_mask", torch.randn(4, 8), 0.5)


# ---- sparsify(calibration=...)

def mlp(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48, bias=False), nn.GELU(), nn.Linear(48, 16))


def batches(seed=11, count=4):
    g = gen(seed)
    return [activations(64, 32, seed=seed + i) + torch.randn(64, 32, generator=g) for i in range(count)]


def sequential_reference(model, config, data, sparsity):
    """What sequential calibration must produce, computed by hand: prune layer 0 on the data, run the data through
    the pruned layer 0 to get layer 2's inputs, and so on."""
    gram = spmm.pruning.pruner_needs(config.pruner) == "gram"
    ref, xs = copy.deepcopy(model), list(data)
    for i in (0, 2, 4):
        stats = InputStats(ref[i].in_features, gram)
        for x in xs:
            stats.add(x)
        result = prune(config.pruner, ref[i].weight, sparsity, stats)
        with torch.no_grad():
            ref[i].weight.copy_(pruned(result))
        xs = [ref[i + 1](ref[i](x)) if i < 4 else None for x in xs]
    return ref


CALIBRATED = [
    pytest.param(spmm.Sparse24Config(pruner="sparsegpt"), "2:4", id="sparse24-sparsegpt"),
    pytest.param(spmm.Sparse24Config(pruner="wanda"), "2:4", id="sparse24-wanda"),
    pytest.param(spmm.TiledCSLConfig(sparsity=0.6, pruner="sparsegpt", tile_m=16, tile_k=16), 0.6,
                 id="tiled_csl-sparsegpt"),
    pytest.param(spmm.TiledCSLConfig(sparsity=0.6, pruner="wanda"), 0.6, id="tiled_csl-wanda"),
]


@pytest.mark.parametrize("config, sparsity", CALIBRATED)
def test_calibrated_sparsify_is_sequential_and_exact(config, sparsity):
    model, data = mlp(), batches()
    ref = sequential_reference(model, config, data, sparsity)
    layer_cls = Sparse24Linear if isinstance(config, spmm.Sparse24Config) else TiledCSLLinear
    spmm.sparsify(model, config, calibration=data)
    for i in (0, 2, 4):
        assert isinstance(model[i], layer_cls)
        torch.testing.assert_close(model[i].to_dense_weight(), ref[i].weight, rtol=0, atol=1e-6)
    x = torch.randn(5, 32, generator=gen(12))
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)  # the packed layers compute the same
    # and the sequential setting matters: calibrating every layer on the dense model's activations differs
    dense_calibrated = mlp()
    stats = {}
    for i in (0, 2, 4):
        stats[i] = InputStats(dense_calibrated[i].in_features, gram=True)
        dense_calibrated[i].register_forward_pre_hook(lambda mod, args, s=stats[i]: s.add(args[0]))
    for x in data:
        dense_calibrated(x)
    other = prune(config.pruner, dense_calibrated[4].weight, sparsity, stats[4])
    assert not torch.allclose(pruned(other), ref[4].weight, atol=1e-4)


def test_calibrated_sparsify_is_deterministic_and_calibrates_in_eval_mode():
    def run(train: bool):
        torch.manual_seed(123)  # the same data and initial weights in every run
        model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.5), nn.ReLU(), nn.Linear(64, 16)).train(train)
        data = [torch.randn(16, 32) for _ in range(3)]
        spmm.sparsify(model, spmm.Sparse24Config(pruner="sparsegpt"), calibration=iter(data))  # one-shot iterator
        assert model.training == train and model[1].training == train  # modes restored
        return model.state_dict()

    first, again, in_eval = run(True), run(True), run(False)
    assert first.keys() == again.keys() == in_eval.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(torch.equal(first[k], in_eval[k]) for k in first)  # no dropout while calibrating


def test_calibrated_spense_keeps_original_dense_rows_and_chooses_them_by_output_error():
    model, data = mlp(), batches()
    config = spmm.SpenseConfig(dense_fraction=0.25, pruner="sparsegpt")
    first = copy.deepcopy(model[0])
    spmm.sparsify(model, config, calibration=data)
    assert all(isinstance(model[i], SpenseLinear) for i in (0, 2, 4))
    stats = InputStats(32, gram=True)
    for x in data:
        stats.add(x)
    result = prune("sparsegpt", first.weight, "2:4", stats)
    loss = stats.output_error(first.weight - pruned(result))
    rows = top_rows(loss, 16)  # a quarter of 64 rows: one 16-row tile
    assert model[0].weight_format.row_index[:16].sort().values.tolist() == rows.tolist()
    expected = pruned(result)
    expected[rows] = first.weight[rows]
    torch.testing.assert_close(model[0].to_dense_weight(), expected, rtol=0, atol=1e-6)
    energy_rows = top_rows(row_scores("error", first.weight, pruned(result)), 16)
    assert rows.tolist() != energy_rows.tolist()  # not the rule without calibration


class Attention(nn.Module):
    """q, k, v read the same tensor; out reads their result; `unused` is never called."""

    def __init__(self, d=16):
        super().__init__()
        self.q, self.k, self.v, self.out, self.unused = (nn.Linear(d, d) for _ in range(5))
        self.calls = 0

    def forward(self, x, scale=1.0):
        self.calls += 1
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) * scale / 4, dim=-1)
        return self.out(attn @ v)


def test_linears_reading_one_input_are_calibrated_together():
    model = Attention()
    targets = {name: getattr(model, name) for name in ("q", "k", "v", "out", "unused")}
    groups, calls = trace_calls(model, targets, torch.randn(2, 5, 16))
    assert groups == [["q", "k", "v"], ["out"]]
    assert calls == {"q": 1, "k": 1, "v": 1, "out": 1, "unused": 0}
    model.calls = 0
    data = [(torch.randn(2, 5, 16, generator=gen(i)), 0.5) for i in range(3)]  # tuples: model(*batch)
    with pytest.warns(UserWarning, match="skipping 'unused'.*never called on the calibration data"):
        spmm.sparsify(model, spmm.Sparse24Config(pruner="wanda"), calibration=data)
    # one tracing pass, one pass over the data per group, and one more measuring the last group's output error
    assert model.calls == 1 + 2 * 3 + 3
    assert all(isinstance(getattr(model, n), Sparse24Linear) for n in ("q", "k", "v", "out"))
    assert type(model.unused) is nn.Linear


def test_run_model_input_forms():
    seen = []

    class Probe(nn.Module):
        def forward(self, x, y=0):
            seen.append((x, y))

    probe = Probe()
    run_model(probe, 1)
    run_model(probe, (2, 3))
    run_model(probe, {"x": 4, "y": 5})
    run_model(probe, UserDict(x=6))  # a tokenizer's BatchEncoding is a UserDict, not a dict
    assert seen == [(1, 0), (2, 3), (4, 5), (6, 0)]


@pytest.mark.parametrize("config", [spmm.Sparse24Config(pruner="sparsegpt"), spmm.TiledCSLConfig(pruner="wanda"),
                                    spmm.SpenseConfig(pruner="wanda")], ids=repr)
def test_sparsify_without_calibration_names_the_argument(config):
    pruner = config.pruner
    with pytest.raises(ValueError, match=rf"calibration: .*\(pruner='{pruner}'\) needs calibration data; pass "
                                         r"calibration="):
        spmm.sparsify(mlp(), config)


def test_sparsify_calibration_errors_and_warnings():
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        spmm.sparsify(mlp(), spmm.Sparse24Config(pruner="nope"), calibration=batches())
    with pytest.raises(ValueError, match="calibration must hold at least one model input"):
        spmm.sparsify(mlp(), spmm.Sparse24Config(pruner="sparsegpt"), calibration=[])
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # magnitude pruning with data is not a mistake: the data measures the error
        spmm.sparsify(model, spmm.Sparse24Config(), calibration=batches())
    assert isinstance(model[0], Sparse24Linear)
    model = mlp()
    with pytest.raises(RuntimeError):  # a failing forward leaves the original layers in place
        spmm.sparsify(model, spmm.Sparse24Config(pruner="wanda"), calibration=[torch.randn(3, 7)])
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))


@pytest.mark.parametrize("config", [spmm.Sparse24Config(), spmm.TiledCSLConfig(0.7, "sparsegpt"),
                                    spmm.SpenseConfig(0.25, "wanda")], ids=repr)
def test_calibration_records_each_layers_output_error(config):
    model, dense, data = mlp(), mlp().requires_grad_(False), batches()
    spmm.sparsify(model, config, calibration=data)
    if config.pruner == "magnitude":  # the data only measures: the same layers as without it, no error recorded
        plain = spmm.sparsify(mlp(), config)
        assert all(torch.equal(model[i].to_dense_weight(), plain[i].to_dense_weight()) for i in (0, 2, 4))
        assert all(plain[i].output_error is None for i in (0, 2, 4))
    x = torch.cat(data)  # by hand: each layer's inputs come through the pruned layers before it
    for i, layer in enumerate(model.requires_grad_(False)):
        if i in (0, 2, 4):
            y, y0 = layer(x).double(), dense[i](x).double()
            assert layer.output_error == pytest.approx(float((y - y0).norm() / y0.norm()), rel=1e-5)
            assert 0.01 < layer.output_error < 1
        x = layer(x)


# ---- block by block


class Block(nn.Module):
    """A transformer-like block: attention (q, k, v read one input) + MLP; takes a mask keyword, returns a tuple
    like Hugging Face layers do."""

    def __init__(self, d=16):
        super().__init__()
        self.attn, self.up, self.down = Attention(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.calls = 0

    def forward(self, x, scale, mask=None):
        self.calls += 1
        x = x + self.attn(x, scale) * mask
        return (x + self.down(torch.relu(self.up(x))),)


class Stack(nn.Module):
    def __init__(self, depth=3, d=16, chain=True, own_masks=False):
        super().__init__()
        self.embed, self.head = nn.Linear(d, d), nn.Linear(d, 4)
        self.layers = nn.ModuleList(Block(d) for _ in range(depth))
        self.chain, self.own_masks = chain, own_masks

    def forward(self, x, scale):
        h, mask = self.embed(x), torch.ones(x.shape[-1])
        for i, layer in enumerate(self.layers):
            # own_masks: each block gets a mask of its own (as models with sliding-window layers do)
            out = layer(h, scale, mask=mask * (i + 1) if self.own_masks else mask)[0]
            h = out if self.chain else h + out  # chain=False: a block's input is not the previous block's output
        return self.head(h)


def _calibrate(model, data, blockwise, config=None, **kwargs):
    from spmm.pruning import sequential

    found = sequential.find_blocks
    if not blockwise:
        sequential.find_blocks = lambda *a: None
    try:
        return spmm.sparsify(model, config or spmm.Sparse24Config(pruner="sparsegpt"), calibration=data, **kwargs)
    finally:
        sequential.find_blocks = found


def _sparse_weights(model):
    return {n: m.to_dense_weight() for n, m in model.named_modules() if hasattr(m, "to_dense_weight")}


def _both_ways(base, data, config=None):
    """Copies of `base` calibrated block by block (where it can be) and by whole-model passes: the same layers."""
    blockwise, whole = copy.deepcopy(base), copy.deepcopy(base)
    _calibrate(blockwise, data, True, config)
    _calibrate(whole, data, False, config)
    a, b = _sparse_weights(blockwise), _sparse_weights(whole)
    assert len(a) > 0 and a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    return blockwise, whole


@pytest.mark.parametrize("config", [spmm.Sparse24Config(pruner="sparsegpt"), spmm.TiledCSLConfig(0.6, "wanda")],
                         ids=["sparsegpt-2:4", "wanda-60%"])
def test_blockwise_calibration_equals_whole_model_passes_and_costs_less(config):
    torch.manual_seed(0)
    base = Stack()
    data = [(torch.randn(2, 5, 16, generator=gen(i)), 0.5) for i in range(3)]
    blockwise, whole = _both_ways(base, data, config)
    assert len(_sparse_weights(blockwise)) == 3 * 6 + 2  # every block's 6 linears, embed and head
    # block 0 runs for: the model's group trace (which also checks the chain), the block's own group trace, its 4
    # groups x 3 batches, its outputs, the head's pass over the 3 batches and the pass measuring the head's output
    # error; the whole-model passes run it for every group of every block (12 groups, 3 batches each) and more
    assert blockwise.layers[0].calls == 1 + 1 + 4 * 3 + 3 + 3 + 3
    assert whole.layers[0].calls > 12 * 3
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(blockwise(x, 0.5), whole(x, 0.5), rtol=0, atol=0)


def test_blockwise_calibration_with_other_arguments_per_block():
    torch.manual_seed(4)
    base = Stack(own_masks=True)
    data = [(torch.randn(2, 5, 16, generator=gen(i)), 0.5) for i in range(2)]
    blockwise, _ = _both_ways(base, data)
    assert blockwise.layers[1].calls == 1 + 1 + 4 * 2 + 2 + 2 + 2  # block by block (see the test above)


def test_blockwise_falls_back_when_blocks_do_not_chain():
    torch.manual_seed(1)
    base = Stack(chain=False)
    data = [(torch.randn(2, 5, 16, generator=gen(i)), 0.5) for i in range(2)]
    _both_ways(base, data)
    with pytest.raises(ValueError, match="calibration_device: the model is not a chain of repeated blocks"):
        _calibrate(copy.deepcopy(base), data, True, calibration_device="cpu")


def test_calibration_device_same_result_and_layers_stay_home():
    torch.manual_seed(2)
    base = Stack()
    data = [(torch.randn(2, 5, 16, generator=gen(i)), 0.5) for i in range(2)]
    moved, plain = copy.deepcopy(base), copy.deepcopy(base)
    _calibrate(moved, data, True, calibration_device="cpu")
    _calibrate(plain, data, True)
    a, b = _sparse_weights(moved), _sparse_weights(plain)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_calibration_device_cuda_moves_one_block_at_a_time():
    torch.manual_seed(3)
    base = Stack(depth=4, d=64)
    data = [(torch.randn(2, 5, 64, generator=gen(i)), 0.5) for i in range(2)]
    on_gpu, on_cpu = copy.deepcopy(base), copy.deepcopy(base)
    peak = []
    for layer in on_gpu.layers:  # record how many blocks sit on the GPU whenever a block runs
        layer.register_forward_pre_hook(
            lambda *_: peak.append(sum(next(b.parameters()).is_cuda for b in on_gpu.layers)))
    _calibrate(on_gpu, data, True, calibration_device="cuda")
    _calibrate(on_cpu, data, True)
    assert max(peak) == 1  # never more than the block being calibrated
    assert all(p.device.type == "cpu" for p in on_gpu.parameters())
    assert all(b.device.type == "cpu" for b in on_gpu.buffers())
    a, b = _sparse_weights(on_gpu), _sparse_weights(on_cpu)
    for n in a:  # GPU matmuls round differently: SparseGPT's updated weights differ in the last bits everywhere
        # and masks may differ on near-ties, so compare the bulk of the masks and of the kept values
        kept_a, kept_b = a[n] != 0, b[n] != 0
        assert (kept_a == kept_b).float().mean() > 0.9, n
        both = kept_a & kept_b
        assert torch.isclose(a[n][both], b[n][both], rtol=1e-3, atol=1e-5).float().mean() > 0.9, n


class FeatureStack(nn.Module):
    """Stack behind a SentenceTransformer-style forward: one feature dict in, outputs written into that dict (and
    passed on to every block as keyword arguments, as transformers v5 passes **kwargs down)."""

    def __init__(self):
        super().__init__()
        self.stack = Stack()

    def forward(self, features):
        h = self.stack.embed(features["x"])
        rest = {k: v for k, v in features.items() if k != "x"}
        for layer in self.stack.layers:
            h = layer(h, 0.5, mask=torch.ones(h.shape[-1]), **rest)[0]
        features["embedding"] = self.stack.head(h)
        return features


def test_blockwise_calibration_of_a_model_that_writes_into_its_inputs():
    """Calibration runs each batch more than once; a forward that adds its outputs to the feature dict it is given
    must not change what the next pass sees (else the blocks no longer read as a chain and block_error has no
    block to measure): each pass gets a copy of the dict."""
    torch.manual_seed(3)
    data = [({"x": torch.randn(2, 5, 16, generator=gen(i))},) for i in range(2)]
    model = FeatureStack()
    spmm.sparsify(model, spmm.Sparse24Config(pruner="sparsegpt"), calibration=data, calibration_device="cpu")
    assert all("embedding" not in batch[0] for batch in data)
    assert model.stack.layers[1].calls == 1 + 1 + 4 * 2 + 2 + 2 + 2  # block by block (see the tests above)
