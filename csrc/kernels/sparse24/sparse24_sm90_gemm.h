// 2:4 sparse GEMM for Hopper (sm_90a) -- the prefill path: CUTLASS 3.x sparse GEMM (wgmma.sp, TMA, warp-specialized
// persistent kernels), bias fused in the epilogue. Raw pointers, sizes and a stream only; no torch, no CUTLASS types.
//
// Maths (nn.Linear):  y[n, m] = sum_k x[n, k] * W[m, k] + bias[m],   W [M, K] 2:4-sparse along K.
// Operand swap: y^T = W x^T, so CUTLASS computes D[M, N] = A[M, K] * B[K, N] (+ bias per row of D) with
//   A = W      sparse, row-major (K-major), stored compressed in CUTLASS's own layout (values + metadata E),
//   B = x^T    column-major [K, N] = x row-major [N, K], leading dimension x_ld,
//   D = y^T    column-major [M, N] = y row-major [N, M], leading dimension y_ld.
// fp16 or bf16 in and out (A, B, bias and y share one dtype), fp32 accumulation, one rounding at the end (the bias is
// added in fp32 before it).
//
// Limits (anything else gets cudaErrorInvalidValue, so the caller can fall back to another kernel):
//   M % 8 == 0   (y rows are written by TMA: 16-byte aligned column starts of D)
//   K % 16 == 0, K > 0   (the compressed A keeps K/2 elements per row, and TMA needs 16-byte rows)
//   x_ld % 8 == 0, y_ld % 8 == 0, x_ld >= K, y_ld >= M; x, y, a, e, bias (if any) 16-byte aligned
//   N any (>= 0); M, N, K < 2^31. N == 0 or M == 0 launches nothing.
// A device that is not compute capability 9.0 gets cudaErrorNoKernelImageForDevice (the code is sm_90a only).
//
// Weights are packed once: the dense masked weight [M, K] -> sparse24_sm90_compress -> (a, e) buffers of
// sparse24_sm90_compressed_sizes() bytes. Every config below reads the same (a, e) layout.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"
#include "kernels/sparse24/sparse24_sm90_configs.h"

namespace spmm::kernels {

// Kernel configs (sparse24_sm90_configs.h); sparse24_sm90_pick_config chooses one. Every config has a K tile of
// 128, so all share one compressed layout (CUTLASS's sparse layout depends on min(tile K, 128) only).

struct Sparse24Sm90CompressParams {
  const void* dense;  // [m, k] masked weight, row stride dense_ld (elements); at most 2 nonzeros per group of 4
                      // along K (-0.0 counts as zero). More than two is undefined behaviour in CUTLASS's
                      // compressor: the caller guarantees 2:4 (the op expands our checked canonical layout).
  int64_t dense_ld;
  void* a;            // out: compressed values, a_bytes of sparse24_sm90_compressed_sizes, 16-byte aligned
  void* e;            // out: metadata, e_bytes, 16-byte aligned
  int64_t m;
  int64_t k;
  DType dtype;        // kFloat16 or kBFloat16
};

struct Sparse24Sm90GemmParams {
  const void* a;      // compressed W (sparse24_sm90_compress's a)
  const void* e;      // its metadata (sparse24_sm90_compress's e)
  const void* x;      // [n, k], row stride x_ld (elements)
  int64_t x_ld;
  const void* bias;   // [m], or nullptr for no bias
  void* y;            // [n, m], row stride y_ld (elements)
  int64_t y_ld;
  int64_t m;
  int64_t n;
  int64_t k;
  DType dtype;        // of a, x, bias and y: kFloat16 or kBFloat16
  void* workspace;    // sparse24_sm90_workspace_bytes() bytes (nullptr when that is 0)
  size_t workspace_bytes;
  // Tuning knobs (0 = the tile scheduler's own choice), for the bench's config sweep:
  int swizzle;        // max_swizzle_size of the tile raster (1, 2, 4, 8): neighbouring CTAs share operand tiles in L2
  int splits;         // stream-K configs only: > 1 forces split-K into this many K slices instead of stream-K
};

// True if a weight [m, k] fits the kernels (m % 8, k % 16, sizes); decide at pack time, before compressing.
bool sparse24_sm90_weight_supported(int64_t m, int64_t k);

// Bytes of the compressed values (a) and metadata (e) for a weight [m, k]. cudaErrorInvalidValue if the weight is
// not supported or the dtype is not fp16/bf16.
cudaError_t sparse24_sm90_compressed_sizes(int64_t m, int64_t k, DType dtype, size_t* a_bytes, size_t* e_bytes);

// Enqueues CUTLASS's sm90 compressor on `stream`: dense [m, k] -> (a, e). Writes every byte of a and e.
cudaError_t sparse24_sm90_compress(const Sparse24Sm90CompressParams& params, cudaStream_t stream);

// Config for a problem, from coarse buckets of the tile count against the SM count (132 on an H100 SXM).
Sparse24Sm90Config sparse24_sm90_pick_config(int64_t m, int64_t n, int64_t k, int sm_count = 132);

// Workspace the GEMM needs on the current device for the problem of `params` (m, n, k, dtype and the knobs; the
// pointers are not read): 0 for the persistent configs, the partial-sum buffer and flags for stream-K. The GEMM
// clears what it needs itself (a memset on its stream), so one buffer serves every call on one stream; calls that
// may run at once on two streams need two buffers.
cudaError_t sparse24_sm90_workspace_bytes(const Sparse24Sm90GemmParams& params, Sparse24Sm90Config config,
                                          size_t* bytes);

// Enqueues y = x @ W^T (+ bias) on `stream`. cudaErrorInvalidValue: arguments outside the limits above (nothing is
// launched); cudaErrorNoKernelImageForDevice: not an sm_90 device; cudaErrorInvalidConfiguration: CUTLASS failed to
// set up or launch the kernel (should not happen; its adapter swallows the underlying CUDA error; report it).
cudaError_t sparse24_sm90_gemm(const Sparse24Sm90GemmParams& params, Sparse24Sm90Config config, cudaStream_t stream);

namespace detail {
// Defined in sparse24_sm90_gemm_impl.cuh; each config x dtype is instantiated in its own file under sm90/
// (sm90/<config>_<dtype>.cu), the compressor in sparse24_sm90_compress.cu, so nvcc builds them in parallel.
// Callers use the functions above, which check the arguments and dispatch on config and dtype.
template <DType kDType>
struct Sparse24Sm90Compressor {
  static void compressed_sizes(int64_t m, int64_t k, size_t* a_bytes, size_t* e_bytes);
  static cudaError_t compress(const Sparse24Sm90CompressParams& params, cudaStream_t stream);
};
template <Sparse24Sm90Config kConfig, DType kDType>
struct Sparse24Sm90Kernel {
  static cudaError_t workspace_bytes(const Sparse24Sm90GemmParams& params, int device, int sm_count, size_t* bytes);
  static cudaError_t gemm(const Sparse24Sm90GemmParams& params, int device, int sm_count, cudaStream_t stream);
};
}  // namespace detail

}  // namespace spmm::kernels
