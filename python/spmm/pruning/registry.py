"""Pruners by name. A pruner is a callable (weight, sparsity, **kwargs) -> bool keep-mask of weight's shape;
calibration-based pruners (SparseGPT, Wanda) take their statistics through **kwargs."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple, Union

Pruner = Callable[..., "torch.Tensor"]  # noqa: F821
_PRUNERS: Dict[str, Pruner] = {}


def register_pruner(name: str):
    def wrap(fn: Pruner) -> Pruner:
        if name in _PRUNERS:
            raise ValueError(f"pruner {name!r} is already registered")
        _PRUNERS[name] = fn
        return fn

    return wrap


def get_pruner(name: str) -> Pruner:
    try:
        return _PRUNERS[name]
    except KeyError:
        raise ValueError(f"pruner: unknown name {name!r}; registered: {sorted(_PRUNERS)}") from None


def available_pruners() -> List[str]:
    return sorted(_PRUNERS)


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
