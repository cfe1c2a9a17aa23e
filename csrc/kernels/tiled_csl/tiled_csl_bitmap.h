// Tiled-CSL SpMM on Hopper from the pair-bitmap layout: y = x W^T (+ bias), made for decode (N <= 64 per launch).
// Experimental: exact, but on the H200 no faster than the word layout (bound by its decode instructions; numbers and
// next steps in NOTES.md), so TiledCSLLinear does not use it; the bench's `spmm_bitmap` backend and the tests do.
//
// Why another layout: the (value, location) kernel scatters every nonzero into a zeroed dense tile in shared memory
// and reads the tile back with ldmatrix -- per 64 elements two 128-byte shared-memory wavefronts (zero fill, ldmatrix)
// plus the conflicting 16-bit scatter stores, whatever the sparsity. That, not HBM, bounds it (38-50% of copy
// bandwidth on the H200). The pair-bitmap layout is decoded straight into mma registers: lane l of a warp holds the
// element pair (row l / 4, columns 2 (l % 4), +1) of each 8 x 8 block of an m16n8k16 A fragment, so a block is stored
// as a 32-bit mask (bit l: pair l has a nonzero) and its present pairs as 32-bit words in lane order. Lane l's
// register is words[start + popc(mask & ((1 << l) - 1))] if bit l is set, else 0: one conflict-free shared load
// per block and warp (the block's words are consecutive), no zero fill, no scatter, no ldmatrix of W.
//
// Layout (built by spmm.ops.tiled_csl_bitmap from the Tiled-CSL stream; the stream stays the saved format):
//   tiles of 128 rows x 64 columns, numbered row-tile major; tile t is a record of record_offsets[t + 1] -
//   record_offsets[t] 32-bit words (a multiple of 4, so every record starts 16-byte aligned):
//     [0, 8)      word index (in the record) where warp slice w's pair words start (slice w: rows 16w .. 16w + 15)
//     [8, 136)    the 128 block masks, block b = 16 w + 4 s + r: slice w, k16 step s (columns 16 s ..), r = the A
//                 register it feeds (0: rows 0-7 / columns 0-7 of the step, 1: rows 8-15 / 0-7, 2: 0-7 / 8-15,
//                 3: 8-15 / 8-15)
//     [136, ...)  the present pairs of block 0, 1, ... (low half: the even column), then zero padding.
//   Bytes: 4 per pair with a nonzero + 544 per tile (0.066 per element): at 80% sparsity 0.79 bytes per element, as
//   the stream's 0.8; fewer below 80%, more above (at 90%: 0.45 vs 0.4).
//
// Kernel: 8 consumer warps (one 16-row slice each) and a producer warp per block; the producer streams whole
// records into a shared-memory ring with bulk async copies (a record is contiguous, one copy) and x's 64-column
// chunk beside it with cp.async, both signalling one mbarrier per stage; consumers decode, multiply (mma.sync
// m16n8k16, fp32 accumulation) and free the stage. Split-K: the blocks of a row tile form a thread-block cluster and
// sum their fp32 partials through distributed shared memory, in split order (deterministic, no workspace).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"

namespace spmm::kernels {

constexpr int64_t kBitmapTileM = 128;
constexpr int64_t kBitmapTileK = 64;
constexpr int64_t kBitmapHeaderWords = 136;  // 8 slice starts + 128 masks
constexpr int64_t kBitmapMaxRecordWords = kBitmapHeaderWords + kBitmapTileM * kBitmapTileK / 2;  // a dense tile
constexpr int kBitmapMaxSplits = 8;          // the portable cluster size

struct TiledCSLBitmapMMParams {
  const void* x;                  // [N, K] rows of x_ld elements; x_ld % 8 == 0, 16-byte aligned
  int64_t x_ld;
  const uint32_t* records;        // the layout above, 16-byte aligned; contents trusted (a bad one: wrong y, no fault)
  const int32_t* record_offsets;  // [row_tiles * col_tiles + 1], in words
  int64_t record_words;           // words readable at `records`
  int64_t max_record_words;       // the longest record (sizes the shared-memory ring), <= kBitmapMaxRecordWords
  const void* bias;               // [M] or nullptr
  void* y;                        // [N, M] rows of y_ld elements
  int64_t y_ld;
  int64_t m, n;
  int64_t k;                      // x's columns, a multiple of 8 (x zero-padded); ceil(k / 64) = the column tiles
  int splits;                     // 1..kBitmapMaxSplits (a tuning knob), or 0: chosen per launch from the shape, the
                                  // layout's size and how many blocks / clusters the GPU holds at once
  DType dtype;                    // kFloat16 or kBFloat16
};

// Whether the kernel was built for this device (sm_90a code and a compute capability 9.x GPU).
bool tiled_csl_bitmap_available();

// Enqueues y = x W^T (+ bias) on `stream`; N > 64 runs as slices of 64. cudaErrorInvalidValue for arguments it
// cannot take, cudaErrorNotSupported where tiled_csl_bitmap_available() is false.
cudaError_t tiled_csl_bitmap_mm(const TiledCSLBitmapMMParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
