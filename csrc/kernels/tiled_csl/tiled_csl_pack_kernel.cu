// The Tiled-CSL packer of tiled_csl_spmm.h, one block per tile, in the CPU packer's element order:
//   count: each block counts its tile's kept elements (and lowers first_bad to any non-finite one); one block then
//          scans the counts into offsets (int64: a total past int32 is seen, not wrapped);
//   fill:  each block walks its tile in row-major order, 256 elements per step, and writes the kept ones at
//          offsets[tile] + (kept before them): a block-wide count per step keeps the order of the CPU packer.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

#include "kernels/tiled_csl/tiled_csl_spmm.h"

namespace spmm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kScanThreads = 1024;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Tile t of the grid: its first row and column, and its (possibly partial) extent.
struct TileView {
  int64_t row0, col0;
  int rows, cols;
  __device__ TileView(const TiledCSLPackParams& p, int64_t t) {
    const int64_t col_tiles = (p.k + p.tile_k - 1) / p.tile_k;
    row0 = t / col_tiles * p.tile_m;
    col0 = t % col_tiles * p.tile_k;
    rows = static_cast<int>(min(p.tile_m, p.m - row0));
    cols = static_cast<int>(min(p.tile_k, p.k - col0));
  }
};

template <typename T>
__device__ __forceinline__ T element(const TiledCSLPackParams& p, int64_t row, int64_t col) {
  return static_cast<const T*>(p.dense)[row * p.dense_ld + col];
}

// Kept: the mask allows it (or there is no mask) and it is not zero (-0.0 counts as zero).
template <typename T>
__device__ __forceinline__ bool kept(const TiledCSLPackParams& p, T v, int64_t row, int64_t col) {
  return to_float(v) != 0.0f && (p.mask == nullptr || p.mask[row * p.mask_ld + col] != 0);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) count_kernel(TiledCSLPackParams p) {
  const TileView tile(p, blockIdx.x);
  int count = 0;
  for (int e = threadIdx.x; e < tile.rows * tile.cols; e += kThreads) {
    const int64_t row = tile.row0 + e / tile.cols, col = tile.col0 + e % tile.cols;
    const T v = element<T>(p, row, col);
    if (!isfinite(to_float(v))) atomicMin(p.first_bad, static_cast<unsigned long long>(row * p.k + col));
    count += kept(p, v, row, col);
  }
  __shared__ int warp_counts[kWarps];
  for (int d = 16; d > 0; d /= 2) count += __shfl_down_sync(0xFFFFFFFFu, count, d);
  if (threadIdx.x % 32 == 0) warp_counts[threadIdx.x / 32] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_counts[w];
    p.offsets[blockIdx.x + 1] = total;
  }
}

// offsets[1..tiles] hold counts -> running sums; offsets[0] = 0. One block, 1024 counts per step.
__global__ void __launch_bounds__(kScanThreads) scan_kernel(int64_t* offsets, int64_t tiles) {
  constexpr int kScanWarps = kScanThreads / 32;
  __shared__ int64_t warp_sums[kScanWarps];
  __shared__ int64_t carry;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    carry = 0;
  }
  __syncthreads();
  for (int64_t base = 1; base <= tiles; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    int64_t v = i <= tiles ? offsets[i] : 0;
    for (int d = 1; d < 32; d *= 2) {
      const int64_t up = __shfl_up_sync(0xFFFFFFFFu, v, d);
      if (lane >= d) v += up;
    }
    if (lane == 31) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int64_t w = warp_sums[lane];
      for (int d = 1; d < 32; d *= 2) {
        const int64_t up = __shfl_up_sync(0xFFFFFFFFu, w, d);
        if (lane >= d) w += up;
      }
      warp_sums[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    if (i <= tiles) offsets[i] = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + v;
    __syncthreads();  // every thread has read `carry`
    if (threadIdx.x == 0) carry += warp_sums[kScanWarps - 1];
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fill_kernel(TiledCSLPackParams p) {
  const TileView tile(p, blockIdx.x);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __shared__ int warp_counts[kWarps];
  T* values = static_cast<T*>(p.values);
  int64_t out = p.offsets[blockIdx.x];
  for (int base = 0; base < tile.rows * tile.cols; base += kThreads) {
    const int e = base + threadIdx.x;
    const int r = e / tile.cols, c = e % tile.cols;
    bool keep = false;
    T v{};
    if (e < tile.rows * tile.cols) {
      v = element<T>(p, tile.row0 + r, tile.col0 + c);
      keep = kept(p, v, tile.row0 + r, tile.col0 + c);
    }
    const unsigned ballot = __ballot_sync(0xFFFFFFFFu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    if (keep) {
      const int64_t at = out + before + __popc(ballot & ((1u << lane) - 1));
      values[at] = v;
      p.locations[at] = static_cast<int16_t>(static_cast<uint16_t>(r * p.tile_k + c));  // unsigned 16-bit in int16
    }
    out += total;
    __syncthreads();  // warp_counts is rewritten by the next step
  }
}

int64_t tile_count(const TiledCSLPackParams& p) {
  return ((p.m + p.tile_m - 1) / p.tile_m) * ((p.k + p.tile_k - 1) / p.tile_k);
}

bool valid(const TiledCSLPackParams& p) {
  return p.m >= 0 && p.k >= 0 && p.tile_m > 0 && p.tile_k > 0 && p.tile_m * p.tile_k <= 65536 &&
         p.offsets != nullptr && p.first_bad != nullptr && tile_count(p) <= INT_MAX &&
         (p.dtype == DType::kFloat32 || p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16);
}

template <template <typename> class Launch>
cudaError_t by_dtype(const TiledCSLPackParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return Launch<float>::run(p, stream);
    case DType::kFloat16: return Launch<__half>::run(p, stream);
    case DType::kBFloat16: return Launch<__nv_bfloat16>::run(p, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
struct CountLaunch {
  static cudaError_t run(const TiledCSLPackParams& p, cudaStream_t stream) {
    count_kernel<T><<<static_cast<unsigned>(tile_count(p)), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
};

template <typename T>
struct FillLaunch {
  static cudaError_t run(const TiledCSLPackParams& p, cudaStream_t stream) {
    fill_kernel<T><<<static_cast<unsigned>(tile_count(p)), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
};

// ------------------------------------------------------------------------------------------ word layout --------
// The kernel's shared tile keeps rows of 64 elements with 16-byte chunk c of row r at c ^ (r % 8): for an in-tile
// location r * 64 + c8 * 8 + j that is the location with bits 3-5 XOR-ed by bits 6-8.
__device__ __forceinline__ uint32_t swizzled(uint32_t location) { return location ^ ((location >> 3) & 0x38u); }

__global__ void padded_counts_kernel(TiledCSLWordsParams p) {  // scratch[t + 1] = tile t's run rounded up to 4
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < p.tiles; t += int64_t{gridDim.x} * blockDim.x)
    p.scratch[t + 1] = (static_cast<int64_t>(p.tile_offsets[t + 1]) - p.tile_offsets[t] + 3) / 4 * 4;
}

__global__ void __launch_bounds__(kThreads) words_fill_kernel(TiledCSLWordsParams p) {  // one block per tile
  const int64_t t = blockIdx.x, begin = p.tile_offsets[t], count = p.tile_offsets[t + 1] - begin;
  const int64_t out = p.scratch[t], padded = p.scratch[t + 1] - out;
  const uint32_t scratch_slot = static_cast<uint32_t>(p.tile_m * 64);  // one past the tile
  for (int64_t e = threadIdx.x; e < padded; e += kThreads)
    p.words[out + e] = e < count ? swizzled(static_cast<uint16_t>(p.locations[begin + e])) << 16 | p.values[begin + e]
                                 : scratch_slot << 16;
  if (threadIdx.x == 0) p.word_offsets[t] = static_cast<int32_t>(out);
  if (threadIdx.x == 0 && t == p.tiles - 1) p.word_offsets[p.tiles] = static_cast<int32_t>(p.scratch[p.tiles]);
}

}  // namespace

cudaError_t tiled_csl_to_words(const TiledCSLWordsParams& p, cudaStream_t stream) {
  if (p.tiles < 0 || p.tiles > INT_MAX || (p.tile_m != 256 && p.tile_m != 128) || p.scratch == nullptr ||
      p.word_offsets == nullptr || (p.tiles > 0 && (p.tile_offsets == nullptr || p.words == nullptr)))
    return cudaErrorInvalidValue;
  if (p.tiles == 0) return cudaMemsetAsync(p.word_offsets, 0, sizeof(int32_t), stream);
  padded_counts_kernel<<<static_cast<unsigned>(std::min<int64_t>((p.tiles + 255) / 256, 1024)), 256, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  scan_kernel<<<1, kScanThreads, 0, stream>>>(p.scratch, p.tiles);  // scratch[0] = 0, running sums
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  words_fill_kernel<<<static_cast<unsigned>(p.tiles), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t tiled_csl_pack_count(const TiledCSLPackParams& p, cudaStream_t stream) {
  if (!valid(p) || (tile_count(p) > 0 && p.dense == nullptr)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(p.first_bad, 0xFF, sizeof(unsigned long long), stream);
  if (err == cudaSuccess && tile_count(p) > 0) err = by_dtype<CountLaunch>(p, stream);
  if (err != cudaSuccess) return err;
  scan_kernel<<<1, kScanThreads, 0, stream>>>(p.offsets, tile_count(p));
  return cudaGetLastError();
}

cudaError_t tiled_csl_pack_fill(const TiledCSLPackParams& p, cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (tile_count(p) == 0) return cudaSuccess;
  return by_dtype<FillLaunch>(p, stream);
}

}  // namespace spmm::kernels
