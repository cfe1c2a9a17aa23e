// The delta kernels: y = x W^T (+ bias) from the delta layout (tiled_csl_delta_layout.h). fp16 or bf16 in and out,
// fp32 accumulation, exact at any sparsity. Both: block = 8 warps = 256 rows (8 records of 32 rows) x one K slice,
// each warp walking its record in jagged order (coalesced chunk loads); split-K over the slices, the last block of
// each row block summing the fp32 partials in slice order (deterministic, one launch).
//   - CUDA cores (N <= 8, tiled_csl_delta_tensor_cores in tiled_csl_rules.h): each lane owns one row's segment and
//     decodes its entries straight into registers -- per entry a byte extract for the column, one shared load of x
//     (the slice staged per block as fp32), one fma per token; no shared tile, no barrier in the loop; two batches
//     of 4 chunks per lane in flight. N tokens run in passes of tokens_per_pass (1, 2, 4 or 8), each streaming the
//     weight once.
//   - Tensor cores (larger N): the lanes hand their entries to a zeroed, swizzled 256 x 64 dense tile in shared memory
//     window by window (64 columns of the slice; a chunk straddling windows waits for the next), and the warps
//     multiply it with x's 64-column chunk on mma.m16n8k16 -- the word kernel's dense half
//     (tiled_csl_tile_mma.cuh), fed from 2.5 instead of 4 bytes per nonzero. Up to 64 tokens per launch.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"
#include "kernels/tiled_csl/tiled_csl_rules.h"

namespace spmm::kernels {

struct TiledCSLDeltaMMParams {
  const void* x;            // [N, K] rows of x_ld elements (unit column stride)
  int64_t x_ld;
  const void* values;       // [chunks * 8], 16-byte aligned
  const uint32_t* codes;    // [chunks]
  const int32_t* offsets;   // [slices * m + 1]; trusted (a corrupt layout gives wrong y, never a fault)
  int64_t chunks;
  const void* bias;         // [M] or nullptr
  void* y;                  // [N, M] rows of y_ld elements
  int64_t y_ld;
  void* workspace;          // tiled_csl_delta_workspace_bytes(...), or nullptr if that is 0
  int64_t m, n, k;
  int64_t slice_width;      // tiled_csl_delta_slice_width(m, k): the layout's
  bool tensor_cores;        // which kernel (tiled_csl_delta_tensor_cores(n) is the rule)
  int64_t tokens_per_pass;  // CUDA cores: 1, 2, 4 or 8 (tensor cores: ignored)
  DType dtype;              // kFloat16 or kBFloat16
  // Set by the launcher (callers leave them): split-K factor (the slices) and counters inside the workspace.
  int splits;
  int* counters;
};

// The workspace of a launch (0 without split-K). For tensor cores x must have 16-byte aligned rows of x_ld % 8 == 0
// elements, zero-padded past K to a multiple of 8.
size_t tiled_csl_delta_workspace_bytes(int64_t m, int64_t n, int64_t k, bool tensor_cores, int64_t tokens_per_pass);

// Enqueues y = x W^T (+ bias) on `stream`; m, n, k > 0. cudaErrorInvalidValue for arguments it cannot take.
cudaError_t tiled_csl_delta_mm(const TiledCSLDeltaMMParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
