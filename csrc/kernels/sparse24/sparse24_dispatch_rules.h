// The rules that choose among the 2:4 kernels, in one place for C++ (the ops) and Python (spmm._C exports them to
// spmm.ops): plain constants, no includes, so the stable-ABI module can read them too.
#pragma once

#include <cstdint>

namespace spmm::kernels {

// Up to this many tokens the weight-streaming decode kernel runs; above it a prefill GEMM where there is one.
// Measured on the H100: at N = 64 the Hopper GEMM is faster on all 14 standard layers, at N = 32 the decode kernel
// is (median 1.16x vs 1.04x of dense).
constexpr int64_t kDispatchDecodeMaxTokens = 32;

// The Hopper GEMM's shape limits: out_features % 8 (TMA writes 16-byte columns of y^T), in_features % 16 (the
// compressed rows TMA reads are 16-byte multiples).
constexpr int64_t kSm90RowMultiple = 8;
constexpr int64_t kSm90ColMultiple = 16;

}  // namespace spmm::kernels
