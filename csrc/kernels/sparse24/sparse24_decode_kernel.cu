// The decode kernel of sparse24_decode.h and its layout packer.
//
// Block: 8 warps over 128 rows of W (8 row tiles of 16) and the block's slice of K (split blockIdx.x of `splits`).
// Per chunk of 128 columns, the block copies the 8 tiles' A fragments and metadata (18 KB) and x's 128 columns
// global -> shared memory with cp.async into a ring of `stages` buffers; the warps (arranged by token count, see
// DecodeConfig) read A fragments with 16-byte shared loads and x through ldmatrix, and run mma.sp.
// With splits > 1, each block leaves fp32 partials in the workspace and the last block of a row group to finish
// (a counter per group) sums them in split order -- one launch, deterministic -- adds the bias and writes y.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <climits>

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
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ float bias_at(const T* bias, int64_t m) {
  return bias ? static_cast<float>(bias[m]) : 0.0f;
}

constexpr int kBlockTiles = 8;                                 // row tiles per block
constexpr int kRowsPerBlock = kBlockTiles * kDecodeTileRows;   // 128
constexpr int kTileValueVecs = kSteps * 32;                    // uint4 of values per (tile, chunk): 2 KB
constexpr int kTileMetaVecs = 16;                              // uint4 of metadata per (tile, chunk): 256 B
constexpr int kStageWeightVecs = kBlockTiles * (kTileValueVecs + kTileMetaVecs);  // 18 KB of weights per stage

// How the 8 warps share a block's 128 rows x `kTokens` tokens: kWarpsM x kWarpsN warps, each kMT row tiles by
// kNT token tiles. More warps along N means each A fragment (read once from shared memory) feeds fewer mma,
// but each B fragment feeds kMT of them: the shared-memory bytes per weight byte stay about 2 at every N.
template <int kWarpsM_, int kMT_, int kNT_>
struct DecodeConfig {
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarps / kWarpsM_, kMT = kMT_, kNT = kNT_;
  static constexpr int kTokens = kWarpsN * kNT * 8;
  static constexpr int kXVecs = kTokens * (kDecodeChunkK / 8);
  static constexpr int kStageVecs = kStageWeightVecs + kTokens * kXPitch * 2 / 16;
  static_assert(kWarpsM * kMT == kBlockTiles, "the warps must cover the block's row tiles");
};
using Tokens8 = DecodeConfig<8, 1, 1>;
using Tokens16 = DecodeConfig<4, 2, 1>;
using Tokens32 = DecodeConfig<4, 2, 2>;
using Tokens64 = DecodeConfig<4, 2, 4>;

// One block: 128 rows of W over the chunks [c_begin, c_end) of its split. Every chunk's weights (values and
// metadata of the 8 row tiles) and x's 128 columns go global -> shared memory through a kStages-deep cp.async
// ring, so kStages - 1 chunks are in flight while the warps run mma.sp on the oldest: the bytes in flight no longer
// depend on registers or on how long the mma take.
template <typename T, typename Cfg, int kStages>
__global__ void __launch_bounds__(kThreads) decode_mm_kernel(Sparse24DecodeParams p, Sparse24DecodeShape s) {
  extern __shared__ uint4 smem[];  // [kStages][values | metadata | x rows]
  __shared__ int is_last_block;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp % Cfg::kWarpsM, wn = warp / Cfg::kWarpsM;
  const int64_t group = blockIdx.y, split = blockIdx.x;
  const int64_t tile0 = group * kBlockTiles;  // first row tile of the block
  const int64_t c_begin = split * s.chunks / p.splits, c_end = (split + 1) * s.chunks / p.splits;
  const T* x = static_cast<const T*>(p.x);
  const uint4* wvalues = static_cast<const uint4*>(p.dvalues);
  const uint4* wmeta = static_cast<const uint4*>(p.dmeta);

  auto load_stage = [&](int64_t chunk, int stage) {
    uint4* dst = smem + stage * Cfg::kStageVecs;
    for (int v = threadIdx.x; v < kStageWeightVecs; v += kThreads) {
      const bool is_value = v < kBlockTiles * kTileValueVecs;
      const int u = is_value ? v : v - kBlockTiles * kTileValueVecs;
      const int per_tile = is_value ? kTileValueVecs : kTileMetaVecs;
      const int64_t tile = tile0 + u / per_tile;
      const uint4* src = (is_value ? wvalues : wmeta) + (tile * s.chunks + chunk) * per_tile + u % per_tile;
      const bool inside = tile < s.row_tiles;  // the last block's tiles past M are never read (see has_tile)
      ptx::cp_async_16(dst + v, inside ? src : wvalues, inside ? 16 : 0);
    }
    T* xs = reinterpret_cast<T*>(dst + kStageWeightVecs);
    for (int v = threadIdx.x; v < Cfg::kXVecs; v += kThreads) {
      const int row = v / (kDecodeChunkK / 8), col = (v % (kDecodeChunkK / 8)) * 8;
      const int64_t k = chunk * kDecodeChunkK + col;
      const bool inside = row < p.n && k < p.k;  // k % 8 == 0: a vector is wholly inside or outside
      ptx::cp_async_16(xs + row * kXPitch + col, inside ? x + row * p.x_ld + k : x, inside ? 16 : 0);
    }
  };

  bool has_tile[Cfg::kMT];  // warp-uniform: tiles past the weight's last row tile are skipped
#pragma unroll
  for (int mt = 0; mt < Cfg::kMT; ++mt) has_tile[mt] = tile0 + wm * Cfg::kMT + mt < s.row_tiles;
  bool has_tokens[Cfg::kNT];  // warp-uniform: token tiles wholly past N are skipped
#pragma unroll
  for (int nt = 0; nt < Cfg::kNT; ++nt) has_tokens[nt] = (wn * Cfg::kNT + nt) * 8 < p.n;
  const bool meta_lane = lane % 4 < 2;

  float acc[Cfg::kMT][Cfg::kNT][4] = {};
  const int64_t count = c_end - c_begin;
#pragma unroll
  for (int stage = 0; stage < kStages - 1; ++stage) {
    if (stage < count) load_stage(c_begin + stage, stage);
    ptx::cp_async_commit();  // empty groups keep the wait count below uniform
  }
  for (int64_t i = 0; i < count; ++i) {
    ptx::cp_async_wait<kStages - 2>();  // chunk i has landed (for this thread) ...
    __syncthreads();                   // ... for every thread; and everyone is done with chunk i - 1's stage
    if (i + kStages - 1 < count) load_stage(c_begin + i + kStages - 1, (i + kStages - 1) % kStages);
    ptx::cp_async_commit();

    const uint4* stage = smem + (i % kStages) * Cfg::kStageVecs;
    const T* xs = reinterpret_cast<const T*>(stage + kStageWeightVecs);
    uint4 meta[Cfg::kMT];
#pragma unroll
    for (int mt = 0; mt < Cfg::kMT; ++mt) {
      const int tile = wm * Cfg::kMT + mt;
      meta[mt] = meta_lane ? stage[kBlockTiles * kTileValueVecs + tile * kTileMetaVecs + (lane / 4) * 2 + lane % 4]
                           : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      uint4 a[Cfg::kMT];
#pragma unroll
      for (int mt = 0; mt < Cfg::kMT; ++mt) a[mt] = stage[((wm * Cfg::kMT + mt) * kSteps + step) * 32 + lane];
#pragma unroll
      for (int nt = 0; nt < Cfg::kNT; ++nt) {
        if (!has_tokens[nt]) continue;
        uint32_t b[4];  // x rows (token tile) .. +7, columns step*32 .. +31: matrix j covers columns 8j .. 8j+7
        ptx::ldmatrix_x4(b, xs + ((wn * Cfg::kNT + nt) * 8 + lane % 8) * kXPitch + step * 32 + (lane / 8) * 8);
#pragma unroll
        for (int mt = 0; mt < Cfg::kMT; ++mt) {
          const uint32_t m = step == 0 ? meta[mt].x : step == 1 ? meta[mt].y : step == 2 ? meta[mt].z : meta[mt].w;
          if (has_tile[mt]) ptx::mma_sp_16832<T>(acc[mt][nt], a[mt], b, m);
        }
      }
    }
  }
  ptx::cp_async_wait<0>();  // nothing real is pending (only empty groups); leave no copy behind the block's exit

  // Accumulator fragment: acc[mt][nt][i] is W row g (+8 for i >= 2) of the tile times token 2q (+1 for odd i).
  const int g = lane / 4, q = lane % 4;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t mp = s.row_tiles * kDecodeTileRows;
  float* partials = static_cast<float*>(p.workspace);
#pragma unroll
  for (int mt = 0; mt < Cfg::kMT; ++mt) {
    if (!has_tile[mt]) continue;
#pragma unroll
    for (int nt = 0; nt < Cfg::kNT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = (tile0 + wm * Cfg::kMT + mt) * kDecodeTileRows + g + (i >= 2 ? 8 : 0);
        const int64_t n = (wn * Cfg::kNT + nt) * 8 + 2 * q + (i & 1);
        if (n >= p.n) continue;
        if (p.splits == 1) {
          if (m < p.m) y[n * p.y_ld + m] = from_float<T>(acc[mt][nt][i] + bias_at(bias, m));
        } else {
          partials[(split * p.n + n) * mp + m] = acc[mt][nt][i];
        }
      }
    }
  }
  if (p.splits == 1) return;

  // Split-K: the last block of this row group to arrive sums every split's partials, in split order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&p.counters[group], 1) == p.splits - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  constexpr int kVecsPerToken = kRowsPerBlock / 4;  // float4 of partials per token; mp % 16 == 0 keeps them whole
  for (int64_t idx = threadIdx.x; idx < p.n * kVecsPerToken; idx += kThreads) {
    const int64_t n = idx / kVecsPerToken, m = tile0 * kDecodeTileRows + (idx % kVecsPerToken) * 4;
    if (m >= p.m) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int sp = 0; sp < p.splits; ++sp) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(partials + (sp * p.n + n) * mp + m));
      sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
    }
    const float r[4] = {sum.x, sum.y, sum.z, sum.w};
    for (int j = 0; j < 4 && m + j < p.m; ++j) y[n * p.y_ld + m + j] = from_float<T>(r[j] + bias_at(bias, m + j));
  }
  if (threadIdx.x == 0) p.counters[group] = 0;  // leaves the counters zeroed for the next slice of a larger N
}

// ------------------------------------------------------------------------------------------------ host ---------
constexpr size_t kSmemPerSm = 228 * 1024, kSmemReservedPerBlock = 1024;  // sm_80 (164 KB) is handled at launch

template <typename Cfg>
constexpr size_t smem_bytes(int stages) {
  return static_cast<size_t>(stages) * Cfg::kStageVecs * 16;
}

// Default ring depth: the deepest that still lets two blocks share an SM (two blocks hide each other's epilogue).
template <typename Cfg>
constexpr int default_stages() {
  int stages = 2;
  while (stages < kDecodeMaxStages && 2 * (smem_bytes<Cfg>(stages + 1) + kSmemReservedPerBlock) <= kSmemPerSm) ++stages;
  return stages;
}

// The warp arrangement for a launch slice of n tokens (n <= kDecodeMaxTokens).
template <typename F>
auto with_config(int64_t n, F&& f) {
  if (n <= Tokens8::kTokens) return f(Tokens8{});
  if (n <= Tokens16::kTokens) return f(Tokens16{});
  if (n <= Tokens32::kTokens) return f(Tokens32{});
  return f(Tokens64{});
}

int64_t row_groups(const Sparse24DecodeShape& s) { return (s.row_tiles + kBlockTiles - 1) / kBlockTiles; }

int stages_for(int64_t n, int requested) {
  if (requested >= 2) return requested;
  return with_config(n, [](auto cfg) { return default_stages<decltype(cfg)>(); });
}

template <typename T, typename Cfg, int kStages>
cudaError_t launch_kernel(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  constexpr size_t smem = smem_bytes<Cfg>(kStages);
  auto* kernel = decode_mm_kernel<T, Cfg, kStages>;
  // The opt-in to more than 48 KB of shared memory is per device; remember which devices have it (<= 64).
  static std::atomic<uint64_t> opted_in{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (!(opted_in.load(std::memory_order_relaxed) & bit)) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;  // e.g. more stages than this device's shared memory holds
    opted_in.fetch_or(bit, std::memory_order_relaxed);
  }
  const dim3 grid(p.splits, static_cast<unsigned>(row_groups(s)));
  kernel<<<grid, kThreads, smem, stream>>>(p, s);
  return cudaGetLastError();
}

template <typename T, typename Cfg>
cudaError_t launch_stages(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, int stages,
                          cudaStream_t stream) {
  switch (stages) {
    case 2: return launch_kernel<T, Cfg, 2>(p, s, stream);
    case 3: return launch_kernel<T, Cfg, 3>(p, s, stream);
    case 4: return launch_kernel<T, Cfg, 4>(p, s, stream);
    case 5: return launch_kernel<T, Cfg, 5>(p, s, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, int stages, cudaStream_t stream) {
  return with_config(p.n, [&](auto cfg) { return launch_stages<T, decltype(cfg)>(p, s, stages, stream); });
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

int sparse24_decode_stages(int64_t n, int requested) {
  return stages_for(std::min<int64_t>(std::max<int64_t>(n, 1), kDecodeMaxTokens), requested);
}

int sparse24_decode_splits(int64_t m, int64_t n, int64_t k, int num_sms, int stages) {
  const Sparse24DecodeShape s = sparse24_decode_shape(m, k);
  const int64_t tokens = std::min<int64_t>(std::max<int64_t>(n, 1), kDecodeMaxTokens);
  stages = sparse24_decode_stages(tokens, stages);
  const size_t smem = with_config(tokens, [&](auto cfg) { return smem_bytes<decltype(cfg)>(stages); });
  const int64_t per_sm = std::clamp<int64_t>(kSmemPerSm / (smem + kSmemReservedPerBlock), 1, 3);
  const int64_t groups = row_groups(s), slots = std::max(num_sms, 1) * per_sm;
  // Time ~ waves x (chunks per block + one chunk of pipeline fill), plus the split-K partials' round trip (fp32,
  // written by every block) and the serial read of all splits by the last block (from L2, ~3x faster than HBM).
  // The smallest split at the best estimate wins.
  const double chunk_bytes = kRowsPerBlock * kDecodeChunkK * 1.125;
  int best = 1;
  double best_cost = 0;
  for (int splits = 1; splits <= std::min<int64_t>(s.chunks, 32); ++splits) {
    const double waves = static_cast<double>((groups * splits + slots - 1) / slots);
    const double partial_bytes = splits > 1 ? tokens * kRowsPerBlock * 4.0 : 0.0;
    const double cost = waves * (((s.chunks + splits - 1) / splits + 1) * chunk_bytes + 2 * partial_bytes) +
                        splits * partial_bytes / 3;
    if (splits == 1 || cost < best_cost * 0.98) best = splits, best_cost = cost;
  }
  return best;
}

size_t sparse24_decode_workspace_bytes(int64_t m, int64_t n, int64_t k, int splits) {
  if (splits <= 1) return 0;
  const Sparse24DecodeShape s = sparse24_decode_shape(m, k);
  const int64_t tokens = std::min<int64_t>(n, kDecodeMaxTokens);
  return static_cast<size_t>(splits) * tokens * s.row_tiles * kDecodeTileRows * sizeof(float) +
         static_cast<size_t>(row_groups(s)) * sizeof(int);
}

cudaError_t sparse24_decode_mm(const Sparse24DecodeParams& p, cudaStream_t stream) {
  const Sparse24DecodeShape s = sparse24_decode_shape(p.m, p.k);
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.k % 8 != 0 || p.x_ld % 8 != 0 || p.splits < 1 ||
      p.splits > std::max<int64_t>(s.chunks, 1) || p.stages < 0 || p.stages == 1 || p.stages > kDecodeMaxStages ||
      row_groups(s) > 65535 || (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) ||
      reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || (p.splits > 1 && p.workspace == nullptr))
    return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  Sparse24DecodeParams q = p;
  if (p.splits > 1) {
    // The counters sit after the partials of 64 tokens, the most one launch holds. They start at zero, and the
    // last block of each group leaves them zeroed again (also for the next slice of a larger N).
    const size_t bytes = sparse24_decode_workspace_bytes(p.m, p.n, p.k, p.splits);
    const size_t counters = row_groups(s) * sizeof(int);
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
    const int stages = sparse24_decode_stages(slice.n, p.stages);
    const cudaError_t err = p.dtype == DType::kFloat16 ? launch<__half>(slice, s, stages, stream)
                                                       : launch<__nv_bfloat16>(slice, s, stages, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace spmm::kernels
