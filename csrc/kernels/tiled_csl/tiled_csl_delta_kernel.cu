// The delta kernels of tiled_csl_delta.h. Their index math (chunk columns, the jagged record walk, the windows, the
// clamps) is the __host__ __device__ code of tiled_csl_delta_layout.h, which the CPU op _tiled_csl_delta_mm runs
// lane by lane.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>

#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/tiled_csl/tiled_csl_delta.h"
#include "kernels/tiled_csl/tiled_csl_delta_layout.h"
#include "kernels/tiled_csl/tiled_csl_tile_mma.cuh"

namespace spmm::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerBlock = kWarps * delta::kGroupRows;
constexpr int kBatch = 4;  // chunks per lane per batch; two batches in flight (~2.5 KB per warp)
constexpr int64_t kTileMaxTokens = 64;  // tokens per launch of the tensor-core kernel (more: several launches)

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
__global__ void __launch_bounds__(kThreads) delta_mm_kernel(TiledCSLDeltaMMParams p) {
  extern __shared__ uint4 smem[];
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
                        ? delta::segment_chunks(__ldg(offsets + row), __ldg(offsets + row + 1),
                                                 delta::max_segment_chunks(p.slice_width))
                        : 0;
    const int iters = __reduce_max_sync(0xFFFFFFFFu, len);
    walk_record<T, kTokens>(p, xs, __ldg(offsets + row0), len, iters, lane, acc);
  }

  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int n = static_cast<int>(p.n < kTokens ? p.n : kTokens), slices = p.splits;
  if (slices == 1) {
    if (row < p.m)
#pragma unroll
      for (int t = 0; t < kTokens; ++t)
        if (t < n) y[t * p.y_ld + row] = from_float<T>(acc[t] + bias_at(bias, row));
    return;
  }
  // Split-K: partials [slices][n][m]; the last block of this row block to arrive sums them in slice order.
  float* partials = static_cast<float*>(p.workspace);
  if (row < p.m)
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
      if (t < n) partials[(static_cast<int64_t>(slice) * n + t) * p.m + row] = acc[t];
  __shared__ int is_last_block;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&p.counters[blockIdx.y], 1) == slices - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  if (row < p.m)
    for (int t = 0; t < n; ++t) {
      float sum = 0.0f;
      for (int s = 0; s < slices; ++s) sum += __ldcg(partials + (static_cast<int64_t>(s) * n + t) * p.m + row);
      y[t * p.y_ld + row] = from_float<T>(sum + bias_at(bias, row));
    }
  if (threadIdx.x == 0) p.counters[blockIdx.y] = 0;  // zeroed again for the next pass and the next call
}

// ------------------------------------------------------------------------------------- tensor cores ------
constexpr int kTileM = kRowsPerBlock;  // 256 rows: warp w's record is rows 32w .. 32w + 31 of the tile
constexpr int kMTiles = delta::kGroupRows / 16;
constexpr int kTileElems = kTileM * delta::kWindow;
constexpr int kMaxIters = (kDeltaMaxSliceWidth / 8 + kDeltaMaxSliceWidth / 128 + 1 + 3) / 4 * 4;
static_assert(delta::kWindow == tiled_csl::kTileK);

template <int kNTiles>
constexpr size_t tile_smem_bytes() {
  return 2 * kTileElems * sizeof(uint16_t) + 2 * kNTiles * 8 * tiled_csl::kTileK * sizeof(uint16_t) +
         kWarps * kMaxIters * (sizeof(uint32_t) + sizeof(uint16_t));
}

// One block: rows [256 r, 256 r + 256) x slice s. Per 64-column window of the slice (the word kernel's pipeline):
// every lane hands its entries in the window to the zeroed dense tile (a chunk that reaches past it stays for the
// next window), x's chunk for the next window is in flight (cp.async), the warps multiply the tile, the other buffer
// is zeroed. The jagged walk's table (per iteration: the active lanes, the chunks before) is built once per record.
template <typename T, int kNTiles>
__global__ void __launch_bounds__(kThreads, 2) delta_tile_kernel(TiledCSLDeltaMMParams p) {
  constexpr int kXRows = kNTiles * 8;
  extern __shared__ uint4 smem[];
  uint16_t* wtiles = reinterpret_cast<uint16_t*>(smem);                      // [2][256][64], swizzled
  T* xs = reinterpret_cast<T*>(wtiles + 2 * kTileElems);                      // [2][kXRows][64], swizzled
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t* masks = reinterpret_cast<uint32_t*>(xs + 2 * kXRows * tiled_csl::kTileK) + warp * kMaxIters;
  uint16_t* starts = reinterpret_cast<uint16_t*>(reinterpret_cast<uint32_t*>(xs + 2 * kXRows * tiled_csl::kTileK) +
                                                 kWarps * kMaxIters) + warp * kMaxIters;
  const int slice = blockIdx.x;
  const int64_t row_tile = blockIdx.y, col0 = static_cast<int64_t>(slice) * p.slice_width;
  const int windows = static_cast<int>((min(p.slice_width, p.k - col0) + delta::kWindow - 1) / delta::kWindow);
  const int64_t chunk0 = col0 / tiled_csl::kTileK;  // x's 64-column chunk of window 0
  const int warp_row = warp * delta::kGroupRows, row_in_tile = warp_row + lane;
  const int64_t row0 = row_tile * kTileM + warp_row, row = row0 + lane;
  const uint32_t slice_width = static_cast<uint32_t>(p.slice_width);

  // This lane's segment and its warp's jagged table.
  const int32_t* offsets = p.offsets + static_cast<int64_t>(slice) * p.m;
  const int max_chunks = min(delta::max_segment_chunks(p.slice_width), kMaxIters);
  const int len = row0 < p.m && row < p.m && p.chunks > 0
                      ? delta::segment_chunks(__ldg(offsets + row), __ldg(offsets + row + 1), max_chunks)
                      : 0;
  const int64_t record = row0 < p.m ? __ldg(offsets + row0) : 0;
  const int iters = __reduce_max_sync(0xFFFFFFFFu, len);
  uint32_t located = 0;
  for (int j = 0; j < iters; ++j) {
    const uint32_t active = __ballot_sync(0xFFFFFFFFu, j < len);
    if (lane == 0) masks[j] = active, starts[j] = static_cast<uint16_t>(located);
    located += __popc(active);
  }
  __syncwarp();
  const uint4* values = static_cast<const uint4*>(p.values);
  auto load = [&](int j, Chunk& chunk) {
    if (j >= len) return;
    const int64_t c = min(record + starts[j] + delta::active_lanes_below(masks[j], lane), p.chunks - 1);
    chunk.values = ptx::load_streaming(values + c);
    chunk.code = ptx::load_streaming(p.codes + c);
  };
  Chunk cur, next1, next2;  // this lane's chunk j and the two after it, in flight
  int j = 0;
  uint32_t base = 0;
  load(0, cur);
  load(1, next1);
  load(2, next2);

  const T* x = static_cast<const T*>(p.x);
  auto stage_x = [&](int c, int buf) {
    tiled_csl::stage_x_chunk<T, kXRows>(xs + buf * kXRows * tiled_csl::kTileK, x, p.x_ld, p.n, p.k,
                                        static_cast<int>(chunk0 + c), threadIdx.x, kThreads);
    ptx::cp_async_commit();
  };
  auto zero_tile = [&](uint16_t* tile) {
    uint4* t = reinterpret_cast<uint4*>(tile);
    for (int i = threadIdx.x; i < kTileElems / 8; i += kThreads) t[i] = make_uint4(0, 0, 0, 0);
  };
  float acc[kMTiles][kNTiles][4] = {};
  zero_tile(wtiles);
  if (windows > 0) stage_x(0, 0);
  for (int c = 0; c < windows; ++c) {
    const int buf = c & 1;
    const bool more = c + 1 < windows;
    uint16_t* tile = wtiles + buf * kTileElems;
    __syncthreads();  // `tile` is zeroed; every warp is done with window c-1 (x buffer buf ^ 1 is free)
    const uint32_t w0 = static_cast<uint32_t>(c * delta::kWindow);
    uint16_t* tile_row = tile + row_in_tile * tiled_csl::kTileK;
    const uint32_t swizzle_bits = static_cast<uint32_t>(row_in_tile & 7) << 3;  // tiled_csl::swizzle, within a row
    while (j < len) {
      const delta::ChunkColumns cols = delta::chunk_columns(cur.code);
      const uint32_t b = min(base, slice_width);
      const uint32_t w[4] = {cur.values.x, cur.values.y, cur.values.z, cur.values.w};
#pragma unroll
      for (int t = 0; t < delta::kChunk; ++t) {
        const uint32_t local = delta::window_column(cols, b, w0, t);
        if (local < delta::kWindow) tile_row[local ^ swizzle_bits] = static_cast<uint16_t>(t % 2 ? w[t / 2] >> 16 : w[t / 2]);
      }
      if (!delta::chunk_ends_in_window(cols, b, w0)) {
        base = b;
        break;
      }
      base = b + delta::chunk_advance(cols);
      ++j;
      cur = next1;
      next1 = next2;
      load(j + 2, next2);
    }
    if (more) {
      stage_x(c + 1, buf ^ 1);
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    __syncthreads();  // the tile holds the window's entries and x's chunk c has landed
    tiled_csl::multiply_tile<T, kMTiles, kNTiles>(acc, tile, xs + buf * kXRows * tiled_csl::kTileK, warp_row, lane);
    // The other buffer was last read by window c-1's multiply, which every warp finished before the first barrier.
    if (more) zero_tile(wtiles + (buf ^ 1) * kTileElems);
  }
  tiled_csl::finish_tile_rows<T, kTileM>(p, acc, row_tile, slice, warp_row, lane);
}

template <int kTokens>
size_t smem_bytes(int64_t slice_width) {
  return static_cast<size_t>(slice_width + delta::kColumnSlack) * kTokens * sizeof(float);
}

template <typename T, int kTokens>
cudaError_t launch_cores(const TiledCSLDeltaMMParams& p, int64_t row_blocks, cudaStream_t stream) {
  constexpr auto kernel = delta_mm_kernel<T, kTokens>;
  // The largest slice's staging, once per kernel and device (every launch then fits under it).
  const cudaError_t err = allow_dynamic_smem<kernel>(smem_bytes<kTokens>(kDeltaMaxSliceWidth));
  if (err != cudaSuccess) return err;
  kernel<<<dim3(p.splits, static_cast<unsigned>(row_blocks)), kThreads, smem_bytes<kTokens>(p.slice_width), stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int kNTiles>
cudaError_t launch_tiles(const TiledCSLDeltaMMParams& p, int64_t row_blocks, cudaStream_t stream) {
  constexpr auto kernel = delta_tile_kernel<T, kNTiles>;
  const cudaError_t err = allow_dynamic_smem<kernel>(tile_smem_bytes<kNTiles>());
  if (err != cudaSuccess) return err;
  kernel<<<dim3(p.splits, static_cast<unsigned>(row_blocks)), kThreads, tile_smem_bytes<kNTiles>(), stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(const TiledCSLDeltaMMParams& p, int64_t row_blocks, cudaStream_t stream) {
  if (p.tensor_cores) {
    if (p.n <= 8) return launch_tiles<T, 1>(p, row_blocks, stream);
    if (p.n <= 16) return launch_tiles<T, 2>(p, row_blocks, stream);
    if (p.n <= 32) return launch_tiles<T, 4>(p, row_blocks, stream);
    return launch_tiles<T, 8>(p, row_blocks, stream);
  }
  switch (p.tokens_per_pass) {
    case 1: return launch_cores<T, 1>(p, row_blocks, stream);
    case 2: return launch_cores<T, 2>(p, row_blocks, stream);
    case 4: return launch_cores<T, 4>(p, row_blocks, stream);
    case 8: return launch_cores<T, 8>(p, row_blocks, stream);
  }
  return cudaErrorInvalidValue;
}

// Tokens one launch (pass) takes.
int64_t pass_tokens(bool tensor_cores, int64_t tokens_per_pass) {
  return tensor_cores ? kTileMaxTokens : tokens_per_pass;
}

}  // namespace

size_t tiled_csl_delta_workspace_bytes(int64_t m, int64_t n, int64_t k, bool tensor_cores, int64_t tokens_per_pass) {
  const int64_t slices = tiled_csl_delta_slices(m, k);
  if (slices <= 1 || m <= 0) return 0;
  const int64_t row_blocks = ceil_div(m, kRowsPerBlock);
  const int64_t tokens = std::min(std::max<int64_t>(n, 1), pass_tokens(tensor_cores, tokens_per_pass));
  // CUDA cores: partials [slices][tokens][m]; tensor cores: [slices][tokens][row blocks * 256] (finish_tile_rows).
  const int64_t rows = tensor_cores ? row_blocks * kRowsPerBlock : m;
  return static_cast<size_t>(slices * tokens * rows) * sizeof(float) + row_blocks * sizeof(int);
}

cudaError_t tiled_csl_delta_mm(const TiledCSLDeltaMMParams& p, cudaStream_t stream) {
  const int64_t tpp = p.tokens_per_pass;
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || p.slice_width != tiled_csl_delta_slice_width(p.m, p.k) ||
      (!p.tensor_cores && tpp != 1 && tpp != 2 && tpp != 4 && tpp != 8) || p.chunks < 0 || p.chunks > INT32_MAX ||
      (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) || !aligned16(p.values) || p.offsets == nullptr ||
      (p.chunks > 0 && (p.values == nullptr || p.codes == nullptr)) || (p.n > 1 && p.x_ld < p.k) ||
      (p.tensor_cores && (p.x_ld % 8 != 0 || !aligned16(p.x))))
    return cudaErrorInvalidValue;
  const int64_t slices = tiled_csl_delta_slices(p.m, p.k), row_blocks = ceil_div(p.m, kRowsPerBlock);
  if (row_blocks > 65535 || slices > INT32_MAX) return cudaErrorInvalidValue;
  TiledCSLDeltaMMParams q = p;
  q.splits = static_cast<int>(slices);
  q.counters = nullptr;
  if (slices > 1) {
    if (p.workspace == nullptr) return cudaErrorInvalidValue;
    // The counters sit after the partials; the last block of each row block leaves its counter zeroed again.
    const size_t bytes = tiled_csl_delta_workspace_bytes(p.m, p.n, p.k, p.tensor_cores, tpp);
    const size_t counters = row_blocks * sizeof(int);
    q.counters = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + bytes - counters);
    const cudaError_t err = cudaMemsetAsync(q.counters, 0, counters, stream);
    if (err != cudaSuccess) return err;
  }
  return for_each_token_slice(q, pass_tokens(p.tensor_cores, tpp), [&](const TiledCSLDeltaMMParams& pass) {
    return p.dtype == DType::kFloat16 ? launch<__half>(pass, row_blocks, stream)
                                      : launch<__nv_bfloat16>(pass, row_blocks, stream);
  });
}

}  // namespace spmm::kernels
