// The delta kernel of tiled_csl_delta.h. The index math (chunk columns, the jagged record walk, the clamps) is the
// __host__ __device__ code of tiled_csl_delta_layout.h, which the CPU op _tiled_csl_delta_mm runs lane by lane.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>

#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/tiled_csl/tiled_csl_delta.h"
#include "kernels/tiled_csl/tiled_csl_delta_layout.h"

namespace spmm::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerBlock = kWarps * delta::kGroupRows;
constexpr int kBatch = 4;  // chunks per lane per batch; two batches in flight (~2.5 KB per warp)

struct Chunk {
  uint4 values;  // 8 fp16/bf16 values
  uint32_t code;
};

// The two 16-bit values of a 32-bit word as fp32 (exact).
template <typename T>
__device__ __forceinline__ float low_value(uint32_t w);
template <typename T>
__device__ __forceinline__ float high_value(uint32_t w);
template <>
__device__ __forceinline__ float low_value<__half>(uint32_t w) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu)));
}
template <>
__device__ __forceinline__ float high_value<__half>(uint32_t w) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}
template <>
__device__ __forceinline__ float low_value<__nv_bfloat16>(uint32_t w) { return __uint_as_float(w << 16); }
template <>
__device__ __forceinline__ float high_value<__nv_bfloat16>(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// kTokens consecutive floats of the staged x (16-byte aligned for 4 and 8, 8 for 2).
template <int kTokens>
__device__ __forceinline__ void fma_tokens(float w, const float* xc, float (&acc)[kTokens]) {
  if constexpr (kTokens == 1) {
    acc[0] = fmaf(w, xc[0], acc[0]);
  } else if constexpr (kTokens == 2) {
    const float2 v = *reinterpret_cast<const float2*>(xc);
    acc[0] = fmaf(w, v.x, acc[0]);
    acc[1] = fmaf(w, v.y, acc[1]);
  } else {
#pragma unroll
    for (int q = 0; q < kTokens / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(xc)[q];
      acc[4 * q + 0] = fmaf(w, v.x, acc[4 * q + 0]);
      acc[4 * q + 1] = fmaf(w, v.y, acc[4 * q + 1]);
      acc[4 * q + 2] = fmaf(w, v.z, acc[4 * q + 2]);
      acc[4 * q + 3] = fmaf(w, v.w, acc[4 * q + 3]);
    }
  }
}

// acc += the chunk's 8 entries times x at their columns; base: the chunk's first column in the slice (kept <= the
// slice width, so every column read stays inside the staged x and its slack), moved on to the next chunk's.
template <typename T, int kTokens>
__device__ __forceinline__ void multiply_chunk(const Chunk& chunk, const float* xs, uint32_t slice_width,
                                               uint32_t& base, float (&acc)[kTokens]) {
  const delta::ChunkColumns cols = delta::chunk_columns(chunk.code);
  const uint32_t b = min(base, slice_width);
  const float* xb = xs + b * kTokens;
  const uint32_t w[4] = {chunk.values.x, chunk.values.y, chunk.values.z, chunk.values.w};
#pragma unroll
  for (int t = 0; t < delta::kChunk; ++t) {
    const float value = t % 2 ? high_value<T>(w[t / 2]) : low_value<T>(w[t / 2]);
    fma_tokens<kTokens>(value, xb + delta::entry_column(cols, t) * kTokens, acc);
  }
  base = b + delta::chunk_advance(cols);
}

// One warp's record: lane `lane` walks its segment of `len` chunks (iters = the longest in the warp) in jagged order.
template <typename T, int kTokens>
__device__ __forceinline__ void walk_record(const TiledCSLDeltaMMParams& p, const float* xs, int64_t record, int len,
                                            int iters, int lane, float (&acc)[kTokens]) {
  const uint4* values = static_cast<const uint4*>(p.values);
  const uint32_t slice_width = static_cast<uint32_t>(p.slice_width);
  int64_t located = 0;  // chunks of the iterations located so far
  uint32_t base = 0;
  // Locates and loads iterations j0 .. j0 + kBatch - 1 (every lane takes part in the ballots; past `iters` nobody
  // is active and nothing is loaded).
  auto load = [&](Chunk (&batch)[kBatch], int j0) {
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const bool mine = j0 + i < len;
      const uint32_t active = __ballot_sync(0xFFFFFFFFu, mine);
      if (mine) {
        const int64_t c = min(record + located + delta::active_lanes_below(active, lane), p.chunks - 1);
        batch[i].values = ptx::load_streaming(values + c);
        batch[i].code = ptx::load_streaming(p.codes + c);
      }
      located += __popc(active);
    }
  };
  auto multiply = [&](const Chunk (&batch)[kBatch], int j0) {
#pragma unroll
    for (int i = 0; i < kBatch; ++i)
      if (j0 + i < len) multiply_chunk<T, kTokens>(batch[i], xs, slice_width, base, acc);
  };
  Chunk a[kBatch], b[kBatch];
  load(a, 0);
  for (int j = 0; j < iters; j += 2 * kBatch) {  // iters is warp-uniform: the ballots stay converged
    load(b, j + kBatch);
    multiply(a, j);
    load(a, j + 2 * kBatch);
    multiply(b, j + kBatch);
  }
}

template <typename T, int kTokens>
__global__ void __launch_bounds__(kThreads) delta_mm_kernel(TiledCSLDeltaMMParams p, int slices) {
  extern __shared__ float4 smem[];
  float* xs = reinterpret_cast<float*>(smem);  // [slice_width + slack][kTokens]: x's slice as fp32, token-minor
  const int slice = blockIdx.x;
  const int64_t col0 = static_cast<int64_t>(slice) * p.slice_width;
  const int staged = static_cast<int>(p.slice_width) + delta::kColumnSlack;
  const int width = static_cast<int>(min(p.slice_width, p.k - col0));
  const T* x = static_cast<const T*>(p.x);
  for (int i = threadIdx.x; i < staged * kTokens; i += kThreads) {
    const int t = i / staged, c = i - t * staged;  // consecutive threads: consecutive columns of one token
    xs[c * kTokens + t] = t < p.n && c < width ? static_cast<float>(x[t * p.x_ld + col0 + c]) : 0.0f;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.y) * kWarps + warp) * delta::kGroupRows;
  const int64_t row = row0 + lane;
  float acc[kTokens] = {};
  if (row0 < p.m) {  // warp-uniform
    const int32_t* offsets = p.offsets + static_cast<int64_t>(slice) * p.m;
    const int len = row < p.m && p.chunks > 0
                        ? delta::segment_chunks(__ldg(offsets + row), __ldg(offsets + row + 1), p.slice_width)
                        : 0;
    const int iters = __reduce_max_sync(0xFFFFFFFFu, len);
    walk_record<T, kTokens>(p, xs, __ldg(offsets + row0), len, iters, lane, acc);
  }

  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int n = static_cast<int>(p.n < kTokens ? p.n : kTokens);
  if (slices == 1) {
    if (row < p.m)
#pragma unroll
      for (int t = 0; t < kTokens; ++t)
        if (t < n) y[t * p.y_ld + row] = from_float<T>(acc[t] + bias_at(bias, row));
    return;
  }
  // Split-K: partials [slices][n][m]; the last block of this row block to arrive sums them in slice order.
  float* partials = static_cast<float*>(p.workspace);
  int* counters = reinterpret_cast<int*>(partials + static_cast<int64_t>(slices) * p.tokens_per_pass * p.m);
  if (row < p.m)
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
      if (t < n) partials[(static_cast<int64_t>(slice) * n + t) * p.m + row] = acc[t];
  __shared__ int is_last_block;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&counters[blockIdx.y], 1) == slices - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  if (row < p.m)
    for (int t = 0; t < n; ++t) {
      float sum = 0.0f;
      for (int s = 0; s < slices; ++s) sum += __ldcg(partials + (static_cast<int64_t>(s) * n + t) * p.m + row);
      y[t * p.y_ld + row] = from_float<T>(sum + bias_at(bias, row));
    }
  if (threadIdx.x == 0) counters[blockIdx.y] = 0;  // zeroed again for the next pass and the next call
}

template <int kTokens>
size_t smem_bytes(int64_t slice_width) {
  return static_cast<size_t>(slice_width + delta::kColumnSlack) * kTokens * sizeof(float);
}

template <typename T, int kTokens>
cudaError_t launch_pass(const TiledCSLDeltaMMParams& p, int slices, int64_t row_blocks, cudaStream_t stream) {
  constexpr auto kernel = delta_mm_kernel<T, kTokens>;
  // The largest slice's staging, once per kernel and device (every launch then fits under it).
  const cudaError_t err = allow_dynamic_smem<kernel>(smem_bytes<kTokens>(kDeltaMaxSliceWidth));
  if (err != cudaSuccess) return err;
  kernel<<<dim3(slices, static_cast<unsigned>(row_blocks)), kThreads, smem_bytes<kTokens>(p.slice_width), stream>>>(
      p, slices);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tokens(const TiledCSLDeltaMMParams& p, int slices, int64_t row_blocks, cudaStream_t stream) {
  switch (p.tokens_per_pass) {
    case 1: return launch_pass<T, 1>(p, slices, row_blocks, stream);
    case 2: return launch_pass<T, 2>(p, slices, row_blocks, stream);
    case 4: return launch_pass<T, 4>(p, slices, row_blocks, stream);
    case 8: return launch_pass<T, 8>(p, slices, row_blocks, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

size_t tiled_csl_delta_workspace_bytes(int64_t m, int64_t k, int64_t tokens_per_pass) {
  const int64_t slices = tiled_csl_delta_slices(m, k);
  if (slices <= 1 || m <= 0) return 0;
  const int64_t row_blocks = ceil_div(m, kRowsPerBlock);
  return static_cast<size_t>(slices * tokens_per_pass * m) * sizeof(float) + row_blocks * sizeof(int);
}

cudaError_t tiled_csl_delta_mm(const TiledCSLDeltaMMParams& p, cudaStream_t stream) {
  const int64_t tpp = p.tokens_per_pass;
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || p.slice_width != tiled_csl_delta_slice_width(p.m, p.k) ||
      (tpp != 1 && tpp != 2 && tpp != 4 && tpp != 8) || p.chunks < 0 || p.chunks > INT32_MAX ||
      (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) || !aligned16(p.values) || p.offsets == nullptr ||
      (p.chunks > 0 && (p.values == nullptr || p.codes == nullptr)) || (p.n > 1 && p.x_ld < p.k))
    return cudaErrorInvalidValue;
  const int64_t slices = tiled_csl_delta_slices(p.m, p.k), row_blocks = ceil_div(p.m, kRowsPerBlock);
  if (row_blocks > 65535 || slices > INT32_MAX) return cudaErrorInvalidValue;
  if (slices > 1) {
    if (p.workspace == nullptr) return cudaErrorInvalidValue;
    // The counters sit after the partials; the last block of each row block leaves its counter zeroed again.
    const size_t bytes = tiled_csl_delta_workspace_bytes(p.m, p.k, tpp), counters = row_blocks * sizeof(int);
    const cudaError_t err =
        cudaMemsetAsync(static_cast<char*>(p.workspace) + bytes - counters, 0, counters, stream);
    if (err != cudaSuccess) return err;
  }
  const int s = static_cast<int>(slices);
  return for_each_token_slice(p, tpp, [&](const TiledCSLDeltaMMParams& pass) {
    return p.dtype == DType::kFloat16 ? launch_tokens<__half>(pass, s, row_blocks, stream)
                                      : launch_tokens<__nv_bfloat16>(pass, s, row_blocks, stream);
  });
}

}  // namespace spmm::kernels
