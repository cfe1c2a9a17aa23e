// The one rule that picks the CPU path of a matmul op (sparse24_mm, tiled_csl_mm, spense_mm), in one place for the
// ops and for Python (spmm._C.cpu_register_max_tokens exports its thresholds):
//   - x holds a NaN or an Inf: the portable kernels, which multiply only the stored elements (as the reference
//     does: a NaN at a pruned column stays out of the result);
//   - up to register_max_tokens(...) tokens: the register kernels, which stream the weight once (decode: bound by
//     the weight's bytes, which sparsity cuts);
//   - more tokens, Tiled-CSL where the ISA has it: the kernel vectorized over tokens, which multiplies stored
//     elements only (its work falls with the density);
//   - else: the weight expanded block by block into a cache-sized dense buffer for torch's GEMM.
// Thresholds measured on the AMD Zen 5 of bench/results/cpu_*.json, one thread, 4096 x 4096 (bf16) and MiniLM's
// 1536 x 384 (fp32): the largest N at which the register kernels beat the other paths. fp32 2:4 and Spense stay
// on the register kernels at every N measured (1.2-1.9x of MKL's F.linear at N = 1..400 on MiniLM's layer, 1.33x at
// 4096 x 4096 N = 64); fp16 too, as torch's CPU GEMM has no fast fp16 path (F.linear fp16 at N = 64 ~10x bf16's).
// Plain constants and functions, no includes beyond <cstdint>, so the stable-ABI module can use it too.
#pragma once

#include <cstdint>

namespace spmm::kernels::cpu {

enum class CpuPath : int { kPortable = 0, kRegister = 1, kGemm = 2, kTokens = 3 };
enum class CpuFormat : int { kSparse24 = 0, kTiledCsl = 1, kSpense = 2 };

constexpr double kTokensMaxDensity = 0.3;  // see cpu_path

// dtype_code: 0 fp32, 1 bf16, 2 fp16; density: stored / dense elements.
constexpr int64_t register_max_tokens(CpuFormat format, int dtype_code, double density) {
  if (dtype_code == 2) return INT64_MAX;
  if (format == CpuFormat::kTiledCsl) {
    if (dtype_code == 0) return 8;
    return density <= kTokensMaxDensity ? 16 : 4;
  }
  return dtype_code == 0 ? INT64_MAX : 16;  // 2:4 and Spense
}

// The token kernel pays where few elements are stored and the GEMM it competes with is fp32 (MKL's on this CPU):
// fp32 at 20% density 1.5-2.7x of dense at N = 16..400 against the GEMM path's 0.7-1.1x; at 50% it ties the GEMM
// path (0.6-1.1x vs 0.8-1.1x); in bf16 against oneDNN's vdpbf16ps GEMM it loses (0.2-0.8x at 4096 x 4096).
constexpr CpuPath cpu_path(CpuFormat format, int dtype_code, double density, int64_t tokens, bool x_finite,
                           bool has_tokens_kernel) {
  if (!x_finite) return CpuPath::kPortable;
  if (tokens <= register_max_tokens(format, dtype_code, density)) return CpuPath::kRegister;
  if (format == CpuFormat::kTiledCsl && has_tokens_kernel && dtype_code == 0 && density <= kTokensMaxDensity)
    return CpuPath::kTokens;
  return CpuPath::kGemm;
}

}  // namespace spmm::kernels::cpu
