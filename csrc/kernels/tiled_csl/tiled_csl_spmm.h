// Tiled-CSL SpMM (Flash-LLM's "load as sparse, compute as dense") for decode: y = x W^T (+ bias).
//
// Format (see python/spmm/ops.py): W [M, K] is cut into tiles of tile_m x tile_k, numbered row-tile major; tile t's
// nonzeros are values[tile_offsets[t] .. tile_offsets[t + 1]) with in-tile locations row * tile_k + col (uint16
// bits in int16), ascending. The kernel reads only those (value, location) pairs from global memory, scatters
// them into a zeroed dense tile in shared memory and multiplies it with dense tensor-core mma (W rows in the wide
// m16 dimension, the few tokens in n8). fp16 or bf16 in and out, fp32 accumulation, exact at any sparsity.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"
#include "kernels/tiled_csl/tiled_csl_rules.h"  // the tiles it takes (tiled_csl_word_tiles), the word layout's size

namespace spmm::kernels {

constexpr int64_t kTiledCSLMaxTokens = 64;  // tokens per launch; the launcher slices larger N

struct TiledCSLMMParams {
  const void* x;                // [N, K] rows of x_ld elements; x_ld % 8 == 0, 16-byte aligned
  int64_t x_ld;
  const void* values;           // [nnz], 16-byte aligned
  const int16_t* locations;     // [nnz], 16-byte aligned
  const int32_t* tile_offsets;  // [row_tiles * col_tiles + 1], trusted (a bad stream gives wrong y, never a fault)
  int64_t nnz;
  const void* bias;             // [M] or nullptr
  void* y;                      // [N, M] rows of y_ld elements
  int64_t y_ld;
  void* workspace;              // tiled_csl_mm_workspace_bytes(...) (split-K partials + counters), or nullptr if 0
  int64_t m, n;
  int64_t k;                    // x's columns, a multiple of 8 (x zero-padded); ceil(k / 64) = the weight's K tiles
  int64_t tile_m;               // 256 or 128
  int splits;                   // from tiled_csl_mm_splits()
  DType dtype;                  // kFloat16 or kBFloat16
  int* counters;                // set by the launcher (inside the workspace); callers leave it null
};

// Split-K factor: how many blocks share each row tile's K tiles, from the shape, the nonzeros and the SM count.
int tiled_csl_mm_splits(int64_t m, int64_t n, int64_t k, int64_t nnz, int64_t tile_m, int num_sms);

size_t tiled_csl_mm_workspace_bytes(int64_t m, int64_t n, int64_t tile_m, int splits);

// Enqueues y = x W^T (+ bias) on `stream`. cudaErrorInvalidValue for arguments it cannot take.
cudaError_t tiled_csl_mm(const TiledCSLMMParams& p, cudaStream_t stream);

// ------------------------------------------------------------------------------------------------ packer ----------
// Dense [M, K] (+ optional keep mask) -> the Tiled-CSL stream, identical to the CPU packer's: kept = mask (or
// all) and != 0 (-0.0 counts as zero), in ascending location order within each tile. Two passes around one
// host read-back (the caller needs nnz to allocate): count (tile offsets, as int64, and the first non-finite
// element), then fill.
struct TiledCSLPackParams {
  const void* dense;     // [M, K] elements of `dtype`, row stride dense_ld
  int64_t dense_ld;
  const uint8_t* mask;   // [M, K] bool (0/1), row stride mask_ld, or nullptr: keep the nonzeros of dense
  int64_t mask_ld;
  int64_t m, k, tile_m, tile_k;  // tile_m * tile_k <= 65536
  DType dtype;           // kFloat32, kFloat16 or kBFloat16
  int64_t* offsets;      // [n_tiles + 1]: written by the count pass, read by the fill pass
  // Set to UINT64_MAX by the count pass and lowered (atomicMin) to the first (row * K + col) that is NaN or infinite,
  // looking at every element (also those the mask drops), like the CPU packer.
  unsigned long long* first_bad;
  void* values;          // [nnz] of `dtype` (fill pass)
  int16_t* locations;    // [nnz] (fill pass)
};

cudaError_t tiled_csl_pack_count(const TiledCSLPackParams& p, cudaStream_t stream);
cudaError_t tiled_csl_pack_fill(const TiledCSLPackParams& p, cudaStream_t stream);

// ------------------------------------------------------------------------------------- word layout (v2) -----------
// The same pairs as one 32-bit word each, made for the kernel's scatter: (the element's swizzled offset in the
// kernel's shared-memory tile) << 16 | (the value's 16 bits). Each tile's run is padded to a multiple of 4 words
// (whole 16-byte loads, no partial granules) with words aimed at a scratch slot past the tile. So a pair costs
// the kernel a shift, a clamp and a 16-bit store, instead of extracting two 16-bit fields, checking run bounds and
// computing the swizzle. Bytes stay 4 per pair (+ at most 12 per tile); tiled_csl_word_rows gives the size.

struct TiledCSLWordsParams {
  const uint16_t* values;        // the Tiled-CSL stream (fp16/bf16 bits), as tiled_csl_mm takes it
  const int16_t* locations;
  const int32_t* tile_offsets;   // [tiles + 1]
  int64_t tiles, tile_m;         // tile_k = 64; tile_m 256 or 128
  int64_t* scratch;              // [tiles + 1]
  uint32_t* words;               // [tiled_csl_word_rows(nnz, tiles)], zeroed
  int32_t* word_offsets;         // [tiles + 1]
};

cudaError_t tiled_csl_to_words(const TiledCSLWordsParams& p, cudaStream_t stream);

// y = x W^T (+ bias) from the word layout (what TiledCSLLinear runs on CUDA: 1.3-1.6x faster than the stream on
// the H100). As tiled_csl_mm, with values = the words, tile_offsets = the word offsets, nnz = the words readable (a
// multiple of 4); locations unused.
cudaError_t tiled_csl_mm_words(const TiledCSLMMParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
