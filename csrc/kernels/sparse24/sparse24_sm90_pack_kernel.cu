// The Hopper GEMM's metadata layout from the canonical one (sparse24_sm90_pack_meta in sparse24_sm90_gemm.h).
//
// CUTLASS's sparse config stores one 4-bit code per group of 4 along K, codes in the same form as ours
// (idx0 | idx1 << 2), two per byte with the lower group in the low nibble, so each byte of canonical meta (groups
// 2j, 2j + 1 of a row) is one byte of E. Only the byte order differs: E is tiled in atoms of 64 rows x 128 columns,
// reordered for the wgmma.sp metadata registers. CuTe's layout of E (the config's fill_layoutE, in units of logical
// weight elements: 8 per byte) gives each byte's place, so this kernel is a byte scatter. Rows and columns that pad
// E to whole atoms stay zero (code 0: its A values are zero-filled by TMA).
#include <cstdint>

#include "kernels/common/launch.h"
#include "kernels/sparse24/sparse24_kernel_layouts.h"
#include "kernels/sparse24/sparse24_sm90_gemm_impl.cuh"

namespace spmm::kernels {
namespace {

using HalfConfig = sm90_sparse24::SharedSparseConfig<cutlass::half_t>;
using BFloat16Config = sm90_sparse24::SharedSparseConfig<cutlass::bfloat16_t>;
using LayoutE = decltype(HalfConfig::fill_layoutE(sm90_sparse24::ProblemShape{}));
static_assert(std::is_same_v<LayoutE, decltype(BFloat16Config::fill_layoutE(sm90_sparse24::ProblemShape{}))> &&
                  HalfConfig::TensorEAtomM::value == BFloat16Config::TensorEAtomM::value &&
                  HalfConfig::TensorEAtomK::value == BFloat16Config::TensorEAtomK::value,
              "fp16 and bf16 must share the metadata layout");
constexpr int kElementsPerByte = HalfConfig::ElementEMmaSparsity::value;  // logical weight elements per byte of E
static_assert(kElementsPerByte == 8, "one byte of E = two groups of 4 = one byte of canonical meta");
// E's size as sparse24_kernel_layouts.h states it (for the op and its fake): whole atoms of CUTLASS's layout of E
// (fill_layoutE rounds M and K up to them), one byte per 8 logical elements.
static_assert(HalfConfig::TensorEAtomM::value == kSparse24Sm90MetaAtomRows &&
                  HalfConfig::TensorEAtomK::value == kSparse24Sm90MetaAtomCols,
              "sparse24_kernel_layouts.h must state CUTLASS's metadata atom");

sm90_sparse24::ProblemShape problem(int64_t m, int64_t k) {
  return {static_cast<int>(m), 1, static_cast<int>(k), 1};
}

// One thread per canonical meta byte (row, j): E[place of logical element (row, 8 j)] = meta[row, j].
__global__ void pack_meta_kernel(const uint8_t* __restrict__ meta, int64_t meta_ld, uint8_t* __restrict__ e,
                                 LayoutE layout_e, int64_t m, int64_t bytes_per_row) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * bytes_per_row) return;
  const int64_t row = i / bytes_per_row, j = i % bytes_per_row;
  const int64_t place = layout_e(static_cast<int>(row), static_cast<int>(j * kElementsPerByte), 0);
  e[place / kElementsPerByte] = meta[row * meta_ld + j];
}

}  // namespace

namespace detail {

cudaError_t sparse24_sm90_pack_meta_unchecked(const Sparse24Sm90MetaParams& p, cudaStream_t stream) {
  const size_t e_bytes = static_cast<size_t>(sparse24_sm90_e_bytes(p.m, p.k));
  if (const cudaError_t err = cudaMemsetAsync(p.e, 0, e_bytes, stream); err != cudaSuccess) return err;
  const int64_t bytes_per_row = p.k / kElementsPerByte, total = p.m * bytes_per_row;
  constexpr int kThreads = 256;
  pack_meta_kernel<<<static_cast<unsigned>(ceil_div(total, kThreads)), kThreads, 0, stream>>>(
      p.meta, p.meta_ld, static_cast<uint8_t*>(p.e), HalfConfig::fill_layoutE(problem(p.m, p.k)), p.m, bytes_per_row);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace spmm::kernels
