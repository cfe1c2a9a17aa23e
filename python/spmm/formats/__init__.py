"""Packed weight formats. Each is reversible: to_dense() equals masked_weight(weight, mask) bit-for-bit."""

from ._checks import masked_weight
from .sparse24 import Sparse24Weight
from .spense import SpenseWeight
from .tiled_csl import TiledCSLWeight

__all__ = ["Sparse24Weight", "TiledCSLWeight", "SpenseWeight", "masked_weight"]
