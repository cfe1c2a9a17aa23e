"""Pruners produce keep-masks; formats pack them. Pruners are pluggable by name (get_pruner)."""

from .magnitude import magnitude_mask, select_dense_rows
from .registry import available_pruners, get_pruner, register_pruner

__all__ = ["magnitude_mask", "select_dense_rows", "get_pruner", "register_pruner", "available_pruners"]
