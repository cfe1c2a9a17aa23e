// The dense half of "load as sparse, compute as dense" in the Tiled-CSL kernel that decodes into a shared tile
// (tiled_csl_spmm_kernel.cu): the swizzled shared layout of W's dense tile and of x's 64-column chunk, and one warp's
// mma.sync over its rows of the tile. Apart from the kernel's pipeline, so another pipeline can reuse it.
#pragma once

#include <cstdint>

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

}  // namespace spmm::kernels::tiled_csl
