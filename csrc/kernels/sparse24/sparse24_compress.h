// Launcher of the CUDA 2:4 compressor: dense [M, K] (+ optional keep mask) -> canonical (values, meta).
// Raw pointers and a stream only; problems in the input are reported through `first_bad`, never by aborting.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"

namespace spmm::kernels {

struct Sparse24CompressParams {
  const void* dense;      // [M, K] elements of `dtype`, row stride dense_ld (elements)
  int64_t dense_ld;
  const uint8_t* mask;    // [M, K] bool (0/1) row stride mask_ld, or nullptr: keep the nonzeros of dense
  int64_t mask_ld;
  void* values;           // [M, K/2] contiguous, `dtype`
  uint8_t* meta;          // [M, ceil(K/8)] contiguous
  // Device memory, two entries, set by the launcher to UINT64_MAX and lowered (atomicMin) by the kernel:
  //   first_bad[0]: the first group (row * K/4 + group) that keeps more than two elements,
  //   first_bad[1]: the first element (row * K + col) that is NaN or infinite.
  unsigned long long* first_bad;
  int64_t m;
  int64_t k;              // multiple of 4
  DType dtype;
};

// Enqueues the compressor on `stream`. Returns cudaErrorInvalidValue for arguments it cannot take (k % 4 != 0,
// null pointers, unknown dtype), else the launch status.
cudaError_t sparse24_compress(const Sparse24CompressParams& params, cudaStream_t stream);

}  // namespace spmm::kernels
