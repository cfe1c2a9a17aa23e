"""Drop-in nn.Linear replacements that hold packed sparse weights."""

from .base import SparseLinear
from .sparse24_linear import Sparse24Linear
from .spense_linear import SpenseLinear
from .tiled_csl_linear import TiledCSLLinear

__all__ = ["SparseLinear", "Sparse24Linear", "TiledCSLLinear", "SpenseLinear"]
