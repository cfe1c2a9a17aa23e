// Epilogue pieces the hand-written kernels share: fp32 accumulator -> fp16/bf16, and the per-row bias.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace spmm::kernels {

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// bias[m] in fp32, or 0 without a bias (the sum is rounded once, after the bias is added).
template <typename T>
__device__ __forceinline__ float bias_at(const T* bias, int64_t m) {
  return bias ? static_cast<float>(bias[m]) : 0.0f;
}

}  // namespace spmm::kernels
