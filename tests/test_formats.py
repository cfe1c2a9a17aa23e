"""Formats: pack -> unpack is exact, identity matmul returns the weight, sizes, and bad inputs are named."""

from __future__ import annotations

import pytest
import torch

from conftest import DTYPES, assert_bitwise_equal, gen, random_24_mask, random_mask, random_weight
from spmm.formats import Sparse24Weight, SpenseWeight, TiledCSLWeight, masked_weight

SHAPES_24 = [(1, 4), (7, 12), (33, 20), (64, 136)]  # odd M, K/4 odd (half-used meta byte), K/4 even
SHAPES_CSL = [((37, 70), (16, 32)), ((64, 128), (16, 32)), ((5, 9), (256, 64)), ((300, 130), (256, 64))]
ERRORS = (ValueError, TypeError, RuntimeError)


def identity_product(fmt) -> torch.Tensor:
    """x = I_K gives y = W.T: every output is a single product with 1, exact in any dtype."""
    eye = torch.eye(fmt.shape[1], dtype=fmt.dtype)
    return fmt.matmul(eye).T


# -------------------------------------------------------------------------------------------------- masked weight
def test_masked_weight_zeros_are_positive():
    w = torch.tensor([[1.0, -0.0, -2.0, 3.0]])
    mask = torch.tensor([[True, True, False, True]])
    assert_bitwise_equal(masked_weight(w, mask), torch.tensor([[1.0, 0.0, 0.0, 3.0]]))
    assert_bitwise_equal(masked_weight(w), torch.tensor([[1.0, 0.0, -2.0, 3.0]]))


# ---------------------------------------------------------------------------------------------------------- 2:4
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_24)
def test_sparse24_roundtrip(shape, dtype):
    g = gen(1)
    w, mask = random_weight(*shape, dtype, g), random_24_mask(*shape, g)
    fmt = Sparse24Weight.from_dense(w, mask)
    assert fmt.shape == shape and fmt.dtype == dtype
    assert fmt.values.shape == (shape[0], shape[1] // 2) and fmt.meta.dtype == torch.uint8
    assert_bitwise_equal(fmt.to_dense(), masked_weight(w, mask))
    assert_bitwise_equal(identity_product(fmt), masked_weight(w, mask))


def test_sparse24_mask_none_keeps_nonzeros_and_negative_zero_is_zero():
    w = torch.tensor([[-0.0, 5.0, -0.0, 0.0, 1.0, -0.0, -0.0, 2.0]])
    fmt = Sparse24Weight.from_dense(w)
    expected = torch.tensor([[0.0, 5.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0]])
    assert_bitwise_equal(fmt.to_dense(), expected)
    # a kept -0.0 unpacks as +0.0 too
    fmt = Sparse24Weight.from_dense(w, torch.tensor([[True, True, False, False, False, True, False, True]]))
    assert_bitwise_equal(fmt.to_dense(), torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]))


def test_sparse24_canonical_layout():
    # group 0 keeps columns 1, 3; group 1 keeps only column 2 (filled with column 0); group 2 keeps nothing
    w = torch.tensor([[9.0, 1.0, 9.0, 2.0, 9.0, 9.0, 3.0, 9.0, 9.0, 9.0, 9.0, 9.0]])
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[0, [1, 3, 6]] = True
    fmt = Sparse24Weight.from_dense(w, mask)
    assert fmt.values.tolist() == [[1.0, 2.0, 0.0, 3.0, 0.0, 0.0]]
    code0, code1, code2 = 1 | 3 << 2, 0 | 2 << 2, 0 | 1 << 2
    assert fmt.meta.tolist() == [[code0 | code1 << 4, code2]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse24_full_and_empty(dtype):
    g = gen(2)
    w = random_weight(9, 16, dtype, g, zeros=0.0)
    full = torch.tensor([True, False, True, False]).repeat(9, 4)
    for mask in (full, torch.zeros(9, 16, dtype=torch.bool)):
        fmt = Sparse24Weight.from_dense(w, mask)
        assert_bitwise_equal(fmt.to_dense(), masked_weight(w, mask))
        assert_bitwise_equal(identity_product(fmt), masked_weight(w, mask))


def test_sparse24_nbytes():
    fmt = Sparse24Weight.from_dense(torch.zeros(10, 24, dtype=torch.float16))
    assert fmt.nbytes == 10 * 12 * 2 + 10 * 3
    assert fmt.nbytes / (10 * 24 * 2) == pytest.approx(0.5625, abs=0.01)


def test_sparse24_empty_placeholder_is_valid_zero():
    fmt = Sparse24Weight.empty((5, 12), dtype=torch.float16)
    assert_bitwise_equal(fmt.to_dense(), torch.zeros(5, 12, dtype=torch.float16))
    assert_bitwise_equal(fmt.meta, Sparse24Weight.from_dense(torch.zeros(5, 12, dtype=torch.float16)).meta)


def test_sparse24_to_and_tensors_roundtrip():
    g = gen(3)
    w, mask = random_weight(8, 16, g=g), random_24_mask(8, 16, g)
    fmt = Sparse24Weight.from_dense(w, mask)
    half = fmt.to(dtype=torch.float16)
    assert_bitwise_equal(half.to_dense(), masked_weight(w, mask).half())
    again = Sparse24Weight.from_tensors(fmt.tensors(), fmt.shape)
    assert_bitwise_equal(again.to_dense(), fmt.to_dense())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Sparse24Weight.from_dense(torch.ones(4, 8), torch.ones(4, 8, dtype=torch.bool)), "`mask`.*2:4"),
        (lambda: Sparse24Weight.from_dense(torch.tensor([[1.0, 2.0, 3.0, 0.0]])), "`dense`.*2:4"),
        (lambda: Sparse24Weight.from_dense(torch.zeros(4, 6)), "`dense`.*multiple of 4"),
        (lambda: Sparse24Weight.from_dense(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])), "`dense`.*NaN"),
        (lambda: Sparse24Weight.from_dense(torch.tensor([[float("inf"), 0.0, 0.0, 0.0]])), "`dense`.*infinite"),
        (lambda: Sparse24Weight.from_dense(torch.zeros(4, 8), torch.zeros(4, 4, dtype=torch.bool)), "mask.*shape"),
        (lambda: Sparse24Weight.from_dense(torch.zeros(4, 8), torch.zeros(4, 8)), "mask.*dtype"),
        (lambda: Sparse24Weight.from_dense(torch.zeros(4, 8, dtype=torch.int32)), "weight.*floating"),
        (lambda: Sparse24Weight(torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.uint8), (4, 8)), "values.*shape"),
        (lambda: Sparse24Weight(torch.zeros(4, 4), torch.zeros(4, 1, dtype=torch.int8), (4, 8)), "meta.*dtype"),
        (lambda: Sparse24Weight(torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.uint8), (4, 6)), "shape.*4"),
    ],
)
def test_sparse24_bad_inputs(make, match):
    with pytest.raises(ERRORS, match=match):
        make()


def test_sparse24_to_dense_rejects_bad_meta():
    fmt = Sparse24Weight(torch.ones(1, 2), torch.zeros(1, 1, dtype=torch.uint8), (1, 4))  # code 0: idx0 == idx1
    with pytest.raises(ValueError, match="meta"):
        fmt.to_dense()


# ---------------------------------------------------------------------------------------------------- Tiled-CSL
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, tile", SHAPES_CSL)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_tiled_csl_roundtrip(shape, tile, density, dtype):
    g = gen(4)
    w, mask = random_weight(*shape, dtype, g), random_mask(*shape, density, g)
    fmt = TiledCSLWeight.from_dense(w, mask, *tile)
    expected = masked_weight(w, mask)
    assert_bitwise_equal(fmt.to_dense(), expected)
    assert_bitwise_equal(identity_product(fmt), expected)
    assert fmt.locations.dtype == torch.int16 and fmt.tile_offsets.dtype == torch.int32
    assert fmt.nnz <= int(mask.sum())


def test_tiled_csl_mask_none_and_negative_zero():
    w = torch.tensor([[-0.0, 1.5, 0.0], [2.0, -0.0, -3.0]])
    fmt = TiledCSLWeight.from_dense(w, tile_m=1, tile_k=2)
    assert fmt.nnz == 3
    assert_bitwise_equal(fmt.to_dense(), masked_weight(w))
    kept_neg_zero = TiledCSLWeight.from_dense(w, torch.ones(2, 3, dtype=torch.bool), tile_m=1, tile_k=2)
    assert_bitwise_equal(kept_neg_zero.to_dense(), masked_weight(w))


def test_tiled_csl_empty_tiles_and_layout():
    w = torch.zeros(8, 8)
    w[1, 6], w[0, 5], w[6, 2] = 1.0, 2.0, 3.0  # tiles (4 x 4): t1 holds two, t2 one, t0 and t3 nothing
    fmt = TiledCSLWeight.from_dense(w, tile_m=4, tile_k=4)
    assert fmt.tile_offsets.tolist() == [0, 0, 2, 3, 3]
    assert fmt.values.tolist() == [2.0, 1.0, 3.0]
    assert fmt.locations.tolist() == [0 * 4 + 1, 1 * 4 + 2, 2 * 4 + 2]
    assert_bitwise_equal(fmt.to_dense(), w)


def test_tiled_csl_locations_above_int16_max():
    # a 256 x 256 tile has locations up to 65535, stored as negative int16
    w = torch.zeros(256, 256)
    w[255, 255], w[200, 3], w[0, 0] = 1.0, 2.0, 3.0
    fmt = TiledCSLWeight.from_dense(w, tile_m=256, tile_k=256)
    assert int(fmt.locations.min()) < 0
    assert_bitwise_equal(fmt.to_dense(), w)
    assert_bitwise_equal(identity_product(fmt), w)


def test_tiled_csl_nbytes_and_density():
    g = gen(5)
    w = random_weight(64, 64, torch.float16, g, zeros=0.0)
    mask = random_mask(64, 64, 0.25, g)
    fmt = TiledCSLWeight.from_dense(w, mask, tile_m=32, tile_k=32)
    nnz = int(mask.sum())
    assert fmt.nnz == nnz
    assert fmt.nbytes == nnz * 2 + nnz * 2 + (4 + 1) * 4
    assert fmt.density == pytest.approx(nnz / 64**2) and fmt.sparsity == pytest.approx(1 - nnz / 64**2)


def test_tiled_csl_to_and_tensors_roundtrip():
    g = gen(6)
    w, mask = random_weight(20, 40, g=g), random_mask(20, 40, 0.4, g)
    fmt = TiledCSLWeight.from_dense(w, mask, 8, 16)
    assert_bitwise_equal(fmt.to(dtype=torch.bfloat16).to_dense(), masked_weight(w, mask).bfloat16())
    again = TiledCSLWeight.from_tensors(fmt.tensors(), fmt.shape, 8, 16)
    assert_bitwise_equal(again.to_dense(), fmt.to_dense())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TiledCSLWeight.from_dense(torch.tensor([[float("nan"), 1.0]]), None, 1, 2), "`dense`.*NaN"),
        (lambda: TiledCSLWeight.from_dense(torch.tensor([[float("inf"), 1.0]]), None, 1, 2), "`dense`.*infinite"),
        (lambda: TiledCSLWeight.from_dense(torch.zeros(4, 8), torch.zeros(8, 4, dtype=torch.bool)), "mask.*shape"),
        (lambda: TiledCSLWeight.from_dense(torch.zeros(4, 8), torch.zeros(4, 8, dtype=torch.int8)), "mask.*dtype"),
        (lambda: TiledCSLWeight.from_dense(torch.zeros(4, 8), tile_m=512, tile_k=256), "tile_m \\* tile_k"),
        (lambda: TiledCSLWeight.from_dense(torch.zeros(4, 8), tile_m=0), "tile_m"),
        (lambda: TiledCSLWeight.from_dense(torch.zeros(2, 3, 4)), "weight.*2-D"),
        (lambda: TiledCSLWeight(torch.zeros(3), torch.zeros(2, dtype=torch.int16),
                                torch.zeros(2, dtype=torch.int32), (4, 4), 4, 4), "locations.*shape"),
        (lambda: TiledCSLWeight(torch.zeros(0), torch.zeros(0, dtype=torch.int16),
                                torch.zeros(2, dtype=torch.int32), (4, 8), 4, 4), "tile_offsets.*shape"),
    ],
)
def test_tiled_csl_bad_inputs(make, match):
    with pytest.raises(ERRORS, match=match):
        make()


def test_tiled_csl_to_dense_rejects_bad_layout():
    vals, offs = torch.ones(2), torch.tensor([0, 2], dtype=torch.int32)
    unsorted = TiledCSLWeight(vals, torch.tensor([3, 1], dtype=torch.int16), offs, (2, 2), 2, 2)
    with pytest.raises(ValueError, match="increasing"):
        unsorted.to_dense()
    outside = TiledCSLWeight(vals, torch.tensor([0, 3], dtype=torch.int16), offs, (2, 1), 2, 2)
    with pytest.raises(ValueError, match="outside"):
        outside.to_dense()


# ------------------------------------------------------------------------------------------------------- Spense
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dense_rows", [((9, 16), [7, 0, 3]), ((4, 8), []), ((4, 8), [3, 2, 1, 0]),
                                               ((33, 36), list(range(1, 33, 4)))])
def test_spense_roundtrip(shape, dense_rows, dtype):
    g = gen(7)
    w, mask = random_weight(*shape, dtype, g), random_24_mask(*shape, g)
    fmt = SpenseWeight.from_dense(w, torch.tensor(dense_rows, dtype=torch.long), mask)
    assert fmt.num_dense_rows == len(dense_rows) and fmt.shape == shape
    assert fmt.row_index[: len(dense_rows)].tolist() == dense_rows
    expected = masked_weight(w, mask)
    expected[dense_rows] = masked_weight(w[dense_rows], torch.ones_like(w[dense_rows], dtype=torch.bool))
    assert_bitwise_equal(fmt.to_dense(), expected)
    assert_bitwise_equal(identity_product(fmt), expected)


def test_spense_nbytes_and_fraction():
    w = torch.zeros(8, 16, dtype=torch.float16)
    fmt = SpenseWeight.from_dense(w, torch.tensor([1, 5]))
    assert fmt.dense_fraction == 0.25
    assert fmt.nbytes == 2 * 16 * 2 + (6 * 8 * 2 + 6 * 2) + 8 * 4


def test_spense_to_and_tensors_roundtrip():
    g = gen(8)
    w, mask = random_weight(12, 16, g=g), random_24_mask(12, 16, g)
    fmt = SpenseWeight.from_dense(w, torch.tensor([2, 9]), mask)
    assert_bitwise_equal(fmt.to(dtype=torch.float16).to_dense(), fmt.to_dense().half())
    assert_bitwise_equal(SpenseWeight.from_tensors(fmt.tensors()).to_dense(), fmt.to_dense())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SpenseWeight.from_dense(torch.zeros(4, 8), torch.tensor([1, 1])), "dense_rows.*repeat"),
        (lambda: SpenseWeight.from_dense(torch.zeros(4, 8), torch.tensor([4])), "dense_rows.*\\[0, 4\\)"),
        (lambda: SpenseWeight.from_dense(torch.zeros(4, 8), torch.tensor([0.0])), "dense_rows.*integer"),
        (lambda: SpenseWeight.from_dense(torch.full((4, 8), float("nan")), torch.tensor([0])), "weight.*NaN"),
        (lambda: SpenseWeight.from_dense(torch.ones(4, 8), torch.tensor([0])), "`dense`.*2:4"),
        (lambda: SpenseWeight.from_dense(torch.ones(4, 8), torch.tensor([0]), torch.ones(4, 4, dtype=torch.bool)),
         "mask.*shape"),
        (lambda: SpenseWeight(torch.zeros(1, 4, dtype=torch.float16), Sparse24Weight.empty((3, 4)),
                              torch.arange(4, dtype=torch.int32)), "dense.*dtype"),
        (lambda: SpenseWeight(torch.zeros(1, 4), Sparse24Weight.empty((3, 4)), torch.arange(4)), "row_index.*dtype"),
    ],
)
def test_spense_bad_inputs(make, match):
    with pytest.raises(ERRORS, match=match):
        make()


# ---------------------------------------------------------------------------------------------------- validate()
def packed_formats():
    g = gen(9)
    w = random_weight(40, 36, g=g)
    return {
        "2:4": Sparse24Weight.from_dense(w, random_24_mask(40, 36, g)),
        "tiled_csl": TiledCSLWeight.from_dense(w, random_mask(40, 36, 0.5, g), tile_m=16, tile_k=16),
        "spense": SpenseWeight.from_dense(w, torch.tensor([3, 17, 0]), random_24_mask(40, 36, g)),
    }


@pytest.mark.parametrize("kind", ["2:4", "tiled_csl", "spense"])
def test_validate_accepts_what_the_packers_make(kind):
    fmt = packed_formats()[kind]
    assert fmt.validate() is fmt
    assert fmt.to(dtype=torch.float16).validate() is not None  # a cast (-0.0, zeros from underflow) stays valid


def edited(fmt, **changes):
    """A copy of `fmt` with some of its tensors changed by the given functions (each gets a clone)."""
    tensors = {name: t.clone() for name, t in fmt.tensors().items()}
    for name, change in changes.items():
        change(tensors[name])
    if isinstance(fmt, Sparse24Weight):
        return Sparse24Weight(tensors["values"], tensors["meta"], fmt.shape)
    if isinstance(fmt, TiledCSLWeight):
        return TiledCSLWeight(tensors["values"], tensors["locations"], tensors["tile_offsets"], fmt.shape, fmt.tile_m,
                              fmt.tile_k)
    sparse = Sparse24Weight(tensors["values"], tensors["meta"], fmt.sparse.shape)
    return SpenseWeight(tensors["dense_weight"], sparse, tensors["row_index"])


def set_item(index, value):
    def change(t):
        t[index] = value
    return change


def copy_item(dst, src):
    def change(t):
        t[dst] = t[src]
    return change


def swap_items(i, j):
    def change(t):
        t[[i, j]] = t[[j, i]].clone()
    return change


def first_tile_with(fmt, count):
    counts = fmt.tile_offsets[1:] - fmt.tile_offsets[:-1]
    return int(fmt.tile_offsets[int(torch.nonzero(counts >= count)[0])])


BROKEN = {
    "2:4 code idx0 == idx1": ("2:4", lambda f: dict(meta=set_item((3, 1), 0x05)),
                              r"`meta` is not in the canonical 2:4 layout: row 3, group 2 names columns 1 and 1"),
    "2:4 code idx0 > idx1": ("2:4", lambda f: dict(meta=set_item((0, 0), 0x41)), r"row 0, group 0 names columns 1 and 0"),
    # K = 36: 9 groups, the last byte's high nibble is unused and must be 0
    "2:4 unused nibble": ("2:4", lambda f: dict(meta=set_item((5, 4), 0x44)),
                          r"row 5: the unused high nibble of byte 4 must be 0, got 4"),
    "tiled duplicate": ("tiled_csl", lambda f: dict(locations=copy_item(first_tile_with(f, 2) + 1,
                                                                         first_tile_with(f, 2))), "repeats or precedes"),
    "tiled order": ("tiled_csl", lambda f: dict(locations=swap_items(first_tile_with(f, 2),
                                                                     first_tile_with(f, 2) + 1)), "repeats or precedes"),
    # rows 32..39 make the partial third row tile (8 of 16 rows); columns 32..35 the partial third column tile
    "tiled outside row": ("tiled_csl", lambda f: dict(locations=set_item(int(f.tile_offsets[7]) - 1, 12 * 16)),
                          r"`locations`\[\d+\] = 192 lies outside tile 6 \(8 x 16\)"),
    "tiled outside column": ("tiled_csl", lambda f: dict(locations=set_item(int(f.tile_offsets[3]) - 1,
                                                                            15 * 16 + 9)), r"lies outside tile 2 \(16 x 4\)"),
    "tiled offsets": ("tiled_csl", lambda f: dict(tile_offsets=set_item(2, int(f.tile_offsets[3]) + 1)),
                      r"`tile_offsets` must not decrease \(tile 2\)"),
    "tiled offsets end": ("tiled_csl", lambda f: dict(tile_offsets=set_item(-1, f.nnz - 1)),
                          "`tile_offsets` must start at 0 and end at nnz"),
    "spense repeated row": ("spense", lambda f: dict(row_index=copy_item(5, 6)), "more than once"),
    "spense row outside": ("spense", lambda f: dict(row_index=set_item(0, 40)), r"row_index\[0\] = 40 lies outside"),
    "spense 2:4 block": ("spense", lambda f: dict(meta=set_item((0, 0), 0x00)),
                         "the 2:4 block's `meta` is not in the canonical 2:4 layout"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_validate_names_the_broken_rule(case):
    kind, changes, match = BROKEN[case]
    fmt = packed_formats()[kind]
    bad = edited(fmt, **changes(fmt))
    with pytest.raises(ValueError, match=match):
        bad.validate()
    with pytest.raises(ValueError, match=match):
        bad.to_dense()
    with pytest.raises(ValueError, match=match):  # stored tensors (e.g. a state dict's) are validated when read
        if kind == "2:4":
            Sparse24Weight.from_tensors(bad.tensors(), bad.shape)
        elif kind == "tiled_csl":
            TiledCSLWeight.from_tensors(bad.tensors(), bad.shape, bad.tile_m, bad.tile_k)
        else:
            SpenseWeight.from_tensors(bad.tensors())


@pytest.mark.parametrize("kind", ["2:4", "tiled_csl", "spense"])
def test_validate_on_the_meta_device_has_nothing_to_check(kind):
    fmt = packed_formats()[kind].to(device="meta")
    assert fmt.validate() is fmt
