// Which instruction set the CPU kernels use: the best the CPU runs (detected once), unless a test or a user
// forces a lower one, through the environment variable SPMM_CPU_ISA=avx512|avx2|portable (read at the first call)
// or set_forced_isa (exported to Python as spmm._C.set_cpu_isa). A forced ISA the CPU cannot run is refused.
#pragma once

#include "kernels/cpu/cpu_kernels.h"

namespace spmm::kernels::cpu {

// avx512: F, BW, VL, DQ, VBMI (vpmultishiftqb), VBMI2 (vpexpandw, vpcompressb), BF16 (vdpbf16ps), VPOPCNTDQ: AMD
// Zen 4 and later, Intel Sapphire Rapids and later; AVX-512 CPUs without one of these take avx2.
// avx2: AVX2, FMA, F16C, BMI2, POPCNT.
Isa detected_isa();
Isa active_isa();
const KernelTable& active_kernels();
const char* isa_name(Isa isa);
// Parses "avx512", "avx2", "portable" or "" / "auto" (the detected ISA). Returns false (and changes nothing) for
// an unknown name or an ISA above the detected one.
bool set_forced_isa(const char* name);

// For tuning the path rule and for tests: force the register kernels ("register"), the GEMM path ("gemm") or the
// Tiled-CSL token kernel ("tokens"; other formats, and ISAs without it, then take the GEMM) on every call with
// finite x, or "auto" (the rule of cpu_dispatch_rules.h). False for another name.
bool set_forced_path(const char* name);
int forced_path();  // -1: the rule; else a CpuPath

}  // namespace spmm::kernels::cpu
