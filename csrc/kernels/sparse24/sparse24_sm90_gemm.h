// 2:4 sparse GEMM for Hopper (sm_90a) -- the prefill path: CUTLASS 3.x sparse GEMM (wgmma.sp, TMA, warp-specialized
// persistent kernels), bias fused in the epilogue. Raw pointers, sizes and a stream only; no torch, no CUTLASS types.
//
// Maths (nn.Linear):  y[n, m] = sum_k x[n, k] * W[m, k] + bias[m],   W [M, K] 2:4-sparse along K.
// Operand swap: y^T = W x^T, so CUTLASS computes D[M, N] = A[M, K] * B[K, N] (+ bias per row of D) with
//   A = W      sparse, row-major (K-major): its kept values in our canonical layout (row-major [M, K/2], which is
//              CUTLASS's compressed A for these shapes) + metadata E in CUTLASS's reordered layout,
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
// Weights are packed once: the canonical metadata [M, K/8] -> sparse24_sm90_pack_meta -> e (sparse24_sm90_meta_bytes()
// bytes); the canonical values serve as `a` unchanged, so the GEMM keeps no second copy of them. Every config below
// reads the same (a, e) layout.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"
#include "kernels/sparse24/sparse24_sm90_configs.h"

namespace spmm::kernels {

// Kernel configs (sparse24_sm90_configs.h); sparse24_sm90_pick_config chooses one. Every config has a K tile of
// 128, so all share one compressed layout (CUTLASS's sparse layout depends on min(tile K, 128) only).

struct Sparse24Sm90MetaParams {
  const uint8_t* meta;  // canonical metadata [m, k/8], row stride meta_ld bytes: byte j of a row holds the 4-bit codes
                        // (idx0 | idx1 << 2) of groups 2j (low nibble) and 2j + 1 (high nibble)
  int64_t meta_ld;
  void* e;              // out: sparse24_sm90_meta_bytes() bytes, 16-byte aligned
  int64_t m;
  int64_t k;
};

struct Sparse24Sm90GemmParams {
  const void* a;      // W's kept values, canonical layout: row-major [m, k/2]
  const void* e;      // its metadata (sparse24_sm90_pack_meta's e)
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

// True if a weight [m, k] fits the kernels (m % 8, k % 16, sizes); decide at pack time.
bool sparse24_sm90_weight_supported(int64_t m, int64_t k);

// Bytes of the metadata e for a weight [m, k] (sparse24_sm90_e_bytes of sparse24_kernel_layouts.h: rows padded to 64,
// columns to 128; the same for fp16 and bf16). cudaErrorInvalidValue if the weight is not supported.
cudaError_t sparse24_sm90_meta_bytes(int64_t m, int64_t k, size_t* e_bytes);

// Enqueues the metadata reorder on `stream`: canonical meta -> e. Writes every byte of e (the padding with zeros).
// A plain CUDA byte scatter, but built for sm_90a only like the GEMM (elsewhere: cudaErrorNoKernelImageForDevice).
cudaError_t sparse24_sm90_pack_meta(const Sparse24Sm90MetaParams& params, cudaStream_t stream);

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
// (sm90/<config>_<dtype>.cu), the metadata pack in sparse24_sm90_pack_kernel.cu, so nvcc builds them in parallel.
// Callers use the functions above, which check the arguments and dispatch on config and dtype.
cudaError_t sparse24_sm90_pack_meta_unchecked(const Sparse24Sm90MetaParams& params, cudaStream_t stream);
template <Sparse24Sm90Config kConfig, DType kDType>
struct Sparse24Sm90Kernel {
  static cudaError_t workspace_bytes(const Sparse24Sm90GemmParams& params, int device, int sm_count, size_t* bytes);
  static cudaError_t gemm(const Sparse24Sm90GemmParams& params, int device, int sm_count, cudaStream_t stream);
};
}  // namespace detail

}  // namespace spmm::kernels
