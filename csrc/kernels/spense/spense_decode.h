// Spense decode (few tokens): one weight-streaming launch over a layer's dense rows and 2:4 rows, reading the saved
// layouts as they are -- the dense row block [Md, K], the canonical 2:4 values [Ms, K/2] and metadata [Ms, ceil(K/8)]
// -- so the GPU holds one copy of the weight. Plain 2:4 is the case Md = 0.
//
// Maths: y[n, row_index[i]] = x[n, :] . W_i (+ bias[row_index[i]]) for every block row i (dense rows first), fp32
// accumulation, fp16/bf16 in and out, each output element written once where it belongs (no gather, no temporary).
//
// Work: row groups of 64 dense rows or 128 2:4 rows (about the same bytes per column: 128 B vs 144 B), each one
// thread block per split of K (split-K summed in a thread block cluster on sm_90, through a global workspace
// before); a producer warp streams each 128-column chunk of the group into a shared-memory ring (sm_90: TMA 2-D
// boxes, 128-byte swizzled, out-of-bounds zero-filled; otherwise cp.async with zero fill), eight consumer warps take
// A fragments by ldmatrix and run mma.sp m16n8k32 (2:4) or mma.sync m16n8k16 (dense). Layout and index rules:
// spense_decode_layout.h; design and figures: DESIGN.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"

namespace spmm::kernels {

// How the producer fills the ring. kAuto: TMA on sm_90 when every weight tensor allows a tensor map (16-byte
// aligned base, row strides multiples of 16 bytes: K % 16 == 0 for the values, ceil(K/8) % 16 == 0 for the
// metadata, dense_ld % 8 == 0), else cp.async. kCpAsync runs the pre-sm_90 path as a whole (split-K through the
// global workspace), so an sm_90 GPU tests it too.
enum class SpenseLoader { kAuto = 0, kTma = 1, kCpAsync = 2 };

struct SpenseDecodeParams {
  const void* x;             // [n, k], rows x_ld elements apart: x_ld % 8 == 0, 16-byte aligned
  int64_t x_ld;
  const void* dense;         // dense rows [md, k], rows dense_ld elements apart (dense_ld % 4 == 0); null if md == 0
  int64_t dense_ld;
  const void* values;        // canonical 2:4 values [ms, k/2], contiguous, 16-byte aligned
  const void* meta;          // canonical metadata [ms, ceil(k/8)] bytes, contiguous, 16-byte aligned
  const void* meta_fragments;  // optional, read instead of `meta`: sparse24_decode_pack's dmeta of (values, meta)
  const int32_t* row_index;  // [md + ms] output row of each block row (dense rows first); null = identity
  const void* bias;          // [md + ms] in output order, or null
  void* y;                   // [n, md + ms], rows y_ld elements apart
  int64_t y_ld;
  void* workspace;           // spense_decode_workspace_bytes(...) bytes, or null when that is 0
  int64_t md, ms, n, k;      // k % 4 == 0
  int splits;                // 1 .. chunks; spense_decode_splits() is the kernel's rule
  DType dtype;               // kFloat16 or kBFloat16
  SpenseLoader loader;
};

struct SpenseDecodeShape {
  int64_t dense_groups;   // ceil(md / 64)
  int64_t sparse_groups;  // ceil(ms / 128)
  int64_t chunks;         // ceil(k / 128)
  int64_t groups() const { return dense_groups + sparse_groups; }
};

SpenseDecodeShape spense_decode_shape(int64_t md, int64_t ms, int64_t k);

// Split-K factor on a device with num_sms multiprocessors (the 2:4 decode kernel's rule over the same number of
// row groups: about 0.7 blocks per SM, at most 8).
int spense_decode_splits(int64_t md, int64_t ms, int64_t n, int64_t k, int num_sms);

// Global workspace a launch needs (0: one split, or split-K summed in a cluster on sm_90).
size_t spense_decode_workspace_bytes(int64_t md, int64_t ms, int64_t n, int64_t k, int splits,
                                     SpenseLoader loader = SpenseLoader::kAuto);

// Whether a TMA launch can read these tensors (sm_90 and the alignment rules of SpenseLoader::kAuto).
bool spense_decode_tma_possible(const SpenseDecodeParams& p);

// Enqueues the product on `stream`; cudaErrorInvalidValue for arguments it cannot take.
cudaError_t spense_decode_mm(const SpenseDecodeParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
