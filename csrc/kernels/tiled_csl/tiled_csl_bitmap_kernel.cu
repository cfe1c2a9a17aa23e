// The pair-bitmap Tiled-CSL kernel of tiled_csl_bitmap.h (sm_90a: bulk async copies, mbarriers, clusters).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "kernels/common/cluster.cuh"
#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/tiled_csl/tiled_csl_bitmap.h"

namespace spmm::kernels {
namespace {

constexpr int kConsumerWarps = 8;                  // one 16-row slice of the 128-row tile each
constexpr int kThreads = (kConsumerWarps + 1) * 32;  // + the producer warp
constexpr int kTileM = static_cast<int>(kBitmapTileM);
constexpr int kTileK = static_cast<int>(kBitmapTileK);
constexpr int kMaxTokens = 64;                     // per launch; larger N runs as slices
constexpr int kMaxStages = 16;
// Full barrier of a stage: the producer's lane 0 (its arrive that also expects the record's bytes) and the 32
// producer lanes' cp.async arrivals for x's chunk.
constexpr uint32_t kFullArrivals = 1 + 32;
constexpr int kOverread = 16 * 32;  // words a slice's pairs may reach past its slot (the start is clamped to the slot)

// x's chunk: rows (tokens) of 64 elements = 8 chunks of 16 bytes, chunk c of row r at c ^ (r % 8), so the 8 rows an
// ldmatrix matrix reads hit 8 different bank groups.
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * kTileK + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}

// kNTiles: 8-token column tiles (N <= 8 kNTiles). Grid (splits, row tiles); with splits > 1 the splits of a row
// tile are one cluster. stages / slot_words: the ring, sized by the launcher from the longest record.
template <typename T, int kNTiles>
__global__ void __launch_bounds__(kThreads, kNTiles <= 2 ? 3 : 2)
    bitmap_mm_kernel(TiledCSLBitmapMMParams p, int col_tiles, int stages, int slot_words) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kXRows = kNTiles * 8;
  constexpr int kXElems = kXRows * kTileK;
  extern __shared__ uint4 smem[];
  uint32_t* ring = reinterpret_cast<uint32_t*>(smem);       // [stages][slot_words]: records
  T* xs = reinterpret_cast<T*>(ring + stages * slot_words);  // [stages][kXRows][64]: x's chunks, swizzled
  __shared__ uint64_t full[kMaxStages], empty[kMaxStages];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_tile = blockIdx.y;
  const int split = static_cast<int>(blockIdx.x);
  const int c_begin = split * col_tiles / p.splits, c_end = (split + 1) * col_tiles / p.splits;
  const int32_t* offsets = p.record_offsets + row_tile * col_tiles;

  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      ptx::mbar_init(&full[s], kFullArrivals);
      ptx::mbar_init(&empty[s], kConsumerWarps * 32);
    }
    ptx::mbar_init_fence();
  }
  __syncthreads();

  float acc[kNTiles][4] = {};
  if (warp == kConsumerWarps) {
    // Producer: record c into stage s by one bulk copy, x's chunk c by cp.async (zeros past N and K).
    const T* x = static_cast<const T*>(p.x);
    int s = 0;
    uint32_t round = 0;
    for (int c = c_begin; c < c_end; ++c) {
      if (round > 0) ptx::mbar_wait(&empty[s], (round - 1) & 1);
      if (lane == 0) {
        // Clamped to the readable words and the slot, and kept to whole 16-byte granules: a corrupt layout gives
        // wrong numbers, never a fault.
        const int64_t lo = std::min<int64_t>(std::max<int64_t>(__ldg(offsets + c), 0), p.record_words) & ~int64_t{3};
        const int64_t hi = std::min<int64_t>(std::max<int64_t>(__ldg(offsets + c + 1), lo), p.record_words);
        const uint32_t bytes = static_cast<uint32_t>(std::min<int64_t>(hi - lo, slot_words) * 4) & ~15u;
        ptx::mbar_arrive_expect_tx(&full[s], bytes);
        if (bytes > 0) ptx::bulk_copy_g2s(ring + s * slot_words, p.records + lo, bytes, &full[s]);
      }
      T* dst = xs + s * kXElems;
      for (int v = lane; v < kXRows * (kTileK / 8); v += 32) {
        const int row = v / (kTileK / 8), col = (v % (kTileK / 8)) * 8;
        const int64_t k = int64_t{c} * kTileK + col;
        const bool inside = row < p.n && k < p.k;  // k % 8 == 0: a vector is wholly inside or outside
        ptx::cp_async_16(dst + swizzle(row, col), inside ? x + row * p.x_ld + k : x, inside ? 16 : 0);
      }
      ptx::cp_async_mbar_arrive(&full[s]);
      if (++s == stages) s = 0, ++round;
    }
  } else {
    // Consumer warp `warp`: rows 16 warp .. + 15 of the tile. Per record: its 16 masks (4 broadcast loads), then one
    // register of the A fragments per block, then the dense mma.
    const uint32_t lane_bit = 1u << lane, below = lane_bit - 1u;
    int s = 0;
    uint32_t round = 0;
    for (int c = c_begin; c < c_end; ++c) {
      ptx::mbar_wait(&full[s], round & 1);
      const uint32_t* rec = ring + s * slot_words;
      const T* xb = xs + s * kXElems;
      uint32_t mask[16];
      const uint4* masks = reinterpret_cast<const uint4*>(rec + 8 + warp * 16);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint4 v = masks[j];
        mask[4 * j] = v.x, mask[4 * j + 1] = v.y, mask[4 * j + 2] = v.z, mask[4 * j + 3] = v.w;
      }
      // A start past the slot (a corrupt record) is clamped to it; the slice's 16 x 32 pairs then end at most
      // kOverread words further, inside the shared memory the launcher allocates.
      uint32_t base = min(rec[warp], static_cast<uint32_t>(slot_words));
      uint32_t a[4][4];
#pragma unroll
      for (int b = 0; b < 16; ++b) {
        const uint32_t m = mask[b];
        a[b / 4][b % 4] = m & lane_bit ? rec[base + __popc(m & below)] : 0u;
        base += __popc(m);
      }
      if constexpr (kNTiles == 1) {
        // One token tile: a B ldmatrix_x4 covers 32 columns (two k16 steps).
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          uint32_t b[4];  // matrix j: tokens 0-7, columns 32 half + 8 j .. + 7
          ptx::ldmatrix_x4(b, xb + swizzle(lane & 7, half * 32 + (lane >> 3) * 8));
          ptx::mma_16816<T>(acc[0], a[2 * half], b[0], b[1]);
          ptx::mma_16816<T>(acc[0], a[2 * half + 1], b[2], b[3]);
        }
      } else {
#pragma unroll
        for (int step = 0; step < kTileK / 16; ++step)
#pragma unroll
          for (int nt = 0; nt < kNTiles; nt += 2) {
            uint32_t b[4];  // matrix j: tokens (nt + j / 2) 8 .. + 7, columns 16 step + 8 (j % 2) .. + 7
            ptx::ldmatrix_x4(b, xb + swizzle((nt + (lane >> 4)) * 8 + (lane & 7), step * 16 + ((lane >> 3) & 1) * 8));
            ptx::mma_16816<T>(acc[nt], a[step], b[0], b[1]);
            ptx::mma_16816<T>(acc[nt + 1], a[step], b[2], b[3]);
          }
      }
      ptx::mbar_arrive(&empty[s]);  // every lane, after its own reads of the stage
      if (++s == stages) s = 0, ++round;
    }
  }

  // Accumulator fragment: acc[nt][i] is row 16 warp + g (+8 for i >= 2) times token 8 nt + 2q (+1 for odd i).
  const int g = lane / 4, q = lane % 4;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t row0 = row_tile * kTileM;
  auto emit = [&](auto&& store) {
    if (warp == kConsumerWarps) return;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = warp * 16 + g + (i >= 2 ? 8 : 0), n = nt * 8 + 2 * q + (i & 1);
        if (n < p.n) store(r, n, acc[nt][i]);
      }
  };
  auto store_y = [&](int r, int n, float v) {
    if (row0 + r < p.m) y[n * p.y_ld + row0 + r] = from_float<T>(v + bias_at(bias, row0 + r));
  };
  if (p.splits == 1) {
    emit(store_y);
    return;
  }
  // Split-K in the cluster: each block leaves its partials [N][128] in its own shared memory (every stage has been
  // consumed, so the ring is free once all warps are here), summed in split order.
  float* partials = reinterpret_cast<float*>(smem);
  __syncthreads();
  emit([&](int r, int n, float v) { partials[n * kTileM + r] = v; });
  cluster::reduce_partials<kTileM>(partials, static_cast<int>(p.n), split, p.splits, p.m - row0, store_y);
#else
  __trap();  // built for sm_90a only (tiled_csl_bitmap_available() says so before any launch)
#endif
}

// The ring: 128-byte aligned slots of the longest record plus x's chunk, as many as fit the budget (at most one per
// column tile a block runs), then kOverread words of slack. Budget: three blocks per SM where the registers allow
// it (N <= 16: 64 per thread), else two (228 KB per SM, 1 KB of it reserved per block).
struct Ring {
  int stages, slot_words;
  size_t smem;
};

template <int kNTiles>
constexpr size_t smem_budget() {
  return kNTiles <= 2 ? 74 * 1024 : 112 * 1024;
}

template <int kNTiles>
Ring ring_for(const TiledCSLBitmapMMParams& p, int col_tiles, int splits) {
  const int slot_words = static_cast<int>(ceil_div(p.max_record_words, 32) * 32);
  const size_t stage = slot_words * 4 + kNTiles * 8 * kTileK * 2, slack = kOverread * 4;
  const int64_t per_block = ceil_div(col_tiles, splits);
  const int stages = static_cast<int>(std::min<int64_t>(
      {kMaxStages, static_cast<int64_t>((smem_budget<kNTiles>() - slack) / stage), std::max<int64_t>(per_block, 2)}));
  const size_t reduction = size_t{kNTiles} * 8 * kTileM * 4;  // [N][128] fp32 partials
  return {stages, slot_words, std::max(stages * stage + slack, reduction)};
}

// Split-K factor: cost in bytes one block streams (its records and a start: launch and the first record's latency,
// ~1.5 us at a block's share of the bandwidth) times the waves of blocks the GPU holds at once, plus the cluster sum.
template <typename T, int kNTiles>
int choose_splits(const TiledCSLBitmapMMParams& p, int64_t row_tiles, int col_tiles) {
  if (col_tiles <= 1) return 1;
  const double tile = 4.0 * static_cast<double>(p.record_words) / static_cast<double>(row_tiles * col_tiles);
  const double start = 24576.0, partial = 4.0 * static_cast<double>(std::min<int64_t>(p.n, kMaxTokens) * kTileM);
  int best = 1;
  double best_cost = 0;
  for (int splits = 1; splits <= std::min(col_tiles, kBitmapMaxSplits); ++splits) {
    const int64_t resident =
        resident_split_blocks<bitmap_mm_kernel<T, kNTiles>, kBitmapMaxSplits>(splits, kThreads, smem_budget<kNTiles>());
    if (resident == 0 && splits > 1) continue;  // this cluster size does not fit the GPU
    const double waves = static_cast<double>(ceil_div(row_tiles * splits, std::max<int64_t>(resident, 1)));
    const double block = static_cast<double>(ceil_div(col_tiles, splits)) * tile + start;
    const double cost = waves * block + (splits > 1 ? splits * partial : 0);
    if (splits == 1 || cost < best_cost * 0.98) best = splits, best_cost = cost;
  }
  return best;
}

template <typename T, int kNTiles>
cudaError_t launch(const TiledCSLBitmapMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  constexpr auto kernel = bitmap_mm_kernel<T, kNTiles>;
  const cudaError_t err = allow_dynamic_smem<kernel>(smem_budget<kNTiles>());
  if (err != cudaSuccess) return err;
  TiledCSLBitmapMMParams q = p;
  if (q.splits == 0) q.splits = choose_splits<T, kNTiles>(p, row_tiles, col_tiles);
  const Ring ring = ring_for<kNTiles>(q, col_tiles, q.splits);
  if (ring.stages < 2 || ring.smem > smem_budget<kNTiles>()) return cudaErrorInvalidValue;
  cudaLaunchAttribute cluster;
  const cudaLaunchConfig_t config = cluster_split_config(q.splits, row_tiles, kThreads, ring.smem, &cluster, stream);
  return cudaLaunchKernelEx(&config, kernel, q, col_tiles, ring.stages, ring.slot_words);
}

template <typename T>
cudaError_t launch_n(const TiledCSLBitmapMMParams& p, int64_t row_tiles, int col_tiles, cudaStream_t stream) {
  if (p.n <= 8) return launch<T, 1>(p, row_tiles, col_tiles, stream);
  if (p.n <= 16) return launch<T, 2>(p, row_tiles, col_tiles, stream);
  if (p.n <= 32) return launch<T, 4>(p, row_tiles, col_tiles, stream);
  return launch<T, 8>(p, row_tiles, col_tiles, stream);
}

}  // namespace

bool tiled_csl_bitmap_available() {
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
    const bool ok = cudaFuncGetAttributes(&attr, bitmap_mm_kernel<__half, 1>) == cudaSuccess &&
                    attr.binaryVersion >= 90 && current_device_major() == 9;
    cudaGetLastError();
    state = ok ? 2 : 1;
    known[device].store(state, std::memory_order_relaxed);
  }
  return state == 2;
}

cudaError_t tiled_csl_bitmap_mm(const TiledCSLBitmapMMParams& p, cudaStream_t stream) {
  if (p.m < 0 || p.n < 0 || p.k < 0) return cudaErrorInvalidValue;
  const int64_t row_tiles = ceil_div(p.m, kTileM), col_tiles = ceil_div(p.k, kTileK);
  if (p.k % 8 != 0 || p.x_ld % 8 != 0 || (p.n > 1 && p.x_ld < p.k) || !aligned16(p.x) || !aligned16(p.records) ||
      p.splits < 0 || p.splits > std::min<int64_t>(std::max<int64_t>(col_tiles, 1), kBitmapMaxSplits) ||
      row_tiles > 65535 || col_tiles > INT32_MAX / kBitmapMaxSplits || p.record_words < 0 ||
      p.max_record_words < kBitmapHeaderWords || p.max_record_words > kBitmapMaxRecordWords ||
      (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) ||
      (row_tiles * col_tiles > 0 && (p.records == nullptr || p.record_offsets == nullptr)))
    return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0 || p.k == 0) return p.m == 0 || p.n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  if (!tiled_csl_bitmap_available()) return cudaErrorNotSupported;
  const int ct = static_cast<int>(col_tiles);
  return for_each_token_slice(p, kMaxTokens, [&](const TiledCSLBitmapMMParams& slice) {
    return p.dtype == DType::kFloat16 ? launch_n<__half>(slice, row_tiles, ct, stream)
                                      : launch_n<__nv_bfloat16>(slice, row_tiles, ct, stream);
  });
}

}  // namespace spmm::kernels
