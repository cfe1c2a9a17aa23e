// The rules that choose among the 2:4 kernels, in one place for C++ (the ops) and Python (spmm._C exports them to
// spmm.ops): plain constants, no includes, so the stable-ABI module can read them too.
#pragma once

#include <cstdint>

namespace spmm::kernels {

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

// The Hopper GEMM's shape limits: out_features % 8 (TMA writes 16-byte columns of y^T), in_features % 16 (the
// compressed rows TMA reads are 16-byte multiples).
constexpr int64_t kSm90RowMultiple = 8;
constexpr int64_t kSm90ColMultiple = 16;

}  // namespace spmm::kernels
