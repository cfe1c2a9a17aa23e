// The delta kernel: y = x W^T (+ bias) on CUDA cores from the delta layout (tiled_csl_delta_layout.h), for the few
// tokens of decoding. Each lane owns one row's segment of one K slice and decodes its entries straight into registers
// (no shared-memory tile): per entry one shift-free byte extract for the column, one shared load of x (staged per
// block as fp32), one fma per token. fp16 or bf16 in and out, fp32 accumulation, exact at any sparsity.
//
// Work: block = 8 warps = 256 rows (8 records of 32) x one slice; each warp walks its record in jagged order, two
// batches of 4 chunks per lane in flight. Split-K over the slices: fp32 partials in the workspace, summed in slice
// order by the last block of each row block to finish (deterministic, one launch). N tokens run in passes of
// tokens_per_pass (1, 2, 4 or 8; tiled_csl_delta_tokens_per_pass in tiled_csl_rules.h), each pass streaming the
// weight once.
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
  int64_t tokens_per_pass;  // 1, 2, 4 or 8
  DType dtype;              // kFloat16 or kBFloat16
};

size_t tiled_csl_delta_workspace_bytes(int64_t m, int64_t k, int64_t tokens_per_pass);

// Enqueues y = x W^T (+ bias) on `stream`; m, n, k > 0. cudaErrorInvalidValue for arguments it cannot take.
cudaError_t tiled_csl_delta_mm(const TiledCSLDeltaMMParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
