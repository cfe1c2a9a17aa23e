"""Tiled-CSL (Flash-LLM) weights: per tile, a run of (value, 16-bit in-tile location) pairs (see ops.py)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .. import ops
from .base import PackedWeight
from ._checks import check_same_device, check_shape2d, check_tensor, check_weight, plus_zero


def num_tiles(shape: Sequence[int], tile_m: int, tile_k: int) -> int:
    return -(-shape[0] // tile_m) * -(-shape[1] // tile_k)


def check_tile(tile_m: int, tile_k: int) -> None:
    for name, v in (("tile_m", tile_m), ("tile_k", tile_k)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if tile_m * tile_k > 1 << 16:
        raise ValueError(f"tile_m * tile_k must be <= 65536 (16-bit in-tile locations), got {tile_m} * {tile_k}")


class TiledCSLWeight(PackedWeight):
    """W [M, K] of any sparsity: values [nnz], locations int16 [nnz], tile_offsets int32 [n_tiles + 1]."""

    format_name = "tiled_csl"

    def __init__(
        self,
        values: Tensor,
        locations: Tensor,
        tile_offsets: Tensor,
        shape: Sequence[int],
        tile_m: int = 256,
        tile_k: int = 64,
    ):
        m, k = check_shape2d(shape)
        check_tile(tile_m, tile_k)
        check_tensor(values, "values", floating=True)
        if values.dim() != 1:
            raise ValueError(f"values must be 1-D [nnz], got shape {tuple(values.shape)}")
        check_tensor(locations, "locations", shape=values.shape, dtype=torch.int16)
        check_tensor(tile_offsets, "tile_offsets", shape=(num_tiles((m, k), tile_m, tile_k) + 1,), dtype=torch.int32)
        check_same_device(values=values, locations=locations, tile_offsets=tile_offsets)
        self.values, self.locations, self.tile_offsets = values, locations, tile_offsets
        self.shape, self.tile_m, self.tile_k = torch.Size((m, k)), tile_m, tile_k

    @classmethod
    def from_dense(
        cls, weight: Tensor, mask: Optional[Tensor] = None, tile_m: int = 256, tile_k: int = 64
    ) -> "TiledCSLWeight":
        """Pack the kept (`mask`, or nonzero when mask=None) elements of `weight`, on weight's device where it has
        a packer (CPU, CUDA), else on CPU; the tensors end up on weight's device."""
        check_weight(weight, mask)
        check_tile(tile_m, tile_k)
        if weight.device.type == "cpu" or (weight.is_cuda and ops.has_cuda_kernel("tiled_csl_compress")):
            packed = ops.tiled_csl_compress(weight, mask, tile_m, tile_k)
        else:
            cpu_mask = None if mask is None else mask.cpu()
            packed = ops.tiled_csl_compress(weight.cpu(), cpu_mask, tile_m, tile_k)
        values, locations, tile_offsets = (t.to(weight.device) for t in packed)
        return cls(values, locations, tile_offsets, weight.shape, tile_m, tile_k)

    @classmethod
    def empty(cls, shape: Sequence[int], tile_m: int = 256, tile_k: int = 64, dtype=None, device=None):
        """An all-zero weight (nnz = 0): placeholder for layers that will load a state dict."""
        offsets = torch.zeros(num_tiles(shape, tile_m, tile_k) + 1, dtype=torch.int32, device=device)
        values = torch.zeros(0, dtype=dtype, device=device)
        return cls(values, torch.zeros(0, dtype=torch.int16, device=device), offsets, shape, tile_m, tile_k)

    def validate(self) -> "TiledCSLWeight":
        """tile_offsets rise from 0 to nnz; each location lies inside its (possibly partial) tile, and the locations
        of a tile strictly increase (the packer's order, so no element twice). (The CPU matmul's own check, run on
        CPU copies of the locations and offsets: one pass over the stream.)"""
        if not self._holds_data():
            return self
        try:
            ops.tiled_csl_check(self.locations.cpu(), self.tile_offsets.cpu(), *self.shape, self.tile_m, self.tile_k)
        except ValueError as e:
            raise ValueError(str(e).replace("spmm::_tiled_csl_check: ", "")) from None
        return self

    @classmethod
    def from_coordinates(cls, rows: Tensor, cols: Tensor, values: Tensor, shape: Sequence[int], tile_m: int = 256,
                         tile_k: int = 64) -> "TiledCSLWeight":
        """The stream of the entries values[i] at (rows[i], cols[i]) (distinct positions inside shape), on values'
        device; what a kernel layout decodes back to."""
        m, k = check_shape2d(shape)
        check_tile(tile_m, tile_k)
        rows, cols = rows.long(), cols.long()
        tiles_k = -(-k // tile_k)
        tile = (rows // tile_m) * tiles_k + cols // tile_k
        location = (rows % tile_m) * tile_k + cols % tile_k
        order = torch.argsort(tile * (tile_m * tile_k) + location)
        offsets = torch.zeros(num_tiles((m, k), tile_m, tile_k) + 1, dtype=torch.int64, device=values.device)
        offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=offsets.numel() - 1), 0)
        location = location[order]
        location = torch.where(location >= 1 << 15, location - (1 << 16), location).to(torch.int16)  # unsigned bits
        return cls(values[order].contiguous(), location, offsets.to(torch.int32), (m, k), tile_m, tile_k)

    def coordinates(self, check: bool = True):
        """(rows, cols) int64 of every stored value, checking the layout on the way (unless check=False)."""
        if check:
            self.validate()
        offsets = self.tile_offsets.long()
        counts = offsets[1:] - offsets[:-1]
        tile = torch.repeat_interleave(torch.arange(counts.numel(), device=self.device), counts)
        loc = self.locations.long() & 0xFFFF  # int16 holds the unsigned location
        tiles_k = -(-self.shape[1] // self.tile_k)
        rows = (tile // tiles_k) * self.tile_m + loc // self.tile_k
        cols = (tile % tiles_k) * self.tile_k + loc % self.tile_k
        return rows, cols

    def to_dense(self, check: bool = True) -> Tensor:
        """Unpack in pure torch (independent of the C++ packer). check=False skips validate(), for a layout already
        checked (the ops' backward: no host sync, traceable)."""
        rows, cols = self.coordinates(check)
        dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        dense[rows, cols] = self.values
        return plus_zero(dense)

    def matmul(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """y = x @ W.T (+ bias), x [..., K] -> y [..., M]."""
        return ops.tiled_csl_mm(
            x, self.values, self.locations, self.tile_offsets, self.shape[0], self.tile_m, self.tile_k, bias
        )

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / max(self.shape.numel(), 1)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def to(self, device=None, dtype=None) -> "TiledCSLWeight":
        return TiledCSLWeight(
            self.values.to(device=device, dtype=dtype),
            self.locations.to(device=device),
            self.tile_offsets.to(device=device),
            self.shape,
            self.tile_m,
            self.tile_k,
        )

    def tensors(self) -> Dict[str, Tensor]:
        return {"values": self.values, "locations": self.locations, "tile_offsets": self.tile_offsets}

    @classmethod
    def from_tensors(cls, tensors: Dict[str, Tensor], shape: Sequence[int], tile_m: int = 256, tile_k: int = 64):
        """The weight of stored tensors (e.g. a state dict's), validated."""
        return cls(tensors["values"], tensors["locations"], tensors["tile_offsets"], shape, tile_m, tile_k).validate()

    def __repr__(self) -> str:
        return (
            f"TiledCSLWeight(shape={tuple(self.shape)}, tile=({self.tile_m}, {self.tile_k}), nnz={self.nnz}, "
            f"sparsity={self.sparsity:.3f}, dtype={self.dtype}, device={self.device}, nbytes={self.nbytes})"
        )
