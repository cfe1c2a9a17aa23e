"""Pruners by name.

A pruner is a callable (weight, sparsity, stats=None, **options) returning either a bool keep-mask of weight's
shape, or a PruneResult when it also changes the weights it keeps (SparseGPT). Pruners that learn from data declare
which statistics of the layer's inputs they read (`needs`, see calibration.InputStats) and get them as `stats`.
`prune` calls any of them and always hands back a PruneResult."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

Pruner = Callable[..., Union[Tensor, "PruneResult"]]
NEEDS = (None, "norms", "gram")  # nothing; per-column input norms (Wanda); the input Gram matrix X^T X (SparseGPT)

_PRUNERS: Dict[str, Pruner] = {}
_NEEDS: Dict[str, Optional[str]] = {}


@dataclass(frozen=True)
class PruneResult:
    """What a pruner decided: `mask` (bool, True = keep) and `weight`, the values to pack at the kept positions
    (the input weight itself when the pruner only chooses a mask)."""

    mask: Tensor
    weight: Tensor


def register_pruner(name: str, needs: Optional[str] = None):
    """Register a pruner under `name`; `needs` says which input statistics it reads (one of NEEDS)."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, got {needs!r}")

    def wrap(fn: Pruner) -> Pruner:
        if name in _PRUNERS:
            raise ValueError(f"pruner {name!r} is already registered")
        _PRUNERS[name] = fn
        _NEEDS[name] = needs
        return fn

    return wrap


def get_pruner(name: str) -> Pruner:
    try:
        return _PRUNERS[name]
    except KeyError:
        raise ValueError(f"pruner: unknown name {name!r}; registered: {sorted(_PRUNERS)}") from None


def pruner_needs(name: str) -> Optional[str]:
    """The input statistics the pruner `name` reads: None, "norms" or "gram"."""
    get_pruner(name)
    return _NEEDS[name]


def available_pruners() -> List[str]:
    return sorted(_PRUNERS)


def prune(name: str, weight: Tensor, sparsity: Union[str, float], stats=None, **options) -> PruneResult:
    """Run the pruner `name` on `weight` [M, K]; `stats` are the layer's input statistics (calibrated pruners)."""
    out = get_pruner(name)(weight, sparsity, stats=stats, **options)
    if isinstance(out, Tensor):
        out = PruneResult(out, weight.detach())
    if not isinstance(out, PruneResult) or out.mask.dtype != torch.bool or out.mask.shape != weight.shape:
        raise TypeError(f"pruner {name!r} must return a bool mask of shape {tuple(weight.shape)} or a PruneResult")
    return out


def require_stats(stats, pruner: str, weight: Tensor):
    """The `stats` a calibrated pruner was given, checked against `weight`, or a ValueError saying what is wrong."""
    if stats is None:
        raise ValueError(f"pruner {pruner!r} needs calibration data: pass stats=<InputStats of the layer's inputs> "
                         f"(spmm.sparsify builds them when given calibration=<iterable of model inputs>)")
    if stats.in_features != weight.shape[1]:
        raise ValueError(f"stats: collected for in_features={stats.in_features}, but weight has "
                         f"in_features={weight.shape[1]}")
    return stats


def check_weight_2d(weight: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")


def check_n_of_m(k: int, n: int, m: int) -> None:
    if k % m:
        raise ValueError(f"weight: in_features (K={k}) must be a multiple of {m} for {n}:{m} sparsity")


def parse_sparsity(sparsity: Union[str, float]) -> Union[Tuple[int, int], float]:
    """"N:M" -> (N, M); a number in [0, 1] -> float."""
    if isinstance(sparsity, str):
        try:
            n, m = (int(p) for p in sparsity.split(":"))
        except ValueError:
            raise ValueError(f"sparsity must be 'N:M' (e.g. '2:4') or a float in [0, 1], got {sparsity!r}") from None
        if not 0 < n <= m:
            raise ValueError(f"sparsity 'N:M' needs 0 < N <= M, got {sparsity!r}")
        return n, m
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be 'N:M' (e.g. '2:4') or a float in [0, 1], got {sparsity!r}")
    return float(sparsity)
