// Thread-block cluster pieces (sm_90) shared by the kernels that split K over the blocks of a cluster and sum the
// fp32 partials through distributed shared memory: no workspace, no counters, deterministic (split order).
#pragma once

#include <cstdint>

#include "kernels/common/ptx.cuh"

namespace spmm::kernels::cluster {

__device__ __forceinline__ void sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// One float4 of block `rank`'s shared memory at the address `addr` has in this block.
__device__ __forceinline__ float4 load_peer(uint32_t addr, int rank) {
  uint32_t peer;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(peer) : "r"(addr), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(peer) : "memory");
  return v;
}

// Every block of the cluster has left its partials [n][kRows] (fp32) at `partials` in its own shared memory; block
// `rank` of `splits` sums its share of the n x kRows outputs over the blocks in rank order and hands each sum to
// store(row, token, sum), for rows < rows_left. Called by every thread of every block; the second barrier keeps each
// block's shared memory alive until its peers have read it.
template <int kRows, typename Store>
__device__ __forceinline__ void reduce_partials(const float* partials, int n, int rank, int splits, int64_t rows_left,
                                                Store&& store) {
  sync();
  const int quads = n * (kRows / 4), share = (quads + splits - 1) / splits;
  const uint32_t base = ptx::smem_addr(partials);
  for (int idx = rank * share + threadIdx.x; idx < min(quads, (rank + 1) * share); idx += blockDim.x) {
    const int token = idx / (kRows / 4), row = (idx % (kRows / 4)) * 4;
    if (row >= rows_left) continue;
    float sum[4] = {};
#pragma unroll 8
    for (int sp = 0; sp < splits; ++sp) {
      const float4 v = load_peer(base + (token * kRows + row) * 4, sp);
      sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (row + j < rows_left) store(row + j, token, sum[j]);
  }
  sync();
}

}  // namespace spmm::kernels::cluster
