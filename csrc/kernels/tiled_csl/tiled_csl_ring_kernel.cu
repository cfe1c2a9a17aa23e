// The ring-pipelined word-layout Tiled-CSL kernel of tiled_csl_ring.h (sm_90a: bulk async copies, mbarriers,
// clusters).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>

#include "kernels/common/cluster.cuh"
#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/tiled_csl/tiled_csl_ring.h"
#include "kernels/tiled_csl/tiled_csl_tile_mma.cuh"

namespace spmm::kernels {
namespace {

using tiled_csl::kTileK;
constexpr int kConsumerWarps = 8;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + the producer warp
constexpr int kPieceWords = kTiledCSLRingPieceWords;
constexpr int kMaxStages = 8;
constexpr int kMaxTokens = static_cast<int>(kTiledCSLMaxTokens);
constexpr int kScratch = 8;  // elements after each dense tile: the padding words' slot (16 bytes keep alignment)
// Full barrier of a stage: the producer's lane 0 (its arrive also expects the piece's bytes) and the 32 producer
// lanes (for the tile's last piece after their cp.asyncs of x's chunk have landed, else at once).
constexpr uint32_t kFullArrivals = 1 + 32;

// One block per SM where the registers need it (256-row tiles at 64 tokens), else two.
template <int kTileM, int kNTiles>
constexpr int min_blocks() { return kTileM == 256 && kNTiles == 8 ? 1 : 2; }

template <int kTileM, int kNTiles>
constexpr size_t smem_budget() {  // (227 KB per block at most, static shared memory included)
  return min_blocks<kTileM, kNTiles>() == 1 ? 226 * 1024 : 113 * 1024;
}

template <int kTileM>
constexpr size_t tiles_bytes() { return 2 * (kTileM * kTileK + kScratch) * 2; }

template <int kNTiles>
constexpr size_t stage_bytes() { return kPieceWords * 4 + kNTiles * 8 * kTileK * 2; }

// Tile c's run of words [lo, hi), clamped to the readable words and kept to whole 16-byte granules (a well-formed
// layout has both already): a corrupt layout gives wrong numbers, never a fault.
struct WordRange {
  int lo, hi;
  __device__ WordRange(const int32_t* offsets, int c, int n_words) {
    lo = min(max(__ldg(offsets + c), 0), n_words) & ~3;
    hi = min(max(__ldg(offsets + c + 1), lo), n_words) & ~3;
  }
  __device__ int pieces() const { return max(1, (hi - lo + kPieceWords - 1) / kPieceWords); }
};

// Grid (splits, row tiles); with splits > 1 the splits of a row tile are one cluster. kNTiles: 8-token column tiles.
template <typename T, int kTileM, int kNTiles>
__global__ void __launch_bounds__(kThreads, min_blocks<kTileM, kNTiles>())
    ring_mm_kernel(TiledCSLMMParams p, int col_tiles, int stages) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kMTiles = kTileM / (16 * kConsumerWarps);  // m16 tiles per consumer warp
  constexpr int kXRows = kNTiles * 8;
  constexpr int kTileElems = kTileM * kTileK + kScratch;
  constexpr int kStageWords = static_cast<int>(stage_bytes<kNTiles>() / 4);
  extern __shared__ uint4 smem[];
  uint16_t* tiles = reinterpret_cast<uint16_t*>(smem);                                // [2][kTileElems]
  uint32_t* ring = reinterpret_cast<uint32_t*>(smem) + tiles_bytes<kTileM>() / 4;     // [stages][kStageWords]
  __shared__ uint64_t full[kMaxStages], empty[kMaxStages];
  __shared__ int piece_info[kMaxStages];  // words of the piece in the stage x 2, + 1 if it is its tile's last

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_tile = blockIdx.y;
  const int split = static_cast<int>(blockIdx.x);
  const int c_begin = split * col_tiles / p.splits, c_end = (split + 1) * col_tiles / p.splits;
  auto stage_words = [&](int s) { return ring + s * kStageWords; };
  auto stage_x = [&](int s) { return reinterpret_cast<T*>(ring + s * kStageWords + kPieceWords); };

  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      ptx::mbar_init(&full[s], kFullArrivals);
      ptx::mbar_init(&empty[s], kConsumerWarps);
    }
    ptx::mbar_init_fence();
  }
  __syncthreads();

  float acc[kMTiles][kNTiles][4] = {};
  const int warp_row = warp * kMTiles * 16;
  if (warp == kConsumerWarps) {
    // Producer: tile c's run in pieces of at most kPieceWords, one bulk copy each; x's chunk c beside the last.
    const uint32_t* words = static_cast<const uint32_t*>(p.values);
    const int32_t* offsets = p.tile_offsets + row_tile * col_tiles;
    const int n_words = static_cast<int>(p.nnz);
    int s = 0;
    uint32_t round = 0;
    for (int c = c_begin; c < c_end; ++c) {
      const WordRange run(offsets, c, n_words);
      const int pieces = run.pieces();
      for (int i = 0; i < pieces; ++i) {
        if (round > 0) ptx::mbar_wait(&empty[s], (round - 1) & 1);
        const int lo = run.lo + i * kPieceWords, count = min(kPieceWords, run.hi - lo);
        const bool last = i == pieces - 1;
        if (lane == 0) {
          piece_info[s] = count * 2 + (last ? 1 : 0);  // visible to consumers through the barrier (release/acquire)
          ptx::mbar_arrive_expect_tx(&full[s], static_cast<uint32_t>(count) * 4);
          if (count > 0) ptx::bulk_copy_g2s(stage_words(s), words + lo, static_cast<uint32_t>(count) * 4, &full[s]);
        }
        if (last) {
          tiled_csl::stage_x_chunk<T, kXRows>(stage_x(s), static_cast<const T*>(p.x), p.x_ld, p.n, p.k, c, lane, 32);
          ptx::cp_async_mbar_arrive(&full[s]);
        } else {
          ptx::mbar_arrive(&full[s]);
        }
        if (++s == stages) s = 0, ++round;
      }
    }
  } else {
    // Consumers: scatter each piece into the tile (thread i takes granules i, i + 256), free its stage; after the
    // tile's last piece one barrier, then each warp multiplies its rows and zeroes them for the tile after next
    // (the other buffer takes the next tile; every warp has zeroed its rows of it before passing this barrier).
    const int ct = threadIdx.x;
    // A stage is freed by one arrival per warp once all its lanes are past their reads (__syncwarp orders them).
    auto release = [&](int stage) {
      __syncwarp();
      if (lane == 0) ptx::mbar_arrive(&empty[stage]);
    };
    auto consumers_sync = [] { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); };
    for (int i = ct; i < 2 * kTileElems / 8; i += kConsumers) smem[i] = make_uint4(0, 0, 0, 0);
    consumers_sync();
    int s = 0;
    uint32_t round = 0;
    for (int c = c_begin; c < c_end; ++c) {
      uint16_t* tile = tiles + ((c - c_begin) & 1) * kTileElems;
      for (;;) {
        ptx::mbar_wait(&full[s], round & 1);
        const int info = piece_info[s], granules = (info >> 1) / 4;
        const uint4* src = reinterpret_cast<const uint4*>(stage_words(s));
#pragma unroll
        for (int j = 0; j < kPieceWords / 4 / kConsumers; ++j) {
          const int g = ct + j * kConsumers;
          if (g >= granules) break;
          const uint4 v = src[g];
          const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int e = 0; e < 4; ++e)
            tile[min(w[e] >> 16, static_cast<uint32_t>(kTileM * kTileK))] = static_cast<uint16_t>(w[e]);
        }
        if (info & 1) break;
        release(s);
        if (++s == stages) s = 0, ++round;
      }
      consumers_sync();  // the tile is whole
      tiled_csl::multiply_tile<T, kMTiles, kNTiles>(acc, tile, stage_x(s), warp_row, lane);
      release(s);
      if (++s == stages) s = 0, ++round;
      uint4* rows = reinterpret_cast<uint4*>(tile + warp_row * kTileK);
#pragma unroll
      for (int i = lane; i < kMTiles * 16 * kTileK / 8; i += 32) rows[i] = make_uint4(0, 0, 0, 0);
    }
  }

  // Accumulator fragment: acc[mt][nt][i] is row warp_row + 16 mt + g (+8 for i >= 2) times token 8 nt + 2q (+1 odd i).
  const int g = lane / 4, q = lane % 4;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t row0 = row_tile * kTileM;
  auto emit = [&](auto&& store) {
    if (warp == kConsumerWarps) return;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = warp_row + mt * 16 + g + (i >= 2 ? 8 : 0), n = nt * 8 + 2 * q + (i & 1);
          if (n < p.n) store(r, n, acc[mt][nt][i]);
        }
  };
  auto store_y = [&](int r, int n, float v) {
    if (row0 + r < p.m) y[n * p.y_ld + row0 + r] = from_float<T>(v + bias_at(bias, row0 + r));
  };
  if (p.splits == 1) {
    emit(store_y);
    return;
  }
  // Split-K in the cluster: partials [N][kTileM] in each block's shared memory (every stage has been consumed, so
  // the tiles and the ring are free once all warps are here), summed in split order.
  float* partials = reinterpret_cast<float*>(smem);
  __syncthreads();
  emit([&](int r, int n, float v) { partials[n * kTileM + r] = v; });
  cluster::reduce_partials<kTileM>(partials, static_cast<int>(p.n), split, p.splits, p.m - row0, store_y);
#else
  __trap();  // built for sm_90a only (tiled_csl_ring_available() says so before any launch)
#endif
}

template <typename T, int kTileM, int kNTiles>
constexpr auto kernel_of() { return ring_mm_kernel<T, kTileM, kNTiles>; }

template <typename T, int kTileM, int kNTiles>
cudaError_t prepare() {
  constexpr auto kernel = kernel_of<T, kTileM, kNTiles>();
  const cudaError_t err = allow_dynamic_smem<kernel>(smem_budget<kTileM, kNTiles>());
  return err == cudaSuccess ? allow_large_clusters<kernel>() : err;
}

// Stages of the ring: as many as fit the budget after the two dense tiles, at most kMaxStages.
template <int kTileM, int kNTiles>
constexpr int ring_stages() {
  return static_cast<int>(std::min<size_t>(kMaxStages, (smem_budget<kTileM, kNTiles>() - tiles_bytes<kTileM>()) /
                                                           stage_bytes<kNTiles>()));
}

template <int kTileM, int kNTiles>
constexpr size_t smem_bytes() {
  return std::max(tiles_bytes<kTileM>() + ring_stages<kTileM, kNTiles>() * stage_bytes<kNTiles>(),
                  size_t{kNTiles} * 8 * kTileM * 4);  // (the cluster sum's partials reuse it)
}

// Split-K factor: cost in bytes one block streams (its words and a start: launch, pipeline fill, ~1.5 us at a
// block's share of the bandwidth) times the waves of blocks the GPU holds at once, plus the cluster sum.
template <typename T, int kTileM, int kNTiles>
int choose_splits(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles) {
  if (col_tiles <= 1) return 1;
  const double tile = 4.0 * static_cast<double>(p.nnz) / static_cast<double>(row_tiles * col_tiles);
  const double start = 24576.0, partial = 4.0 * static_cast<double>(std::min<int64_t>(p.n, kMaxTokens) * kTileM);
  int best = 1;
  double best_cost = 0;
  for (int splits = 1; splits <= std::min(col_tiles, kTiledCSLRingMaxSplits); ++splits) {
    const int64_t resident = resident_split_blocks<kernel_of<T, kTileM, kNTiles>(), kTiledCSLRingMaxSplits>(
        splits, kThreads, smem_bytes<kTileM, kNTiles>());
    if (resident == 0 && splits > 1) continue;  // this cluster size does not fit the GPU
    const double waves = static_cast<double>(ceil_div(row_tiles * splits, std::max<int64_t>(resident, 1)));
    const double block = static_cast<double>(ceil_div(col_tiles, splits)) * tile + start;
    const double cost = waves * block + (splits > 1 ? 2 * partial : 0);
    if (splits == 1 || cost < best_cost * 0.98) best = splits, best_cost = cost;
  }
  return best;
}

template <typename T, int kTileM, int kNTiles>
cudaError_t launch(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  static_assert(ring_stages<kTileM, kNTiles>() >= 2, "the ring needs two stages");
  const cudaError_t err = prepare<T, kTileM, kNTiles>();
  if (err != cudaSuccess) return err;
  TiledCSLMMParams q = p;
  if (q.splits == 0) q.splits = choose_splits<T, kTileM, kNTiles>(p, row_tiles, col_tiles);
  cudaLaunchAttribute cluster;
  const cudaLaunchConfig_t config =
      cluster_split_config(q.splits, row_tiles, kThreads, smem_bytes<kTileM, kNTiles>(), &cluster, stream);
  return cudaLaunchKernelEx(&config, kernel_of<T, kTileM, kNTiles>(), q, col_tiles, ring_stages<kTileM, kNTiles>());
}

template <typename T, int kTileM>
cudaError_t launch_n(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  if (p.n <= 8) return launch<T, kTileM, 1>(p, row_tiles, col_tiles, stream);
  if (p.n <= 16) return launch<T, kTileM, 2>(p, row_tiles, col_tiles, stream);
  if (p.n <= 32) return launch<T, kTileM, 4>(p, row_tiles, col_tiles, stream);
  return launch<T, kTileM, 8>(p, row_tiles, col_tiles, stream);
}

template <typename T>
cudaError_t launch_layout(const TiledCSLMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  return p.tile_m == 256 ? launch_n<T, 256>(p, row_tiles, col_tiles, stream)
                         : launch_n<T, 128>(p, row_tiles, col_tiles, stream);
}

}  // namespace

bool tiled_csl_ring_available() {
  static std::atomic<int> known[64] = {};  // per device: 0 unknown, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    cudaGetLastError();
    return false;
  }
  int state = known[device].load(std::memory_order_relaxed);
  if (state == 0) {
    cudaFuncAttributes attr{};
    // Fails where no image of the kernel runs on this device (sm_90a code runs on compute capability 9.0 only).
    const bool ok = cudaFuncGetAttributes(&attr, ring_mm_kernel<__half, 256, 1>) == cudaSuccess &&
                    attr.binaryVersion >= 90 && current_device_major() == 9;
    cudaGetLastError();
    state = ok ? 2 : 1;
    known[device].store(state, std::memory_order_relaxed);
  }
  return state == 2;
}

cudaError_t tiled_csl_mm_words_ring(const TiledCSLMMParams& p, cudaStream_t stream) {
  if (!tiled_csl_mm_supports(p.tile_m, kTiledCSLTileK) || p.m < 0 || p.n < 0 || p.k < 0 || p.nnz < 0)
    return cudaErrorInvalidValue;
  const int64_t row_tiles = ceil_div(p.m, p.tile_m), col_tiles = ceil_div(p.k, kTiledCSLTileK);
  if (p.k % 8 != 0 || p.x_ld % 8 != 0 || (p.n > 1 && p.x_ld < p.k) || !aligned16(p.x) || !aligned16(p.values) ||
      p.nnz % 4 != 0 || p.nnz > INT_MAX - 16 || p.splits < 0 ||
      p.splits > std::min<int64_t>(std::max<int64_t>(col_tiles, 1), kTiledCSLRingMaxSplits) || row_tiles > 65535 ||
      col_tiles > INT_MAX / kTiledCSLRingMaxSplits || (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) ||
      (row_tiles * col_tiles > 0 && (p.values == nullptr || p.tile_offsets == nullptr)))
    return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  if (!tiled_csl_ring_available()) return cudaErrorNotSupported;
  const int ct = static_cast<int>(col_tiles);
  return for_each_token_slice(p, kTiledCSLMaxTokens, [&](const TiledCSLMMParams& slice) {
    return p.dtype == DType::kFloat16 ? launch_layout<__half>(slice, row_tiles, ct, stream)
                                      : launch_layout<__nv_bfloat16>(slice, row_tiles, ct, stream);
  });
}

}  // namespace spmm::kernels
