// sm_90a warpgroup MMA with a 2:4-sparse A operand from registers (wgmma.mma_async.sp ... RS form), for the
// decode kernel's experimental wgmma consumers. Fragment and metadata registers are those of mma.sp m16n8k32 (see
// ../sparse24/WGMMA_SP_RESEARCH.md); warp (rank % 4) = w of the warpgroup supplies rows 16w .. 16w + 15.
// B comes from shared memory through a matrix descriptor (K-major, no swizzle). Written without a device run:
// verify with spmm_decode_selftest before use.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace spmm::kernels::wgmma {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SPMM_WGMMA_ENABLED 1
#endif

// Shared-memory matrix descriptor, no swizzle: start address, LBO (K-adjacent core matrices) and SBO (8-row groups
// along N), all in bytes; each field holds (bytes & 0x3FFFF) >> 4.
__device__ __forceinline__ uint64_t descriptor(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16 |
         static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
}

__device__ __forceinline__ void fence() {
#ifdef SPMM_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit_group() {
#ifdef SPMM_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_all() {
#ifdef SPMM_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Shared memory written by ordinary (generic-proxy) copies, made visible to the wgmma's async-proxy reads.
__device__ __forceinline__ void fence_proxy_async_shared() {
#ifdef SPMM_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accumulator registers while a wgmma may still write them.
template <int kRegs>
__device__ __forceinline__ void pin(float (&d)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[4 * kNTiles] += A (64 x 32, 2:4, this warp's 16 rows: a, meta) * B (32 x 8 kNTiles, descriptor b). The
// instruction differs only in N and the input type (TY: "f16" or "bf16"): one macro per N, used for both types.
#define SPMM_WGMMA_SP_INPUTS "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(b), "r"(meta), "r"(1)

#define SPMM_WGMMA_SP_N8(TY)                                                 \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %10, 0;\n"                \
               " wgmma.mma_async.sp.sync.aligned.m64n8k32.f32." TY "." TY    \
               " {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, %9, 0, p, 1, 1, 0;\n}\n"  \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])              \
               : SPMM_WGMMA_SP_INPUTS)

#define SPMM_WGMMA_SP_N16(TY)                                                                                    \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %14, 0;\n"                                                    \
               " wgmma.mma_async.sp.sync.aligned.m64n16k32.f32." TY "." TY                                       \
               " {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, %13, 0, p, 1, 1, 0;\n}\n"                      \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])  \
               : SPMM_WGMMA_SP_INPUTS)

#define SPMM_WGMMA_SP_N32(TY)                                                                                          \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %22, 0;\n"                                                          \
               " wgmma.mma_async.sp.sync.aligned.m64n32k32.f32." TY "." TY                                             \
               " {%0,%1,%2,%3,%4,%5,%6,%7,"                                                                            \
               "%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, %21, 0, p, 1, 1, 0;\n}\n"                      \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),       \
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])  \
               : SPMM_WGMMA_SP_INPUTS)

#define SPMM_WGMMA_SP_N64(TY)                                                                                             \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %38, 0;\n"                                                             \
               " wgmma.mma_async.sp.sync.aligned.m64n64k32.f32." TY "." TY                                                \
               " {%0,%1,%2,%3,%4,%5,%6,%7,"                                                                               \
               "%8,%9,%10,%11,%12,%13,%14,%15,"                                                                           \
               "%16,%17,%18,%19,%20,%21,%22,%23,"                                                                         \
               "%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, %37, 0, p, 1, 1, 0;\n}\n"                       \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),          \
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),    \
                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])   \
               : SPMM_WGMMA_SP_INPUTS)

template <typename T, int kNTiles>
__device__ __forceinline__ void mma_sp(float (&d)[4 * kNTiles], const uint4& a, uint64_t b, uint32_t meta) {
#ifdef SPMM_WGMMA_ENABLED
  constexpr bool kHalf = std::is_same_v<T, __half>;
  static_assert(kHalf || std::is_same_v<T, __nv_bfloat16>, "fp16 or bf16");
  if constexpr (kNTiles == 1) {
    if constexpr (kHalf) SPMM_WGMMA_SP_N8("f16"); else SPMM_WGMMA_SP_N8("bf16");
  } else if constexpr (kNTiles == 2) {
    if constexpr (kHalf) SPMM_WGMMA_SP_N16("f16"); else SPMM_WGMMA_SP_N16("bf16");
  } else if constexpr (kNTiles == 4) {
    if constexpr (kHalf) SPMM_WGMMA_SP_N32("f16"); else SPMM_WGMMA_SP_N32("bf16");
  } else {
    static_assert(kNTiles == 8, "8, 16, 32 or 64 tokens");
    if constexpr (kHalf) SPMM_WGMMA_SP_N64("f16"); else SPMM_WGMMA_SP_N64("bf16");
  }
#else
  __trap();
#endif
}

#undef SPMM_WGMMA_SP_INPUTS
#undef SPMM_WGMMA_SP_N8
#undef SPMM_WGMMA_SP_N16
#undef SPMM_WGMMA_SP_N32
#undef SPMM_WGMMA_SP_N64

}  // namespace spmm::kernels::wgmma
