"""spmm.sparsify: swap a model's nn.Linear modules for sparse layers, as a config says (torchao's sparsify_ shape:
each config type maps to a handler that turns one nn.Linear into its replacement). The module is not named
sparsify.py, so that the function spmm.sparsify does not hide it."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Type

import torch
from torch import nn
from tqdm.auto import tqdm

from .nn import Sparse24Linear, SpenseLinear, TiledCSLLinear
from .pruning import get_pruner, select_dense_rows
from .pruning.registry import parse_sparsity


@dataclass(frozen=True)
class Sparse24Config:
    """2:4 sparsity, every layer at 50%."""

    pruner: str = "magnitude"


@dataclass(frozen=True)
class TiledCSLConfig:
    """Unstructured sparsity stored as Tiled-CSL."""

    sparsity: float = 0.8
    pruner: str = "magnitude"
    tile_m: int = 256
    tile_k: int = 64

    def __post_init__(self):
        if isinstance(parse_sparsity(self.sparsity), tuple):
            raise ValueError(f"TiledCSLConfig.sparsity must be a float in [0, 1], got {self.sparsity!r}")


@dataclass(frozen=True)
class SpenseConfig:
    """2:4 sparsity except the dense_fraction of output rows that 2:4 pruning hurts most."""

    dense_fraction: float = 0.25
    pruner: str = "magnitude"

    def __post_init__(self):
        if not 0.0 <= self.dense_fraction <= 1.0:
            raise ValueError(f"SpenseConfig.dense_fraction must lie in [0, 1], got {self.dense_fraction!r}")


class Unsupported(Exception):
    """A handler's way to say 'this layer cannot take the format' (sparsify warns and skips it)."""


Handler = Callable[[nn.Linear, object], nn.Module]
_HANDLERS: Dict[type, Handler] = {}


def register_handler(config_cls: Type) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = fn
        return fn

    return wrap


def _need_k_multiple_of_4(linear: nn.Linear) -> None:
    if linear.in_features % 4:
        raise Unsupported(f"2:4 needs in_features % 4 == 0, got in_features={linear.in_features}")


@register_handler(Sparse24Config)
def _sparse24(linear: nn.Linear, config: Sparse24Config) -> nn.Module:
    _need_k_multiple_of_4(linear)
    mask = get_pruner(config.pruner)(linear.weight, "2:4")
    return Sparse24Linear.from_dense(linear, mask)


@register_handler(TiledCSLConfig)
def _tiled_csl(linear: nn.Linear, config: TiledCSLConfig) -> nn.Module:
    mask = get_pruner(config.pruner)(linear.weight, config.sparsity)
    return TiledCSLLinear.from_dense(linear, mask, tile_m=config.tile_m, tile_k=config.tile_k)


@register_handler(SpenseConfig)
def _spense(linear: nn.Linear, config: SpenseConfig) -> nn.Module:
    _need_k_multiple_of_4(linear)
    mask = get_pruner(config.pruner)(linear.weight, "2:4")
    rows = select_dense_rows(linear.weight, config.dense_fraction, mask)
    return SpenseLinear.from_dense(linear, mask, dense_rows=rows)


def _unsupported_parent(parent: nn.Module) -> Optional[str]:
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads its out_proj.weight directly"
    return None


@torch.no_grad()
def sparsify(model: nn.Module, config, filter_fn: Optional[Callable[[str, nn.Module], bool]] = None) -> nn.Module:
    """Replace, in place, every nn.Linear of `model` for which filter_fn(name, module) is true (default: all) by the
    sparse layer `config` asks for; layers the format cannot hold are skipped with a warning. Returns `model`
    (or, when `model` is itself an nn.Linear, its replacement)."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ValueError(f"config: no handler for {type(config).__name__}; known: {[c.__name__ for c in _HANDLERS]}")
    modules = dict(model.named_modules(remove_duplicate=False))
    targets = [
        name for name, mod in modules.items()
        if isinstance(mod, nn.Linear) and (filter_fn is None or filter_fn(name, mod))
    ]
    swapped: Dict[int, Optional[nn.Module]] = {}  # id(dense) -> replacement (None: skipped); shared stays shared
    for name in tqdm(targets, desc="spmm.sparsify", disable=not sys.stderr.isatty()):
        dense = modules[name]
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if name else None
        if id(dense) not in swapped:
            try:
                reason = _unsupported_parent(parent)
                if reason:
                    raise Unsupported(reason)
                swapped[id(dense)] = handler(dense, config)
            except Unsupported as why:
                warnings.warn(f"spmm.sparsify: skipping {name!r} ({type(config).__name__}): {why}", stacklevel=3)
                swapped[id(dense)] = None
        if swapped[id(dense)] is None:
            continue
        if not name:  # the model is itself a Linear: nothing to swap it in, so hand back the replacement
            return swapped[id(dense)]
        setattr(parent, child, swapped[id(dense)])
    return model
