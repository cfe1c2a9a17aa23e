// 2:4 sparse GEMM for Ampere (sm_80; the same code runs on sm_86/89 and on Hopper) -- the prefill path there:
// CUTLASS 2.x SparseGemm (mma.sp.m16n8k32, multistage cp.async mainloop). Raw pointers, sizes and a stream only;
// no torch, no CUTLASS types.
//
// Maths (nn.Linear):  y[n, m] = sum_k x[n, k] * W[m, k] + bias[m],   W [M, K] 2:4-sparse along K.
// CUTLASS 2.x's sparse GEMM takes the sparse operand as A and writes D row-major only, so it computes
//   D[M, N] = A[M, K] * B[K, N]   with A = W (compressed, row-major), B = x^T (column-major = x row-major [N, K]),
// D = y^T in fp32 into a workspace, and a second small kernel writes y = D^T + bias (one rounding, from fp32; the
// transpose is what a row-major-only epilogue costs: about 8 + 2 bytes per output element).
//
// Layout (sparse24_sm80_pack, from the canonical layout of ops.py; made once per weight):
//   M padded to a multiple of 32 (the metadata's row interleave), K to a multiple of 64 (the GEMM's K tile);
//   a = values [m_pad, k_pad / 2] row-major (padding = +0.0);
//   e = metadata, uint16 per 16 dense columns (4 groups x 4 bits, the canonical nibbles), [m_pad, k_pad / 16] in
//       CUTLASS's reordered layout for ldmatrix (ColumnMajorInterleaved<2> with rows interleaved by 8 within 32
//       and 2 x 2 blocks transposed); padding = the all-zero group's code.
// fp16 or bf16 (a, x, bias and y share one dtype), fp32 accumulation.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"
#include "kernels/sparse24/sparse24_kernel_layouts.h"  // the layout's sizes: sparse24_sm80_padded_rows, ...

namespace spmm::kernels {

struct Sparse24Sm80PackParams {
  const void* values;    // canonical [m, k / 2], row stride values_ld (elements)
  int64_t values_ld;
  const uint8_t* meta;   // canonical [m, ceil(k / 8)], row stride meta_ld (bytes)
  int64_t meta_ld;
  int64_t m, k;          // k % 4 == 0
  void* a;               // out: [m_pad, k_pad / 2], 16-byte aligned
  uint16_t* e;           // out: sparse24_sm80_meta_elements(m, k), 16-byte aligned
};

// Canonical 2:4 layout -> the GEMM's (a, e); 16-bit values of either dtype. Writes every element of a and e.
cudaError_t sparse24_sm80_pack(const Sparse24Sm80PackParams& p, cudaStream_t stream);

struct Sparse24Sm80GemmParams {
  const void* a;         // sparse24_sm80_pack's a and e for a weight [m, k]
  const uint16_t* e;
  const void* x;         // [round_up(n, 8), k_pad]: zero columns past k and zero rows past n (the GEMM runs on
                         // whole groups of 8 tokens), row stride x_ld (elements), 16-byte aligned
  int64_t x_ld;
  const void* bias;      // [m] or nullptr
  void* y;               // [n, m], row stride y_ld (elements)
  int64_t y_ld;
  int64_t m, n, k;       // k: the weight's K (x holds its padding)
  DType dtype;           // kFloat16 or kBFloat16
  void* workspace;       // sparse24_sm80_workspace_bytes(m, n), 16-byte aligned
};

// D = y^T in fp32: [m_pad, round_up(n, 8)].
size_t sparse24_sm80_workspace_bytes(int64_t m, int64_t n);

// Enqueues y = x W^T (+ bias). cudaErrorInvalidValue for arguments outside the limits above (nothing launched);
// cudaErrorNoKernelImageForDevice below compute capability 8.0 or where this build has no sm_80-compatible code;
// cudaErrorInvalidConfiguration if CUTLASS refuses or fails to launch (its adapter hides the CUDA error).
cudaError_t sparse24_sm80_gemm(const Sparse24Sm80GemmParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
