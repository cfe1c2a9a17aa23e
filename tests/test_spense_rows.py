"""Spense dense rows: the strategies' scores (error against a brute-force reference), block sensitivities against
the Jacobian, tile rounding, the global budget met exactly, determinism, and every strategy x budget end to end."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spmm
from conftest import gen
from spmm.formats import masked_weight
from spmm.nn import SpenseLinear
from spmm.pruning import InputStats, allocate_rows, block_sensitivity, prune, row_scores, top_rows
from spmm.pruning import uniform_row_count
from spmm.pruning.dense_rows import STRATEGIES, global_budget
from spmm.pruning.sequential import sequential_stats


class Block(nn.Module):
    """A post-LN transformer layer: attention (q, k, v read one input) and an MLP."""

    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = self.norm1(x + self.o(attn @ v))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class Chain(nn.Module):
    def __init__(self, depth=2, d=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def data(count=3, d=32):
    return [torch.randn(4, 12, d, generator=gen(40 + i)) for i in range(count)]


def spense_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SpenseLinear)}


def dense_weight_share(model) -> float:
    layers = spense_layers(model).values()
    return sum(m.weight_format.num_dense_rows * m.in_features for m in layers) / sum(
        m.out_features * m.in_features for m in layers)


# ---- tile rounding


@pytest.mark.parametrize("rows, fraction, tile, expected", [
    (64, 0.25, 16, 16), (40, 0.25, 16, 16), (40, 0.2, 16, 16),  # 8 rows: halfway, rounds up
    (40, 0.19, 16, 0), (12, 0.25, 16, 0), (12, 0.5, 16, 12),  # 12 rows: 0 or all (a partial tile)
    (40, 0.9, 16, 40), (40, 0.85, 16, 32), (40, 1.0, 16, 40), (40, 0.0, 16, 0), (10, 0.35, 1, 4),
])
def test_uniform_count_is_the_nearest_whole_tile(rows, fraction, tile, expected):
    assert uniform_row_count(rows, fraction, tile) == expected


def test_default_tile_is_the_gpu_row_tile():
    assert spmm.SpenseConfig().tile == spmm.ops.SPENSE_ROW_TILE == 16


# ---- the global budget

WHOLE_UNITS = [(64, 32), (32, 32), (128, 32), (32, 128), (48, 64), (16, 96)]  # every tile a whole number of units


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.125, 0.25, 1 / 3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_global_budget_is_met_exactly_in_whole_tiles(fraction, seed):
    """Exact while a layer of the smallest in_features has room; past that (only near 100% here), short by less
    than the cheapest step left, never over."""
    g = gen(seed)
    scores = [torch.rand(m, generator=g) * 10 ** float(torch.randn(1, generator=g)) for m, _ in WHOLE_UNITS]
    widths = [k for _, k in WHOLE_UNITS]
    counts = allocate_rows(scores, widths, fraction, 16)
    budget, unit = global_budget(WHOLE_UNITS, fraction, 16)
    total = sum(m * k for m, k in WHOLE_UNITS)
    assert unit == 16 * 32 and budget == round(fraction * total / unit) * unit
    assert all(c % 16 == 0 and 0 <= c <= m for c, (m, _) in zip(counts, WHOLE_UNITS))
    used = sum(c * k for c, k in zip(counts, widths))
    narrow_room = any(c < m for c, (m, k) in zip(counts, WHOLE_UNITS) if k == 32)
    open_steps = [16 * k for c, (m, k) in zip(counts, WHOLE_UNITS) if c < m]
    assert used == budget if narrow_room else 0 <= budget - used < min(open_steps, default=1)
    if fraction <= 0.5:
        assert used == budget


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.4, 0.5])
@pytest.mark.parametrize("seed", range(3))
def test_global_budget_never_overshoots_when_tiles_are_not_whole_units(fraction, seed):
    """in_features 24, 40, 36 (no multiples of each other), heights not multiples of the tile: exactness is not
    always possible; the total stays under the budget by less than one unit (a tile of the narrowest layer)."""
    shapes = [(40, 24), (24, 40), (20, 36), (44, 24)]
    g = gen(seed)
    counts = allocate_rows([torch.rand(m, generator=g) for m, _ in shapes], [k for _, k in shapes], fraction, 8)
    budget, unit = global_budget(shapes, fraction, 8)
    used = sum(c * k for c, (_, k) in zip(counts, shapes))
    assert 0 <= budget - used < unit
    assert all(c % 8 == 0 or c == m for c, (m, _) in zip(counts, shapes))


def test_global_budget_buys_the_most_score_per_weight():
    """Equal widths: greedy by tiles equals the brute-force best split of the tiles."""
    g = gen(5)
    scores = [torch.rand(m, generator=g) ** 3 * s for m, s in ((48, 1.0), (32, 3.0), (64, 0.5))]
    widths = [16, 16, 16]

    def gain(layer, count):
        return float(torch.sort(scores[layer], descending=True).values[:count].sum())

    for tiles in range(0, 10):
        counts = allocate_rows(scores, widths, tiles * 16 / 144, 16)
        best = max((c for c in itertools.product(range(0, 49, 16), range(0, 33, 16), range(0, 65, 16))
                    if sum(c) == tiles * 16), key=lambda c: sum(gain(i, n) for i, n in enumerate(c)))
        assert sum(counts) == tiles * 16
        assert sum(gain(i, n) for i, n in enumerate(counts)) == pytest.approx(sum(gain(i, n) for i, n in
                                                                                 enumerate(best)))


def test_global_budget_respects_layer_bounds():
    g = gen(6)
    scores = [torch.rand(64, generator=g) * 100, torch.rand(64, generator=g), torch.rand(64, generator=g)]
    counts = allocate_rows(scores, [32] * 3, 0.25, 16)
    assert counts == [48, 0, 0]  # all it can afford goes to the layer that matters
    counts = allocate_rows(scores, [32] * 3, 0.4, 16, bounds=(0.2, 0.5))  # 80 rows; 16 to 32 per layer
    assert counts[0] == 32 and all(16 <= c <= 32 for c in counts) and sum(counts) == 80
    with pytest.raises(ValueError, match="layer_bounds: the lower bound 0.2 keeps 1536 weights dense, over the "
                                         "budget of 1024"):  # 0.2 x 64 rows rounds up to a whole tile
        allocate_rows(scores, [32] * 3, 0.2, 16, bounds=(0.2, 1.0))


# ---- the criteria


def llm_inputs(n, k, seed):
    """Correlated inputs with very unequal column scales (where the Gram matrix matters)."""
    g = gen(seed)
    mix = torch.eye(k) + 0.3 * torch.randn(k, k, generator=g) / k ** 0.5
    return (torch.randn(n, k, generator=g) @ mix) * torch.exp(torch.randn(k, generator=g))


def test_error_criterion_against_brute_force():
    """The error scores are each row's output error; the rows they pick are the subset of that size whose
    Spense layer changes the layer's output least of all subsets; sparsify makes exactly that layer."""
    x = llm_inputs(200, 16, seed=7)
    linear = nn.Linear(16, 8)
    w = linear.weight.detach()
    stats = InputStats.of(x)
    result = prune("sparsegpt", w, "2:4", stats)
    pruned = masked_weight(result.weight, result.mask)
    scores = row_scores("error", w, pruned, stats)
    x64 = x.double()
    per_row = (x64 @ (w - pruned).double().T).square().sum(0)
    torch.testing.assert_close(scores.double(), per_row / (x64 @ w.double().T).square().sum(), rtol=1e-4, atol=0)

    def spense_error(rows):
        weight = pruned.clone()
        weight[list(rows)] = w[list(rows)]
        return float((x64 @ (w - weight).double().T).square().sum())

    best = min(itertools.combinations(range(8), 3), key=spense_error)
    assert top_rows(scores, 3).tolist() == list(best)
    layer = spmm.sparsify(copy.deepcopy(linear), spmm.SpenseConfig(3 / 8, "sparsegpt", tile=1), calibration=[x])
    assert sorted(layer.weight_format.row_index[:3].tolist()) == list(best)
    expected = pruned.clone()
    expected[list(best)] = w[list(best)]
    torch.testing.assert_close(layer.to_dense_weight(), expected, rtol=0, atol=1e-6)


def test_saliency_criterion_is_the_wanda_importance_2_4_removes():
    x = llm_inputs(100, 8, seed=8)
    w = torch.randn(4, 8, generator=gen(9))
    stats = InputStats.of(x, gram=False)
    importance = (w.abs() * x.norm(dim=0)).square()
    removed = ~prune("wanda", w, "2:4", stats).mask
    expected = torch.where(removed, importance, 0).sum(1) / importance.sum()
    torch.testing.assert_close(row_scores("saliency", w, w, stats), expected)


def test_random_criterion_is_seeded():
    w = torch.randn(32, 8)
    draw = [row_scores("random", w, w, generator=gen(s)) for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


def test_block_sensitivity_matches_the_jacobian():
    """o = lin2(lin1(x)): d o / d y1_r is column r of W2 at every token, d o / d y2_r the unit vector r."""
    torch.manual_seed(10)
    lin1, lin2, unused = nn.Linear(12, 6), nn.Linear(6, 5), nn.Linear(12, 3)
    inputs = [torch.randn(100, 12, generator=gen(11 + i)) for i in range(4)]
    sens = block_sensitivity(inputs, lambda x: lin2(lin1(x)), [lin1, lin2, unused], probes=4, seed=0)
    with torch.no_grad():
        energy = torch.cat([lin2(lin1(x)) for x in inputs]).square().sum(1).mean()
    torch.testing.assert_close(sens[lin1], lin2.weight.detach().square().sum(0) / energy, rtol=0.15, atol=0)
    torch.testing.assert_close(sens[lin2], torch.ones(5) / energy, rtol=0.15, atol=0)
    assert torch.equal(sens[unused], torch.zeros(3))
    again = block_sensitivity(inputs, lambda x: lin2(lin1(x)), [lin1, lin2], probes=4, seed=0)
    assert torch.equal(again[lin1], sens[lin1])  # seeded probes: deterministic
    assert all(p.grad is None for p in (*lin1.parameters(), *lin2.parameters()))  # no gradients left behind


class DampedChain(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.blocks = nn.ModuleList(Damped() for _ in range(2))

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x))


class Damped(nn.Module):
    """h + 0.01 a(h) + b(h): a's errors barely reach the output, b's fully; the layers are otherwise alike."""

    def __init__(self, d=32):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        with torch.no_grad():
            self.a.weight.copy_(self.b.weight.flip(0))

    def forward(self, h):
        return h + 0.01 * self.a(h) + self.b(h)


def test_block_error_sends_the_rows_where_the_block_output_feels_them():
    model = DampedChain()
    plain = copy.deepcopy(model)
    config = spmm.SpenseConfig(0.5, "sparsegpt", strategy="block_error", budget="global", tile=8)
    spmm.sparsify(model, config, calibration=data(d=32))
    rows = {n: m.weight_format.num_dense_rows for n, m in spense_layers(model).items()}
    assert rows == {"blocks.0.a": 0, "blocks.0.b": 32, "blocks.1.a": 0, "blocks.1.b": 32}, rows
    # the layer-local error cannot tell a from b
    spmm.sparsify(plain, spmm.SpenseConfig(0.5, "sparsegpt", strategy="error", budget="global", tile=8),
                  calibration=data(d=32))
    assert any(m.weight_format.num_dense_rows for n, m in spense_layers(plain).items() if n.endswith(".a"))


def test_on_block_sees_each_block_before_it_is_calibrated():
    model = Chain()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    seen = []

    def on_block(block, inputs, forward):
        seen.append(block)
        torch.testing.assert_close(forward(inputs[0]), block(*inputs[0][0]))

    groups = list(sequential_stats(model, linears, data(), gram=False, on_block=on_block))
    assert seen == list(model.blocks) and len(groups) == 8  # q/k/v, o, up, down in each block


# ---- end to end


@pytest.mark.parametrize("budget", ["uniform", "global"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_and_budgets_end_to_end(strategy, budget):
    model, batches = Chain(), data()
    x = torch.randn(2, 12, 32, generator=gen(50))
    with torch.no_grad():
        dense_out = model(x)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    plain24 = spmm.sparsify(copy.deepcopy(model), spmm.Sparse24Config(pruner="sparsegpt"), calibration=batches)
    config = spmm.SpenseConfig(0.25, "sparsegpt", strategy=strategy, budget=budget, tile=8)
    spmm.sparsify(model, config, calibration=iter(batches))  # a one-shot iterator serves both global passes
    layers = spense_layers(model)
    assert len(layers) == 12
    for name, layer in layers.items():
        fmt = layer.weight_format
        rows = fmt.row_index[:fmt.num_dense_rows].long()
        assert fmt.num_dense_rows % 8 == 0
        if budget == "uniform":
            assert fmt.num_dense_rows == uniform_row_count(layer.out_features, 0.25, 8)
        assert torch.equal(layer.to_dense_weight()[rows], original[name][rows])  # dense rows keep the originals
    assert dense_weight_share(model) == 0.25  # 0.25 x (8 x 32 x 32 + 4 x 64 x 32) is a whole number of units
    with torch.no_grad():
        error, error24 = ((model(x) - dense_out).norm(), (plain24(x) - dense_out).norm())
    assert error < error24
    again = Chain()
    spmm.sparsify(again, config, calibration=batches)
    assert all(torch.equal(a.row_index, b.row_index) for a, b in zip(layers.values(), spense_layers(again).values()))


@pytest.mark.parametrize("budget", ["uniform", "global"])
@pytest.mark.parametrize("strategy", ["error", "saliency", "random"])
def test_strategies_and_budgets_without_calibration(strategy, budget):
    model = Chain()
    spmm.sparsify(model, spmm.SpenseConfig(0.125, strategy=strategy, budget=budget, tile=8))
    layers = spense_layers(model)
    assert len(layers) == 12 and all(m.weight_format.num_dense_rows % 8 == 0 for m in layers.values())
    if budget == "global":
        assert dense_weight_share(model) == 0.125
    else:  # 4 of 32 rows rounds up to a tile of 8, 8 of 64 is one
        assert all(m.weight_format.num_dense_rows == 8 for m in layers.values())


def test_random_rows_are_seeded_and_differ_between_layers():
    def rows(seed):
        model = Chain()
        spmm.sparsify(model, spmm.SpenseConfig(0.25, strategy="random", tile=8, seed=seed))
        return {n: m.weight_format.row_index.tolist() for n, m in spense_layers(model).items()}

    first = rows(0)
    assert rows(0) == first and rows(1) != first
    assert first["blocks.0.q"] != first["blocks.0.k"]  # each layer draws its own rows


def test_global_budget_skips_what_sparsify_skips():
    model = nn.Sequential(nn.Linear(32, 30), nn.ReLU(), nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 32))
    with pytest.warns(UserWarning, match=r"skipping '2'.*in_features % 4 == 0") as caught:
        spmm.sparsify(model, spmm.SpenseConfig(0.25, budget="global", tile=8))
    assert len([w for w in caught if "skipping" in str(w.message)]) == 1  # the scoring pass warns nothing
    assert type(model[2]) is nn.Linear
    # the budget is over layers 0 and 4 alone: 0.25 x (30 x 32 + 32 x 16) = 368 weights, to whole units of
    # 8 x 16: 384 (layer 0's partial last tile of 6 rows is 1.5 units: the total is met here all the same)
    budget, unit = global_budget([(30, 32), (32, 16)], 0.25, 8)
    assert (budget, unit) == (384, 128)
    assert model[0].weight_format.num_dense_rows * 32 + model[4].weight_format.num_dense_rows * 16 == 384


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "nope"}, r"SpenseConfig.strategy must be one of \('error', 'block_error'"),
    ({"budget": "local"}, r"SpenseConfig.budget must be one of \('uniform', 'global'\)"),
    ({"tile": 0}, "SpenseConfig.tile must be a positive integer"),
    ({"layer_bounds": (0.5, 1.0)}, r"SpenseConfig.layer_bounds must satisfy 0 <= low <= dense_fraction"),
    ({"layer_bounds": (0.0, 0.2)}, r"SpenseConfig.layer_bounds must satisfy"),
])
def test_bad_spense_configs_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spmm.SpenseConfig(0.25, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"tile": True}, "SpenseConfig.tile must be an int, got bool True"),
    ({"tile": 16.0}, "SpenseConfig.tile must be an int, got float 16.0"),
    ({"strategy": 1}, "SpenseConfig.strategy must be a str, got int 1"),
    ({"seed": "0"}, "SpenseConfig.seed must be an int, got str '0'"),
])
def test_spense_config_fields_of_the_wrong_type_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        spmm.SpenseConfig(0.25, **kwargs)


def test_block_error_needs_calibration_and_gradients():
    with pytest.raises(ValueError, match=r"calibration: SpenseConfig\(strategy='block_error'\) .* pass calibration="):
        spmm.sparsify(Chain(), spmm.SpenseConfig(strategy="block_error"))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        spmm.sparsify(Chain(), spmm.SpenseConfig(strategy="block_error"), calibration=data())


def test_global_fraction_is_of_weights_not_rows():
    """Rows of a wide layer cost more: the budget counts weights, so it is the share of the bytes kept dense."""
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32))
    with torch.no_grad():  # the narrow layer is 2:4 already: 2:4 costs it nothing, every dense row goes to the wide one
        model[0].weight.mul_(spmm.pruning.magnitude_mask(model[0].weight, "2:4"))
    spmm.sparsify(model, spmm.SpenseConfig(0.25, budget="global", tile=8))
    assert model[0].weight_format.num_dense_rows == 0 and model[1].weight_format.num_dense_rows == 16
    assert dense_weight_share(model) == 0.25  # while 16 of the 96 rows are dense
