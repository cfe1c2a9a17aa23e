"""Pruners produce keep-masks (and, for SparseGPT, updated weights); formats pack them. Pruners are pluggable by name
(get_pruner / prune); calibrated ones read InputStats of their layer's inputs, which spmm.sparsify collects
layer by layer (sequential.py). dense_rows.py chooses the dense rows of Spense layers."""

from .calibration import InputStats
from .dense_rows import allocate_rows, row_scores, top_rows, uniform_row_count
from .magnitude import magnitude_mask
from .registry import PruneResult, available_pruners, get_pruner, prune, pruner_needs, register_pruner
from .sensitivity import block_sensitivity
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_mask

__all__ = [
    "magnitude_mask", "wanda_mask", "sparsegpt_prune", "InputStats", "PruneResult", "prune",
    "get_pruner", "register_pruner", "pruner_needs", "available_pruners",
    "row_scores", "top_rows", "uniform_row_count", "allocate_rows", "block_sensitivity",
]
