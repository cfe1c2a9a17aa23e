// The decode kernel of sparse24_decode.h and its layout packer.
//
// Block: 8 warps; warp w owns 1 or 2 consecutive row tiles of 16 rows (tiles_per_warp) over the block's slice of K
// (split blockIdx.x of `splits`). Per chunk of 128 columns, every lane streams its A fragments and metadata
// straight from global memory into registers (one chunk ahead), while the block stages x's chunk in shared
// memory with cp.async (double-buffered, zero-filled past N and K) and feeds it to mma.sp through ldmatrix.
// With splits > 1, each block leaves fp32 partials in the workspace and the last block of a row group to finish
// (a counter per group) sums them in split order -- one launch, deterministic -- adds the bias and writes y.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

#include "kernels/common/epilogue.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/sparse24/sparse24_layout.h"

namespace spmm::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kSteps = kDecodeChunkK / 32;        // mma k-steps per chunk
constexpr int kXPitch = kDecodeChunkK + 8;        // x row pitch in shared memory (16 B pad: no ldmatrix conflicts)
constexpr uint8_t kFillCode = 0 | 1 << 2;         // metadata code of an all-zero (padding) group

// ------------------------------------------------------------------------------------------------ packer -------
// One thread per (row tile, chunk, lane): gathers that lane's four A fragments (and, for lanes 4g and 4g+1, its
// four metadata registers) from the canonical layout.
struct CanonicalReader {
  const uint16_t* values;
  const uint8_t* meta;
  int64_t m, k, meta_cols;
  // The two stored 16-bit values of group `grp` of row `row` (zeros outside the weight), as one register.
  __device__ uint32_t pair(int64_t row, int64_t grp) const {
    if (row >= m || grp >= k / sparse24::kGroup) return 0;
    const uint16_t* v = values + row * (k / 2) + grp * 2;
    return static_cast<uint32_t>(v[0]) | static_cast<uint32_t>(v[1]) << 16;
  }
  __device__ uint32_t code(int64_t row, int64_t grp) const {
    if (row >= m || grp >= k / sparse24::kGroup) return kFillCode;
    return (meta[row * meta_cols + grp / 2] >> (4 * (grp % 2))) & 0xF;
  }
  // Four consecutive groups' codes of one row, group `first` in the lowest nibble.
  __device__ uint32_t codes4(int64_t row, int64_t first) const {
    uint32_t r = 0;
    for (int j = 0; j < 4; ++j) r |= code(row, first + j) << (4 * j);
    return r;
  }
};

__global__ void decode_pack_kernel(Sparse24DecodePackParams p, Sparse24DecodeShape s) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= s.row_tiles * s.chunks * 32) return;
  const int lane = index % 32;
  const int64_t chunk = (index / 32) % s.chunks, tile = index / 32 / s.chunks;
  const int g = lane / 4, q = lane % 4;
  const int64_t row0 = tile * kDecodeTileRows + g, row1 = row0 + 8;
  const CanonicalReader in{p.values, p.meta, p.m, p.k, sparse24::meta_bytes_per_row(p.k)};
  uint4* values = static_cast<uint4*>(p.dvalues) + ((tile * s.chunks + chunk) * kSteps) * 32 + lane;
  uint32_t meta[kSteps];
  for (int step = 0; step < kSteps; ++step) {
    const int64_t first_group = (chunk * kSteps + step) * 8;  // 8 groups of 4 per k-step of 32
    // A fragment of m16n8k32 (compressed 16 x 16, laid out like a dense m16n8k16 A): rows g and g+8, groups q
    // and q + 4 of the step.
    values[step * 32] = make_uint4(in.pair(row0, first_group + q), in.pair(row1, first_group + q),
                                   in.pair(row0, first_group + q + 4), in.pair(row1, first_group + q + 4));
    if (p.meta_layout == 0) {
      // lane 4g: rows g | g+8, groups 0-3; lane 4g+1: rows g | g+8, groups 4-7 (16 bits per row).
      const int64_t first = first_group + 4 * q;
      meta[step] = in.codes4(row0, first) | in.codes4(row1, first) << 16;
    } else {
      // lane 4g: row g, groups 0-7; lane 4g+1: row g+8, groups 0-7.
      const int64_t row = q == 0 ? row0 : row1;
      meta[step] = in.codes4(row, first_group) | in.codes4(row, first_group + 4) << 16;
    }
  }
  if (q < 2) {
    uint4* dmeta = static_cast<uint4*>(p.dmeta) + (tile * s.chunks + chunk) * 16 + g * 2 + q;
    *dmeta = make_uint4(meta[0], meta[1], meta[2], meta[3]);
  }
}

// ----------------------------------------------------------------------------------------------- matmul --------
// ------------------------------------------------------------------- reading the canonical layout directly -----
// With kCanonical the kernel reads the canonical layout (values [M, K/2], meta [M, K/8]; K % 128 == 0), so a layer
// needs no second copy of its weight. It uses the freedom to number the 8 groups of an mma k-step in any order, as
// long as A, its metadata and B agree: in k-step s of a chunk, slot j < 4 is the chunk's group 8j + 2s and slot
// j + 4 is group 8j + 2s + 1. Then lane (g, q) finds all four of its A registers of all four k-steps in 32
// contiguous bytes of row g and of row g + 8 (the groups 8q .. 8q + 7 of the chunk): four 16-byte loads per chunk,
// as with the decode layout. x is staged into shared memory in slot order (8-byte copies), so the B fragments
// are read exactly as in the decode-layout mode. The metadata registers are rebuilt from the canonical nibbles.
__device__ __forceinline__ int canonical_group(int step, int slot) {
  return slot < 4 ? 8 * slot + 2 * step : 8 * (slot - 4) + 2 * step + 1;
}

// The 16-bit metadata of one row for k-step `step`: slots 0-3 (high = false) or 4-7 (high = true). m = the row's 16
// canonical metadata bytes of the chunk; byte 4j + step holds groups 8j + 2 step (low nibble) and + 1 (high).
__device__ __forceinline__ uint32_t canonical_meta16(const uint4& m, int step, bool high) {
  const uint32_t sel = step | (step + 4) << 4;
  const uint32_t v = (__byte_perm(m.x, m.y, sel) & 0xFFFFu) | __byte_perm(m.z, m.w, sel) << 16;  // byte j: w_j's
  const uint32_t n = high ? v >> 4 : v;  // the wanted nibble of byte j now at bits 8j .. 8j + 3
  return (n & 0xFu) | ((n >> 4) & 0xF0u) | ((n >> 8) & 0xF00u) | ((n >> 12) & 0xF000u);
}

// kNTiles: 8-token column tiles (N <= 8 * kNTiles); kTilesPerWarp: 16-row tiles each warp streams at once, which
// share every B fragment (one ldmatrix feeds kTilesPerWarp mma.sp) and one x stage per 128 * kTilesPerWarp rows.
// kCanonical: read the canonical layout (above) instead of the decode layout.
template <typename T, int kNTiles, int kTilesPerWarp, bool kCanonical>
__global__ void __launch_bounds__(kThreads) decode_mm_kernel(Sparse24DecodeParams p, Sparse24DecodeShape s) {
  constexpr int kXRows = kNTiles * 8;
  constexpr int kRowsPerBlock = kWarps * kTilesPerWarp * kDecodeTileRows;
  extern __shared__ uint4 smem[];
  T* xs = reinterpret_cast<T*>(smem);  // [2][kXRows][kXPitch]
  __shared__ int is_last_block;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t group = blockIdx.y, split = blockIdx.x;
  const int64_t first_tile = (group * kWarps + warp) * kTilesPerWarp;
  bool has_tile[kTilesPerWarp];
#pragma unroll
  for (int t = 0; t < kTilesPerWarp; ++t) has_tile[t] = first_tile + t < s.row_tiles;
  const int64_t c_begin = split * s.chunks / p.splits, c_end = (split + 1) * s.chunks / p.splits;
  const T* x = static_cast<const T*>(p.x);
  const uint4* wv = static_cast<const uint4*>(p.dvalues) + first_tile * s.chunks * kSteps * 32 + lane;
  const uint4* wm = static_cast<const uint4*>(p.dmeta) + first_tile * s.chunks * 16 + (lane / 4) * 2 + lane % 4;
  const bool meta_lane = lane % 4 < 2;

  auto stage_x = [&](int64_t chunk, int buf) {
    if constexpr (kCanonical) {  // one 8-byte copy per group, into its slot's place (K % 128 == 0: no tail)
      for (int v = threadIdx.x; v < kXRows * (kDecodeChunkK / 4); v += kThreads) {
        const int row = v / (kDecodeChunkK / 4), slot_index = v % (kDecodeChunkK / 4);  // step * 8 + slot
        const int64_t k = chunk * kDecodeChunkK + 4 * canonical_group(slot_index / 8, slot_index % 8);
        const bool inside = row < p.n;
        ptx::cp_async_8(xs + (buf * kXRows + row) * kXPitch + slot_index * 4, inside ? x + row * p.x_ld + k : x,
                        inside ? 8 : 0);
      }
    } else {
      for (int v = threadIdx.x; v < kXRows * (kDecodeChunkK / 8); v += kThreads) {
        const int row = v / (kDecodeChunkK / 8), col = (v % (kDecodeChunkK / 8)) * 8;
        const int64_t k = chunk * kDecodeChunkK + col;
        const bool inside = row < p.n && k < p.k;  // k % 8 == 0: a vector is wholly inside or outside
        ptx::cp_async_16(xs + (buf * kXRows + row) * kXPitch + col, inside ? x + row * p.x_ld + k : x,
                         inside ? 16 : 0);
      }
    }
    ptx::cp_async_commit();
  };
  auto load_w = [&](int64_t chunk, uint4 (&a)[kTilesPerWarp][kSteps], uint4 (&meta)[kTilesPerWarp]) {
    if constexpr (kCanonical) {
      const uint4* values = static_cast<const uint4*>(p.dvalues);  // rows of K / 16 uint4
      const uint4* metas = static_cast<const uint4*>(p.dmeta);     // rows of K / 128 uint4
      const int64_t vrow = p.k / 16, mrow = p.k / 128;
      const int g = lane / 4, q = lane % 4;
      const uint4 zero = make_uint4(0, 0, 0, 0), fill = make_uint4(0x44444444u, 0x44444444u, 0x44444444u, 0x44444444u);
#pragma unroll
      for (int t = 0; t < kTilesPerWarp; ++t) {
        if (!has_tile[t]) continue;
        const int64_t r0 = (first_tile + t) * kDecodeTileRows + g, r1 = r0 + 8;  // rows past M: zeros, valid codes
        const uint4* v0 = values + r0 * vrow + chunk * 8 + q * 2;
        const uint4* v1 = values + r1 * vrow + chunk * 8 + q * 2;
        const uint4 a0 = r0 < p.m ? ptx::load_streaming(v0) : zero, b0 = r0 < p.m ? ptx::load_streaming(v0 + 1) : zero;
        const uint4 a1 = r1 < p.m ? ptx::load_streaming(v1) : zero, b1 = r1 < p.m ? ptx::load_streaming(v1 + 1) : zero;
        // words 2s, 2s + 1 of a row's 8 are slots q, q + 4 of step s; registers: (g, q) (g+8, q) (g, q+4) (g+8, q+4)
        a[t][0] = make_uint4(a0.x, a1.x, a0.y, a1.y);
        a[t][1] = make_uint4(a0.z, a1.z, a0.w, a1.w);
        a[t][2] = make_uint4(b0.x, b1.x, b0.y, b1.y);
        a[t][3] = make_uint4(b0.z, b1.z, b0.w, b1.w);
        if (meta_lane) {  // lane 4g: slots 0-3, lane 4g + 1: slots 4-7; rows g (low 16 bits) and g + 8 (high)
          const uint4 m0 = r0 < p.m ? ptx::load_streaming(metas + r0 * mrow + chunk) : fill;
          const uint4 m1 = r1 < p.m ? ptx::load_streaming(metas + r1 * mrow + chunk) : fill;
          uint32_t r[kSteps];
#pragma unroll
          for (int step = 0; step < kSteps; ++step)
            r[step] = canonical_meta16(m0, step, q == 1) | canonical_meta16(m1, step, q == 1) << 16;
          meta[t] = make_uint4(r[0], r[1], r[2], r[3]);
        } else {
          meta[t] = zero;
        }
      }
    } else {
#pragma unroll
      for (int t = 0; t < kTilesPerWarp; ++t) {
        if (!has_tile[t]) continue;
        const int64_t base = t * s.chunks + chunk;  // tiles are consecutive in the layout
#pragma unroll
        for (int step = 0; step < kSteps; ++step) a[t][step] = ptx::load_streaming(wv + (base * kSteps + step) * 32);
        meta[t] = meta_lane ? ptx::load_streaming(wm + base * 16) : make_uint4(0, 0, 0, 0);
      }
    }
  };

  float acc[kTilesPerWarp][kNTiles][4] = {};
  uint4 a_cur[kTilesPerWarp][kSteps], a_next[kTilesPerWarp][kSteps], m_cur[kTilesPerWarp], m_next[kTilesPerWarp];
  if (c_begin < c_end) {
    stage_x(c_begin, 0);
    load_w(c_begin, a_cur, m_cur);
  }
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int buf = (c - c_begin) & 1;
    const bool more = c + 1 < c_end;
    if (more) {
      stage_x(c + 1, buf ^ 1);  // buf ^ 1 was last read before the previous iteration's closing barrier
      load_w(c + 1, a_next, m_next);
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    __syncthreads();
    if (has_tile[0]) {
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          uint32_t b[4];  // x rows nt*8 .. +7, columns step*32 .. +31: matrix j covers columns 8j .. 8j+7
          ptx::ldmatrix_x4(b, xs + (buf * kXRows + nt * 8 + lane % 8) * kXPitch + step * 32 + (lane / 8) * 8);
#pragma unroll
          for (int t = 0; t < kTilesPerWarp; ++t) {
            const uint32_t meta = step == 0 ? m_cur[t].x : step == 1 ? m_cur[t].y : step == 2 ? m_cur[t].z : m_cur[t].w;
            if (has_tile[t]) ptx::mma_sp_16832<T>(acc[t][nt], a_cur[t][step], b, meta);
          }
        }
      }
    }
    __syncthreads();
    if (more) {
#pragma unroll
      for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
        for (int step = 0; step < kSteps; ++step) a_cur[t][step] = a_next[t][step];
        m_cur[t] = m_next[t];
      }
    }
  }

  // Accumulator fragment: acc[t][nt][i] is W row g (+8 for i >= 2) of tile t times token nt*8 + 2q (+1 for odd i).
  const int g = lane / 4, q = lane % 4;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t mp = s.row_tiles * kDecodeTileRows;
  float* partials = static_cast<float*>(p.workspace);
#pragma unroll
  for (int t = 0; t < kTilesPerWarp; ++t) {
    if (!has_tile[t]) continue;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = (first_tile + t) * kDecodeTileRows + g + (i >= 2 ? 8 : 0), n = nt * 8 + 2 * q + (i & 1);
        if (n >= p.n) continue;
        if (p.splits == 1) {
          if (m < p.m) y[n * p.y_ld + m] = from_float<T>(acc[t][nt][i] + bias_at(bias, m));
        } else {
          partials[(split * p.n + n) * mp + m] = acc[t][nt][i];
        }
      }
    }
  }
  if (p.splits == 1) return;

  // Split-K: the last block of this row group to arrive sums every split's partials, in split order.
  int* counters = p.counters;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&counters[group], 1) == p.splits - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  const int64_t row0 = group * kRowsPerBlock;
  for (int64_t idx = threadIdx.x; idx < p.n * kRowsPerBlock; idx += kThreads) {
    const int64_t n = idx / kRowsPerBlock, m = row0 + idx % kRowsPerBlock;
    if (m >= p.m) continue;
    float sum = 0.0f;
    for (int sp = 0; sp < p.splits; ++sp) sum += __ldcg(partials + (sp * p.n + n) * mp + m);
    y[n * p.y_ld + m] = from_float<T>(sum + bias_at(bias, m));
  }
  if (threadIdx.x == 0) counters[group] = 0;  // leaves the counters zeroed for the next launch
}

template <int kNTiles>
constexpr size_t smem_bytes() {
  return 2 * kNTiles * 8 * kXPitch * 2;
}

int64_t rows_per_block(int tiles_per_warp) { return int64_t{kWarps} * tiles_per_warp * kDecodeTileRows; }

int64_t row_groups(const Sparse24DecodeShape& s, int tiles_per_warp) {
  return (s.row_tiles + kWarps * tiles_per_warp - 1) / (kWarps * tiles_per_warp);
}

template <typename T, int kNTiles, int kTilesPerWarp>
cudaError_t launch_tiles(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  const dim3 grid(p.splits, static_cast<unsigned>(row_groups(s, kTilesPerWarp)));
  if (p.canonical)
    decode_mm_kernel<T, kNTiles, kTilesPerWarp, true><<<grid, kThreads, smem_bytes<kNTiles>(), stream>>>(p, s);
  else
    decode_mm_kernel<T, kNTiles, kTilesPerWarp, false><<<grid, kThreads, smem_bytes<kNTiles>(), stream>>>(p, s);
  return cudaGetLastError();
}

template <typename T, int kTilesPerWarp>
cudaError_t launch_n(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  if (p.n <= 8) return launch_tiles<T, 1, kTilesPerWarp>(p, s, stream);
  if (p.n <= 16) return launch_tiles<T, 2, kTilesPerWarp>(p, s, stream);
  if (p.n <= 32) return launch_tiles<T, 4, kTilesPerWarp>(p, s, stream);
  return launch_tiles<T, 8, kTilesPerWarp>(p, s, stream);
}

template <typename T>
cudaError_t launch(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  return p.tiles_per_warp == 2 ? launch_n<T, 2>(p, s, stream) : launch_n<T, 1>(p, s, stream);
}

}  // namespace

cudaError_t sparse24_decode_pack(const Sparse24DecodePackParams& p, cudaStream_t stream) {
  if (p.m < 0 || p.k < 0 || p.k % sparse24::kGroup != 0 || p.meta_layout < 0 || p.meta_layout > 1)
    return cudaErrorInvalidValue;
  const Sparse24DecodeShape s = sparse24_decode_shape(p.m, p.k);
  const int64_t threads = s.row_tiles * s.chunks * 32;
  if (threads == 0) return cudaSuccess;
  const int64_t blocks = (threads + 255) / 256;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  decode_pack_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p, s);
  return cudaGetLastError();
}

int sparse24_decode_splits(int64_t m, int64_t n, int64_t k, int num_sms, int tiles_per_warp) {
  const Sparse24DecodeShape s = sparse24_decode_shape(m, k);
  const int64_t groups = row_groups(s, tiles_per_warp), rows = rows_per_block(tiles_per_warp);
  // ~2 resident blocks per SM with one tile per warp (<= 126 registers), ~1 with two.
  const int64_t slots = static_cast<int64_t>(std::max(num_sms, 1)) * (tiles_per_warp == 2 ? 1 : 2);
  // Time ~ waves x chunks per block, plus the split-K partials' round trip (fp32, N x rows per block); the
  // smallest split at the best estimate wins.
  int best = 1;
  double best_cost = 0;
  for (int splits = 1; splits <= std::min<int64_t>(s.chunks, 32); ++splits) {
    const double waves = static_cast<double>((groups * splits + slots - 1) / slots);
    const double chunk_bytes = rows * kDecodeChunkK * 1.125;
    const double reduce_bytes = splits > 1 ? 2.0 * std::min<int64_t>(n, kDecodeMaxTokens) * rows * 4 : 0;
    const double cost = waves * ((s.chunks + splits - 1) / splits * chunk_bytes + reduce_bytes);
    if (splits == 1 || cost < best_cost * 0.98) best = splits, best_cost = cost;
  }
  return best;
}

size_t sparse24_decode_workspace_bytes(int64_t m, int64_t n, int64_t k, int splits, int tiles_per_warp) {
  if (splits <= 1) return 0;
  const Sparse24DecodeShape s = sparse24_decode_shape(m, k);
  const int64_t tokens = std::min<int64_t>(n, kDecodeMaxTokens);
  return static_cast<size_t>(splits) * tokens * s.row_tiles * kDecodeTileRows * sizeof(float) +
         static_cast<size_t>(row_groups(s, tiles_per_warp)) * sizeof(int);
}

cudaError_t sparse24_decode_mm(const Sparse24DecodeParams& p, cudaStream_t stream) {
  const Sparse24DecodeShape s = sparse24_decode_shape(p.m, p.k);
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.k % 8 != 0 || p.x_ld % 8 != 0 || p.splits < 1 ||
      p.splits > std::max<int64_t>(s.chunks, 1) || (p.tiles_per_warp != 1 && p.tiles_per_warp != 2) ||
      row_groups(s, p.tiles_per_warp) > 65535 ||
      (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) || (p.canonical && p.k % kDecodeChunkK != 0) ||
      reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || (p.splits > 1 && p.workspace == nullptr))
    return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  Sparse24DecodeParams q = p;
  if (p.splits > 1) {
    // The counters sit after the partials of 64 tokens, the most one launch holds. They start at zero, and the
    // last block of each group leaves them zeroed again (also for the next slice of a larger N).
    const size_t bytes = sparse24_decode_workspace_bytes(p.m, p.n, p.k, p.splits, p.tiles_per_warp);
    const size_t counters = row_groups(s, p.tiles_per_warp) * sizeof(int);
    q.counters = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + bytes - counters);
    cudaError_t err = cudaMemsetAsync(q.counters, 0, counters, stream);
    if (err != cudaSuccess) return err;
  }
  const size_t elem = 2;
  // More than 64 tokens: consecutive slices of 64 (the prefill GEMM is the fast path there).
  for (int64_t n0 = 0; n0 < p.n; n0 += kDecodeMaxTokens) {
    Sparse24DecodeParams slice = q;
    slice.n = std::min<int64_t>(kDecodeMaxTokens, p.n - n0);
    slice.x = static_cast<const char*>(p.x) + n0 * p.x_ld * elem;
    slice.y = static_cast<char*>(p.y) + n0 * p.y_ld * elem;
    const cudaError_t err = p.dtype == DType::kFloat16 ? launch<__half>(slice, s, stream)
                                                       : launch<__nv_bfloat16>(slice, s, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace spmm::kernels
