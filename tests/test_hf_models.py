"""Hugging Face causal LMs (Llama, Qwen2, OPT; small, random weights, CPU) sparsified in every format, with and
without calibration: greedy generate() gives exactly the tokens of the dense model holding the same masked weights,
with the dynamic and the static KV cache and under torch.compile; block-by-block calibration of Hugging Face decoder
layers (attention masks, position embeddings, cache objects, per-layer masks) equals whole-model passes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import spmm
from hf_helpers import calibration, decoder_linears, dense_reference, greedy, model
from spmm.nn import SparseLinear

ARCHS = ["llama", "qwen2", "opt"]
FORMATS = {
    "2:4": lambda pruner: spmm.Sparse24Config(pruner=pruner),
    "unstructured": lambda pruner: spmm.TiledCSLConfig(sparsity=0.7, pruner=pruner),
    "spense": lambda pruner: spmm.SpenseConfig(dense_fraction=0.25, pruner=pruner),
}


def not_head(m):
    head = m.get_output_embeddings()
    return lambda name, module: module is not head


@pytest.mark.slow
@pytest.mark.parametrize("calibrated", [False, True], ids=["magnitude", "calibrated"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_equals_dense_masked_model(arch, fmt, calibrated):
    m = model(arch)
    original, linears = copy.deepcopy(m), decoder_linears(m)
    # the calibrated pruners take turns over the cases, so each format and model meets both
    pruner = ("sparsegpt" if (ARCHS.index(arch) + list(FORMATS).index(fmt)) % 2 else "wanda") if calibrated \
        else "magnitude"
    spmm.sparsify(m, FORMATS[fmt](pruner), filter_fn=not_head(m), calibration=calibration() if calibrated else None)
    sparse = [mod for mod in m.modules() if isinstance(mod, SparseLinear)]
    assert len(sparse) == linears > 0
    assert all((mod.output_error is not None) == calibrated for mod in sparse)
    ref = dense_reference(m)
    tokens = greedy(m)
    assert torch.equal(tokens, greedy(ref))
    assert torch.equal(greedy(m, cache_implementation="static"), tokens)
    ids = tokens[:, :-1]
    logits = m(ids).logits
    torch.testing.assert_close(logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    # pruning changed the model (random models keep much of their input, so compare logits, not tokens)
    assert (logits - original(ids).logits).abs().max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_blockwise_calibration_equals_whole_model_passes(arch):
    """Each decoder layer calibrated on its captured inputs gets the statistics the whole-model passes give: the
    cache object the model hands its layers is not reused across the block's reruns (it would grow), and Qwen2's
    two layers get their own attention masks."""
    from spmm.pruning import sequential

    base = model(arch, seed=1)
    linears = decoder_linears(base)
    blockwise, whole = copy.deepcopy(base), copy.deepcopy(base)
    config = spmm.Sparse24Config(pruner="sparsegpt")
    runs = []
    original = sequential._blockwise_stats

    def counted(*args, **kwargs):
        runs.append(1)
        yield from original(*args, **kwargs)

    sequential._blockwise_stats = counted
    try:
        spmm.sparsify(blockwise, config, calibration=calibration())
        assert runs  # it did go block by block
        found, sequential.find_blocks = sequential.find_blocks, lambda *a: None
        try:
            spmm.sparsify(whole, config, calibration=calibration())
        finally:
            sequential.find_blocks = found
    finally:
        sequential._blockwise_stats = original
    a = {n: mod for n, mod in blockwise.named_modules() if isinstance(mod, SparseLinear)}
    b = {n: mod for n, mod in whole.named_modules() if isinstance(mod, SparseLinear)}
    assert a.keys() == b.keys() and len(a) == linears + 1  # the head too
    for name in a:
        assert torch.equal(a[name].to_dense_weight(), b[name].to_dense_weight()), name
        assert a[name].output_error == pytest.approx(b[name].output_error, rel=1e-9), name


@pytest.mark.slow
def test_generate_under_torch_compile():
    """One Llama holding all three formats, its forward compiled (inductor, fullgraph) and run with the static
    cache: the tokens of the dense masked model."""
    m = model("llama", seed=2)
    linears = decoder_linears(m)
    spmm.sparsify(m, spmm.Sparse24Config(), filter_fn=lambda name, mod: "self_attn" in name)
    spmm.sparsify(m, spmm.TiledCSLConfig(0.7), filter_fn=lambda name, mod: name.endswith(("up_proj", "gate_proj")))
    spmm.sparsify(m, spmm.SpenseConfig(0.25), filter_fn=lambda name, mod: name.endswith("down_proj"))
    assert sum(isinstance(mod, SparseLinear) for mod in m.modules()) == linears
    expected = greedy(dense_reference(m))
    m.forward = torch.compile(m.forward, fullgraph=True)
    counters.clear()
    assert torch.equal(greedy(m, cache_implementation="static"), expected)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled forward is what generate ran


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "opt"])
def test_generate_under_torch_compile_traces_every_model(arch):
    """The other two models through the compiler's tracing (aot_eager: the graph and our ops' fakes, without
    inductor's code generation, which the Llama test covers)."""
    m = model(arch, seed=3)
    spmm.sparsify(m, spmm.SpenseConfig(0.25), filter_fn=not_head(m))
    expected = greedy(dense_reference(m))
    m.forward = torch.compile(m.forward, fullgraph=True, backend="aot_eager")
    counters.clear()
    assert torch.equal(greedy(m, cache_implementation="static"), expected)
    assert counters["stats"]["unique_graphs"] >= 1
