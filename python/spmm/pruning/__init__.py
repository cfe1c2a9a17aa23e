"""Pruners produce keep-masks (and, for SparseGPT, updated weights); formats pack them. Pruners are pluggable by name
(get_pruner / prune); calibrated ones read InputStats of their layer's inputs, which spmm.sparsify collects
layer by layer (sequential.py)."""

from .calibration import InputStats
from .magnitude import magnitude_mask, select_dense_rows
from .registry import PruneResult, available_pruners, get_pruner, prune, pruner_needs, register_pruner
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_mask

__all__ = [
    "magnitude_mask", "wanda_mask", "sparsegpt_prune", "select_dense_rows", "InputStats", "PruneResult", "prune",
    "get_pruner", "register_pruner", "pruner_needs", "available_pruners",
]
