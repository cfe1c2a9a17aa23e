"""spmm: sparse weight formats, layers and ops for LLM inference."""

from . import formats, nn, ops, pruning
from .layer_summary import summary
from .pretrained import from_pretrained, save_pretrained
from .serialization import load_sparsified, save_sparsified
from .sparse_api import Sparse24Config, SpenseConfig, TiledCSLConfig, register_handler, sparsify

__version__ = "0.1.0"

__all__ = [
    "ops", "formats", "nn", "pruning", "sparsify", "register_handler",
    "Sparse24Config", "TiledCSLConfig", "SpenseConfig", "save_sparsified", "load_sparsified", "save_pretrained",
    "from_pretrained", "summary", "__version__",
]
