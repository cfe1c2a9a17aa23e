// The dense half of "load as sparse, compute as dense" in the Tiled-CSL kernels that decode into a shared tile (the
// stream / word kernel of tiled_csl_spmm_kernel.cu, the delta tile kernel of tiled_csl_delta_kernel.cu): the swizzled
// shared layout of W's dense tile and of x's 64-column chunk, one warp's mma.sync over its rows of the tile, and the
// split-K epilogue. Apart from the kernels' pipelines, so each pipeline reuses them.
#pragma once

#include <cstdint>

#include "kernels/common/epilogue.cuh"
#include "kernels/common/ptx.cuh"

namespace spmm::kernels::tiled_csl {

constexpr int kTileK = 64;  // columns per tile and per x chunk

// Shared tiles (W's dense tile, x's chunk) are rows of 64 16-bit elements = 8 chunks of 16 bytes; chunk c of row r
// sits at c ^ (r % 8), so the 8 rows one ldmatrix matrix reads at the same chunk hit 8 different bank groups. (The
// word layout stores each element's offset in this layout, see tiled_csl_pack_kernel.cu.)
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * kTileK + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}

// A operand: lane l's ldmatrix_x4 address for the 16 x 16 block of rows warp_row + 16 mt .. at column col: row l % 8
// of matrix l / 8, the matrices being rows 0-7 | 8-15 (lane bit 3) x columns 0-7 | 8-15 (lane bit 4) -- registers
// a0..a3 of mma.
__device__ __forceinline__ int a_offset(int warp_row, int mt, int col, int lane) {
  return swizzle(warp_row + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col + (lane >> 4) * 8);
}

// acc[mt][nt] += rows warp_row + 16 mt .. + 15 of the dense tile (A, through ldmatrix) x tokens 8 nt .. + 7 of x's
// chunk (B, rows of 64 columns), on mma.m16n8k16 with fp32 accumulation. kMTiles m16 tiles per warp, kNTiles
// 8-token tiles (kNTiles 1 or even). Reads only the warp's own rows of `tile`.
template <typename T, int kMTiles, int kNTiles>
__device__ __forceinline__ void multiply_tile(float (&acc)[kMTiles][kNTiles][4], const uint16_t* tile, const T* xb,
                                              int warp_row, int lane) {
  if constexpr (kNTiles == 1) {
    // One token tile: a B ldmatrix_x4 covers 32 columns (two k16 steps); A is loaded 32 columns at a time.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t a[kMTiles][2][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) ptx::ldmatrix_x4(a[mt][kk], tile + a_offset(warp_row, mt, half * 32 + kk * 16, lane));
      uint32_t b[4];  // matrix j: tokens 0-7, columns 32 * half + 8j .. + 7
      ptx::ldmatrix_x4(b, xb + swizzle(lane & 7, half * 32 + (lane >> 3) * 8));
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        ptx::mma_16816<T>(acc[mt][0], a[mt][0], b[0], b[1]);
        ptx::mma_16816<T>(acc[mt][0], a[mt][1], b[2], b[3]);
      }
    }
  } else {
    // Several token tiles: one k16 step at a time (fewer live A registers), a B ldmatrix_x4 per pair of tiles.
#pragma unroll
    for (int step = 0; step < kTileK / 16; ++step) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) ptx::ldmatrix_x4(a[mt], tile + a_offset(warp_row, mt, step * 16, lane));
#pragma unroll
      for (int nt = 0; nt < kNTiles; nt += 2) {
        uint32_t b[4];  // matrix j: tokens (nt + j / 2) * 8 .. + 7, columns step * 16 + 8 (j % 2) .. + 7
        ptx::ldmatrix_x4(b, xb + swizzle((nt + (lane >> 4)) * 8 + (lane & 7), step * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          ptx::mma_16816<T>(acc[mt][nt], a[mt], b[0], b[1]);
          ptx::mma_16816<T>(acc[mt][nt + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
}

// Stages x's 64-column chunk c (rows 0 .. kXRows-1 = tokens; zeros past n and k) at `dst` by cp.async, thread
// `first` of every `stride` threads taking one 16-byte vector each. k % 8 == 0, so a vector is wholly inside or out.
template <typename T, int kXRows>
__device__ __forceinline__ void stage_x_chunk(T* dst, const T* x, int64_t x_ld, int64_t n, int64_t k, int c,
                                              int first, int stride) {
  for (int v = first; v < kXRows * (kTileK / 8); v += stride) {
    const int row = v / (kTileK / 8), col = (v % (kTileK / 8)) * 8;
    const int64_t kc = int64_t{c} * kTileK + col;
    const bool inside = row < n && kc < k;
    ptx::cp_async_16(dst + swizzle(row, col), inside ? x + row * x_ld + kc : x, inside ? 16 : 0);
  }
}

// y (+ bias) from each warp's accumulators, or with split-K its fp32 partials [split][N][M_padded] in the workspace,
// summed by the last block of the row tile to arrive (a counter per row tile), in split order: one launch,
// deterministic. Called by every thread of the block; grid (splits, row tiles). Params: any kernel's params struct
// with bias, y, y_ld, m, n, splits, workspace and counters (zero on entry; left zeroed).
template <typename T, int kTileM, int kMTiles, int kNTiles, typename Params>
__device__ __forceinline__ void finish_tile_rows(const Params& p, const float (&acc)[kMTiles][kNTiles][4],
                                                 int64_t row_tile, int64_t split, int warp_row, int lane) {
  __shared__ int is_last_block;
  // Accumulator fragment: acc[mt][nt][i] is W row g (+8 for i >= 2) of m-tile mt times token nt*8 + 2q (+1 for odd i).
  const int g = lane / 4, q = lane % 4;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t mp = static_cast<int64_t>(gridDim.y) * kTileM;
  float* partials = static_cast<float*>(p.workspace);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = row_tile * kTileM + warp_row + mt * 16 + g + (i >= 2 ? 8 : 0), n = nt * 8 + 2 * q + (i & 1);
        if (n >= p.n) continue;
        if (p.splits == 1) {
          if (m < p.m) y[n * p.y_ld + m] = from_float<T>(acc[mt][nt][i] + bias_at(bias, m));
        } else {
          partials[(split * p.n + n) * mp + m] = acc[mt][nt][i];
        }
      }
  if (p.splits == 1) return;

  // Split-K: the last block of this row tile to arrive sums every split's partials, in split order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&p.counters[row_tile], 1) == p.splits - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  const int64_t row0 = row_tile * kTileM;
  for (int64_t idx = threadIdx.x; idx < p.n * (kTileM / 4); idx += blockDim.x) {
    const int64_t n = idx / (kTileM / 4), m = row0 + (idx % (kTileM / 4)) * 4;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int sp = 0; sp < p.splits; ++sp) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(partials + (sp * p.n + n) * mp + m));
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    const float s[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (m + j < p.m) y[n * p.y_ld + m + j] = from_float<T>(s[j] + bias_at(bias, m + j));
  }
  if (threadIdx.x == 0) p.counters[row_tile] = 0;  // leaves the counters zeroed for the next launch
}

}  // namespace spmm::kernels::tiled_csl
