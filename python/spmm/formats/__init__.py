"""Packed weight formats. Each is reversible: to_dense() equals masked_weight(weight, mask) bit-for-bit."""

from ._checks import masked_weight
from .sparse24 import Sparse24Weight
from .spense import SpenseWeight
from .tiled_csl import TiledCSLWeight
from . import dense_ops  # noqa: F401,E402  (implements the ops the matmul ops' backward rebuilds W with)

__all__ = ["Sparse24Weight", "TiledCSLWeight", "SpenseWeight", "masked_weight"]
