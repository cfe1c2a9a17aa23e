"""sparsify(): swapped models equal the dense masked model; filters, skips, and save/load round trips."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import spmm
from conftest import gen, int_weight
from spmm.formats import masked_weight
from spmm.nn import Sparse24Linear, SpenseLinear, TiledCSLLinear
from spmm.pruning import magnitude_mask, row_scores, top_rows, uniform_row_count
from spmm.serialization import read_metadata

CONFIGS = [
    spmm.Sparse24Config(),
    spmm.TiledCSLConfig(sparsity=0.6, tile_m=16, tile_k=16),
    spmm.TiledCSLConfig(sparsity=0.9),
    spmm.SpenseConfig(dense_fraction=0.25),
]
LAYER_OF = {spmm.Sparse24Config: Sparse24Linear, spmm.TiledCSLConfig: TiledCSLLinear, spmm.SpenseConfig: SpenseLinear}


def mlp(seed=0, integer=False) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 40, bias=False), nn.ReLU(), nn.Linear(40, 12))
    if integer:
        g = gen(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(int_weight(1, p.numel(), g=g).reshape(p.shape))
    return model


def expected_weight(weight, config):
    """What the config should make of `weight`, computed from the pruning functions directly (not from the layer)."""
    if isinstance(config, spmm.TiledCSLConfig):
        return masked_weight(weight, magnitude_mask(weight, config.sparsity))
    mask = magnitude_mask(weight, "2:4")
    if isinstance(config, spmm.SpenseConfig):  # the rows losing the most weight energy, a whole number of tiles
        count = uniform_row_count(weight.shape[0], config.dense_fraction, config.tile)
        mask[top_rows(row_scores("error", weight, masked_weight(weight, mask)), count)] = True
    return masked_weight(weight, mask)


def dense_masked(model, config):
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.copy_(expected_weight(mod.weight, config))
    return ref


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_sparsify_equals_dense_masked_model_exactly(config):
    model = mlp(integer=True)
    ref = dense_masked(model, config)
    assert spmm.sparsify(model, config) is model
    assert all(isinstance(model[i], LAYER_OF[type(config)]) for i in (0, 2, 4))
    x = int_weight(9, 24, g=gen(30), lo=-1, hi=1)
    assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_sparsify_real_valued(config):
    model = mlp(seed=1)
    ref = dense_masked(model, config)
    spmm.sparsify(model, config)
    x = torch.randn(3, 7, 24, generator=gen(31))
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    for i in (0, 2, 4):
        assert torch.equal(model[i].to_dense_weight(), ref[i].weight)


def test_filter_fn_selects_modules():
    model = mlp()
    seen = []

    def only_middle(name, mod):
        seen.append((name, type(mod)))
        return name == "2"

    spmm.sparsify(model, spmm.Sparse24Config(), filter_fn=only_middle)
    assert seen == [("0", nn.Linear), ("2", nn.Linear), ("4", nn.Linear)]
    assert type(model[0]) is nn.Linear and type(model[4]) is nn.Linear and isinstance(model[2], Sparse24Linear)


def test_incompatible_layers_are_skipped_with_warning():
    model = nn.Sequential(nn.Linear(30, 8), nn.Linear(8, 8))
    with pytest.warns(UserWarning, match=r"skipping '0' \(Sparse24Config\): 2:4 needs in_features % 4 == 0"):
        spmm.sparsify(model, spmm.Sparse24Config())
    assert type(model[0]) is nn.Linear and isinstance(model[1], Sparse24Linear)
    model = nn.Sequential(nn.Linear(30, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Tiled-CSL holds any shape: no warning
        spmm.sparsify(model, spmm.TiledCSLConfig(sparsity=0.5))
    assert isinstance(model[0], TiledCSLLinear)


def test_multihead_attention_out_proj_is_skipped():
    model = nn.Sequential(nn.MultiheadAttention(16, 2, batch_first=True))
    with pytest.warns(UserWarning, match="skipping '0.out_proj'.*MultiheadAttention"):
        spmm.sparsify(model, spmm.TiledCSLConfig())
    x = torch.randn(2, 3, 16)
    model[0](x, x, x)  # still runs


def test_shared_linear_stays_shared_and_root_linear():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    spmm.sparsify(model, spmm.Sparse24Config())
    assert isinstance(model[0], Sparse24Linear) and model[0] is model[2]
    layer = spmm.sparsify(nn.Linear(8, 4), spmm.TiledCSLConfig())
    assert isinstance(layer, TiledCSLLinear)


def test_save_load_shared_layer(tmp_path):
    def build(seed):
        torch.manual_seed(seed)
        shared = nn.Linear(16, 16)
        return nn.Sequential(shared, nn.ReLU(), shared)

    model = spmm.sparsify(build(0), spmm.TiledCSLConfig(sparsity=0.5))
    spmm.save_sparsified(model, tmp_path / "shared.safetensors")
    loaded = spmm.load_sparsified(build(1), tmp_path / "shared.safetensors")
    assert isinstance(loaded[0], TiledCSLLinear) and loaded[0] is loaded[2]
    x = torch.randn(2, 16, generator=gen(34))
    assert torch.equal(loaded(x), model(x))


def test_bad_configs():
    with pytest.raises(ValueError, match="no handler for dict"):
        spmm.sparsify(mlp(), {})
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        spmm.sparsify(mlp(), spmm.Sparse24Config(pruner="nope"))
    with pytest.raises(TypeError, match="TiledCSLConfig.sparsity must be a float, got str '2:4'"):
        spmm.TiledCSLConfig(sparsity="2:4")
    with pytest.raises(ValueError, match="sparsity"):
        spmm.TiledCSLConfig(sparsity=2.0)
    with pytest.raises(ValueError, match="dense_fraction"):
        spmm.SpenseConfig(dense_fraction=-1)


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_save_load_roundtrip(config, tmp_path):
    model = spmm.sparsify(mlp(seed=2), config)
    path = tmp_path / "model.safetensors"
    spmm.save_sparsified(model, path)
    modules = read_metadata(path)["modules"]
    assert sorted(modules) == ["0", "2", "4"]
    assert modules["2"]["class"] == LAYER_OF[type(config)].__name__ and modules["2"]["bias"] is False
    loaded = spmm.load_sparsified(mlp(seed=3), path)  # different init: everything must come from the file
    for i in (0, 2, 4):
        assert type(loaded[i]) is type(model[i])
        assert torch.equal(loaded[i].to_dense_weight(), model[i].to_dense_weight())
    x = torch.randn(5, 24, generator=gen(32))
    assert torch.equal(loaded(x), model(x))


class TiedNet(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
        self.odd = nn.Linear(10, 12)  # in_features % 4 != 0: the 2:4 formats skip it
        self.head = nn.Linear(12, 8, bias=False)
        self.tied = nn.Linear(12, 8, bias=False)
        self.tied.weight = self.head.weight  # tied dense weight: safetensors needs it saved unshared

    def forward(self, x):
        h = self.odd(self.body(x))
        return self.head(h) + self.tied(h)


def test_save_load_with_tied_and_skipped_modules(tmp_path):
    model = TiedNet(4)
    with pytest.warns(UserWarning, match="skipping 'odd'"):
        spmm.sparsify(model, spmm.SpenseConfig(), filter_fn=lambda name, mod: name not in ("head", "tied"))
    assert isinstance(model.body[2], SpenseLinear) and type(model.odd) is nn.Linear
    path = tmp_path / "tied.safetensors"
    spmm.save_sparsified(model, path)
    loaded = spmm.load_sparsified(TiedNet(5), path)
    assert loaded.tied.weight is loaded.head.weight
    x = torch.randn(3, 16, generator=gen(33))
    assert torch.equal(loaded(x), model(x))


def test_load_rejects_files_without_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="no spmm metadata"):
        spmm.load_sparsified(mlp(), path)


def test_load_rejects_a_model_without_the_listed_modules(tmp_path):
    path = tmp_path / "model.safetensors"
    spmm.save_sparsified(spmm.sparsify(mlp(), spmm.Sparse24Config()), path)
    with pytest.raises(ValueError, match="model has no module '4'"):
        spmm.load_sparsified(nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 40, bias=False)), path)


def test_package_surface():
    assert spmm.__version__ == "0.1.0"
    for name in ("ops", "formats", "nn", "pruning", "sparsify", "save_sparsified", "load_sparsified",
                 "Sparse24Config", "TiledCSLConfig", "SpenseConfig"):
        assert hasattr(spmm, name), name


def test_sparse24_config_prefill_kernel_flag_reaches_the_layers():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 16))
    kept = spmm.sparsify(copy.deepcopy(model), spmm.Sparse24Config())
    dropped = spmm.sparsify(copy.deepcopy(model), spmm.Sparse24Config(prefill_kernel=False))
    assert all(m.prefill_kernel for m in kept) and not any(m.prefill_kernel for m in dropped)
    x = torch.randn(3, 64)
    assert torch.equal(kept(x), dropped(x))  # a memory/speed choice only: the same numbers
    assert dropped[0].use_prefill_kernel(True) is dropped[0] and dropped[0].prefill_kernel


# ------------------------------------------------------------------------------------------------ messages -------
def nested(nan_at=None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)))
    if nan_at is not None:
        with torch.no_grad():
            model.encoder[2].weight[nan_at] = float("nan")
    return model


@pytest.mark.parametrize("config, match", [
    (spmm.Sparse24Config(), r"^encoder\.2: spmm::sparse24_compress: `dense` has a NaN or infinite value at row 3, "
                            r"column 5"),
    (spmm.TiledCSLConfig(sparsity=0.5), r"^encoder\.2: spmm::tiled_csl_compress: `dense` has a NaN"),
    (spmm.SpenseConfig(), r"^encoder\.2: weight must not hold NaN or Inf"),
], ids=repr)
def test_sparsify_errors_name_the_layer(config, match):
    with pytest.raises(ValueError, match=match):
        spmm.sparsify(nested(nan_at=(3, 5)), config)


@pytest.mark.parametrize("make, match", [
    (lambda: spmm.Sparse24Config(pruner=3), r"^Sparse24Config.pruner must be a str, got int 3$"),
    (lambda: spmm.Sparse24Config(prefill_kernel="no"), r"^Sparse24Config.prefill_kernel must be a bool, got str"),
    (lambda: spmm.TiledCSLConfig(tile_m="256"), r"^TiledCSLConfig.tile_m must be an int, got str '256'"),
    (lambda: spmm.TiledCSLConfig(tile_k=True), r"^TiledCSLConfig.tile_k must be an int, got bool"),
    (lambda: spmm.TiledCSLConfig(sparsity=None), r"^TiledCSLConfig.sparsity must be a float, got NoneType"),
    (lambda: spmm.SpenseConfig(dense_fraction="0.25"), r"^SpenseConfig.dense_fraction must be a float, got str"),
    (lambda: spmm.SpenseConfig(pruner=None), r"^SpenseConfig.pruner must be a str, got NoneType"),
])
def test_config_fields_of_the_wrong_type_are_type_errors_naming_the_field(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_config_values_out_of_range_name_the_field():
    with pytest.raises(ValueError, match=r"^TiledCSLConfig.tile_m must be a positive int, got 0"):
        spmm.TiledCSLConfig(tile_m=0)
    with pytest.raises(ValueError, match=r"^TiledCSLConfig.tile_m \* tile_k must be <= 65536"):
        spmm.TiledCSLConfig(tile_m=2**32, tile_k=2**32)
    assert spmm.TiledCSLConfig(sparsity=1).sparsity == 1  # an int is a number


@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda"])
def test_calibration_data_holding_nan_is_named_as_such(pruner):
    batches = [torch.randn(4, 8), torch.randn(4, 8)]
    batches[1][2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^encoder\.0: stats: the calibration inputs of this layer hold NaN or Inf"):
        spmm.sparsify(nested(), spmm.Sparse24Config(pruner=pruner), calibration=batches)
