// Index math of the Spense decode kernel (spense_decode.h), as plain __host__ __device__ functions: the kernel calls
// them, and the host emulation (spense_decode_emulate.cpp, run by tests/test_spense_decode_emulation.py) calls the
// same functions around a model of TMA, ldmatrix and mma.sp / mma.sync written from the PTX ISA, so every address and
// fragment rule here is checked on a CPU. No CUDA headers: g++ compiles this file too.
//
// A block owns one row group and a slice of K (split-K), in stages of 128 columns (a chunk). Its stage holds:
//  - the A region, 128 rows x 128 bytes (16 KB), 128-byte swizzled (the 16-byte piece c of row r sits at piece
//    c ^ (r % 8): what TMA's SWIZZLE_128B writes, and what makes ldmatrix conflict-free);
//      2:4 group (128 rows of the 2:4 block): region row r = group row r, bytes = the chunk's 64 stored values;
//      dense group (64 rows of the dense block): region row 64 h + r = group row r, columns 64 h .. 64 h + 63;
//    so consumer warp w always reads region rows 16 w .. 16 w + 15: a 2:4 tile over 4 mma.sp k32 steps, or dense
//    tile w % 4 over the chunk's half w / 4 in 4 mma k16 steps. Either way 512 bytes of A per k-step.
//  - the metadata region (2:4 groups), 128 rows x 16 bytes: the canonical meta bytes of the chunk, row by row
//    (or, with the optional fragment-order metadata, sparse24_decode_pack's 2 KB for this (group, chunk));
//  - x's chunk, [8 x token tiles][kXPitch] 16-bit elements.
#pragma once

#include <cstdint>

#include "kernels/sparse24/sparse24_layout.h"  // SPMM_HOST_DEVICE
#include "kernels/spense/spense_tiles.h"

namespace spmm::kernels::spense_decode {

constexpr int kTileRows = kSpenseRowTile;  // one m16 mma tile
constexpr int kWarps = 8;                  // consumer warps (plus one producer warp)
constexpr int kChunkK = 128;               // weight columns per stage
constexpr int kSteps = 4;                  // k-steps of a consumer warp per stage
constexpr int kSparseGroupRows = 128;      // rows of a 2:4 group: 8 tiles, one per warp
constexpr int kDenseGroupRows = 64;        // rows of a dense group: 4 tiles, each over two half-chunks
constexpr int kRowBytes = 128;             // bytes of an A region row
constexpr int kRegionRows = 128;
constexpr uint32_t kABytes = kRegionRows * kRowBytes;             // 16 KB
constexpr int kMetaRowBytes = kChunkK / 8;                        // 16: one nibble per group of 4 columns
constexpr uint32_t kMetaBytes = kRegionRows * kMetaRowBytes;      // 2 KB
constexpr uint32_t kDenseHalfBytes = kDenseGroupRows * kRowBytes;  // 8 KB: one TMA box of a dense group
constexpr int kXPitch = kChunkK + 8;  // x row pitch in elements (16-byte pad: ldmatrix without bank conflicts)
constexpr int kMaxTokens = 64;        // tokens per launch (the launcher slices larger N)

static_assert(kTileRows == 16, "the kernel's mma tiles are 16 rows");
static_assert(kSparseGroupRows == kWarps * kTileRows && 2 * kDenseGroupRows == kRegionRows, "region rows");

SPMM_HOST_DEVICE int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// --------------------------------------------------------------------------------------------- blocks --------
// Row groups: the dense groups first (rows of the dense block, 64 each), then the 2:4 groups (128 rows each).
struct Group {
  bool dense;
  int64_t src_row;    // first row in its own tensor (dense weight, or values / meta)
  int64_t first_row;  // first block row: dense rows are 0 .. md - 1, 2:4 rows md .. md + ms - 1
  int64_t rows;       // rows of the group that exist (the rest is zero-filled and not written)
};

SPMM_HOST_DEVICE int64_t dense_groups(int64_t md) { return ceil_div64(md, kDenseGroupRows); }
SPMM_HOST_DEVICE int64_t sparse_groups(int64_t ms) { return ceil_div64(ms, kSparseGroupRows); }

SPMM_HOST_DEVICE Group group_of(int64_t group, int64_t md, int64_t ms) {
  const int64_t gd = dense_groups(md);
  if (group < gd) {
    const int64_t src = group * kDenseGroupRows;
    return {true, src, src, md - src < kDenseGroupRows ? md - src : kDenseGroupRows};
  }
  const int64_t src = (group - gd) * kSparseGroupRows;
  return {false, src, md + src, ms - src < kSparseGroupRows ? ms - src : kSparseGroupRows};
}

// Output rows a block sums: 64 (dense) or 128 (2:4). Accumulator slots are always 128 (one per region row).
SPMM_HOST_DEVICE int group_rows(bool dense) { return dense ? kDenseGroupRows : kSparseGroupRows; }

// ------------------------------------------------------------------------------------------ the A region ------
// TMA's SWIZZLE_128B on a 1024-byte aligned region: bits 4-6 of the offset ^= bits 7-9.
SPMM_HOST_DEVICE uint32_t swizzle128(uint32_t offset) { return offset ^ ((offset >> 3) & 0x70u); }

// Where byte `byte` of row `row` of a group's chunk lands in the A region. 2:4: row < 128, byte < 128 (the chunk's
// 64 stored values); dense: row < 64, byte < 256 (the chunk's 128 columns, two halves of 64).
SPMM_HOST_DEVICE uint32_t a_region_offset(bool dense, int row, int byte) {
  const int region_row = dense ? (byte / kRowBytes) * kDenseGroupRows + row : row;
  return swizzle128(static_cast<uint32_t>(region_row * kRowBytes + byte % kRowBytes));
}

// The 16-byte row of A that lane `lane` of consumer warp `warp` hands to ldmatrix.x4 for k-step `step` (32 bytes of
// each of the warp's 16 region rows). Matrix i = lanes 8i .. 8i + 7 = (rows 0-7 | 8-15 for i even | odd, bytes
// 0-15 | 16-31 for i < 2 | >= 2): the m16n8k16 A fragment order, which mma.sp m16n8k32 also takes for its
// compressed 16 x 16 tile.
SPMM_HOST_DEVICE uint32_t a_ldmatrix_offset(int warp, int lane, int step) {
  const int row = warp * kTileRows + lane % 8 + 8 * ((lane / 8) % 2);
  return swizzle128(static_cast<uint32_t>(row * kRowBytes + step * 32 + 16 * (lane / 16)));
}

// -------------------------------------------------------------------------------------------- x fragments -----
// Element offset in the x stage of the row lane `lane` hands to ldmatrix.x4 for token tile `ntile` and the 32
// columns from `col0`: matrix i = tokens 8 ntile .. + 7 x columns col0 + 8i .. + 7, so register i holds B rows
// (k) 8i + 2q, 8i + 2q + 1 of token g (g = lane / 4, q = lane % 4): mma.sp k32's four B registers, or two mma k16
// steps' two each.
SPMM_HOST_DEVICE int x_ldmatrix_offset(int ntile, int lane, int col0) {
  return (ntile * 8 + lane % 8) * kXPitch + col0 + 8 * (lane / 8);
}

// The x columns of a consumer's ldmatrix number `load` (0-3 for a 2:4 warp: one per k-step; 0-1 for a dense warp:
// each feeds two k16 steps of its half-chunk).
SPMM_HOST_DEVICE int x_columns(bool dense, int warp, int load) {
  return dense ? (warp / 4) * 64 + 32 * load : 32 * load;
}

// The kernel's form of those addresses, in bytes from the x stage: a per-lane base, plus kXTileBytes per token tile
// and kXLoadBytes per load (32 columns), so its loop adds constants.
constexpr uint32_t kXTileBytes = 8 * kXPitch * 2;
constexpr uint32_t kXLoadBytes = 64;
SPMM_HOST_DEVICE uint32_t x_lane_bytes(bool dense, int warp, int lane) {
  return 2 * static_cast<uint32_t>(x_ldmatrix_offset(0, lane, x_columns(dense, warp, 0)));
}

// ---------------------------------------------------------------------------------------------- metadata ------
// Canonical metadata: lane 4g + q reads metadata rows 16 w + g (half 0) and 16 w + g + 8 (half 1) of the region,
// 16 bytes each (the chunk's 4 k-steps, 4 bytes = 8 groups per step).
SPMM_HOST_DEVICE int meta_row(int warp, int lane, int half) { return warp * kTileRows + lane / 4 + 8 * half; }

// __byte_perm(x, y, selector): byte i of the result is byte (selector >> 4i) & 7 of the 8 bytes y:x.
SPMM_HOST_DEVICE uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, selector);
#else
  const uint64_t bytes = static_cast<uint64_t>(y) << 32 | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

// mma.sp m16n8k32 (16-bit types, sparsity selector 0) metadata register of lane 4g + q from the two rows' 32-bit
// words of one k-step: q = 0 takes groups 0-3 (the low 16 bits, nibble j = group j, as the canonical bytes hold
// them), q = 1 groups 4-7; bits 0-15 for row g, 16-31 for row g + 8. Lanes q = 2, 3 are not read by the mma.
// meta_selector(lane) is the byte_perm selector of the lane: bytes 0, 1 of each row, or bytes 2, 3.
SPMM_HOST_DEVICE uint32_t meta_selector(int lane) { return lane % 2 == 0 ? 0x5410u : 0x7632u; }
SPMM_HOST_DEVICE uint32_t meta_register(uint32_t row_g, uint32_t row_g8, uint32_t selector) {
  return byte_perm(row_g, row_g8, selector);
}

// Zero-filled metadata (rows past the 2:4 block, columns past K, the spare nibble of an odd group count) reads as
// code 0 = columns (0, 0), which mma.sp::ordered_metadata does not allow: every nibble whose second index is 0 gets
// index 1 (code 0 -> 4 = columns (0, 1), the code the canonical layout fills with). Valid codes have a second index
// of 1-3 and pass unchanged; their values there are zeros anyway.
SPMM_HOST_DEVICE uint32_t fill_empty_codes(uint32_t m) {
  return m | ((~((m >> 2) | (m >> 3)) & 0x11111111u) << 2);
}

// Fragment-order metadata (sparse24_decode_pack's dmeta, per (group, chunk) [tile 8][lane 16][k-step 4] uint32):
// the uint4 index lane 4g + q (q < 2) of warp w reads.
SPMM_HOST_DEVICE int meta_fragment_index(int warp, int lane) { return warp * 16 + (lane / 4) * 2 + lane % 4; }

// ----------------------------------------------------------------------------------------- accumulators ------
// Accumulator register i of token tile j, lane 4g + q: region row (slot) 16 w + g (+ 8 for i >= 2) times token
// 8 j + 2q (+ 1 for odd i). Slot s of a dense group is group row s % 64 over the chunk half s / 64.
SPMM_HOST_DEVICE int acc_slot(int warp, int lane, int i) { return warp * kTileRows + lane / 4 + 8 * (i / 2); }
SPMM_HOST_DEVICE int acc_token(int ntile, int lane, int i) { return ntile * 8 + 2 * (lane % 4) + i % 2; }

// The epilogue's unit of work: quad `idx` of a block's outputs is 4 rows (from `row`) of one token. Row r's partial
// sums sit in slot r (2:4) or slots r and r + 64 (dense: the two half-chunks).
struct Quad {
  int token, row;
};
SPMM_HOST_DEVICE Quad quad_of(int idx, bool dense) {
  const int per_token = group_rows(dense) / 4;
  return {idx / per_token, (idx % per_token) * 4};
}
SPMM_HOST_DEVICE int quads_of(int64_t n, bool dense) { return static_cast<int>(n) * (group_rows(dense) / 4); }

// With split-K summed in a cluster, block `split` of `splits` sums quads [begin, end) of its group.
SPMM_HOST_DEVICE int share_begin(int quads, int splits, int split) {
  const int share = (quads + splits - 1) / splits;
  return split * share < quads ? split * share : quads;
}
SPMM_HOST_DEVICE int share_end(int quads, int splits, int split) { return share_begin(quads, splits, split + 1); }

// ---------------------------------------------------------------------------------------------- loading -------
// The tensor maps of the TMA loader: a row-major [rows][cols] tensor of `element_bytes` elements, rows `stride` bytes
// apart, read in boxes of box_cols x box_rows (out of bounds: zeros).
struct MapShape {
  int64_t cols, rows, stride;
  int box_cols, box_rows, element_bytes;
  bool swizzle;  // SWIZZLE_128B (the A region) or none (metadata)
};
// Dense rows [md, k]: boxes of 64 columns x 64 rows, two per chunk (a 128-byte swizzle span holds 64 elements).
SPMM_HOST_DEVICE MapShape dense_map(int64_t md, int64_t k, int64_t dense_ld) {
  return {k, md, dense_ld * 2, 64, kDenseGroupRows, 2, true};
}
// 2:4 values [ms, k/2]: the chunk's 64 stored values x 128 rows.
SPMM_HOST_DEVICE MapShape values_map(int64_t ms, int64_t k) {
  return {k / 2, ms, k, kChunkK / 2, kSparseGroupRows, 2, true};
}
// Canonical metadata [ms, ceil(k/8)] bytes: the chunk's 16 bytes x 128 rows.
SPMM_HOST_DEVICE MapShape meta_map(int64_t ms, int64_t k) {
  const int64_t row_bytes = sparse24::meta_bytes_per_row(k);
  return {row_bytes, ms, row_bytes, kMetaRowBytes, kSparseGroupRows, 1, false};
}

// Where a stage's TMA boxes go (coordinates: innermost first, in elements of the map).
struct Box {
  int64_t col, row;
  uint32_t smem;  // byte offset in the stage
};
SPMM_HOST_DEVICE Box dense_box(int64_t chunk, int64_t src_row, int half) {
  return {chunk * kChunkK + 64 * half, src_row, static_cast<uint32_t>(half) * kDenseHalfBytes};
}
SPMM_HOST_DEVICE Box values_box(int64_t chunk, int64_t src_row) { return {chunk * (kChunkK / 2), src_row, 0}; }
SPMM_HOST_DEVICE Box meta_box(int64_t chunk, int64_t src_row) { return {chunk * kMetaRowBytes, src_row, kABytes}; }

// The cp.async loader's copies of a stage: `rows` rows of `row_bytes` bytes from byte `offset` of the tensor (rows
// `stride` bytes apart), of which `rows_valid` rows and `limit` bytes of each exist (the rest is zero-filled).
struct RowCopy {
  int64_t offset, stride;
  int rows, row_bytes;
  int64_t rows_valid, limit;
};
SPMM_HOST_DEVICE RowCopy dense_copy(const Group& grp, int64_t chunk, int64_t k, int64_t dense_ld) {
  return {(grp.src_row * dense_ld + chunk * kChunkK) * 2, dense_ld * 2, kDenseGroupRows, 2 * kChunkK, grp.rows,
          (k - chunk * kChunkK) * 2};
}
SPMM_HOST_DEVICE RowCopy values_copy(const Group& grp, int64_t chunk, int64_t k) {
  return {grp.src_row * k + chunk * kChunkK, k, kSparseGroupRows, kChunkK, grp.rows, k - chunk * kChunkK};
}
SPMM_HOST_DEVICE RowCopy meta_copy(const Group& grp, int64_t chunk, int64_t k) {
  const int64_t row_bytes = sparse24::meta_bytes_per_row(k);
  return {grp.src_row * row_bytes + chunk * kMetaRowBytes, row_bytes, kSparseGroupRows, kMetaRowBytes, grp.rows,
          row_bytes - chunk * kMetaRowBytes};
}
// Byte offset of a (2:4 group, chunk)'s 2 KB in the fragment-order metadata.
SPMM_HOST_DEVICE int64_t fragment_meta_offset(int64_t sparse_group, int64_t chunks, int64_t chunk) {
  return (sparse_group * chunks + chunk) * kMetaBytes;
}

// The widest cp.async piece (16, 8 or 4 bytes) every row of a tensor with this row stride allows (bases are 16-byte
// aligned), or 0: byte loads (metadata rows of an odd byte count).
SPMM_HOST_DEVICE int copy_granule(int64_t stride) {
  return stride % 16 == 0 ? 16 : stride % 8 == 0 ? 8 : stride % 4 == 0 ? 4 : 0;
}

// Piece v of a RowCopy in pieces of `granule` bytes: row v / (row_bytes / granule), at byte (v % ...) * granule.
struct Piece {
  int row, byte;
};
SPMM_HOST_DEVICE Piece piece_of(int v, int row_bytes, int granule) {
  const int per_row = row_bytes / granule;
  return {v / per_row, (v % per_row) * granule};
}

// Bytes of a piece that exist in the source (the rest is zero-filled): `row_valid` whether its row exists, `limit`
// the bytes of the row from the chunk's start that exist (may be <= 0 or beyond the chunk).
SPMM_HOST_DEVICE int piece_bytes(bool row_valid, int64_t limit, int byte, int granule) {
  if (!row_valid || limit <= byte) return 0;
  return limit - byte >= granule ? granule : static_cast<int>(limit - byte);
}

// x's chunk (both loaders: cp.async): 16-byte piece v is token v / 16, columns (v % 16) * 8 .. + 7 of the chunk,
// zero past N and K.
struct XPiece {
  int token;
  int64_t col;        // column of x
  int bytes;          // bytes that exist
  int stage_offset;   // element offset in the x stage
};
SPMM_HOST_DEVICE XPiece x_piece(int v, int64_t chunk, int64_t k, int64_t n) {
  const int token = v / 16, byte = (v % 16) * 16;
  return {token, chunk * kChunkK + byte / 2, piece_bytes(token < n, (k - chunk * kChunkK) * 2, byte, 16),
          token * kXPitch + (v % 16) * 8};
}

}  // namespace spmm::kernels::spense_decode
