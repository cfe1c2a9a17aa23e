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

}  // namespace spmm::kernels::cluster
