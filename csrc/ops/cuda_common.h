// Helpers for the CUDA entries: torch dtype -> kernel dtype, launcher status -> exception.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"

namespace spmm::ops {

inline kernels::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::DType::kFloat32;
    case at::kHalf: return kernels::DType::kFloat16;
    case at::kBFloat16: return kernels::DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "spmm: no CUDA kernel for dtype ", t);
  }
}

inline void check_cuda(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

}  // namespace spmm::ops
