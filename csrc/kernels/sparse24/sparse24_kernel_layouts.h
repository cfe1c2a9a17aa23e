// The sizes of the 2:4 kernels' own weight layouts, made from the canonical (values, meta) by the pack ops
// (_sparse24_decode_pack, _sparse24_sm90_pack, _sparse24_sm80_pack): in one place for the kernels, the ops that
// allocate the layouts, and the ops' fake implementations in spmm.ops (spmm._C exports sparse24_pack_shapes).
// Plain constants and constexpr functions, no includes beyond <cstdint>, so the stable-ABI module reads them too.
// What each layout holds: the kernels' headers (sparse24_decode.h, sparse24_sm90_gemm.h, sparse24_sm80_gemm.h).
#pragma once

#include <cstdint>

namespace spmm::kernels {

// ---- the decode kernel (sparse24_decode.h): row tiles of 16 rows, 8 to a row group (one block's rows), K in chunks
// of 128 columns; each (group, chunk) holds 16 KB of values (4 mma k-steps x 32 lanes x 16 bytes per tile) and 2 KB
// of metadata (16 active lanes x 16 bytes per tile).
constexpr int64_t kDecodeTileRows = 16;    // rows of W per mma tile (mma m)
constexpr int64_t kDecodeGroupTiles = 8;   // row tiles per row group
constexpr int64_t kDecodeChunkK = 128;     // columns of W per pipeline chunk (4 x mma k32)

struct Sparse24DecodeShape {
  int64_t groups;  // ceil(M / 128)
  int64_t chunks;  // ceil(K / 128)
  constexpr int64_t row_tiles() const { return groups * kDecodeGroupTiles; }
  // The pack op's tensors: dvalues [row_tiles, values_cols] of 16-bit values, dmeta [row_tiles, meta_cols] int32.
  constexpr int64_t values_cols() const { return chunks * 4 * 32 * 8; }
  constexpr int64_t meta_cols() const { return chunks * 16 * 4; }
  constexpr int64_t values_bytes() const { return row_tiles() * values_cols() * 2; }
  constexpr int64_t meta_bytes() const { return row_tiles() * meta_cols() * 4; }
};

constexpr Sparse24DecodeShape sparse24_decode_shape(int64_t m, int64_t k) {
  return {(m + kDecodeTileRows * kDecodeGroupTiles - 1) / (kDecodeTileRows * kDecodeGroupTiles),
          (k + kDecodeChunkK - 1) / kDecodeChunkK};
}

// ---- the Hopper GEMM (sparse24_sm90_gemm.h): only metadata E (it reads the canonical values), in CUTLASS's atoms of
// 64 rows x 128 columns (sparse24_sm90_pack_kernel.cu checks these against CUTLASS's own), one byte per 8 columns.
constexpr int64_t kSparse24Sm90MetaAtomRows = 64;
constexpr int64_t kSparse24Sm90MetaAtomCols = 128;
constexpr int64_t sparse24_sm90_e_bytes(int64_t m, int64_t k) {
  return (m + kSparse24Sm90MetaAtomRows - 1) / kSparse24Sm90MetaAtomRows * kSparse24Sm90MetaAtomRows *
         ((k + kSparse24Sm90MetaAtomCols - 1) / kSparse24Sm90MetaAtomCols * kSparse24Sm90MetaAtomCols / 8);
}

// ---- the Ampere GEMM (sparse24_sm80_gemm.h): values a [padded rows, padded cols / 2] and metadata e, one uint16
// per 16 columns; rows padded to 32 (the metadata's row interleave), columns to 64 (the GEMM's K tile).
constexpr int64_t kSparse24Sm80RowPad = 32;
constexpr int64_t kSparse24Sm80ColPad = 64;
constexpr int64_t sparse24_sm80_padded_rows(int64_t m) {
  return (m + kSparse24Sm80RowPad - 1) / kSparse24Sm80RowPad * kSparse24Sm80RowPad;
}
constexpr int64_t sparse24_sm80_padded_cols(int64_t k) {
  return (k + kSparse24Sm80ColPad - 1) / kSparse24Sm80ColPad * kSparse24Sm80ColPad;
}
constexpr int64_t sparse24_sm80_meta_elements(int64_t m, int64_t k) {
  return sparse24_sm80_padded_rows(m) * sparse24_sm80_padded_cols(k) / 16;
}

}  // namespace spmm::kernels
