"""The internal ops that give the dense weight of a packed one, for the matmul ops' backward.

spmm::sparse24_mm, tiled_csl_mm and spense_mm carry their autograd in C++ (csrc/ops/matmul_autograd.cpp):
dL/dx = dL/dy @ W, with W from spmm::_sparse24_dense, _tiled_csl_dense, _spense_dense (schemas in
csrc/ops/registration.cpp, fakes in spmm/ops.py). Their implementations, for every device, are the formats' own
unpackers here, unchecked (check=False: the forward op or the layer already checked the layout). Backward is rare
(training), so the call back into Python costs nothing that matters.
"""

from __future__ import annotations

import torch

from . import tiled_csl_layouts
from .sparse24 import Sparse24Weight
from .spense import SpenseWeight
from .tiled_csl import TiledCSLWeight


@torch.library.impl("spmm::_sparse24_dense", "default")
def _sparse24_dense(values, meta):
    return Sparse24Weight(values, meta, (values.shape[0], 2 * values.shape[1])).to_dense(check=False)


@torch.library.impl("spmm::_tiled_csl_dense", "default")
def _tiled_csl_dense(values, locations, tile_offsets, out_features, in_features, tile_m, tile_k, words, word_offsets,
                     delta_values, delta_codes, delta_offsets):
    """The stream the op was given, or where it was left empty (tile_offsets with no entry), the layout's."""
    shape = (out_features, in_features)
    if tile_offsets.numel() > 0:
        weight = TiledCSLWeight(values, locations, tile_offsets, shape, tile_m, tile_k)
    elif delta_values is not None:
        weight = tiled_csl_layouts.delta_to_weight(delta_values, delta_codes, delta_offsets, shape, tile_m, tile_k)
    else:
        weight = tiled_csl_layouts.words_to_weight(words, word_offsets, shape, tile_m, tile_k)
    return weight.to_dense(check=False)


@torch.library.impl("spmm::_spense_dense", "default")
def _spense_dense(dense_weight, values, meta, row_index):
    sparse = Sparse24Weight(values, meta, (values.shape[0], dense_weight.shape[1]))
    return SpenseWeight(dense_weight, sparse, row_index).to_dense(check=False)
