"""spmm.save_pretrained / spmm.from_pretrained (transformers' directory layout, sharded above a size, loaded without
the dense model: peak memory near the file size) and spmm.summary (in memory and from a saved directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import spmm
from hf_helpers import calibration, dense_reference, greedy, model, transformers
from spmm.layer_summary import saved_summary
from spmm.nn import SparseLinear, Sparse24Linear, SpenseLinear, TiledCSLLinear
from spmm.pretrained import INDEX_NAME, WEIGHTS_NAME
from spmm.serialization import read_metadata

CASES = {  # arch -> (config, calibrated)
    "llama": (spmm.Sparse24Config(pruner="sparsegpt"), True),
    "qwen2": (spmm.TiledCSLConfig(sparsity=0.8), False),
    "opt": (spmm.SpenseConfig(dense_fraction=0.25, pruner="wanda"), True),
}


def sparse_model(arch, **overrides):
    config, calibrated = CASES[arch]
    m = model(arch, **overrides)
    head = m.get_output_embeddings()
    spmm.sparsify(m, config, filter_fn=lambda name, mod: mod is not head,
                  calibration=calibration() if calibrated else None)
    return m


def sparse_layers(m):
    return {name: mod for name, mod in m.named_modules() if isinstance(mod, SparseLinear)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(CASES))
def test_save_load_roundtrip_generates_the_same_tokens(arch, tmp_path):
    m = sparse_model(arch)
    expected = greedy(m)
    spmm.save_pretrained(m, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "generation_config.json", WEIGHTS_NAME}
    loaded = spmm.from_pretrained(tmp_path)
    assert type(loaded) is type(m) and not loaded.training
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    before, after = sparse_layers(m), sparse_layers(loaded)
    assert before.keys() == after.keys() and len(before) > 0
    for name, layer in before.items():
        assert type(after[name]) is type(layer)
        assert torch.equal(after[name].to_dense_weight(), layer.to_dense_weight())
        assert after[name].output_error == layer.output_error  # None for the uncalibrated qwen2 case
    for (name, a), (_, b) in zip(m.named_buffers(), loaded.named_buffers()):  # rotary inv_freq: computed, not stored
        assert torch.equal(a, b), name
    assert torch.equal(greedy(loaded), expected)
    assert torch.equal(greedy(loaded, cache_implementation="static"), expected)
    assert str(spmm.summary(loaded)) == str(spmm.summary(m)) == str(saved_summary(tmp_path))


def test_tied_embeddings_are_stored_once_and_tied_again(tmp_path):
    m = sparse_model("llama", tie_word_embeddings=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    spmm.save_pretrained(m, tmp_path)
    info = read_metadata(tmp_path / WEIGHTS_NAME)  # the reader of save_sparsified's files reads these too
    assert info["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    from safetensors import safe_open
    with safe_open(tmp_path / WEIGHTS_NAME, "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    loaded = spmm.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(greedy(loaded), greedy(m))


def test_a_sparsified_tied_head_unties_in_the_saved_config(tmp_path):
    m = model("llama", tie_word_embeddings=True)
    spmm.sparsify(m, spmm.Sparse24Config())  # the head too: it now holds its own sparse weight
    assert isinstance(m.lm_head, Sparse24Linear)
    spmm.save_pretrained(m, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = spmm.from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, Sparse24Linear)
    assert torch.equal(greedy(loaded), greedy(m))


def test_sharded_save_has_an_index_and_loads(tmp_path):
    m = sparse_model("opt")
    spmm.save_pretrained(m, tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len(shards) > 2 and not (tmp_path / WEIGHTS_NAME).exists()
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size < 60_000 for p in shards)  # 40 KB of tensors plus the header
    assert all(read_metadata(p)["modules"] == read_metadata(shards[0])["modules"] for p in shards)
    assert torch.equal(greedy(spmm.from_pretrained(tmp_path)), greedy(m))
    spmm.save_pretrained(m, tmp_path)  # again, in one file: the old shards and index go
    assert sorted(p.name for p in tmp_path.glob("model*")) == [WEIGHTS_NAME]
    assert torch.equal(greedy(spmm.from_pretrained(tmp_path)), greedy(m))


def test_loads_with_a_safetensors_that_only_memory_maps(tmp_path, monkeypatch):
    import spmm.pretrained as pretrained

    def safe_open_without_backends(path, framework, device="cpu", **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        return safe_open(path, framework, device)

    safe_open = pretrained.safe_open
    m = sparse_model("qwen2")
    spmm.save_pretrained(m, tmp_path)
    monkeypatch.setattr(pretrained, "safe_open", safe_open_without_backends)
    assert torch.equal(greedy(spmm.from_pretrained(tmp_path)), greedy(m))


@pytest.mark.slow
def test_save_and_load_errors(tmp_path):
    with pytest.raises(TypeError, match="needs a transformers model .*spmm.save_sparsified"):
        spmm.save_pretrained(torch.nn.Linear(4, 4), tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        spmm.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds no model.safetensors"):
        spmm.from_pretrained(tmp_path)
    model("llama").save_pretrained(tmp_path / "dense")  # transformers' own save: a dense model
    with pytest.raises(ValueError, match="holds no spmm-sparsified model"):
        spmm.from_pretrained(tmp_path / "dense")
    spmm.save_pretrained(sparse_model("llama"), tmp_path / "sparse")
    config = json.loads((tmp_path / "sparse" / "config.json").read_text())
    (tmp_path / "sparse" / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    with pytest.raises(ValueError, match="(?s)do not fit the model its config builds: .*size mismatch for "
                                         "model.embed_tokens.weight"):
        spmm.from_pretrained(tmp_path / "sparse")


def test_edited_weights_and_a_changed_config_are_refused(tmp_path):
    """The checks of spmm.load_sparsified hold here too: a stored tensor changed after saving (checksum), a sparse
    entry that the config's model does not match (features), a layout that does not validate (checksums off)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    m = sparse_model("llama")
    spmm.save_pretrained(m, tmp_path)
    path = tmp_path / WEIGHTS_NAME
    with safe_open(path, framework="pt") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
    key = "model.layers.0.self_attn.q_proj.meta"
    edited = tensors[key].clone()
    edited[0, 0] = 0x11  # a code with idx0 == idx1: well formed bytes, not a valid 2:4 layout
    save_file({**tensors, key: edited}, path, metadata=metadata)
    with pytest.raises(ValueError, match=f"{key}: checksum .* differs"):
        spmm.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj"):
        spmm.from_pretrained(tmp_path, verify_checksums=False)  # validate() still refuses the layout
    save_file(tensors, path, metadata=metadata)
    assert torch.equal(greedy(spmm.from_pretrained(tmp_path)), greedy(m))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    with pytest.raises(ValueError, match="in_features differ"):
        spmm.from_pretrained(tmp_path)


# ---- summary

def test_summary_of_a_model_in_memory():
    m = model("qwen2")
    spmm.sparsify(m, spmm.Sparse24Config(), filter_fn=lambda name, mod: "self_attn" in name)
    spmm.sparsify(m, spmm.TiledCSLConfig(0.75), filter_fn=lambda name, mod: name.endswith("mlp.up_proj"))
    spmm.sparsify(m, spmm.SpenseConfig(0.25, pruner="wanda"), filter_fn=lambda name, mod: name.endswith("down_proj"),
                  calibration=calibration())
    table = spmm.summary(m)
    rows = {row.name: row for row in table.layers}
    assert rows.keys() == sparse_layers(m).keys()
    q = rows["model.layers.0.self_attn.q_proj"]  # 64 x 64 fp32 with bias; 2:4 keeps half the values + metadata
    assert (q.format, q.dense_bytes, q.output_error) == ("2:4", (64 * 64 + 64) * 4, None)
    assert q.sparse_bytes == 64 * 32 * 4 + 64 * 64 // 8 + 64 * 4
    assert rows["model.layers.1.mlp.up_proj"].format == "unstructured 75.0%"
    down = rows["model.layers.0.mlp.down_proj"]
    assert down.format == "spense 25.0% dense" and 0 < down.output_error < 1
    sparse = tuple(f"{name}." for name in rows)  # a sparse layer's bias is a Parameter too: counted in its row
    dense_other = sum(p.numel() * 4 for name, p in m.named_parameters()  # embeddings, norms, the dense linears
                      if not name.startswith(sparse))
    assert table.other_bytes == dense_other
    assert table.dense_bytes == sum(r.dense_bytes for r in table.layers) + dense_other
    assert table.sparse_bytes == sum(r.sparse_bytes for r in table.layers) + dense_other < table.dense_bytes
    text = str(table)
    assert "spense 25.0% dense" in text and "unstructured 75.0%" in text and f"{down.output_error:.4f}" in text
    assert text.splitlines()[-1].startswith("total")


# ---- load memory

MEASURE = textwrap.dedent("""
    import json, sys
    import spmm

    def rss(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    spmm.from_pretrained(sys.argv[1])  # warm up: transformers' lazy imports, first allocations
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident size (VmHWM) to the current one
    base = rss("VmRSS")
    model = spmm.from_pretrained(sys.argv[2])
    print(json.dumps({"peak": rss("VmHWM") - base, "held": rss("VmRSS") - base}))
""")


@pytest.mark.slow
def test_loading_takes_about_the_file_size_not_the_dense_model(tmp_path):
    """A 2:4 Llama of 8 layers (512 wide, 2048 MLP, fp16): loading peaks at the size of its file, well below the
    dense model's bytes, because the dense model is never built."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to reset the peak resident size")
    big = model("llama", hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, vocab_size=1024).half()
    dense_bytes = sum(p.numel() * p.element_size() for p in big.parameters())
    spmm.sparsify(big, spmm.Sparse24Config(), filter_fn=lambda name, mod: name != "lm_head")
    spmm.save_pretrained(big, tmp_path / "big")
    small = model("llama")
    spmm.sparsify(small, spmm.Sparse24Config())
    spmm.save_pretrained(small, tmp_path / "small")
    file_bytes = (tmp_path / "big" / WEIGHTS_NAME).stat().st_size
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "small"), str(tmp_path / "big")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"load memory: peak {measured['peak'] / 2**20:.1f} MiB, held {measured['held'] / 2**20:.1f} MiB, "
          f"file {file_bytes / 2**20:.1f} MiB, dense model {dense_bytes / 2**20:.1f} MiB")
    assert measured["peak"] <= 1.3 * file_bytes < dense_bytes
    assert measured["held"] >= 0.9 * file_bytes  # the measurement sees the tensors: it is not vacuous
