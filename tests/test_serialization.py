"""save_sparsified / load_sparsified: a load checks every layer against the model, the format version, the checksums
and every layout before it changes the model, and leaves the model as it was on any error; corrupted files (fuzzed)
give a clean error or a bit-identical model."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import spmm
from conftest import assert_bitwise_equal, gen
from spmm.nn import Sparse24Linear
from spmm.serialization import (FORMAT_VERSION, check_module_entry, read_metadata, tensor_checksum, verify_tensor)


def build(seed=0, width=40, middle=None, norm=True, dtype=torch.float32) -> nn.Sequential:
    """Layers 0, 2, 4 become 2:4, Tiled-CSL (16 x 16 tiles, partial row tiles) and Spense; 3 stays a LayerNorm."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), middle or nn.Linear(64, width, bias=False),
                          nn.LayerNorm(width) if norm else nn.Identity(), nn.Linear(width, 12))
    return model.to(dtype)


def sparsified(seed=0) -> nn.Sequential:
    model = build(seed)
    spmm.sparsify(model, spmm.Sparse24Config(), filter_fn=lambda name, m: name == "0")
    spmm.sparsify(model, spmm.TiledCSLConfig(sparsity=0.6, tile_m=16, tile_k=16), filter_fn=lambda name, m: name == "2")
    spmm.sparsify(model, spmm.SpenseConfig(dense_fraction=0.25, tile=1), filter_fn=lambda name, m: name == "4")
    with torch.no_grad():
        model[3].weight.uniform_(0.5, 1.5, generator=gen(1))  # LayerNorm values that differ from a fresh one
    return model


@pytest.fixture()
def saved(tmp_path):
    model = sparsified()
    path = tmp_path / "model.safetensors"
    spmm.save_sparsified(model, path)
    return model, path


def snapshot(model: nn.Module):
    return ({name: m for name, m in model.named_modules()},
            {key: t.detach().clone() for key, t in model.state_dict().items()})


def assert_same(model: nn.Module, snap) -> None:
    """`model` has the snapshot's modules (the same objects) and bit for bit its tensors."""
    modules, state = snap
    now = dict(model.named_modules())
    assert now.keys() == modules.keys() and all(now[name] is m for name, m in modules.items())
    current = model.state_dict()
    assert current.keys() == state.keys()
    for key, t in state.items():
        assert_bitwise_equal(current[key], t)


def assert_loads_as(model: nn.Module, reference: nn.Module) -> None:
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    ref = reference.state_dict()
    assert model.state_dict().keys() == ref.keys()
    for key, t in model.state_dict().items():
        assert_bitwise_equal(t, ref[key])


def rewrite(path, tensors=None, info=None):
    """Write `path` again with edited tensors and/or spmm metadata (the callbacks edit them in place)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["spmm"])
        stored = {key: f.get_tensor(key) for key in f.keys()}
    if tensors:
        tensors(stored)
    if info:
        info(meta)
    save_file(stored, str(path), metadata={"spmm": json.dumps(meta)})


def expect_refused(model, path, match, **kwargs):
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        spmm.load_sparsified(model, path, **kwargs)
    assert_same(model, snap)


# ------------------------------------------------------------------------------------------- round trip ---------
def test_round_trip_is_bit_identical_and_records_checksums(saved):
    model, path = saved
    info = read_metadata(path)
    assert info["version"] == FORMAT_VERSION == 2
    assert set(info["checksums"]["tensors"]) == set(model.state_dict())
    assert all(info["checksums"]["tensors"][k] == tensor_checksum(t) for k, t in model.state_dict().items())
    loaded = spmm.load_sparsified(build(seed=5), path)
    assert_loads_as(loaded, model)
    x = torch.randn(3, 24, generator=gen(2))
    assert torch.equal(loaded(x), model(x))
    assert isinstance(loaded[0].bias, nn.Parameter)


def test_a_single_layer_file_loads_as_that_layer(tmp_path):
    layer = spmm.sparsify(nn.Linear(16, 8), spmm.Sparse24Config())
    spmm.save_sparsified(layer, tmp_path / "layer.safetensors")
    loaded = spmm.load_sparsified(nn.Linear(16, 8), tmp_path / "layer.safetensors")
    assert isinstance(loaded, Sparse24Linear)
    assert_loads_as(loaded, layer)


# ------------------------------------------------------------------------------- the model must match -----------
MISMATCHES = {
    "wider": (lambda: build(width=48), r"^2: out_features differ: the model's layer has 48, the file's 40"),
    "conv1d": (lambda: build(middle=nn.Conv1d(64, 40, 1)),
               r"^2: the model has a Conv1d here, the file a TiledCSLLinear"),
    "bias": (lambda: build(middle=nn.Linear(64, 40, bias=True)),
             r"^2: the model's layer has a bias, the file's has none"),
    "dtype": (lambda: build(dtype=torch.float64), r"^0: the file's weights are torch.float32, the model's layer is "
                                                  r"torch.float64"),
    "no norm": (lambda: build(norm=False), r"the file and the model differ: missing from the file: none; not in the "
                                           r"model: 3.bias, 3.weight"),
    "norm dtype": (lambda: nn.Sequential(*[m.double() if i == 3 else m for i, m in enumerate(build())]),
                   r"^3.weight: the file holds torch.float32 \(40,\), the model torch.float64 \(40,\)"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_load_checks_every_layer_and_leaves_the_model_unchanged(saved, case):
    make, match = MISMATCHES[case]
    expect_refused(make(), saved[1], match)


def test_load_into_an_already_sparse_model_checks_it_too(saved):
    model, path = saved
    target = sparsified(seed=3)
    spmm.load_sparsified(target, path)
    assert_loads_as(target, model)
    other = build(width=48)
    spmm.sparsify(other, spmm.TiledCSLConfig())
    expect_refused(other, path, r"^2: out_features differ")


def test_check_module_entry_names_the_layer_and_the_field():
    linear = nn.Linear(16, 8)
    entry = {"class": "Sparse24Linear", "in_features": 16, "out_features": 8, "bias": True}
    expected = {k: v for k, v in entry.items() if k != "class"}
    assert check_module_entry("a.b", entry, linear) == (Sparse24Linear, expected)
    for bad, match in [({"class": "Dense"}, "unknown layer class 'Dense'"),
                       ({"in_features": "16"}, "'in_features' is '16', not an int"),
                       ({"bias": 1}, "'bias' is 1, not a bool"),
                       ({"tile_m": 16}, "has fields"),
                       ({"in_features": 12}, "in_features differ")]:
        with pytest.raises(ValueError, match=f"^a.b: .*{match}"):
            check_module_entry("a.b", {**entry, **bad}, linear)
    with pytest.raises(ValueError, match="the file's weights are torch.float16"):
        check_module_entry("a.b", entry, linear, torch.float16)


# ------------------------------------------------------------------------------- versions and checksums ----------
def test_a_newer_format_version_is_refused_with_a_message_saying_so(saved):
    rewrite(saved[1], info=lambda info: info.update(version=FORMAT_VERSION + 1))
    expect_refused(build(), saved[1], r"written by a newer spmm \(format version 3\); this spmm reads format versions "
                                      r"up to 2: upgrade spmm")


def test_a_version_1_file_loads_with_a_warning(saved):
    model, path = saved
    rewrite(path, info=lambda info: (info.update(version=1), info.pop("checksums")))
    with pytest.warns(UserWarning, match="format version 1, written before checksums"):
        loaded = spmm.load_sparsified(build(), path)
    assert_loads_as(loaded, model)


def swap_meta_code(tensors):  # a valid code for another one: well formed, different weight
    meta = tensors["0.meta"]
    assert int(meta[0, 0]) & 0xF != 0x8
    meta[0, 0] = (int(meta[0, 0]) & 0xF0) | 0x8  # columns (0, 2)


def permute_row_index(tensors):  # still a permutation: well formed, rows swapped
    tensors["4.row_index"][[0, 1]] = tensors["4.row_index"][[1, 0]].clone()


@pytest.mark.parametrize("edit", [swap_meta_code, permute_row_index])
def test_checksums_find_well_formed_edits(saved, edit):
    model, path = saved
    rewrite(path, tensors=edit)
    key = "0.meta" if edit is swap_meta_code else "4.row_index"
    expect_refused(build(), path, rf"^{key}: checksum [0-9a-f]{{8}} differs from the recorded [0-9a-f]{{8}}")
    # what verify_checksums=False gives up: the edited (valid) layout loads, and computes other numbers
    loaded = spmm.load_sparsified(build(), path, verify_checksums=False)
    x = torch.randn(4, 24, generator=gen(3))
    assert not torch.equal(loaded(x), model(x))


def test_the_module_table_has_a_checksum_too(saved):
    rewrite(saved[1], info=lambda info: info["modules"]["2"].update(tile_k=8))  # same tile count here
    expect_refused(build(), saved[1], "the module table's checksum")


def test_tensor_checksum_covers_dtype_and_shape():
    t = torch.arange(6, dtype=torch.float16)
    assert tensor_checksum(t) != tensor_checksum(t.view(torch.int16))  # the same bytes read as another dtype
    assert tensor_checksum(t) != tensor_checksum(t.reshape(2, 3))
    assert tensor_checksum(t) == tensor_checksum(t.clone())
    with pytest.raises(ValueError, match="^w: checksum"):
        verify_tensor("w", t, tensor_checksum(t + 1))


# ------------------------------------------------------------------ layouts validated when loaded ----------------
def bad_code(tensors):
    tensors["0.meta"][1, 2] = 0x11  # idx0 = idx1 = 1


def repeated_row(tensors):
    tensors["4.row_index"][1] = tensors["4.row_index"][0]


def duplicate_location(tensors):
    offsets, locations = tensors["2.tile_offsets"], tensors["2.locations"]
    first = int(torch.nonzero(offsets[1:] - offsets[:-1] >= 2)[0])  # a tile with two elements at least
    locations[int(offsets[first]) + 1] = locations[int(offsets[first])]


def outside_partial_tile(tensors):
    # rows 32..39 form the last row tiles (8 of 16 rows): a location in row 12 of such a tile is outside it
    offsets, locations = tensors["2.tile_offsets"], tensors["2.locations"]
    last_row_tiles = 2 * 4  # 4 column tiles of 16 per row tile; the third row tile is the partial one
    e = int(offsets[last_row_tiles + 1]) - 1  # the last element of the partial row's first tile
    locations[e] = 12 * 16 + 15


def falling_offsets(tensors):
    offsets = tensors["2.tile_offsets"]
    offsets[3] = offsets[4] + 1


LAYOUT_EDITS = {
    bad_code: r"^0: .*`meta` is not in the canonical 2:4 layout: row 1, group 4 names columns 1 and 0",
    repeated_row: r"^4: .*row_index names output row \d+ more than once",
    duplicate_location: r"^2: .*repeats or precedes the location before it",
    outside_partial_tile: r"^2: .*lies outside tile 8 \(8 x 16\)",
    falling_offsets: r"^2: .*`tile_offsets` must not decrease \(tile 3\)",
}


@pytest.mark.parametrize("edit", LAYOUT_EDITS, ids=lambda f: f.__name__)
def test_layouts_are_validated_when_loaded(saved, edit):
    model, path = saved
    rewrite(path, tensors=edit)
    expect_refused(build(), path, "checksum")  # checksums come first
    expect_refused(build(), path, LAYOUT_EDITS[edit], verify_checksums=False)


def test_truncated_tensor_is_refused_at_load_not_at_the_first_forward(saved):
    rewrite(saved[1], tensors=lambda t: t.update({key: t[key][:-1] for key in ("2.values", "2.locations")}))
    expect_refused(build(), saved[1], r"^2\.(values|locations): checksum")
    expect_refused(build(), saved[1], r"^2: .*`tile_offsets` must start at 0 and end at nnz", verify_checksums=False)


def test_unreadable_files_are_clean_errors(saved, tmp_path):
    data = saved[1].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    expect_refused(build(), cut, "is not a readable safetensors file")
    rewrite(saved[1], info=lambda info: info.pop("checksums"))
    expect_refused(build(), saved[1], "has no valid checksums")


# ------------------------------------------------------------------------------------------------ fuzz -----------
def corruptions(path, rng: random.Random):
    """(what, bytes) of corrupted copies of the file at `path`: truncations, replaced bytes (header and data),
    edited tensors and dropped keys (tensors, metadata fields, module entries, checksums)."""
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    for _ in range(40):
        n = rng.randrange(len(data))
        yield f"truncated to {n} bytes", data[:n]
    for region, (lo, hi) in (("header", (0, header_end)), ("data", (header_end, len(data)))):
        for _ in range(60):
            at, byte = rng.randrange(lo, hi), rng.randrange(256)
            if data[at] != byte:
                yield f"{region} byte {at} -> {byte}", data[:at] + bytes([byte]) + data[at + 1:]

    with safe_open(str(path), framework="pt") as f:
        info, tensors = json.loads(f.metadata()["spmm"]), {key: f.get_tensor(key) for key in f.keys()}

    def write(tensors, info):
        out = path.with_suffix(".edited")
        save_file(tensors, str(out), metadata={"spmm": json.dumps(info)})
        return out.read_bytes()

    for _ in range(40):
        key = rng.choice(sorted(tensors))
        t = tensors[key].clone()
        how = rng.choice(["element", "shorter", "longer"])
        if how == "element" and t.numel():
            i = rng.randrange(t.numel())
            flat = t.view(-1)
            flat[i] = flat[i] + 1 if t.is_floating_point() else flat[i] ^ 1
        elif how == "shorter" and t.numel():
            t = t[:-1].clone()
        else:
            t = torch.cat((t, t[:1])) if t.dim() else t + 1
        yield f"tensor {key}: {how}", write({**tensors, key: t}, info)
    for key in sorted(tensors):
        yield f"tensor {key} dropped", write({k: v for k, v in tensors.items() if k != key}, info)
    for field in ("version", "modules", "checksums"):
        yield f"metadata {field} dropped", write(tensors, {k: v for k, v in info.items() if k != field})
    for name in info["modules"]:
        edited = json.loads(json.dumps(info))
        del edited["modules"][name]
        yield f"module {name} dropped", write(tensors, edited)
        for field in list(info["modules"][name]):
            edited = json.loads(json.dumps(info))
            del edited["modules"][name][field]
            yield f"module {name} field {field} dropped", write(tensors, edited)
    for key in sorted(tensors):
        edited = json.loads(json.dumps(info))
        del edited["checksums"]["tensors"][key]
        yield f"checksum of {key} dropped", write(tensors, edited)


def test_fuzzed_files_load_bit_identical_or_fail_cleanly(saved, tmp_path):
    model, path = saved
    target = tmp_path / "fuzzed.safetensors"
    outcomes = {"refused": 0, "identical": 0}  # every case must be one of the two
    for what, data in corruptions(path, random.Random(21)):
        target.write_bytes(data)
        fresh = build(seed=7)
        snap = snapshot(fresh)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a version byte turned into 1 loads with a warning
                loaded = spmm.load_sparsified(fresh, target)
        except ValueError as e:
            assert str(e), what
            assert_same(fresh, snap)
            outcomes["refused"] += 1
        else:
            assert_loads_as(loaded, model)
            outcomes["identical"] += 1
    assert outcomes["refused"] > 200 and outcomes["identical"] < 5, outcomes  # nearly every corruption is found



def test_load_layer_for_a_model_on_the_meta_device(saved):
    """The per-layer piece other loaders reuse: a module on the meta device gives a layer where the tensors are."""
    from safetensors.torch import load_file

    from spmm.serialization import load_layer

    model, path = saved
    with torch.device("meta"):
        skeleton = build()
    tensors = load_file(str(path))
    for name in ("0", "2", "4"):
        layer = load_layer(name, read_metadata(path)["modules"][name], skeleton.get_submodule(name), tensors)
        assert layer.bias is None or layer.bias.device.type == "cpu"
        assert_loads_as(layer, model.get_submodule(name))
    with pytest.raises(ValueError, match="^2: out_features differ"):
        load_layer("2", read_metadata(path)["modules"]["2"], nn.Linear(64, 48, bias=False, device="meta"), tensors)
