"""Argument checks shared by the format constructors: every message names the argument and the rule."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor


def check_shape2d(shape: Sequence[int], name: str = "shape") -> Tuple[int, int]:
    if len(shape) != 2 or any(int(s) < 0 for s in shape):
        raise ValueError(f"{name} must be (out_features, in_features) with non-negative sizes, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def check_tensor(t: Tensor, name: str, shape=None, dtype=None, floating: bool = False) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_same_device(**tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {devices}")


def check_weight(weight: Tensor, mask, name: str = "weight") -> None:
    """Checks of a dense weight (and optional keep-mask) handed to a packer."""
    check_tensor(weight, name, floating=True)
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if mask is not None:
        check_tensor(mask, "mask", shape=weight.shape, dtype=torch.bool)
        check_same_device(**{name: weight, "mask": mask})


def plus_zero(t: Tensor) -> Tensor:
    """-0.0 -> +0.0, so unpacked weights compare bit-for-bit with the masked weight."""
    return torch.where(t == 0, torch.zeros((), dtype=t.dtype, device=t.device), t)


def masked_weight(weight: Tensor, mask=None) -> Tensor:
    """The reference every format reproduces bit-for-bit: torch.where(mask, weight, 0) with every zero +0.0.

    mask=None keeps the nonzeros of `weight` (what the packers do without a mask)."""
    keep = weight != 0 if mask is None else mask & (weight != 0)
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
