// The rules that choose among the 2:4 kernels, in one place for C++ (the ops) and Python (spmm._C exports them to
// spmm.ops, which the layers read to know which kernel layouts to build): plain constants and constexpr functions,
// no includes beyond <cstdint>, so the stable-ABI module can read them too.
#pragma once

#include <cstdint>

namespace spmm::kernels {

// The three 2:4 kernels a CUDA call can take.
enum class Sparse24Kernel : int {
  kDecode = 0,   // the weight-streaming decode kernel (any shape, any N; best for a few tokens)
  kSm90Gemm = 1, // the Hopper CUTLASS GEMM (wgmma.sp), reads the canonical values and its own metadata
  kSm80Gemm = 2, // the Ampere CUTLASS GEMM (mma.sp), reads its own padded copy of the weight
};

// Which kernels this build holds (the kernel families CMake built; a CPU-only build holds none).
#if defined(SPMM_HAS_SPARSE24_SM90)
constexpr bool kSparse24Sm90Built = true;
#else
constexpr bool kSparse24Sm90Built = false;
#endif
#if defined(SPMM_HAS_SPARSE24_SM80)
constexpr bool kSparse24Sm80Built = true;
#else
constexpr bool kSparse24Sm80Built = false;
#endif

// The Hopper GEMM's shape limits: out_features % 8 (TMA writes 16-byte columns of y^T), in_features % 16 (the
// compressed rows TMA reads are 16-byte multiples), both within CUTLASS's int problem shape.
constexpr int64_t kSm90RowMultiple = 8;
constexpr int64_t kSm90ColMultiple = 16;
constexpr int64_t kSparse24GemmMaxDim = INT32_MAX;
constexpr bool sparse24_sm90_shape_supported(int64_t m, int64_t k) {
  return m > 0 && k > 0 && m % kSm90RowMultiple == 0 && k % kSm90ColMultiple == 0 && m <= kSparse24GemmMaxDim &&
         k <= kSparse24GemmMaxDim;
}

// The prefill GEMM a device runs for a weight [m, k], or kDecode where it runs none (the decode kernel then takes
// every N). compute_capability: major * 10 + minor (90 = H100/H200, 80/86/89 = Ampere/Ada). The Hopper GEMM needs
// the sm_90a build and a 9.0 device; the Ampere one runs on 8.x and, where the build has its sm_90a code, on 9.0
// (for shapes the Hopper GEMM does not take).
constexpr Sparse24Kernel sparse24_prefill_gemm(int64_t m, int64_t k, int compute_capability, bool sm90_built,
                                               bool sm80_built) {
  if (sm90_built && compute_capability == 90 && sparse24_sm90_shape_supported(m, k)) return Sparse24Kernel::kSm90Gemm;
  if (sm80_built && m > 0 && k > 0 && (compute_capability / 10 == 8 || compute_capability == 90)) {
    return Sparse24Kernel::kSm80Gemm;
  }
  return Sparse24Kernel::kDecode;
}
constexpr Sparse24Kernel sparse24_prefill_gemm(int64_t m, int64_t k, int compute_capability) {
  return sparse24_prefill_gemm(m, k, compute_capability, kSparse24Sm90Built, kSparse24Sm80Built);
}

// Up to how many tokens the weight-streaming decode kernel runs for a weight [m, k]; above it a GEMM, where there is
// one. On Hopper (hopper_gemm: the sm_90a GEMM takes the weight) its 32-token stream-K tile wins from 9 tokens up
// on all but the smallest layers, from 17 up on all (H200 sweep, bench/results/h200_sparse24_sm90_config_sweep_*:
// at N = 16 the decode kernel is ahead only on weights of at most 6144 x 4096, at N = 8 on 13 of 14 layers). The
// Ampere GEMM has no skinny tiles: there the decode kernel keeps 32 tokens (the H100's measurement of that path).
constexpr int64_t kDecodeSmallWeightElements = int64_t{6144} * 4096;
constexpr int64_t sparse24_decode_max_tokens(int64_t m, int64_t k, bool hopper_gemm) {
  if (!hopper_gemm) return 32;
  return m * k <= kDecodeSmallWeightElements ? 16 : 8;
}

// The kernel that runs n tokens through a weight [m, k], given what the caller can run: has_decode (the decode
// kernel's layout is at hand) and gemm (the prefill GEMM whose layout is at hand, kDecode for none). The decode
// kernel up to sparse24_decode_max_tokens, the GEMM above; either alone takes every N.
constexpr Sparse24Kernel sparse24_pick_kernel(int64_t m, int64_t k, int64_t n, bool has_decode, Sparse24Kernel gemm) {
  if (gemm == Sparse24Kernel::kDecode) return Sparse24Kernel::kDecode;
  if (!has_decode) return gemm;
  return n > sparse24_decode_max_tokens(m, k, gemm == Sparse24Kernel::kSm90Gemm) ? gemm : Sparse24Kernel::kDecode;
}

}  // namespace spmm::kernels
