// The one rule that picks the CPU path of a matmul op (sparse24_mm, tiled_csl_mm, spense_mm), in one place for the
// ops and for Python (spmm._C.cpu_path exports it):
//   - x holds a NaN or an Inf: the portable kernels, which multiply only the stored elements (as the reference
//     does: a NaN at a pruned column stays out of the result);
//   - up to register_max_tokens(...) tokens: the register kernels, which stream the weight once and expand it in
//     registers (decode: bound by the weight's bytes, which sparsity cuts);
//   - more tokens: the weight expanded block by block into a cache-sized dense buffer for torch's GEMM (compute
//     bound, where the GEMM's blocking beats the register kernels' dense FMAs).
// Plain constants and functions, no includes beyond <cstdint>, so the stable-ABI module can use it too.
#pragma once

#include <cstdint>

namespace spmm::kernels::cpu {

enum class CpuPath : int { kPortable = 0, kRegister = 1, kGemm = 2 };
enum class CpuFormat : int { kSparse24 = 0, kTiledCsl = 1, kSpense = 2 };

// Token counts up to which the register kernels beat torch's GEMM on the expanded weight, per format and weight
// dtype (dtype_code: 0 fp32, 1 bf16, 2 fp16) and, for Tiled-CSL, density (stored / dense elements). Measured on
// the AMD Zen 5 of bench/results/cpu_*.json; fp16 always takes the register kernels, as torch's CPU GEMM in fp16
// has no fast path there (F.linear fp16 at N = 64 runs ~10x slower than bf16).
constexpr int64_t register_max_tokens(CpuFormat format, int dtype_code, double density) {
  if (dtype_code == 2) return INT64_MAX;
  switch (format) {
    case CpuFormat::kTiledCsl:
      if (dtype_code == 0) return density <= 0.25 ? 64 : 16;
      return density <= 0.25 ? 32 : 8;
    case CpuFormat::kSparse24:
    case CpuFormat::kSpense:
    default:
      return dtype_code == 0 ? 16 : 8;
  }
}

constexpr CpuPath cpu_path(CpuFormat format, int dtype_code, double density, int64_t tokens, bool x_finite) {
  if (!x_finite) return CpuPath::kPortable;
  return tokens <= register_max_tokens(format, dtype_code, density) ? CpuPath::kRegister : CpuPath::kGemm;
}

}  // namespace spmm::kernels::cpu
