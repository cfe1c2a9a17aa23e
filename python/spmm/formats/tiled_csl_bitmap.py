"""The Hopper Tiled-CSL kernel's pair-bitmap layout, built and read back in plain torch (CPU or CUDA).

Tiles of 128 x 64; per 8 x 8 block a 32-bit mask of its 32 element pairs (pair l: row l // 4, columns 2 (l % 4) and
+1, the pair lane l of an mma A fragment holds) and the pairs with a nonzero as 32-bit words, in lane order. Record
of a tile: 8 slice starts, 128 masks, the pairs, zero padding to 4 words. The full description is in
csrc/kernels/tiled_csl/tiled_csl_bitmap.h. Not a saved format: TiledCSLLinear rebuilds it from the Tiled-CSL stream.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

TILE_M, TILE_K = 128, 64
HEADER_WORDS = 8 + 128
_ROW_TILES_PER_CHUNK = 64  # bounds the builder's scratch memory (int64 ranks of 64 x 4096 pairs per column tile)


class BitmapLayout(NamedTuple):
    records: Tensor         # [words, 2] of the weight's dtype (the kernel reads 32-bit words)
    record_offsets: Tensor  # int32 [tiles + 1], in words
    max_record_words: int   # the longest record (sizes the kernel's shared-memory ring)


def _grid(shape: Sequence[int]):
    m, k = shape
    return -(-m // TILE_M), -(-k // TILE_K)


def _tile_pairs(w: Tensor, row_tiles: int, col_tiles: int) -> Tensor:
    """Padded weight [row_tiles * 128, col_tiles * 64] -> int32 pairs [tiles, 128 blocks, 32 lanes] in record order:
    block 16 w + 4 s + r (16-row slice w, k16 step s, r = cb * 2 + rb for the block's 8-row half rb and 8-column half
    cb of the step), lane 4 g + q (row g, columns 2q, 2q + 1; the even column in the low half)."""
    bits = w.view(torch.int16).view(torch.int32)  # pairs along K (little endian: even column low)
    p = bits.view(row_tiles, 8, 2, 8, col_tiles, 4, 2, 4)  # [rt, w, rb, g, ct, s, cb, q]
    return p.permute(0, 4, 1, 5, 6, 2, 3, 7).reshape(row_tiles * col_tiles, 128, 32)


def _padded(dense: Tensor, row_tiles: int, col_tiles: int, r0: int, r1: int) -> Tensor:
    m, k = dense.shape
    w = torch.zeros((r1 - r0) * TILE_M, col_tiles * TILE_K, dtype=dense.dtype, device=dense.device)
    rows = dense[r0 * TILE_M: min(r1 * TILE_M, m)]
    w[: rows.shape[0], :k] = rows
    return w


def build(dense: Tensor) -> BitmapLayout:
    """Dense [M, K] float16/bfloat16 weight (zeros where pruned) -> the pair-bitmap layout."""
    if dense.dim() != 2 or dense.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"tiled_csl_bitmap: `dense` must be a 2-D float16/bfloat16 weight, got {dense.dtype} "
                         f"{tuple(dense.shape)}")
    row_tiles, col_tiles = _grid(dense.shape)
    dev = dense.device
    if row_tiles * col_tiles == 0:
        return BitmapLayout(dense.new_zeros(0, 2), torch.zeros(1, dtype=torch.int32, device=dev), HEADER_WORDS)
    lane_bits = torch.ones(32, dtype=torch.int64, device=dev) << torch.arange(32, device=dev)
    chunks = []
    for r0 in range(0, row_tiles, _ROW_TILES_PER_CHUNK):  # pass 1: masks and record sizes
        r1 = min(r0 + _ROW_TILES_PER_CHUNK, row_tiles)
        present = _tile_pairs(_padded(dense, row_tiles, col_tiles, r0, r1), r1 - r0, col_tiles) != 0
        masks = (present.to(torch.int64) * lane_bits).sum(-1)
        counts = present.sum(-1)  # [tiles, 128]
        chunks.append((r0, r1, torch.where(masks >= 1 << 31, masks - (1 << 32), masks).to(torch.int32), counts))
    counts = torch.cat([c[3] for c in chunks])
    words = (HEADER_WORDS + counts.sum(-1) + 3) // 4 * 4
    offsets = torch.zeros(words.numel() + 1, dtype=torch.int64, device=dev)
    offsets[1:] = words.cumsum(0)
    total = int(offsets[-1])
    if total >= 1 << 31:
        raise ValueError(f"tiled_csl_bitmap: the layout needs {total} words, more than int32 offsets address")
    records = torch.zeros(total, dtype=torch.int32, device=dev)
    for r0, r1, masks, counts_c in chunks:  # pass 2: headers and pairs
        t0, t1 = r0 * col_tiles, r1 * col_tiles
        base = offsets[t0:t1, None]
        slices = counts_c.view(-1, 8, 16).sum(-1)
        starts = HEADER_WORDS + slices.cumsum(-1) - slices
        records[(base + torch.arange(8, device=dev)).reshape(-1)] = starts.reshape(-1).to(torch.int32)
        records[(base + 8 + torch.arange(128, device=dev)).reshape(-1)] = masks.reshape(-1)
        # rebuilt rather than kept from pass 1, so the scratch stays one chunk, not a copy of the whole weight
        pairs = _tile_pairs(_padded(dense, row_tiles, col_tiles, r0, r1), r1 - r0, col_tiles).reshape(t1 - t0, -1)
        present = pairs != 0
        dest = base + HEADER_WORDS + present.cumsum(-1) - 1
        records[dest[present]] = pairs[present]
    longest = int(words.max()) if words.numel() else HEADER_WORDS
    return BitmapLayout(records.view(dense.dtype).view(total, 2), offsets.to(torch.int32), longest)


def to_dense(layout: BitmapLayout, shape: Sequence[int]) -> Tensor:
    """The layout back to the dense [M, K] weight, reading it as the kernel does (slice starts, masks, pairs):
    the reference the kernel is tested against, and a check of a layout's integrity."""
    records, offsets = layout.records, layout.record_offsets.to(torch.int64)
    row_tiles, col_tiles = _grid(shape)
    words = records.reshape(-1).view(torch.int32)
    dev = words.device
    base = offsets[:-1, None]
    starts = words[base + torch.arange(8, device=dev)].to(torch.int64)  # [tiles, 8]
    masks = words[base + 8 + torch.arange(128, device=dev)]            # [tiles, 128]
    present = ((masks[..., None] >> torch.arange(32, device=dev, dtype=torch.int32)) & 1).bool()  # [tiles, 128, 32]
    in_slice = present.view(-1, 8, 512)
    index = base[..., None] + starts[..., None] + in_slice.cumsum(-1) - 1  # [tiles, 8, 512]
    pairs = torch.where(in_slice, words[index.clamp(0, words.numel() - 1)], 0)
    p = pairs.view(row_tiles, col_tiles, 8, 4, 2, 2, 8, 4).permute(0, 2, 5, 6, 1, 3, 4, 7)  # [rt, w, rb, g, ct, s, cb, q]
    dense = p.reshape(row_tiles * TILE_M, col_tiles * TILE_K // 2).contiguous().view(records.dtype)
    return dense[: shape[0], : shape[1]]
