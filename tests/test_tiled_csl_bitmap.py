"""The pair-bitmap layout of the Hopper Tiled-CSL kernel (built in torch; the CUDA kernel is tested in
test_cuda_tiled_csl.py): exact round trip at every sparsity and shape, the record structure the kernel relies on,
and its size."""

import pytest
import torch

from conftest import random_weight
from spmm import ops
from spmm.formats import TiledCSLWeight
from spmm.formats import tiled_csl_bitmap as bitmap

SHAPES = [(128, 64), (300, 200), (1, 8), (257, 72), (130, 1040), (1000, 136)]


def pruned(m, k, sparsity, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = random_weight(m, k, dtype, g, zeros=0.0)
    w[torch.rand(m, k, generator=g) < sparsity] = 0
    return w


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mk", SHAPES, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.99, 1.0])
def test_round_trip_is_bit_exact(dtype, mk, sparsity):
    w = pruned(*mk, sparsity, dtype, hash((mk, sparsity)) % 1000)
    layout = ops.tiled_csl_bitmap(w)
    assert layout.records.dtype == dtype and layout.records.shape[1] == 2
    assert torch.equal(bitmap.to_dense(layout, mk).view(torch.int16), w.view(torch.int16))


def test_built_from_a_tiled_csl_stream_of_any_tiling():
    w = pruned(300, 520, 0.7, torch.float16, 1)
    for tile in [(256, 64), (128, 64), (16, 32)]:
        stream = TiledCSLWeight.from_dense(w, tile_m=tile[0], tile_k=tile[1])
        layout = ops.tiled_csl_bitmap(stream.to_dense())
        assert torch.equal(bitmap.to_dense(layout, (300, 520)), w)


def test_record_structure():
    """Records start 16-byte aligned, hold 8 slice starts, 128 masks and the present pairs; a pair's mask bit is
    set exactly when one of its two elements is nonzero; the longest record is reported."""
    w = pruned(256, 128, 0.8, torch.float16, 2)  # 2 x 2 tiles
    records, offsets, longest = ops.tiled_csl_bitmap(w)
    words = records.reshape(-1).view(torch.int32)
    sizes = (offsets[1:] - offsets[:-1]).tolist()
    assert offsets[0] == 0 and all(s % 4 == 0 for s in sizes) and longest == max(sizes)
    tile = w[:128, 64:128]  # tile 1: row tile 0, column tile 1
    base = int(offsets[1])
    masks = words[base + 8: base + 136]
    # block 16 w + 4 s + r, r = (column half) * 2 + (row half); lane 4 g + q: row g, columns 2q, 2q + 1
    wv, s, r, g, q = 3, 2, 3, 5, 1
    row, col = 16 * wv + 8 * (r % 2) + g, 16 * s + 8 * (r // 2) + 2 * q
    has_pair = bool((tile[row, col:col + 2] != 0).any())
    assert bool((int(masks[16 * wv + 4 * s + r]) >> (4 * g + q)) & 1) == has_pair
    present = sum(bin(int(v) & 0xFFFFFFFF).count("1") for v in masks)
    assert sizes[1] == -(-(136 + present) // 4) * 4
    starts = words[base: base + 8].tolist()
    assert starts[0] == 136 and starts == sorted(starts)


def test_size_close_to_the_stream_at_80_percent():
    """4 bytes per pair with a nonzero + 544 per 128 x 64 tile: about the stream's 4 bytes per nonzero at 80%
    sparsity (pairs with a nonzero: 1 - 0.8^2 = 36%), fewer at 50%."""
    for sparsity, low, high in [(0.8, 0.76, 0.82), (0.5, 1.55, 1.62)]:
        w = pruned(1024, 1024, sparsity, torch.float16, 3)
        layout = ops.tiled_csl_bitmap(w)
        per_element = layout.records.numel() * 2 / w.numel()
        assert low < per_element < high, (sparsity, per_element)


def test_empty_and_bad_input():
    layout = ops.tiled_csl_bitmap(torch.zeros(5, 0, dtype=torch.float16))
    assert layout.records.numel() == 0 and layout.record_offsets.tolist() == [0]
    with pytest.raises(ValueError, match="float16/bfloat16"):
        ops.tiled_csl_bitmap(torch.zeros(4, 8))
