// The decode kernel of sparse24_decode.h and its layout packer.
//
// Block: one row group (8 row tiles of 16 rows) over its slice of K (split blockIdx.x of `splits`), as a
// producer/consumer pipeline of kStages shared-memory stages with no block-wide barrier in the main loop:
//  - a producer warp fills a stage per chunk: the group's 18 KB of weight fragments (one bulk copy pair on sm_90,
//    cp.async on sm_80) and x's chunk (cp.async, zero-filled past N and K), and signals the stage's `full`
//    mbarrier when all of it has landed;
//  - consumer warps (8, or 4 holding two tiles each when N > 16, so every x fragment feeds two mma.sp) wait on
//    `full`, read their A fragments and metadata from the stage, x through ldmatrix, run mma.sp, and release the
//    stage on its `empty` mbarrier.
// So each block keeps up to kStages x 18 KB of weights in flight, paced by the copy engine instead of by
// instructions in every thread. With splits > 1 the splits' fp32 partials are summed in split order (one launch,
// deterministic), bias added, y written: on sm_90 the splits of a row group form a thread block cluster and each
// block sums a share of the outputs through distributed shared memory; before sm_90 (and with kCpAsync) they go
// through a global workspace and the last block of the group to finish (a counter per group) sums them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

#include "kernels/common/cluster.cuh"
#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/sparse24/sparse24_layout.h"

namespace spmm::kernels {
namespace {

constexpr int kSteps = kDecodeChunkK / 32;                        // mma k-steps per chunk
constexpr int kGroupTiles = static_cast<int>(kDecodeGroupTiles);  // row tiles per block
constexpr int kXPitch = kDecodeChunkK + 8;   // x row pitch in shared memory (16 B pad: no ldmatrix conflicts)
constexpr uint8_t kFillCode = 0 | 1 << 2;    // metadata code of an all-zero (padding) group
constexpr uint32_t kValuesBytes = kGroupTiles * kSteps * 32 * 16;  // one (group, chunk): 16 KB
constexpr uint32_t kMetaBytes = kGroupTiles * 16 * 16;             // 2 KB

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
  if (index >= s.groups * kGroupTiles * s.chunks * 32) return;
  const int lane = index % 32;
  const int64_t chunk = (index / 32) % s.chunks, tile = index / 32 / s.chunks;
  const int64_t group = tile / kGroupTiles, tile_in_group = tile % kGroupTiles;
  const int64_t block = (group * s.chunks + chunk) * kGroupTiles + tile_in_group;  // (group, chunk, tile) order
  const int g = lane / 4, q = lane % 4;
  const int64_t row0 = tile * kDecodeTileRows + g, row1 = row0 + 8;
  const CanonicalReader in{p.values, p.meta, p.m, p.k, sparse24::meta_bytes_per_row(p.k)};
  uint4* values = static_cast<uint4*>(p.dvalues) + block * kSteps * 32 + lane;
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
    uint4* dmeta = static_cast<uint4*>(p.dmeta) + block * 16 + g * 2 + q;
    *dmeta = make_uint4(meta[0], meta[1], meta[2], meta[3]);
  }
}

// ----------------------------------------------------------------------------------------------- matmul --------
// kNTiles: 8-token column tiles (N <= 8 * kNTiles). Eight consumer warps share a stage: with N <= 16 each owns one
// row tile and all tokens; with more tokens, each owns two row tiles (so every x fragment feeds two mma.sp: half
// the shared-memory reads per weight byte) and half of the token tiles (so eight warps still issue in parallel).
template <int kNTiles>
struct DecodeConfig {
  static constexpr int kTilesPerWarp = kNTiles >= 4 ? 2 : 1;
  static constexpr int kTokenBlocks = kTilesPerWarp;                 // warps along the tokens
  static constexpr int kNTilesPerWarp = kNTiles / kTokenBlocks;
  static constexpr int kTileBlocks = kGroupTiles / kTilesPerWarp;   // warps along the rows
  static constexpr int kConsumers = kTileBlocks * kTokenBlocks;     // 8
  static constexpr int kThreads = (kConsumers + 1) * 32;             // + the producer warp
  static constexpr int kStages = kNTiles >= 4 ? 3 : 4;               // 2 blocks per SM at any N
  static constexpr int kXRows = kNTiles * 8;
  static constexpr uint32_t kXBytes = kXRows * kXPitch * 2;  // x's chunk: rows of kXPitch for ldmatrix
  static constexpr uint32_t kStageBytes = kValuesBytes + kMetaBytes + kXBytes;
  static constexpr size_t kSmemBytes = size_t{kStages} * kStageBytes;
  static_assert(kXRows * kGroupTiles * kDecodeTileRows * 4 <= kSmemBytes, "cluster reduction buffer");
};

// kBulk: the producer's weight copies are sm_90 bulk copies (else cp.async). Split-K partials are summed across a
// thread block cluster through distributed shared memory when p.cluster_reduce (sm_90: the splits of a row group
// are one cluster), otherwise through the global workspace by the last block of a group.
// kEarly: p.early_launch (a template flag, so the default kernels' code is untouched by it).
template <typename T, int kNTiles, bool kBulk, bool kEarly>
__global__ void __launch_bounds__(DecodeConfig<kNTiles>::kThreads)
    decode_mm_kernel(Sparse24DecodeParams p, Sparse24DecodeShape s) {
  using C = DecodeConfig<kNTiles>;
  constexpr int kGroupRows = kGroupTiles * kDecodeTileRows;
  extern __shared__ __align__(128) unsigned char smem[];  // [stage]{values, meta, x [kXRows][kXPitch]}
  __shared__ uint64_t full[C::kStages], empty[C::kStages];
  __shared__ int is_last_block;
  auto stage_values = [&](int st) { return reinterpret_cast<uint4*>(smem + st * C::kStageBytes); };
  auto stage_meta = [&](int st) { return reinterpret_cast<uint4*>(smem + st * C::kStageBytes + kValuesBytes); };
  auto stage_x = [&](int st) { return reinterpret_cast<T*>(smem + st * C::kStageBytes + kValuesBytes + kMetaBytes); };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t group = blockIdx.y, split = blockIdx.x;
  const int64_t c_begin = split * s.chunks / p.splits, c_end = (split + 1) * s.chunks / p.splits;
  const int count = static_cast<int>(c_end - c_begin);
  if (threadIdx.x == 0) {
    for (int st = 0; st < C::kStages; ++st) {
      ptx::mbar_init(&full[st], 32 + (kBulk ? 1 : 0));  // each producer lane's cp.async arrival (+ the expect_tx)
      ptx::mbar_init(&empty[st], C::kConsumers);
    }
    ptx::mbar_init_fence();
  }
  __syncthreads();

  // Consumer warp -> its row tiles (first_tile + t) and token tiles (first_ntile + j) within the group.
  const int first_tile = (warp % C::kTileBlocks) * C::kTilesPerWarp;
  const int first_ntile = (warp / C::kTileBlocks) * C::kNTilesPerWarp;
  float acc[C::kTilesPerWarp][C::kNTilesPerWarp][4] = {};
  if (warp == C::kConsumers) {
    // ---- producer
    const T* x = static_cast<const T*>(p.x);
    const unsigned char* wv = static_cast<const unsigned char*>(p.dvalues);
    const unsigned char* wm = static_cast<const unsigned char*>(p.dmeta);
    auto load_weights = [&](int i, int st) {
      const int64_t block = group * s.chunks + c_begin + i;
      if constexpr (kBulk) {
        if (lane == 0) {
          ptx::mbar_arrive_expect_tx(&full[st], kValuesBytes + kMetaBytes);
          ptx::bulk_copy_g2s(stage_values(st), wv + block * kValuesBytes, kValuesBytes, &full[st]);
          ptx::bulk_copy_g2s(stage_meta(st), wm + block * kMetaBytes, kMetaBytes, &full[st]);
        }
      } else {
        for (int v = lane; v < static_cast<int>(kValuesBytes / 16); v += 32)
          ptx::cp_async_16(stage_values(st) + v, wv + block * kValuesBytes + v * 16, 16);
        for (int v = lane; v < static_cast<int>(kMetaBytes / 16); v += 32)
          ptx::cp_async_16(stage_meta(st) + v, wm + block * kMetaBytes + v * 16, 16);
      }
    };
    // Early launch: the first stages' weights (which no earlier kernel writes) are requested before waiting for
    // the previous kernel; x only after.
    const int early = kEarly ? min(C::kStages, count) : 0;
    for (int i = 0; i < early; ++i) load_weights(i, i);
    if constexpr (kEarly) ptx::griddep_wait();
    for (int i = 0; i < count; ++i) {
      const int st = i % C::kStages;
      if (i >= early) {
        if (i >= C::kStages) ptx::mbar_wait(&empty[st], (i / C::kStages - 1) & 1);
        load_weights(i, st);
      }
      T* xs = stage_x(st);
      for (int v = lane; v < C::kXRows * (kDecodeChunkK / 8); v += 32) {  // v = row * 16 + 16-byte column
        const int row = v / (kDecodeChunkK / 8), col = v % (kDecodeChunkK / 8) * 8;
        const int64_t k = (c_begin + i) * kDecodeChunkK + col;
        const bool inside = row < p.n && k < p.k;  // k % 8 == 0: a vector is wholly inside or outside
        ptx::cp_async_16(xs + row * kXPitch + col, inside ? x + row * p.x_ld + k : x, inside ? 16 : 0);
      }
      ptx::cp_async_mbar_arrive(&full[st]);
    }
  } else if (first_ntile * 8 < p.n) {  // (a warp whose tokens are all padding has nothing to compute)
    // ---- consumers
    const bool meta_lane = lane % 4 < 2;
    const int meta_index = (lane / 4) * 2 + lane % 4;
    for (int i = 0; i < count; ++i) {
      const int st = i % C::kStages;
      ptx::mbar_wait(&full[st], (i / C::kStages) & 1);
      const uint4* va = stage_values(st);
      const uint4* ma = stage_meta(st);
      const T* xs = stage_x(st);
      uint4 meta[C::kTilesPerWarp];
#pragma unroll
      for (int t = 0; t < C::kTilesPerWarp; ++t)
        meta[t] = meta_lane ? ma[(first_tile + t) * 16 + meta_index] : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        uint4 a[C::kTilesPerWarp];
#pragma unroll
        for (int t = 0; t < C::kTilesPerWarp; ++t) a[t] = va[((first_tile + t) * kSteps + step) * 32 + lane];
#pragma unroll
        for (int j = 0; j < C::kNTilesPerWarp; ++j) {
          uint32_t b[4];  // x rows (first_ntile + j) * 8 .. +7, columns step*32 .. +31: matrix i covers 8i .. 8i+7
          ptx::ldmatrix_x4(b, xs + ((first_ntile + j) * 8 + lane % 8) * kXPitch + step * 32 + (lane / 8) * 8);
#pragma unroll
          for (int t = 0; t < C::kTilesPerWarp; ++t) {
            const uint32_t m = step == 0 ? meta[t].x : step == 1 ? meta[t].y : step == 2 ? meta[t].z : meta[t].w;
            ptx::mma_sp_16832<T>(acc[t][j], a[t], b, m);
          }
        }
      }
      __syncwarp();
      if (lane == 0) ptx::mbar_arrive(&empty[st]);
    }
  } else {
    for (int i = 0; i < count; ++i) {  // still releases every stage (the producer waits for all consumers)
      ptx::mbar_wait(&full[i % C::kStages], (i / C::kStages) & 1);
      __syncwarp();
      if (lane == 0) ptx::mbar_arrive(&empty[i % C::kStages]);
    }
  }

  if constexpr (kEarly) ptx::griddep_wait();  // every thread: no global write before the previous kernel is done

  // Accumulator fragment: acc[t][j][i] is W row g (+8 for i >= 2) of tile first_tile + t times token
  // (first_ntile + j) * 8 + 2q (+1 for odd i). `emit` hands each valid (row in group, token, value) to `f`.
  const int g = lane / 4, q = lane % 4;
  auto emit = [&](auto&& f) {
    if (warp >= C::kConsumers) return;
#pragma unroll
    for (int t = 0; t < C::kTilesPerWarp; ++t)
#pragma unroll
      for (int j = 0; j < C::kNTilesPerWarp; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = (first_tile + t) * kDecodeTileRows + g + (i >= 2 ? 8 : 0);
          const int n = (first_ntile + j) * 8 + 2 * q + (i & 1);
          if (n < p.n) f(r, n, acc[t][j][i]);
        }
  };
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t row0 = group * kGroupRows;
  if (p.splits == 1) {
    emit([&](int r, int n, float v) {
      if (row0 + r < p.m) y[n * p.y_ld + row0 + r] = from_float<T>(v + bias_at(bias, row0 + r));
    });
    return;
  }
  // Split-K. Either way each output is the sum of the splits' partials in split order (deterministic), four rows
  // per thread with every split's loads in flight together.
  auto reduce_quads = [&](int quad_begin, int quad_end, auto&& load_quad) {
    constexpr int kQuads = kGroupRows / 4;
    for (int idx = quad_begin + threadIdx.x; idx < quad_end; idx += C::kThreads) {
      const int n = idx / kQuads, r = (idx % kQuads) * 4;
      if (row0 + r >= p.m) continue;
      float sum[4] = {};
#pragma unroll 8
      for (int sp = 0; sp < p.splits; ++sp) {
        const float4 v = load_quad(sp, n, r);
        sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (row0 + r + j < p.m) y[n * p.y_ld + row0 + r + j] = from_float<T>(sum[j] + bias_at(bias, row0 + r + j));
    }
  };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  {
    if (p.cluster_reduce) {
      // Each block leaves its partials [N][128 rows] in its own shared memory (the stages are free once every
      // warp is past the loop); after a cluster barrier, block `split` sums its share of the outputs by reading
      // all the blocks' partials through distributed shared memory; a second barrier keeps every block's
      // shared memory alive until all reads are done.
      float* red = reinterpret_cast<float*>(smem);
      __syncthreads();
      emit([&](int r, int n, float v) { red[n * kGroupRows + r] = v; });
      cluster::sync();
      const int quads = static_cast<int>(p.n) * (kGroupRows / 4), share = (quads + p.splits - 1) / p.splits;
      const uint32_t red_addr = ptx::smem_addr(red);
      reduce_quads(static_cast<int>(split) * share, min(quads, static_cast<int>(split + 1) * share),
                   [&](int sp, int n, int r) { return cluster::load_peer(red_addr + (n * kGroupRows + r) * 4, sp); });
      cluster::sync();
      return;
    }
  }
#endif
  // Through the workspace: fp32 partials [split][N][rows of the padded weight]; the last block of this row group
  // to arrive (a counter per group) sums them.
  const int64_t mp = s.groups * kGroupRows;
  float* partials = static_cast<float*>(p.workspace);
  emit([&](int r, int n, float v) { partials[(split * p.n + n) * mp + row0 + r] = v; });
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&p.counters[group], 1) == p.splits - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  reduce_quads(0, static_cast<int>(p.n) * (kGroupRows / 4), [&](int sp, int n, int r) {
    return __ldcg(reinterpret_cast<const float4*>(partials + (sp * p.n + n) * mp + row0 + r));
  });
  if (threadIdx.x == 0) p.counters[group] = 0;  // leaves the counters zeroed for the next launch
}

template <typename T, int kNTiles, bool kBulk, bool kEarly>
cudaError_t launch_kernel(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  using C = DecodeConfig<kNTiles>;
  constexpr auto kernel = decode_mm_kernel<T, kNTiles, kBulk, kEarly>;
  const cudaError_t err = allow_dynamic_smem<kernel>(C::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.splits, static_cast<unsigned>(s.groups));
  if (!p.cluster_reduce && !kEarly) {
    kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p, s);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(C::kThreads);
  config.dynamicSmemBytes = C::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute attrs[2] = {};
  unsigned count = 0;
  if (p.cluster_reduce) {
    attrs[count].id = cudaLaunchAttributeClusterDimension;
    attrs[count].val.clusterDim.x = static_cast<unsigned>(p.splits);
    attrs[count].val.clusterDim.y = 1;
    attrs[count].val.clusterDim.z = 1;
    ++count;
  }
  if (kEarly) {
    attrs[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  config.attrs = attrs;
  config.numAttrs = count;
  return cudaLaunchKernelEx(&config, kernel, p, s);
}

template <typename T, int kNTiles, bool kBulk>
cudaError_t launch_config(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  return p.early_launch ? launch_kernel<T, kNTiles, kBulk, true>(p, s, stream)
                        : launch_kernel<T, kNTiles, kBulk, false>(p, s, stream);
}

template <typename T, bool kBulk>
cudaError_t launch_n(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, cudaStream_t stream) {
  if (p.n <= 8) return launch_config<T, 1, kBulk>(p, s, stream);
  if (p.n <= 16) return launch_config<T, 2, kBulk>(p, s, stream);
  if (p.n <= 32) return launch_config<T, 4, kBulk>(p, s, stream);
  return launch_config<T, 8, kBulk>(p, s, stream);
}

template <typename T>
cudaError_t launch(const Sparse24DecodeParams& p, const Sparse24DecodeShape& s, bool bulk, cudaStream_t stream) {
  return bulk ? launch_n<T, true>(p, s, stream) : launch_n<T, false>(p, s, stream);
}

// How a launch of n tokens runs on the current device: bulk copies or cp.async, and whether split-K partials
// meet in a cluster. kAuto on sm_90: bulk copies up to 32 tokens (at 64 the cp.async loader measured faster on
// the H100), cluster sums; kCpAsync is the sm_80 path as a whole (so an sm_90 GPU can test it).
struct LaunchChoice {
  bool valid, bulk, cluster;
};

LaunchChoice choose(DecodeLoader loader, int64_t n, int splits) {
  const bool sm90 = current_device_major() >= 9;
  LaunchChoice c{loader != DecodeLoader::kBulk || sm90, false, false};
  c.bulk = loader == DecodeLoader::kBulk || (loader == DecodeLoader::kAuto && sm90 && n <= 32);
  c.cluster = sm90 && loader != DecodeLoader::kCpAsync && splits > 1 && splits <= 8;
  return c;
}

}  // namespace

cudaError_t sparse24_decode_pack(const Sparse24DecodePackParams& p, cudaStream_t stream) {
  if (p.m < 0 || p.k < 0 || p.k % sparse24::kGroup != 0 || p.meta_layout < 0 || p.meta_layout > 1)
    return cudaErrorInvalidValue;
  const Sparse24DecodeShape s = sparse24_decode_shape(p.m, p.k);
  const int64_t threads = s.row_tiles() * s.chunks * 32;
  if (threads == 0) return cudaSuccess;
  const int64_t blocks = (threads + 255) / 256;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  decode_pack_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p, s);
  return cudaGetLastError();
}

int sparse24_decode_splits(int64_t m, int64_t n, int64_t k, int num_sms) {
  (void)n;
  // Split K only as far as needed to give ~0.7 blocks per SM: each split adds partials to sum and a tail, and
  // the pipeline keeps enough bytes in flight per block (measured on the H100: one split is best from ~96 row
  // groups up, 3-8 on 4096-row layers; re-swept on the H200 at N = 1-32 with every fixed split from 1 to 8, the
  // rule stayed the best median, bench/results/h200_sparse24_decode_splits_graph.json).
  const Sparse24DecodeShape s = sparse24_decode_shape(m, k);
  const int64_t wanted = (static_cast<int64_t>(std::max(num_sms, 1)) * 7 + 9) / 10;
  int64_t splits = (wanted + std::max<int64_t>(s.groups, 1) - 1) / std::max<int64_t>(s.groups, 1);
  splits = std::min<int64_t>({splits, std::max<int64_t>(s.chunks, 1), 8});  // 8: the portable cluster size
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

size_t sparse24_decode_workspace_bytes(int64_t m, int64_t n, int64_t k, int splits, DecodeLoader loader) {
  if (splits <= 1 || choose(loader, n, splits).cluster) return 0;  // no split, or partials summed in a cluster
  const Sparse24DecodeShape s = sparse24_decode_shape(m, k);
  const int64_t tokens = std::min<int64_t>(n, kDecodeMaxTokens);
  return static_cast<size_t>(splits) * tokens * s.row_tiles() * kDecodeTileRows * sizeof(float) +
         static_cast<size_t>(s.groups) * sizeof(int);
}

cudaError_t sparse24_decode_mm(const Sparse24DecodeParams& p, cudaStream_t stream) {
  const Sparse24DecodeShape s = sparse24_decode_shape(p.m, p.k);
  const LaunchChoice choice = choose(p.loader, 0, p.splits);  // (the loader is chosen per slice of tokens below)
  const size_t workspace = sparse24_decode_workspace_bytes(p.m, p.n, p.k, p.splits, p.loader);
  if (!choice.valid || p.m < 0 || p.n < 0 || p.k < 0 || p.k % 8 != 0 || p.x_ld % 8 != 0 || p.splits < 1 ||
      p.splits > std::max<int64_t>(s.chunks, 1) || s.groups > 65535 ||
      (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) || !aligned16(p.x) || !aligned16(p.dvalues) ||
      !aligned16(p.dmeta) || (workspace > 0 && p.workspace == nullptr))
    return cudaErrorInvalidValue;
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  Sparse24DecodeParams q = p;
  q.cluster_reduce = choice.cluster;
  q.early_launch = p.early_launch && current_device_major() >= 9;
  q.counters = nullptr;
  if (workspace > 0) {
    // The counters sit after the partials of 64 tokens, the most one launch holds. They start at zero, and the
    // last block of each group leaves them zeroed again (also for the next slice of a larger N).
    const size_t counters = s.groups * sizeof(int);
    q.counters = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + workspace - counters);
    cudaError_t err = cudaMemsetAsync(q.counters, 0, counters, stream);
    if (err != cudaSuccess) return err;
  }
  return for_each_token_slice(q, kDecodeMaxTokens, [&](const Sparse24DecodeParams& slice) {
    const LaunchChoice c = choose(p.loader, slice.n, p.splits);
    return p.dtype == DType::kFloat16 ? launch<__half>(slice, s, c.bulk, stream)
                                      : launch<__nv_bfloat16>(slice, s, c.bulk, stream);
  });
}

}  // namespace spmm::kernels
