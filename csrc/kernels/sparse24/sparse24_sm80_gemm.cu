// The sm_80 2:4 sparse GEMM of sparse24_sm80_gemm.h: CUTLASS 2.x SparseGemm into an fp32 workspace (D = y^T), then
// a tiled transpose that adds the bias and rounds once into y.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cutlass/bfloat16.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_sparse.h>
#include <cutlass/half.h>

#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/sparse24/sparse24_sm80_gemm.h"

namespace spmm::kernels {
namespace {

// One configuration: 128 x 128 x 64 tiles (warps of 64 x 64 x 64), 3 stages -- CUTLASS's usual fp16 sparse tile;
// prefill-sized problems have enough 128 x 128 output tiles to fill the SMs.
template <typename Element>
using SparseGemm = cutlass::gemm::device::SparseGemm<
    Element, cutlass::layout::RowMajor,     // A = W, compressed [m_pad, k_pad / 2]
    Element, cutlass::layout::ColumnMajor,  // B = x^T: x row-major [n, k_pad]
    float, cutlass::layout::RowMajor,       // C / D = y^T, fp32 [m_pad, ld]
    float,                                  // accumulator
    cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<128, 128, 64>, cutlass::gemm::GemmShape<64, 64, 64>, cutlass::gemm::GemmShape<16, 8, 32>,
    // D = acc (no source read); the bias is added in fp32 by the transpose
    cutlass::epilogue::thread::LinearCombination<float, 4, float, float,
                                                 cutlass::epilogue::thread::ScaleType::OnlyAlphaScaling>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 3, 8, 8>;

// Tokens the GEMM runs on: N rounded up to 8 (CUTLASS's can_implement wants N % 8 for the 16-byte loads of x, and
// N % 4 for the fp32 epilogue's); also the row length of D in the workspace.
int64_t padded_tokens(int64_t n) { return (n + 7) / 8 * 8; }

template <typename Element>
cudaError_t run_gemm(const Sparse24Sm80GemmParams& p, cudaStream_t stream) {
  using Gemm = SparseGemm<Element>;
  const int64_t m_pad = sparse24_sm80_padded_rows(p.m), k_pad = sparse24_sm80_padded_cols(p.k);
  const cutlass::gemm::GemmCoord problem(static_cast<int>(m_pad), static_cast<int>(padded_tokens(p.n)),
                                         static_cast<int>(k_pad));
  auto* d = static_cast<float*>(p.workspace);
  const typename Gemm::LayoutE layout_e = Gemm::LayoutE::packed({static_cast<int>(m_pad), static_cast<int>(k_pad / 16)});
  typename Gemm::Arguments args(
      problem, {static_cast<const Element*>(p.a), typename Gemm::LayoutA(k_pad / 2)},
      {static_cast<const Element*>(p.x), typename Gemm::LayoutB(p.x_ld)},
      {d, typename Gemm::LayoutC(padded_tokens(p.n))}, {d, typename Gemm::LayoutC(padded_tokens(p.n))},
      {const_cast<uint16_t*>(p.e), layout_e}, {1.0f});
  Gemm gemm;
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidConfiguration;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

// y[n, m] = D[m, n] + bias[m], rounded once; 32 x 32 tiles through shared memory so both sides are coalesced.
template <typename T>
__global__ void transpose_bias_kernel(const float* d, int64_t d_ld, const T* bias, T* y, int64_t y_ld, int64_t m,
                                      int64_t n) {
  __shared__ float tile[32][33];  // +1: the column reads hit 32 banks
  const int64_t m0 = int64_t{blockIdx.y} * 32, n0 = int64_t{blockIdx.x} * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y)
    if (m0 + i < m && n0 + threadIdx.x < n) tile[i][threadIdx.x] = d[(m0 + i) * d_ld + n0 + threadIdx.x];
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y)
    if (n0 + i < n && m0 + threadIdx.x < m)
      y[(n0 + i) * y_ld + m0 + threadIdx.x] = from_float<T>(tile[threadIdx.x][i] + bias_at(bias, m0 + threadIdx.x));
}

template <typename T>
cudaError_t run_transpose(const Sparse24Sm80GemmParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.n + 31) / 32), static_cast<unsigned>((p.m + 31) / 32));
  transpose_bias_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(static_cast<const float*>(p.workspace),
                                                              padded_tokens(p.n), static_cast<const T*>(p.bias),
                                                              static_cast<T*>(p.y), p.y_ld, p.m, p.n);
  return cudaGetLastError();
}

}  // namespace

size_t sparse24_sm80_workspace_bytes(int64_t m, int64_t n) {
  return static_cast<size_t>(sparse24_sm80_padded_rows(m) * padded_tokens(n)) * sizeof(float);
}

cudaError_t sparse24_sm80_gemm(const Sparse24Sm80GemmParams& p, cudaStream_t stream) {
  constexpr int64_t kMaxDim = INT32_MAX;
  if (p.m <= 0 || p.k <= 0 || p.n < 0 || p.k % 4 != 0 || sparse24_sm80_padded_rows(p.m) > kMaxDim ||
      sparse24_sm80_padded_cols(p.k) > kMaxDim || p.n > kMaxDim || p.x_ld % 8 != 0 ||
      (p.n > 1 && p.x_ld < sparse24_sm80_padded_cols(p.k)) || p.y_ld < p.m || p.a == nullptr || p.e == nullptr ||
      p.x == nullptr || p.y == nullptr || p.workspace == nullptr || !aligned16(p.a) || !aligned16(p.e) ||
      !aligned16(p.x) || !aligned16(p.workspace) || (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16))
    return cudaErrorInvalidValue;
  if (current_device_major() < 8) return cudaErrorNoKernelImageForDevice;  // (also a device that cannot be queried)
  if (p.n == 0) return cudaSuccess;
  const bool f16 = p.dtype == DType::kFloat16;
  cudaError_t err = f16 ? run_gemm<cutlass::half_t>(p, stream) : run_gemm<cutlass::bfloat16_t>(p, stream);
  if (err != cudaSuccess) return err;
  return f16 ? run_transpose<__half>(p, stream) : run_transpose<__nv_bfloat16>(p, stream);
}

}  // namespace spmm::kernels
