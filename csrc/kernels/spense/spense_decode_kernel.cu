// The Spense decode kernel of spense_decode.h (index rules: spense_decode_layout.h).
//
// Block = one row group (64 dense rows or 128 2:4 rows) over its split of K, as a producer/consumer pipeline over a
// ring of shared-memory stages, with no block-wide barrier in the main loop:
//  - the producer warp fills a stage per 128-column chunk: the group's weight bytes (sm_90: one lane issues TMA
//    boxes; otherwise the warp's cp.async with zero fill) and x's chunk (cp.async), and the stage's `full` mbarrier
//    completes once all of it has landed (each lane's cp.async arrival, plus the TMA issue's arrival and bytes);
//  - eight consumer warps wait on `full`, take A fragments by ldmatrix from the swizzled region, x by ldmatrix,
//    run mma.sp (2:4 group) or mma.sync (dense group), and release the stage on `empty`.
// Epilogue: the accumulators go to shared memory as [token][128 slots]; the block's outputs (row, token) are then
// summed over the splits (cluster: from the peers' shared memory through DSMEM; otherwise the last block of the
// group reads all splits' partials from the workspace) and, for dense groups, over the two half-chunks, in a fixed
// order (deterministic), the bias added, and written once to y[token][row_index[row]].
#include <cuda.h>  // CUtensorMap and its enums (the encoder itself is fetched through the runtime: no -lcuda)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>

#include "kernels/common/cluster.cuh"
#include "kernels/common/epilogue.cuh"
#include "kernels/common/launch.h"
#include "kernels/common/ptx.cuh"
#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/sparse24/sparse24_layout.h"
#include "kernels/spense/spense_decode.h"
#include "kernels/spense/spense_decode_layout.h"

namespace spmm::kernels {
namespace {

namespace L = spense_decode;

template <int kNTiles>  // 8-token tiles: N <= 8 * kNTiles
struct Config {
  static constexpr int kXRows = 8 * kNTiles;
  static constexpr int kStages = kNTiles >= 4 ? 3 : 4;  // two blocks per SM on Hopper at any N
  static constexpr uint32_t kXBytes = kXRows * L::kXPitch * 2;
  // Stages start 1 KB apart: TMA's 128-byte swizzle repeats every 1 KB, and the region must start on one.
  static constexpr uint32_t kStageBytes = (L::kABytes + L::kMetaBytes + kXBytes + 1023) / 1024 * 1024;
  static constexpr size_t kSmemBytes = size_t{kStages} * kStageBytes + 1024;  // + aligning the ring to 1 KB
  static constexpr int kThreads = (L::kWarps + 1) * 32;
  static_assert(kXRows * L::kRegionRows * 4 <= kStages * kStageBytes, "the partials reuse the ring");
};

struct KernelArgs {
  CUtensorMap dense_map, values_map, meta_map;  // TMA loader only
  SpenseDecodeParams p;                         // (x, y and n of this launch's slice of tokens)
  SpenseDecodeShape s;
  int* counters;  // workspace split-K: one per group, zero between launches
  int values_granule, meta_granule, dense_granule;
  bool cluster;  // split-K summed across the group's cluster (sm_90)
};

// ------------------------------------------------------------------------------------------- producer ---------
// One RowCopy of a stage by the producer warp's lanes, in pieces of `granule` bytes (0: byte loads stored as 4-byte
// words), to dst(row, byte) in the stage.
template <typename Dst>
__device__ __forceinline__ void copy_rows(unsigned char* stage, const unsigned char* tensor, const L::RowCopy& c,
                                          int granule, int lane, Dst&& dst) {
  const int piece = granule == 0 ? 4 : granule;
  const int pieces = c.rows * c.row_bytes / piece;
  for (int v = lane; v < pieces; v += 32) {
    const L::Piece pc = L::piece_of(v, c.row_bytes, piece);
    const int bytes = L::piece_bytes(pc.row < c.rows_valid, c.limit, pc.byte, piece);
    const unsigned char* from = bytes > 0 ? tensor + c.offset + pc.row * c.stride + pc.byte : tensor;
    unsigned char* to = stage + dst(pc.row, pc.byte);
    if (granule == 16) {
      ptx::cp_async_16(to, from, bytes);
    } else if (granule == 8) {
      ptx::cp_async_8(to, from, bytes);
    } else if (granule == 4) {
      ptx::cp_async_4(to, from, bytes);
    } else {
      uint32_t word = 0;
      for (int b = 0; b < bytes; ++b) word |= static_cast<uint32_t>(from[b]) << (8 * b);
      *reinterpret_cast<uint32_t*>(to) = word;
    }
  }
}

// Whether a block's producer copies canonical metadata with plain byte loads (rows of an odd byte count, cp.async
// loader): its lanes then arrive on `full` once more each, after those stores.
template <bool kTma>
__device__ __forceinline__ bool byte_loaded_meta(const KernelArgs& a, const L::Group& grp) {
  return !kTma && !grp.dense && a.p.meta_fragments == nullptr && a.meta_granule == 0;
}

template <typename T, int kNTiles, bool kTma>
__device__ __forceinline__ void produce(const KernelArgs& a, const L::Group& grp, int64_t group, int64_t c_begin,
                                        int count, unsigned char* ring, uint64_t* full, uint64_t* empty, int lane) {
  using C = Config<kNTiles>;
  const SpenseDecodeParams& p = a.p;
  const T* x = static_cast<const T*>(p.x);
  const auto* dense = static_cast<const unsigned char*>(p.dense);
  const auto* values = static_cast<const unsigned char*>(p.values);
  const auto* meta = static_cast<const unsigned char*>(p.meta);
  const auto* fragments = static_cast<const unsigned char*>(p.meta_fragments);
  const int64_t sparse_group = group - a.s.dense_groups;
  const bool sync_meta = byte_loaded_meta<kTma>(a, grp);
  if (kTma && lane == 0) {
    if (grp.dense) {
      ptx::prefetch_tensor_map(&a.dense_map);
    } else {
      ptx::prefetch_tensor_map(&a.values_map);
      if (fragments == nullptr) ptx::prefetch_tensor_map(&a.meta_map);
    }
  }
  for (int i = 0; i < count; ++i) {
    const int st = i % C::kStages;
    if (i >= C::kStages) ptx::mbar_wait(&empty[st], (i / C::kStages - 1) & 1);
    unsigned char* stage = ring + st * C::kStageBytes;
    const int64_t chunk = c_begin + i;
    T* xs = reinterpret_cast<T*>(stage + L::kABytes + L::kMetaBytes);
    for (int v = lane; v < C::kXRows * (L::kChunkK / 8); v += 32) {
      const L::XPiece xp = L::x_piece(v, chunk, p.k, p.n);
      ptx::cp_async_16(xs + xp.stage_offset, xp.bytes > 0 ? x + xp.token * p.x_ld + xp.col : x, xp.bytes);
    }
    if constexpr (!kTma) {
      auto a_region = [](bool dense_rows) {
        return [dense_rows](int row, int byte) { return L::a_region_offset(dense_rows, row, byte); };
      };
      if (grp.dense) {
        copy_rows(stage, dense, L::dense_copy(grp, chunk, p.k, p.dense_ld), a.dense_granule, lane, a_region(true));
      } else {
        copy_rows(stage, values, L::values_copy(grp, chunk, p.k), a.values_granule, lane, a_region(false));
        if (fragments != nullptr) {
          const unsigned char* src = fragments + L::fragment_meta_offset(sparse_group, a.s.chunks, chunk);
          for (int v = lane; v < static_cast<int>(L::kMetaBytes / 16); v += 32)
            ptx::cp_async_16(stage + L::kABytes + v * 16, src + v * 16, 16);
        } else {
          copy_rows(stage, meta, L::meta_copy(grp, chunk, p.k), a.meta_granule, lane,
                    [](int row, int byte) { return L::kABytes + row * L::kMetaRowBytes + byte; });
        }
      }
    }
    ptx::cp_async_mbar_arrive(&full[st]);  // this lane's arrival, once its cp.async have landed
    if (sync_meta) ptx::mbar_arrive(&full[st]);  // and its byte-loaded metadata (a release of its plain stores)
    if (kTma && lane == 0) {
      if (grp.dense) {
        ptx::mbar_arrive_expect_tx(&full[st], 2 * L::kDenseHalfBytes);
        for (int half = 0; half < 2; ++half) {
          const L::Box box = L::dense_box(chunk, grp.src_row, half);
          ptx::tma_load_2d(stage + box.smem, &a.dense_map, static_cast<int32_t>(box.col),
                           static_cast<int32_t>(box.row), &full[st]);
        }
      } else {
        ptx::mbar_arrive_expect_tx(&full[st], L::kABytes + L::kMetaBytes);
        const L::Box vbox = L::values_box(chunk, grp.src_row);
        ptx::tma_load_2d(stage + vbox.smem, &a.values_map, static_cast<int32_t>(vbox.col),
                         static_cast<int32_t>(vbox.row), &full[st]);
        if (fragments != nullptr) {
          ptx::bulk_copy_g2s(stage + L::kABytes, fragments + L::fragment_meta_offset(sparse_group, a.s.chunks, chunk),
                             L::kMetaBytes, &full[st]);
        } else {
          const L::Box mbox = L::meta_box(chunk, grp.src_row);
          ptx::tma_load_2d(stage + mbox.smem, &a.meta_map, static_cast<int32_t>(mbox.col),
                           static_cast<int32_t>(mbox.row), &full[st]);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------- consumers --------
// Every address a lane reads is its address in stage 0 (fixed for the kernel, computed once before the loop, in
// shared-space bytes) plus the stage's offset.
template <typename T, int kNTiles, bool kDense>
__device__ __forceinline__ void consume(const KernelArgs& a, const L::Group& grp, int64_t c_begin, int count,
                                        const unsigned char* ring, uint64_t* full, uint64_t* empty, int warp,
                                        int lane, float (&acc)[kNTiles][4]) {
  using C = Config<kNTiles>;
  constexpr uint32_t kXOffset = L::kABytes + L::kMetaBytes;
  const uint32_t ring_addr = ptx::smem_addr(ring);
  uint32_t a_off[L::kSteps];
#pragma unroll
  for (int s = 0; s < L::kSteps; ++s) a_off[s] = ptx::opaque(ring_addr + L::a_ldmatrix_offset(warp, lane, s));
  const uint32_t x_off = ptx::opaque(ring_addr + kXOffset + L::x_lane_bytes(kDense, warp, lane));
  const bool fragment_meta = a.p.meta_fragments != nullptr;
  const uint32_t meta_off = ptx::opaque(
      ring_addr + L::kABytes + 16 * (fragment_meta ? L::meta_fragment_index(warp, lane) : L::meta_row(warp, lane, 0)));
  const bool meta_lane = !fragment_meta || lane % 4 < 2;
  const uint32_t selector = L::meta_selector(lane);
  // 2:4 stages whose canonical metadata has zero-filled codes to fix: all (this warp's tile runs past the rows), or
  // the stage of K's last, partial chunk.
  [[maybe_unused]] const bool tail_rows = (warp + 1) * L::kTileRows > grp.rows;
  [[maybe_unused]] const int64_t tail_stage = a.p.k % L::kChunkK != 0 ? a.s.chunks - 1 - c_begin : -1;
  for (int i = 0; i < count; ++i) {
    const int st = i % C::kStages;
    ptx::mbar_wait(&full[st], (i / C::kStages) & 1);
    const uint32_t stage = st * C::kStageBytes;  // (the offsets above hold the ring's address)
    if constexpr (kDense) {
#pragma unroll
      for (int load = 0; load < 2; ++load) {
        uint32_t a0[4], a1[4];
        ptx::ldmatrix_x4(a0, stage + a_off[2 * load]);
        ptx::ldmatrix_x4(a1, stage + a_off[2 * load + 1]);
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          uint32_t b[4];
          ptx::ldmatrix_x4(b, stage + x_off + j * L::kXTileBytes + load * L::kXLoadBytes);
          ptx::mma_16816<T>(acc[j], a0, b[0], b[1]);
          ptx::mma_16816<T>(acc[j], a1, b[2], b[3]);
        }
      }
    } else {
      uint32_t meta[L::kSteps];
      if (fragment_meta) {
        const uint4 m = meta_lane ? ptx::lds_128(stage + meta_off) : make_uint4(0, 0, 0, 0);
        meta[0] = m.x, meta[1] = m.y, meta[2] = m.z, meta[3] = m.w;
      } else {
        // rows g and g + 8: meta_row(warp, lane, 1) is 8 rows further
        const uint4 lo = ptx::lds_128(stage + meta_off), hi = ptx::lds_128(stage + meta_off + 8 * L::kMetaRowBytes);
        meta[0] = L::meta_register(lo.x, hi.x, selector);
        meta[1] = L::meta_register(lo.y, hi.y, selector);
        meta[2] = L::meta_register(lo.z, hi.z, selector);
        meta[3] = L::meta_register(lo.w, hi.w, selector);
        if (tail_rows || i == tail_stage) {  // warp-uniform: only tails pay
#pragma unroll
          for (int s = 0; s < L::kSteps; ++s) meta[s] = L::fill_empty_codes(meta[s]);
        }
      }
#pragma unroll
      for (int s = 0; s < L::kSteps; ++s) {
        uint32_t af[4];
        ptx::ldmatrix_x4(af, stage + a_off[s]);
        const uint4 a4 = make_uint4(af[0], af[1], af[2], af[3]);
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          uint32_t b[4];
          ptx::ldmatrix_x4(b, stage + x_off + j * L::kXTileBytes + s * L::kXLoadBytes);
          ptx::mma_sp_16832<T>(acc[j], a4, b, meta[s]);
        }
      }
    }
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive(&empty[st]);
  }
}

// ----------------------------------------------------------------------------------------------- kernel -------
template <typename T, int kNTiles, bool kTma>
__global__ void __launch_bounds__(Config<kNTiles>::kThreads) spense_decode_kernel(const __grid_constant__ KernelArgs a) {
  using C = Config<kNTiles>;
  extern __shared__ unsigned char smem_raw[];
  __shared__ uint64_t full[C::kStages], empty[C::kStages];
  __shared__ int is_last_block;
  unsigned char* ring = smem_raw + (1024 - ptx::smem_addr(smem_raw) % 1024) % 1024;
  const SpenseDecodeParams& p = a.p;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t group = blockIdx.y, split = blockIdx.x;
  const L::Group grp = L::group_of(group, p.md, p.ms);
  const int64_t c_begin = split * a.s.chunks / p.splits, c_end = (split + 1) * a.s.chunks / p.splits;
  const int count = static_cast<int>(c_end - c_begin);
  if (threadIdx.x == 0) {
    for (int st = 0; st < C::kStages; ++st) {
      // The producer's lanes (cp.async arrivals, plus plain arrivals after byte-loaded metadata) and the TMA issue.
      ptx::mbar_init(&full[st], 32 * (byte_loaded_meta<kTma>(a, grp) ? 2 : 1) + (kTma ? 1 : 0));
      ptx::mbar_init(&empty[st], L::kWarps);
    }
    ptx::mbar_init_fence();
  }
  __syncthreads();

  float acc[kNTiles][4] = {};
  if (warp == L::kWarps) {
    produce<T, kNTiles, kTma>(a, grp, group, c_begin, count, ring, full, empty, lane);
  } else if (grp.dense) {
    consume<T, kNTiles, true>(a, grp, c_begin, count, ring, full, empty, warp, lane, acc);
  } else {
    consume<T, kNTiles, false>(a, grp, c_begin, count, ring, full, empty, warp, lane, acc);
  }

  // Partials [token][128 slots] in the (now idle) ring.
  __syncthreads();
  float* red = reinterpret_cast<float*>(ring);
  if (warp < L::kWarps) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int token = L::acc_token(j, lane, i);
        if (token < p.n) red[token * L::kRegionRows + L::acc_slot(warp, lane, i)] = acc[j][i];
      }
  }

  // Sums quads [begin, end) of the block's outputs (quad = 4 rows of one token) over `sources` splits' partials,
  // load(split, token, slot) giving 4 consecutive slots; dense groups add the slots of both half-chunks.
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t m = p.md + p.ms;
  auto reduce = [&](int begin, int end, int sources, auto&& load) {
    for (int idx = begin + static_cast<int>(threadIdx.x); idx < end; idx += C::kThreads) {
      const auto [token, r] = L::quad_of(idx, grp.dense);
      if (r >= grp.rows) continue;
      float sum[4] = {};
#pragma unroll 4
      for (int sp = 0; sp < sources; ++sp) {
        float4 v = load(sp, token, r);
        sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
        if (grp.dense) {
          v = load(sp, token, r + L::kDenseGroupRows);
          sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (r + j >= grp.rows) break;
        const int64_t block_row = grp.first_row + r + j;
        const int64_t out = p.row_index != nullptr ? p.row_index[block_row] : block_row;
        if (out >= 0 && out < m) y[token * p.y_ld + out] = from_float<T>(sum[j] + bias_at(bias, out));
      }
    }
  };
  const int quads = L::quads_of(p.n, grp.dense);
  if (p.splits == 1) {
    __syncthreads();
    reduce(0, quads, 1, [&](int, int token, int slot) {
      return *reinterpret_cast<const float4*>(red + token * L::kRegionRows + slot);
    });
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (a.cluster) {
    // Block `split` sums its share of the group's outputs from every block's partials (DSMEM, split order); the
    // second barrier keeps each block's shared memory alive until its peers have read it.
    cluster::sync();
    const uint32_t red_addr = ptx::smem_addr(red);
    const int block = static_cast<int>(split);
    reduce(L::share_begin(quads, p.splits, block), L::share_end(quads, p.splits, block), p.splits,
           [&](int sp, int token, int slot) {
             return cluster::load_peer(red_addr + (token * L::kRegionRows + slot) * 4, sp);
           });
    cluster::sync();
    return;
  }
#endif
  // Through the workspace: partials [split][token][group][128 slots]; the last block of the group to arrive sums.
  float* partials = static_cast<float*>(p.workspace);
  const int64_t groups = a.s.dense_groups + a.s.sparse_groups;
  __syncthreads();
  for (int idx = threadIdx.x; idx < static_cast<int>(p.n) * (L::kRegionRows / 4); idx += C::kThreads) {
    const int token = idx / (L::kRegionRows / 4), slot = (idx % (L::kRegionRows / 4)) * 4;
    *reinterpret_cast<float4*>(partials + ((split * p.n + token) * groups + group) * L::kRegionRows + slot) =
        *reinterpret_cast<const float4*>(red + token * L::kRegionRows + slot);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last_block = atomicAdd(&a.counters[group], 1) == p.splits - 1;
  __syncthreads();
  if (!is_last_block) return;
  __threadfence();
  reduce(0, quads, p.splits, [&](int sp, int token, int slot) {
    return __ldcg(reinterpret_cast<const float4*>(partials + ((sp * p.n + token) * groups + group) * L::kRegionRows +
                                                  slot));
  });
  if (threadIdx.x == 0) a.counters[group] = 0;  // zero again for the next launch
}

// ------------------------------------------------------------------------------------------- host side --------
template <typename T, int kNTiles, bool kTma>
cudaError_t launch_kernel(const KernelArgs& a, cudaStream_t stream) {
  using C = Config<kNTiles>;
  constexpr auto kernel = spense_decode_kernel<T, kNTiles, kTma>;
  const cudaError_t err = allow_dynamic_smem<kernel>(C::kSmemBytes);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t config =
      cluster_split_config(a.p.splits, a.s.groups(), C::kThreads, C::kSmemBytes, &attr, stream);
  if (!a.cluster) config.numAttrs = 0;
  return cudaLaunchKernelEx(&config, kernel, a);
}

template <typename T, bool kTma>
cudaError_t launch_tokens(const KernelArgs& a, cudaStream_t stream) {
  if (a.p.n <= 8) return launch_kernel<T, 1, kTma>(a, stream);
  if (a.p.n <= 16) return launch_kernel<T, 2, kTma>(a, stream);
  if (a.p.n <= 32) return launch_kernel<T, 4, kTma>(a, stream);
  return launch_kernel<T, 8, kTma>(a, stream);
}

cudaError_t launch(const KernelArgs& a, bool tma, cudaStream_t stream) {
  if (a.p.dtype == DType::kFloat16)
    return tma ? launch_tokens<__half, true>(a, stream) : launch_tokens<__half, false>(a, stream);
  return tma ? launch_tokens<__nv_bfloat16, true>(a, stream) : launch_tokens<__nv_bfloat16, false>(a, stream);
}

// cuTensorMapEncodeTiled, fetched from the driver through the runtime once.
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled tensor_map_encoder() {
  static const EncodeTiled encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                                             &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<EncodeTiled>(fn);
  }();
  return encode;
}

struct MapKey {
  const void* base;
  L::MapShape shape;
  bool operator==(const MapKey& o) const {
    return base == o.base && shape.cols == o.shape.cols && shape.rows == o.shape.rows &&
           shape.stride == o.shape.stride && shape.box_cols == o.shape.box_cols &&
           shape.box_rows == o.shape.box_rows && shape.element_bytes == o.shape.element_bytes &&
           shape.swizzle == o.shape.swizzle;
  }
};

// Encodes the tensor map of `key`, or takes it from a small per-thread cache: a layer's weights are the same
// tensors call after call, and an eager call should not pay the encoding each time. A map depends on nothing but
// its key, so a hit is always the map that encoding would give.
bool tensor_map(const void* base, const L::MapShape& shape, CUtensorMap* map) {
  constexpr int kEntries = 16;
  struct Cache {
    MapKey keys[kEntries] = {};
    CUtensorMap maps[kEntries];
    int used = 0, next = 0;
  };
  thread_local Cache cache;
  const MapKey key{base, shape};
  for (int i = 0; i < cache.used; ++i)
    if (cache.keys[i] == key) {
      *map = cache.maps[i];
      return true;
    }
  const EncodeTiled encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(shape.cols), static_cast<cuuint64_t>(shape.rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(shape.stride)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(shape.box_cols), static_cast<cuuint32_t>(shape.box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult status = encode(
      map, shape.element_bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 2,
      const_cast<void*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      shape.swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) return false;
  const int slot = cache.next;
  cache.keys[slot] = key;
  cache.maps[slot] = *map;
  cache.next = (slot + 1) % kEntries;
  cache.used = std::max(cache.used, slot + 1);
  return true;
}

bool use_cluster(const SpenseDecodeParams& p, int major) {
  return major >= 9 && p.loader != SpenseLoader::kCpAsync && p.splits > 1 && p.splits <= 8;
}

}  // namespace

SpenseDecodeShape spense_decode_shape(int64_t md, int64_t ms, int64_t k) {
  return {L::dense_groups(md), L::sparse_groups(ms), L::ceil_div64(k, L::kChunkK)};
}

int spense_decode_splits(int64_t md, int64_t ms, int64_t n, int64_t k, int num_sms) {
  // The 2:4 decode kernel's rule on as many 128-row groups (a dense group of 64 rows streams about the bytes of a
  // 2:4 group of 128: 128 vs 144 per column), so plain 2:4 splits exactly as today.
  const SpenseDecodeShape s = spense_decode_shape(md, ms, k);
  return sparse24_decode_splits(s.groups() * kDecodeTileRows * kDecodeGroupTiles, n, k, num_sms);
}

size_t spense_decode_workspace_bytes(int64_t md, int64_t ms, int64_t n, int64_t k, int splits, SpenseLoader loader) {
  SpenseDecodeParams p{};
  p.loader = loader;
  p.splits = splits;
  if (splits <= 1 || use_cluster(p, current_device_major())) return 0;
  const SpenseDecodeShape s = spense_decode_shape(md, ms, k);
  const int64_t tokens = std::min<int64_t>(n, L::kMaxTokens);
  return static_cast<size_t>(splits) * tokens * s.groups() * L::kRegionRows * sizeof(float) +
         static_cast<size_t>(s.groups()) * sizeof(int);
}

bool spense_decode_tma_possible(const SpenseDecodeParams& p) {
  if (p.k == 0 || current_device_major() < 9 || tensor_map_encoder() == nullptr) return false;
  const bool dense_ok = p.md == 0 || (aligned16(p.dense) && (p.dense_ld * 2) % 16 == 0);
  const bool meta_ok = p.meta_fragments != nullptr
                           ? aligned16(p.meta_fragments)
                           : aligned16(p.meta) && sparse24::meta_bytes_per_row(p.k) % 16 == 0;
  const bool sparse_ok = p.ms == 0 || (aligned16(p.values) && p.k % 16 == 0 && meta_ok);
  return dense_ok && sparse_ok;
}

cudaError_t spense_decode_mm(const SpenseDecodeParams& p, cudaStream_t stream) {
  const SpenseDecodeShape s = spense_decode_shape(p.md, p.ms, p.k);
  const int major = current_device_major();
  const bool shape_ok = p.md >= 0 && p.ms >= 0 && p.n >= 0 && p.k >= 0 && p.k % sparse24::kGroup == 0 &&
                        p.x_ld >= p.k && p.x_ld % 8 == 0 && p.y_ld >= p.md + p.ms && p.splits >= 1 &&
                        p.splits <= std::max<int64_t>(s.chunks, 1) && s.groups() <= 65535 &&
                        (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16);
  const bool dense_ok = p.md == 0 || (p.dense != nullptr && aligned16(p.dense) && p.dense_ld >= p.k &&
                                      p.dense_ld % 2 == 0);
  const bool sparse_ok = p.ms == 0 || (p.values != nullptr && aligned16(p.values) &&
                                       (p.meta_fragments != nullptr ? aligned16(p.meta_fragments)
                                                                    : p.meta != nullptr && aligned16(p.meta)));
  const bool tma_possible = spense_decode_tma_possible(p);
  const bool tma = p.loader == SpenseLoader::kTma || (p.loader == SpenseLoader::kAuto && tma_possible);
  const size_t workspace = spense_decode_workspace_bytes(p.md, p.ms, p.n, p.k, p.splits, p.loader);
  if (!shape_ok || !dense_ok || !sparse_ok || !aligned16(p.x) || (tma && !tma_possible) ||
      (workspace > 0 && p.workspace == nullptr))
    return cudaErrorInvalidValue;
  if (p.md + p.ms == 0 || p.n == 0) return cudaSuccess;

  KernelArgs a{};
  a.p = p;
  a.s = s;
  a.cluster = use_cluster(p, major);
  if (tma) {
    const bool ok = (p.md == 0 || tensor_map(p.dense, L::dense_map(p.md, p.k, p.dense_ld), &a.dense_map)) &&
                    (p.ms == 0 || tensor_map(p.values, L::values_map(p.ms, p.k), &a.values_map)) &&
                    (p.ms == 0 || p.meta_fragments != nullptr ||
                     tensor_map(p.meta, L::meta_map(p.ms, p.k), &a.meta_map));
    if (!ok) return cudaErrorInvalidValue;
  } else {
    a.values_granule = L::copy_granule(p.k);
    a.meta_granule = L::copy_granule(sparse24::meta_bytes_per_row(p.k));
    a.dense_granule = L::copy_granule(p.dense_ld * 2);
  }
  if (workspace > 0) {
    // Counters after the partials of 64 tokens (the most one launch holds): zero, and left zero by each launch.
    const size_t counters = static_cast<size_t>(s.groups()) * sizeof(int);
    a.counters = reinterpret_cast<int*>(static_cast<char*>(p.workspace) + workspace - counters);
    const cudaError_t err = cudaMemsetAsync(a.counters, 0, counters, stream);
    if (err != cudaSuccess) return err;
  }
  return for_each_token_slice(p, L::kMaxTokens, [&](const SpenseDecodeParams& slice) {
    KernelArgs b = a;
    b.p = slice;
    return launch(b, tma, stream);
  });
}

}  // namespace spmm::kernels
