// 2:4 sparse GEMM for decode (few tokens): a weight-streaming kernel on mma.sp.sync.
//
// Maths: y[N, M] = x[N, K] @ W[M, K]^T (+ bias[M]), computed as y^T = W x^T so the weight rows fill the wide mma
// dimension (m16) and the few tokens the narrow one (n8). fp16 or bf16 in and out, fp32 accumulation.
//
// Decode layout (made once from the canonical layout by sparse24_decode_pack): W is cut into row tiles of 16 rows
// and chunks of 128 columns (4 mma k-steps of 32). For each (row tile, chunk):
//   values: [k-step 4][lane 32][8 x 16-bit]  -- lane l's A fragment of mma.m16n8k32, one 16-byte load per step;
//   meta:   [active lane 16][k-step 4] uint32 -- the metadata registers of lanes 4g and 4g+1 (selector 0),
//           one 16-byte load per chunk.
// Rows past M and columns past K are padded with zeros (and a valid metadata code), so the kernel has no tails.
// Bytes read per dense element: 1.125 (fp16), like the canonical layout.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"

namespace spmm::kernels {

constexpr int64_t kDecodeTileRows = 16;    // rows of W per warp tile (mma m)
constexpr int64_t kDecodeChunkK = 128;     // columns of W per pipeline chunk (4 x mma k32)
constexpr int64_t kDecodeMaxTokens = 64;   // tokens per launch; the launcher slices larger N

struct Sparse24DecodeShape {
  int64_t row_tiles;  // ceil(M / 16)
  int64_t chunks;     // ceil(K / 128)
  int64_t values_bytes() const { return row_tiles * chunks * 4 * 32 * 16; }
  int64_t meta_bytes() const { return row_tiles * chunks * 16 * 16; }
};

inline Sparse24DecodeShape sparse24_decode_shape(int64_t m, int64_t k) {
  return {(m + kDecodeTileRows - 1) / kDecodeTileRows, (k + kDecodeChunkK - 1) / kDecodeChunkK};
}

struct Sparse24DecodePackParams {
  const uint16_t* values;  // canonical [M, K/2], fp16 or bf16 bits (the pack only moves them)
  const uint8_t* meta;     // canonical [M, ceil(K/8)]
  void* dvalues;           // decode layout, values_bytes()
  void* dmeta;             // decode layout, meta_bytes()
  int64_t m, k;            // k % 4 == 0
  int meta_layout;         // which lane/bit order the metadata registers use (see the kernel); 0 is the default
};

cudaError_t sparse24_decode_pack(const Sparse24DecodePackParams& p, cudaStream_t stream);

struct Sparse24DecodeParams {
  const void* x;        // [N, K] rows of x_ld elements; x_ld % 8 == 0, 16-byte aligned, k % 8 == 0
  int64_t x_ld;
  const void* dvalues;  // decode layout of W -- or, with `canonical`, the canonical values [M, K/2]
  const void* dmeta;    // decode layout's metadata -- or, with `canonical`, the canonical meta [M, K/8]
  const void* bias;     // [M] or nullptr
  void* y;              // [N, M] rows of y_ld elements
  int64_t y_ld;
  void* workspace;      // sparse24_decode_workspace_bytes(...) bytes (split-K partials + counters), or nullptr if 0
  int64_t m, n, k;
  int splits;           // from sparse24_decode_splits()
  int tiles_per_warp;   // 1 or 2 row tiles of 16 rows streamed by each warp (2 share each x fragment: less
                        // shared-memory traffic per weight byte, more registers); splits and workspace depend on it
  DType dtype;          // kFloat16 or kBFloat16
  bool canonical;       // dvalues/dmeta hold the canonical layout (K % 128 == 0, both 16-byte aligned): no copy of
                        // the weight in another layout is needed (see the kernel for how the fragments are found)
  int* counters;        // set by the launcher (inside the workspace); callers leave it null
};

// Split-K factor for (m, n, k) on a device with num_sms multiprocessors: enough blocks for every SM to stream.
int sparse24_decode_splits(int64_t m, int64_t n, int64_t k, int num_sms, int tiles_per_warp = 1);

size_t sparse24_decode_workspace_bytes(int64_t m, int64_t n, int64_t k, int splits, int tiles_per_warp = 1);

// Enqueues y = x W^T (+ bias) on `stream`. cudaErrorInvalidValue for arguments it cannot take.
cudaError_t sparse24_decode_mm(const Sparse24DecodeParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
