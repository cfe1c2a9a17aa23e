"""The CUDA kernel layouts of a Tiled-CSL weight, derived from its stream (TiledCSLWeight, the saved format) and read
back, in plain torch on any device.

- The delta layout (built here; defined in csrc/kernels/tiled_csl/tiled_csl_delta_layout.h): per row and K slice the
  nonzeros as (value, 4-bit column gap) entries in chunks of 8, stored so a warp's 32 rows stream coalesced;
  2.5 bytes per entry. `delta_layout` builds it; the same code runs on CPU and CUDA, so both give the same bits.
- The word layout (built by the CUDA op spmm::_tiled_csl_words; read back here).

A layer that holds only a kernel layout gets its stream (state dict), dense weight and gradient from the decoders.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .. import _C
from .tiled_csl import TiledCSLWeight

DELTA_CHUNK: int = _C.tiled_csl_delta_chunk  # entries per chunk (8 values, one 32-bit code word)
DELTA_GROUP: int = _C.tiled_csl_delta_group_rows  # rows per jagged record (one warp)
_MAX_CODE = 15  # a 4-bit code: the entry lies 1 + code columns after the previous one
_CODE_SHIFTS = (0, 8, 16, 24, 4, 12, 20, 28)  # entry t's nibble in its chunk's code word


def delta_slice_width(m: int, k: int) -> int:
    """Columns per K slice of the delta layout of an [m, k] weight (the C++ rule)."""
    return _C.tiled_csl_delta_slice_width(m, k)


def _bits(t: Tensor) -> Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _jagged_order(offsets: Tensor, m: int) -> Tensor:
    """order[p] = the natural chunk (segments in slice-major, row-minor order, each segment's chunks in order) that the
    layout stores at chunk position p: within each record of 32 rows, chunk 0 of every segment that has one, then
    chunk 1, ..."""
    counts = offsets[1:] - offsets[:-1]
    total = int(offsets[-1])
    device = offsets.device
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    segment = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    j = torch.arange(total, device=device) - offsets[:-1][segment]
    s, r = segment // m, segment % m
    groups, longest = _cdiv(m, DELTA_GROUP), int(counts.max()) + 1
    key = ((s * groups + r // DELTA_GROUP) * longest + j) * DELTA_GROUP + r % DELTA_GROUP
    return torch.argsort(key)


def delta_layout(weight: TiledCSLWeight) -> Tuple[Tensor, Tensor, Tensor]:
    """Stream -> delta layout: (values [8 * chunks] of the weight's dtype, codes int32 [chunks], offsets int32
    [slices * M + 1]), on the weight's device."""
    m, k = weight.shape
    width = delta_slice_width(m, k)
    slices = _cdiv(k, width)
    device = weight.device
    rows, cols = weight.coordinates()
    values = weight.values
    kept = _bits(values) != 0  # +0.0 marks fillers and padding; the stream stores no zeros anyway
    rows, cols, values = rows[kept], cols[kept], values[kept]

    # Entries of each segment (slice s, row r) in column order.
    segment = (cols // width) * m + rows
    local = cols % width
    order = torch.argsort(segment * width + local)
    segment, local, values = segment[order], local[order], values[order]
    first = torch.ones_like(segment, dtype=torch.bool)
    first[1:] = segment[1:] != segment[:-1]
    previous = torch.roll(local, 1)
    previous[first] = -1
    gap = local - previous - 1  # columns skipped before the entry
    fillers = gap // (_MAX_CODE + 1)  # each bridges 16 columns
    size = 1 + fillers  # entries the nonzero takes: its fillers, then itself
    entries = torch.zeros(slices * m, dtype=torch.int64, device=device).index_add_(0, segment, size)
    offsets = torch.zeros(slices * m + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(_cdiv_tensor(entries, DELTA_CHUNK), 0)
    chunks = int(offsets[-1])
    if chunks > torch.iinfo(torch.int32).max:
        raise ValueError(f"tiled_csl delta layout: {chunks} chunks do not fit the int32 offsets; split the weight")

    # Position of each entry in the natural order (segment by segment, chunk by chunk).
    end = torch.cumsum(size, 0)
    segment_start = torch.zeros(slices * m, dtype=torch.int64, device=device)
    segment_start[segment[first]] = (end - size)[first]
    natural = offsets[:-1][segment] * DELTA_CHUNK + end - 1 - segment_start[segment]
    natural_values = torch.zeros(chunks * DELTA_CHUNK, dtype=values.dtype, device=device)
    natural_values[natural] = values
    natural_codes = torch.zeros(chunks * DELTA_CHUNK, dtype=torch.int64, device=device)
    natural_codes[natural] = gap % (_MAX_CODE + 1)
    total_fillers = int(fillers.sum()) if fillers.numel() else 0
    if total_fillers:
        owner = torch.repeat_interleave(torch.arange(fillers.numel(), device=device), fillers)
        rank = torch.arange(total_fillers, device=device) - (torch.cumsum(fillers, 0) - fillers)[owner]
        natural_codes[natural[owner] - fillers[owner] + rank] = _MAX_CODE

    shifts = torch.tensor(_CODE_SHIFTS, dtype=torch.int64, device=device)
    words = (natural_codes.view(chunks, DELTA_CHUNK) << shifts).sum(1)
    stored = _jagged_order(offsets, m)
    codes = words[stored]
    codes = torch.where(codes >= 1 << 31, codes - (1 << 32), codes).to(torch.int32)  # the 32 bits, as int32
    return natural_values.view(chunks, DELTA_CHUNK)[stored].reshape(-1), codes, offsets.to(torch.int32)


def _cdiv_tensor(t: Tensor, d: int) -> Tensor:
    return (t + d - 1) // d


def delta_coordinates(values: Tensor, codes: Tensor, offsets: Tensor, shape: Sequence[int]):
    """(rows, cols, values) of the weight a delta layout holds (fillers and padding left out), checking the layout on
    the way."""
    m, k = shape
    slices = _cdiv(k, delta_slice_width(m, k))
    offsets = offsets.long()
    chunks = codes.numel()
    if offsets.numel() != slices * m + 1 or values.numel() != chunks * DELTA_CHUNK:
        raise ValueError(f"tiled_csl delta layout: offsets ({offsets.numel()}) / values ({values.numel()}) / codes "
                         f"({chunks}) do not fit a {m} x {k} weight")
    counts = offsets[1:] - offsets[:-1]
    if offsets[0] != 0 or offsets[-1] != chunks or bool((counts < 0).any()):
        raise ValueError("tiled_csl delta layout: offsets must rise from 0 to the chunk count")
    stored = _jagged_order(offsets, m)
    natural_codes = torch.empty(chunks, dtype=torch.int64, device=codes.device)
    natural_codes[stored] = codes.long() & 0xFFFFFFFF
    natural_values = torch.empty(chunks, DELTA_CHUNK, dtype=values.dtype, device=values.device)
    natural_values[stored] = values.view(chunks, DELTA_CHUNK)
    shifts = torch.tensor(_CODE_SHIFTS, dtype=torch.int64, device=codes.device)
    step = ((natural_codes[:, None] >> shifts) & _MAX_CODE).reshape(-1) + 1  # columns from the previous entry
    segment = torch.repeat_interleave(torch.arange(slices * m, device=codes.device), counts * DELTA_CHUNK)
    end = torch.cumsum(step, 0)
    column = end - 1 - (end - step)[offsets[:-1][segment] * DELTA_CHUNK]  # within the slice
    natural_values = natural_values.reshape(-1)
    real = _bits(natural_values) != 0
    segment, column = segment[real], column[real]
    rows = segment % m
    cols = (segment // m) * delta_slice_width(m, k) + column
    if bool((cols >= k).any()):
        raise ValueError("tiled_csl delta layout: an entry lies past the last column")
    return rows, cols, natural_values[real]


def delta_to_weight(values: Tensor, codes: Tensor, offsets: Tensor, shape: Sequence[int], tile_m: int,
                    tile_k: int) -> TiledCSLWeight:
    """The stream of the weight a delta layout holds, in tiles of tile_m x tile_k."""
    rows, cols, vals = delta_coordinates(values, codes, offsets, shape)
    return TiledCSLWeight.from_coordinates(rows, cols, vals, shape, tile_m, tile_k)


def words_to_weight(words: Tensor, word_offsets: Tensor, shape: Sequence[int], tile_m: int,
                    tile_k: int = 64) -> TiledCSLWeight:
    """The stream of the weight a word layout (spmm::_tiled_csl_words) holds: each word row is (value, the element's
    swizzled offset in the kernel's shared tile); padding rows aim past the tile."""
    m, k = shape
    counts = (word_offsets[1:] - word_offsets[:-1]).long()
    total = int(word_offsets[-1])
    tile = torch.repeat_interleave(torch.arange(counts.numel(), device=words.device), counts)
    offset = _bits(words[:total, 1]).long() & 0xFFFF
    real = offset < tile_m * tile_k
    location = offset ^ ((offset >> 3) & 0x38)  # chunk c of row r sits at c ^ (r % 8)
    tiles_k = _cdiv(k, tile_k)
    rows = (tile // tiles_k) * tile_m + location // tile_k
    cols = (tile % tiles_k) * tile_k + location % tile_k
    return TiledCSLWeight.from_coordinates(rows[real], cols[real], words[:total, 0][real], shape, tile_m, tile_k)
