// The sm_80 GEMM's weight layout (sparse24_sm80_gemm.h) from the canonical 2:4 layout: values padded, metadata
// regrouped into CUTLASS 2.x's reordered E. Plain elementwise kernels, no CUTLASS.
#include <cstdint>

#include "kernels/common/launch.h"
#include "kernels/sparse24/sparse24_sm80_gemm.h"

namespace spmm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kFillCode = 0x4;  // idx0 = 0, idx1 = 1: the all-zero group (canonical layout's fill)

unsigned blocks_for(int64_t elements) {
  const int64_t blocks = (elements + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 64 ? blocks : 65535 * 64);
}

// a [m_pad, k_pad / 2] <- values [m, k / 2], zeros elsewhere (16-bit elements moved as bits).
__global__ void pad_values_kernel(Sparse24Sm80PackParams p, int64_t m_pad, int64_t half_k_pad) {
  const auto* src = static_cast<const uint16_t*>(p.values);
  auto* dst = static_cast<uint16_t*>(p.a);
  const int64_t total = m_pad * half_k_pad;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    const int64_t r = i / half_k_pad, c = i % half_k_pad;
    dst[i] = r < p.m && c < p.k / 2 ? src[r * p.values_ld + c] : uint16_t{0};
  }
}

// CUTLASS's host reorder_meta for 16-bit metadata, per element: rows interleaved by 8 within groups of 32, then
// 2 x 2 blocks transposed, in a ColumnMajorInterleaved<2> matrix of m_pad rows.
__device__ __forceinline__ int64_t reordered_offset(int64_t row, int64_t col, int64_t m_pad) {
  int64_t r = row / 32 * 32 + (row % 8) * 4 + (row % 32) / 8;
  int64_t c = col;
  if (r % 2 == 0 && c % 2 == 1) {
    ++r;
    --c;
  } else if (r % 2 == 1 && c % 2 == 0) {
    --r;
    ++c;
  }
  return c / 2 * (m_pad * 2) + r * 2 + c % 2;
}

// e[(row, col)] = the 4 group codes of dense columns 16 col .. 16 col + 15 of `row` (group g of them in bits 4g..),
// the fill code for padding.
__global__ void reorder_meta_kernel(Sparse24Sm80PackParams p, int64_t m_pad, int64_t meta_cols) {
  const int64_t total = m_pad * meta_cols;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    const int64_t row = i / meta_cols, col = i % meta_cols;
    uint32_t word = 0;
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const int64_t group = col * 4 + g;  // groups of 4 dense columns
      uint32_t code = kFillCode;
      if (row < p.m && group * 4 < p.k) code = (p.meta[row * p.meta_ld + group / 2] >> (4 * (group % 2))) & 0xFu;
      word |= code << (4 * g);
    }
    p.e[reordered_offset(row, col, m_pad)] = static_cast<uint16_t>(word);
  }
}

}  // namespace

cudaError_t sparse24_sm80_pack(const Sparse24Sm80PackParams& p, cudaStream_t stream) {
  if (p.m <= 0 || p.k <= 0 || p.k % 4 != 0 || p.values_ld < p.k / 2 || p.meta_ld < (p.k / 4 + 1) / 2 ||
      p.values == nullptr || p.meta == nullptr || p.a == nullptr || p.e == nullptr || !aligned16(p.a) ||
      !aligned16(p.e))
    return cudaErrorInvalidValue;
  const int64_t m_pad = sparse24_sm80_padded_rows(p.m), k_pad = sparse24_sm80_padded_cols(p.k);
  pad_values_kernel<<<blocks_for(m_pad * k_pad / 2), kThreads, 0, stream>>>(p, m_pad, k_pad / 2);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  reorder_meta_kernel<<<blocks_for(m_pad * k_pad / 16), kThreads, 0, stream>>>(p, m_pad, k_pad / 16);
  return cudaGetLastError();
}

}  // namespace spmm::kernels
