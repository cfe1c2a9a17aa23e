// CUDA 2:4 compressor: one thread per metadata byte (two groups of 4 along K = 8 dense elements).
// Writes the canonical layout of kernels/sparse24/sparse24_layout.h; reports 2:4 violations and non-finite
// values through first_bad instead of writing silently wrong output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "kernels/sparse24/sparse24_compress.h"
#include "kernels/sparse24/sparse24_layout.h"

namespace spmm::kernels {
namespace {

using sparse24::kGroup;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ bool is_zero(T v) {
  return to_float(v) == 0.0f;  // -0.0 counts as zero
}

template <typename T>
__global__ void sparse24_compress_kernel(Sparse24CompressParams p) {
  const int64_t groups_per_row = p.k / kGroup;
  const int64_t bytes_per_row = sparse24::meta_bytes_per_row(p.k);
  const int64_t byte_index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (byte_index >= p.m * bytes_per_row) return;
  const int64_t row = byte_index / bytes_per_row;
  const int64_t byte_in_row = byte_index % bytes_per_row;

  const T* dense_row = static_cast<const T*>(p.dense) + row * p.dense_ld;
  const uint8_t* mask_row = p.mask ? p.mask + row * p.mask_ld : nullptr;
  T* values_row = static_cast<T*>(p.values) + row * (p.k / 2);

  uint8_t code_byte = 0;
  for (int half = 0; half < 2; ++half) {
    const int64_t group = byte_in_row * 2 + half;
    if (group >= groups_per_row) break;  // odd group count: the high nibble stays 0
    T v[kGroup];
    unsigned allowed = 0, nonzero = 0;
    for (int j = 0; j < kGroup; ++j) {
      const int64_t col = group * kGroup + j;
      v[j] = dense_row[col];
      if (!isfinite(to_float(v[j]))) atomicMin(&p.first_bad[1], static_cast<unsigned long long>(row * p.k + col));
      allowed |= static_cast<unsigned>(mask_row ? mask_row[col] != 0 : true) << j;
      nonzero |= static_cast<unsigned>(!is_zero(v[j])) << j;
    }
    // The mask (or, without one, the nonzeros) must be 2:4; a zero the mask keeps is stored as a filler +0.0.
    if (sparse24::popcount4(mask_row ? allowed : nonzero) > sparse24::kKept)
      atomicMin(&p.first_bad[0], static_cast<unsigned long long>(row * groups_per_row + group));
    const unsigned keep = allowed & nonzero;
    int idx0 = 0, idx1 = 1;
    sparse24::pick_columns(keep, idx0, idx1);
    // A filler column (not kept) stores +0.0 so that to_dense() gives the masked weight bit for bit.
    const T zero = T(0.0f);
    values_row[group * 2] = (keep >> idx0) & 1u ? v[idx0] : zero;
    values_row[group * 2 + 1] = (keep >> idx1) & 1u ? v[idx1] : zero;
    code_byte |= sparse24::encode_group(idx0, idx1) << (4 * half);
  }
  p.meta[row * bytes_per_row + byte_in_row] = code_byte;
}

template <typename T>
cudaError_t launch(const Sparse24CompressParams& p, cudaStream_t stream) {
  const int64_t threads_total = p.m * sparse24::meta_bytes_per_row(p.k);
  if (threads_total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (threads_total + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  sparse24_compress_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sparse24_compress(const Sparse24CompressParams& p, cudaStream_t stream) {
  if (p.k % kGroup != 0 || p.m < 0 || p.k < 0 || p.first_bad == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(p.first_bad, 0xFF, 2 * sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  if (p.m * p.k > 0 && (p.dense == nullptr || p.values == nullptr || p.meta == nullptr)) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: return launch<float>(p, stream);
    case DType::kFloat16: return launch<__half>(p, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace spmm::kernels
