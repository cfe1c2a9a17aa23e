// 2:4 sparse GEMM for decode (few tokens): a weight-streaming kernel on mma.sp.sync.
//
// Maths: y[N, M] = x[N, K] @ W[M, K]^T (+ bias[M]), computed as y^T = W x^T so the weight rows fill the wide mma
// dimension (m16) and the few tokens the narrow one (n8). fp16 or bf16 in and out, fp32 accumulation.
//
// Decode layout (made once from the canonical layout by sparse24_decode_pack): W is cut into row tiles of 16 rows,
// 8 consecutive tiles form a row group (128 rows, one block's rows), and K into chunks of 128 columns (4 mma
// k-steps of 32). For each (row group, chunk), one contiguous block of 18 KB that the kernel copies in one go:
//   values: [tile 8][k-step 4][lane 32][8 x 16-bit] -- lane l's A fragment of mma.m16n8k32 (16 KB);
//   meta:   [tile 8][active lane 16][k-step 4] uint32 -- the metadata registers of lanes 4g and 4g+1 (selector 0)
//           (2 KB, in the separate `dmeta` buffer at the same (group, chunk) position).
// Chunks of a group follow each other, groups follow each other. Rows past M (up to a multiple of 128) and
// columns past K are padded with zeros and a valid metadata code, so the kernel has no tails.
// Bytes read per dense element: 1.125 (fp16), like the canonical layout.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/dtype.h"
#include "kernels/sparse24/sparse24_kernel_layouts.h"  // the layout's sizes: Sparse24DecodeShape

namespace spmm::kernels {

constexpr int64_t kDecodeMaxTokens = 64;   // tokens per launch; the launcher slices larger N

// How the kernel brings each (group, chunk) into shared memory: the copy engine (sm_90 bulk copies, a few
// instructions per 18 KB) or cp.async by one warp. kAuto: bulk copies on sm_90 up to 32 tokens, cp.async otherwise.
// On sm_90 split-K partials are summed in a thread block cluster, except with kCpAsync, which runs the sm_80 path
// as a whole (global workspace) so that an sm_90 GPU tests it too.
enum class DecodeLoader { kAuto = 0, kBulk = 1, kCpAsync = 2 };

struct Sparse24DecodePackParams {
  const uint16_t* values;  // canonical [M, K/2], fp16 or bf16 bits (the pack only moves them)
  const uint8_t* meta;     // canonical [M, ceil(K/8)]
  void* dvalues;           // decode layout, values_bytes()
  void* dmeta;             // decode layout, meta_bytes()
  int64_t m, k;            // k % 4 == 0
  int meta_layout;         // which lane/bit order the metadata registers use (see the kernel); 0 is the default
};

cudaError_t sparse24_decode_pack(const Sparse24DecodePackParams& p, cudaStream_t stream);

struct Sparse24DecodeParams {
  const void* x;        // [N, K] rows of x_ld elements; x_ld % 8 == 0, 16-byte aligned, k % 8 == 0
  int64_t x_ld;
  const void* dvalues;  // decode layout of W (16-byte aligned)
  const void* dmeta;    // decode layout's metadata (16-byte aligned)
  const void* bias;     // [M] or nullptr
  void* y;              // [N, M] rows of y_ld elements
  int64_t y_ld;
  void* workspace;      // sparse24_decode_workspace_bytes(...) bytes (split-K partials + counters), or nullptr if 0
  int64_t m, n, k;
  int splits;           // from sparse24_decode_splits()
  DType dtype;          // kFloat16 or kBFloat16
  DecodeLoader loader;  // see DecodeLoader
  int* counters;        // set by the launcher (inside the workspace); callers leave it null
  bool cluster_reduce;  // set by the launcher: split-K partials summed across a cluster (sm_90, splits <= 8)
  // Off by default, not measured end to end (sm_90; ignored before): launch with programmatic stream serialization,
  // so the kernel may start while the previous kernel on the stream finishes; it streams its first weight stages at
  // once and waits for the previous kernel (griddepcontrol.wait) before it reads x or writes anything.
  bool early_launch;
};

// Split-K factor for (m, n, k) on a device with num_sms multiprocessors: enough blocks for every SM to stream.
int sparse24_decode_splits(int64_t m, int64_t n, int64_t k, int num_sms);

// Global workspace the launch needs (0 when it needs none: one split, or partials summed in a cluster on sm_90).
size_t sparse24_decode_workspace_bytes(int64_t m, int64_t n, int64_t k, int splits,
                                       DecodeLoader loader = DecodeLoader::kAuto);

// Enqueues y = x W^T (+ bias) on `stream`. cudaErrorInvalidValue for arguments it cannot take.
cudaError_t sparse24_decode_mm(const Sparse24DecodeParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
