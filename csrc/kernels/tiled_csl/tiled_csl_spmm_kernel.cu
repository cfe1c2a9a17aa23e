// The Tiled-CSL SpMM kernel of tiled_csl_spmm.h.
//
// Block: 8 warps over one row tile (warp w owns rows 32w..32w+31 of a 256-row tile, 16w..16w+15 of a 128-row one)
// and a contiguous range of its K tiles (split blockIdx.x of `splits`). Per K tile of 64 columns:
//   1. the tile's run of (value, location) pairs is read from global memory as 16-byte granules, coalesced
//      (thread i takes granules i, i + 256, ...; kGranules of each array per thread per batch, in registers);
//   2. the pairs are scattered into a zeroed dense tile in shared memory;
//   3. each warp multiplies its rows of that tile (A, through ldmatrix) with x's 64-column chunk (B, staged by
//      cp.async, zero past N and K) on dense mma.m16n8k16, fp32 accumulation.
// Pipeline: while tile c is scattered and multiplied, the first batch of tile c+1's pairs (registers) and x's chunk
// c+1 (shared memory) are in flight; the dense tile is double-buffered, so two barriers per tile suffice. A tile
// with more pairs than one batch holds loads its further batches on the spot (slower, never truncated).
// Split-K: each block leaves fp32 partials in the workspace; the last block of a row tile to finish (a counter per
// row tile) sums them in split order -- one launch, deterministic -- adds the bias and writes y.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <climits>

#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/tiled_csl/tiled_csl_spmm.h"
#include "kernels/tiled_csl/tiled_csl_tile_mma.cuh"

namespace spmm::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileK = tiled_csl::kTileK;
static_assert(kTileK == kTiledCSLTileK);
constexpr int kGranule = 8;                           // 16-bit elements per 16-byte load
constexpr int kGranules = 2;                          // granules of each array per thread per batch
constexpr int kBatchGranules = kGranules * kThreads;  // 4096 pairs per batch: one batch for >= 75% sparse tiles

using tiled_csl::swizzle;

// ------------------------------------------------------------------------------------ reading the pairs ------
// One tile's elements [begin, end) of values/locations, clamped to [0, nnz]: a corrupt stream reads nothing out
// of bounds. Its granules are [begin / 8, ceil(end / 8)); the first and last may hold neighbours' elements.
// 32-bit indices: the launcher refuses nnz > INT_MAX - 16.
struct Run {
  int begin, end;
  __device__ Run(int first, int last, int nnz) {
    begin = min(max(first, 0), nnz);
    end = min(max(last, begin), nnz);
  }
  __device__ int first_granule() const { return begin / kGranule; }
  __device__ int end_granule() const { return begin < end ? (end + kGranule - 1) / kGranule : first_granule(); }
  __device__ int batches() const { return (end_granule() - first_granule() + kBatchGranules - 1) / kBatchGranules; }
};

struct Stream {
  const uint4* values;        // as granules
  const uint4* locations;
  int nnz;
};

struct Batch {
  uint4 values[kGranules], locations[kGranules];
};

// The arrays' last granule when nnz % 8 != 0: element by element, never past nnz.
__device__ __forceinline__ uint4 load_tail(const uint4* granules, int g, int nnz) {
  const uint16_t* e = reinterpret_cast<const uint16_t*>(granules) + g * kGranule;
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int j = 0; j < kGranule; ++j)
    if (g * kGranule + j < nnz) w[j / 2] |= static_cast<uint32_t>(e[j]) << (16 * (j % 2));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Batch b of a run: thread i's slot s holds granule first_granule + b * kBatchGranules + s * kThreads + i.
__device__ __forceinline__ void load_batch(Batch& batch, const Stream& s, const Run& run, int b) {
  const int g0 = run.first_granule() + b * kBatchGranules + threadIdx.x, g_end = run.end_granule();
#pragma unroll
  for (int i = 0; i < kGranules; ++i) {
    const int g = g0 + i * kThreads;
    if (g >= g_end) continue;
    if ((g + 1) * kGranule <= s.nnz) {
      batch.values[i] = ptx::load_streaming(s.values + g);
      batch.locations[i] = ptx::load_streaming(s.locations + g);
    } else {
      batch.values[i] = load_tail(s.values, g, s.nnz);
      batch.locations[i] = load_tail(s.locations, g, s.nnz);
    }
  }
}

__device__ __forceinline__ uint32_t half_word(const uint4& v, int j) {
  const uint32_t w = j < 2 ? v.x : j < 4 ? v.y : j < 6 ? v.z : v.w;
  return (w >> (16 * (j % 2))) & 0xFFFFu;
}

// Writes the batch's elements of the run into the dense tile (locations past the tile are dropped: no fault).
template <int kTileM>
__device__ __forceinline__ void scatter_batch(const Batch& batch, uint16_t* tile, const Run& run, int b) {
  const int g0 = run.first_granule() + b * kBatchGranules + threadIdx.x, g_end = run.end_granule();
#pragma unroll
  for (int i = 0; i < kGranules; ++i) {
    const int g = g0 + i * kThreads;
    if (g >= g_end) continue;
    // Elements j_lo <= j < j_hi of this granule belong to the run.
    const int j_lo = max(run.begin - g * kGranule, 0), j_hi = min(run.end - g * kGranule, kGranule);
#pragma unroll
    for (int j = 0; j < kGranule; ++j) {
      const uint32_t loc = half_word(batch.locations[i], j);
      if (j >= j_lo && j < j_hi && loc < static_cast<uint32_t>(kTileM * kTileK))
        tile[swizzle(loc / kTileK, loc % kTileK)] = static_cast<uint16_t>(half_word(batch.values[i], j));
    }
  }
}

template <int kTileM>
__device__ __forceinline__ void zero_fill(uint16_t* tile) {
  uint4* t = reinterpret_cast<uint4*>(tile);
#pragma unroll
  for (int i = threadIdx.x; i < kTileM * kTileK / 8; i += kThreads) t[i] = make_uint4(0, 0, 0, 0);
}

// ------------------------------------------------------------------------- reading the word layout (v2) ------
// Same roles as Run / Stream / Batch above for the word layout of tiled_csl_spmm.h: runs are whole 16-byte
// granules of 4 words, each word (swizzled offset << 16 | value). Offsets past the tile (the padding, or a corrupt
// stream) land in the scratch slot after it: never a fault.
constexpr int kWordGranules = 4;                              // 16 pairs per thread per batch, as above
constexpr int kWordBatchGranules = kWordGranules * kThreads;

struct WordRun {
  int begin, end;  // words, clamped to [0, n_words]
  __device__ WordRun(int first, int last, int n_words) {
    begin = min(max(first, 0), n_words);
    end = min(max(last, begin), n_words);
  }
  __device__ int first_granule() const { return begin / 4; }
  __device__ int end_granule() const { return (end + 3) / 4; }  // n_words % 4 == 0: stays inside
  __device__ int batches() const { return (end_granule() - first_granule() + kWordBatchGranules - 1) / kWordBatchGranules; }
};

struct WordStream {
  const uint4* words;
  int n_words;
};

struct WordBatch {
  uint4 words[kWordGranules];
};

__device__ __forceinline__ void load_batch(WordBatch& batch, const WordStream& s, const WordRun& run, int b) {
  const int g0 = run.first_granule() + b * kWordBatchGranules + threadIdx.x, g_end = run.end_granule();
#pragma unroll
  for (int i = 0; i < kWordGranules; ++i)
    if (g0 + i * kThreads < g_end) batch.words[i] = ptx::load_streaming(s.words + g0 + i * kThreads);
}

template <int kTileM>
__device__ __forceinline__ void scatter_batch(const WordBatch& batch, uint16_t* tile, const WordRun& run, int b) {
  const int g0 = run.first_granule() + b * kWordBatchGranules + threadIdx.x, g_end = run.end_granule();
#pragma unroll
  for (int i = 0; i < kWordGranules; ++i) {
    if (g0 + i * kThreads >= g_end) continue;
    const uint32_t w[4] = {batch.words[i].x, batch.words[i].y, batch.words[i].z, batch.words[i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) tile[min(w[j] >> 16, static_cast<uint32_t>(kTileM * kTileK))] = static_cast<uint16_t>(w[j]);
  }
}

// The pair source of a kernel instantiation: the Tiled-CSL stream itself, or its word layout.
template <bool kWords>
struct Pairs {
  using RunT = Run;
  using StreamT = Stream;
  using BatchT = Batch;
  __device__ static const int32_t* offsets(const TiledCSLMMParams& p) { return p.tile_offsets; }
  __device__ static Stream stream(const TiledCSLMMParams& p) {
    return {static_cast<const uint4*>(p.values), reinterpret_cast<const uint4*>(p.locations), static_cast<int>(p.nnz)};
  }
  __device__ static int limit(const TiledCSLMMParams& p) { return static_cast<int>(p.nnz); }
  static constexpr int kScratch = 0;  // elements after each shared tile
};

template <>
struct Pairs<true> {  // (tiled_csl_mm_words: values = the words, tile_offsets = word offsets, nnz = words)
  using RunT = WordRun;
  using StreamT = WordStream;
  using BatchT = WordBatch;
  __device__ static const int32_t* offsets(const TiledCSLMMParams& p) { return p.tile_offsets; }
  __device__ static WordStream stream(const TiledCSLMMParams& p) {
    return {static_cast<const uint4*>(p.values), static_cast<int>(p.nnz)};
  }
  __device__ static int limit(const TiledCSLMMParams& p) { return static_cast<int>(p.nnz); }
  static constexpr int kScratch = 8;  // the scratch slot (kept at 16 bytes so the next tile stays aligned)
};

// ----------------------------------------------------------------------------------------------- matmul ------
// kTileM: rows per tile (256 or 128); kNTiles: 8-token column tiles (N <= 8 * kNTiles).
// kWords: read the word layout instead of the stream.
template <typename T, int kTileM, int kNTiles, bool kWords>
__global__ void __launch_bounds__(kThreads, kNTiles == 1 ? 3 : 2)
    tiled_csl_mm_kernel(TiledCSLMMParams p, int col_tiles) {
  using P = Pairs<kWords>;
  constexpr int kMTiles = kTileM / (kWarps * 16);  // m16 tiles per warp
  constexpr int kXRows = kNTiles * 8;
  constexpr int kTileElems = kTileM * kTileK + P::kScratch;  // per shared tile buffer
  extern __shared__ uint4 smem[];
  uint16_t* wtiles = reinterpret_cast<uint16_t*>(smem);           // [2][kTileM][64], swizzled
  T* xs = reinterpret_cast<T*>(wtiles + 2 * kTileElems);           // [2][kXRows][64], swizzled

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_tile = blockIdx.y, split = blockIdx.x;
  const int c_begin = static_cast<int>(split * col_tiles / p.splits);
  const int c_end = static_cast<int>((split + 1) * col_tiles / p.splits);
  const int32_t* offsets = P::offsets(p) + row_tile * col_tiles;
  const int nnz = P::limit(p);
  const typename P::StreamT stream = P::stream(p);
  const T* x = static_cast<const T*>(p.x);

  auto stage_x = [&](int c, int buf) {
    tiled_csl::stage_x_chunk<T, kXRows>(xs + buf * kXRows * kTileK, x, p.x_ld, p.n, p.k, c, threadIdx.x, kThreads);
    ptx::cp_async_commit();
  };

  float acc[kMTiles][kNTiles][4] = {};
  const int warp_row = warp * kMTiles * 16;
  auto multiply = [&](const uint16_t* tile, const T* xb) {
    tiled_csl::multiply_tile<T, kMTiles, kNTiles>(acc, tile, xb, warp_row, lane);
  };

  // run(c) = [offsets[c], offsets[c + 1]); the offset needed two tiles ahead is loaded one iteration early.
  int32_t o_cur = 0, o_next = 0, o_next2 = 0;
  if (c_begin < c_end) {
    o_cur = __ldg(offsets + c_begin);
    o_next = __ldg(offsets + c_begin + 1);
    if (c_begin + 1 < c_end) o_next2 = __ldg(offsets + c_begin + 2);
  }
  typename P::BatchT batch;
  zero_fill<kTileM>(wtiles);
  if (c_begin < c_end) {
    load_batch(batch, stream, typename P::RunT(o_cur, o_next, nnz), 0);
    stage_x(c_begin, 0);
  }
  for (int c = c_begin; c < c_end; ++c) {
    const int buf = (c - c_begin) & 1;
    const bool more = c + 1 < c_end;
    const typename P::RunT run(o_cur, o_next, nnz);
    uint16_t* tile = wtiles + buf * kTileElems;
    const int32_t o_next3 = c + 2 < c_end ? __ldg(offsets + c + 3) : 0;
    __syncthreads();  // `tile` is zero-filled; every warp is done with tile c-1 (x buffer buf ^ 1 is free)
    scatter_batch<kTileM>(batch, tile, run, 0);
    for (int b = 1; b < run.batches(); ++b) {  // denser than one batch: the rest, loaded now
      load_batch(batch, stream, run, b);
      scatter_batch<kTileM>(batch, tile, run, b);
    }
    if (more) {
      load_batch(batch, stream, typename P::RunT(o_next, o_next2, nnz), 0);
      stage_x(c + 1, buf ^ 1);
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    __syncthreads();  // the tile is scattered and x's chunk c has landed
    multiply(tile, xs + buf * kXRows * kTileK);
    // The other buffer was last read by tile c-1's multiply, which every warp finished before the first barrier.
    if (more) zero_fill<kTileM>(wtiles + (buf ^ 1) * kTileElems);
    o_cur = o_next;
    o_next = o_next2;
    o_next2 = o_next3;
  }

  tiled_csl::finish_tile_rows<T, kTileM>(p, acc, row_tile, split, warp_row, lane);
}

// ----------------------------------------------------------------------------------------------- launch ------
// The pair source: the stream or the word layout.
enum class Source { kStream, kWords };

template <int kTileM, int kNTiles, Source kSource = Source::kStream>
constexpr size_t smem_bytes() {
  constexpr bool words = kSource == Source::kWords;
  return (2 * (kTileM * kTileK + Pairs<words>::kScratch) + 2 * kNTiles * 8 * kTileK) * 2;
}

template <typename T, int kTileM, int kNTiles, Source kSource = Source::kStream>
constexpr auto kernel_of() {
  return tiled_csl_mm_kernel<T, kTileM, kNTiles, kSource == Source::kWords>;
}

template <typename T, int kTileM, int kNTiles, Source kSource = Source::kStream>
cudaError_t allow_smem() {
  return allow_dynamic_smem<kernel_of<T, kTileM, kNTiles, kSource>()>(smem_bytes<kTileM, kNTiles, kSource>());
}

// Resident blocks per SM of a configuration (for the split heuristic); 1 if the query fails.
template <int kTileM, int kNTiles>
int blocks_per_sm() {
  static std::atomic<int> cached{0};
  int blocks = cached.load(std::memory_order_relaxed);
  if (blocks > 0) return blocks;
  if (allow_smem<__half, kTileM, kNTiles>() != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel_of<__half, kTileM, kNTiles>(), kThreads,
                                                    smem_bytes<kTileM, kNTiles>()) != cudaSuccess) {
    cudaGetLastError();  // a failed query must not surface as the next launch's error
    return 1;
  }
  blocks = std::max(blocks, 1);
  cached.store(blocks, std::memory_order_relaxed);
  return blocks;
}

template <int kTileM>
int blocks_per_sm_for(int64_t n) {
  if (n <= 8) return blocks_per_sm<kTileM, 1>();
  if (n <= 16) return blocks_per_sm<kTileM, 2>();
  if (n <= 32) return blocks_per_sm<kTileM, 4>();
  return blocks_per_sm<kTileM, 8>();
}

template <typename T, int kTileM, int kNTiles, Source kSource>
cudaError_t launch_tiles(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  const cudaError_t err = allow_smem<T, kTileM, kNTiles, kSource>();
  if (err != cudaSuccess) return err;
  const dim3 grid(p.splits, static_cast<unsigned>(row_tiles));
  kernel_of<T, kTileM, kNTiles, kSource>()<<<grid, kThreads, smem_bytes<kTileM, kNTiles, kSource>(), stream>>>(
      p, col_tiles);
  return cudaGetLastError();
}

template <typename T, int kTileM, Source kSource>
cudaError_t launch_n(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  if (p.n <= 8) return launch_tiles<T, kTileM, 1, kSource>(p, row_tiles, col_tiles, stream);
  if (p.n <= 16) return launch_tiles<T, kTileM, 2, kSource>(p, row_tiles, col_tiles, stream);
  if (p.n <= 32) return launch_tiles<T, kTileM, 4, kSource>(p, row_tiles, col_tiles, stream);
  return launch_tiles<T, kTileM, 8, kSource>(p, row_tiles, col_tiles, stream);
}

template <typename T, Source kSource>
cudaError_t launch_layout(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  return p.tile_m == 256 ? launch_n<T, 256, kSource>(p, row_tiles, col_tiles, stream)
                         : launch_n<T, 128, kSource>(p, row_tiles, col_tiles, stream);
}

template <typename T>
cudaError_t launch(const TiledCSLMMParams& p, Source source, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  switch (source) {
    case Source::kStream: return launch_layout<T, Source::kStream>(p, row_tiles, col_tiles, stream);
    case Source::kWords: return launch_layout<T, Source::kWords>(p, row_tiles, col_tiles, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int tiled_csl_mm_splits(int64_t m, int64_t n, int64_t k, int64_t nnz, int64_t tile_m, int num_sms) {
  const int64_t row_tiles = ceil_div(m, tile_m), col_tiles = ceil_div(k, kTiledCSLTileK);
  if (row_tiles == 0 || col_tiles <= 1) return 1;
  const int64_t tokens = std::max<int64_t>(std::min(n, kTiledCSLMaxTokens), 1);
  const int per_sm = tile_m == 256 ? blocks_per_sm_for<256>(tokens) : blocks_per_sm_for<128>(tokens);
  const int64_t slots = static_cast<int64_t>(std::max(num_sms, 1)) * per_sm;
  // Cost model in bytes one block streams (to be tuned on the device): per K tile, its pairs (4 B each) plus a
  // floor for the shared-memory work that does not shrink with sparsity (zero fill, dense mma); per block, a
  // pipeline start (the first tile's latency) and its partials' write; at the end, the last block of a row tile
  // reads every split's partials (from L2, but one block alone: weighed at an eighth).
  const double tile = 4.0 * static_cast<double>(nnz) / static_cast<double>(row_tiles * col_tiles) + 8.0 * tile_m;
  const double start = 16384.0, partial = 4.0 * static_cast<double>(tokens * tile_m);
  int best = 1;
  double best_cost = 0;
  for (int splits = 1; splits <= std::min<int64_t>(col_tiles, 64); ++splits) {
    const double waves = static_cast<double>(ceil_div(row_tiles * splits, slots));
    const double block = static_cast<double>(ceil_div(col_tiles, splits)) * tile + start + (splits > 1 ? partial : 0);
    const double tail = splits > 1 ? splits * partial / 8 : 0;
    const double cost = waves * block + tail;
    if (splits == 1 || cost < best_cost * 0.98) best = splits, best_cost = cost;
  }
  return best;
}

size_t tiled_csl_mm_workspace_bytes(int64_t m, int64_t n, int64_t tile_m, int splits) {
  if (splits <= 1 || tile_m <= 0) return 0;
  const int64_t row_tiles = ceil_div(m, tile_m), tokens = std::min(n, kTiledCSLMaxTokens);
  return static_cast<size_t>(splits) * tokens * row_tiles * tile_m * sizeof(float) + row_tiles * sizeof(int);
}

namespace {

cudaError_t run_mm(const TiledCSLMMParams& p, Source source, cudaStream_t stream) {
  const bool words = source != Source::kStream;
  if (!tiled_csl_word_tiles(p.tile_m, kTiledCSLTileK) || p.m < 0 || p.n < 0 || p.k < 0 || p.nnz < 0) 
    return cudaErrorInvalidValue;
  const int64_t row_tiles = ceil_div(p.m, p.tile_m), col_tiles = ceil_div(p.k, kTiledCSLTileK);
  if (p.k % 8 != 0 || p.x_ld % 8 != 0 || (p.n > 1 && p.x_ld < p.k) || !aligned16(p.x) || !aligned16(p.values) ||
      (!words && !aligned16(p.locations)) || (words && p.nnz % 4 != 0) || p.splits < 1 || p.splits > std::max<int64_t>(col_tiles, 1) || row_tiles > 65535 ||
      (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) || (p.splits > 1 && p.workspace == nullptr) ||
      (row_tiles * col_tiles > 0 && p.tile_offsets == nullptr) || p.nnz > INT_MAX - 16 || col_tiles > INT_MAX)
    return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  TiledCSLMMParams q = p;
  if (p.splits > 1) {
    // The counters sit after the partials of 64 tokens, the most one launch holds. They start at zero, and the
    // last block of each row tile leaves them zeroed again (also for the next slice of a larger N).
    const size_t bytes = tiled_csl_mm_workspace_bytes(p.m, p.n, p.tile_m, p.splits);
    const size_t counters = row_tiles * sizeof(int);
    q.counters = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + bytes - counters);
    const cudaError_t err = cudaMemsetAsync(q.counters, 0, counters, stream);
    if (err != cudaSuccess) return err;
  }
  const int ct = static_cast<int>(col_tiles);
  return for_each_token_slice(q, kTiledCSLMaxTokens, [&](const TiledCSLMMParams& slice) {
    return p.dtype == DType::kFloat16 ? launch<__half>(slice, source, row_tiles, ct, stream)
                                      : launch<__nv_bfloat16>(slice, source, row_tiles, ct, stream);
  });
}

}  // namespace

cudaError_t tiled_csl_mm(const TiledCSLMMParams& p, cudaStream_t stream) { return run_mm(p, Source::kStream, stream); }

cudaError_t tiled_csl_mm_words(const TiledCSLMMParams& p, cudaStream_t stream) {
  return run_mm(p, Source::kWords, stream);
}

}  // namespace spmm::kernels
