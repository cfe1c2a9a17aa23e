// Run-time choice of the CPU kernels' instruction set (compiled with the default flags, so it runs on any CPU).
// SPMM_CPU_X86_KERNELS: the build has the AVX2 and AVX-512 translation units (x86-64 with GCC or Clang).
#include "kernels/cpu/cpu_isa.h"

#include "kernels/cpu/cpu_dispatch_rules.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace spmm::kernels::cpu {
namespace {

Isa detect() {
#if SPMM_CPU_X86_KERNELS
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2") &&
                      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vpopcntdq");
  if (avx512) return Isa::kAvx512;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("popcnt");
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

bool parse(const char* name, Isa& isa) {
  if (name == nullptr || *name == '\0' || std::strcmp(name, "auto") == 0) {
    isa = detected_isa();
    return true;
  }
  for (Isa candidate : {Isa::kAvx512, Isa::kAvx2, Isa::kPortable}) {
    if (std::strcmp(name, isa_name(candidate)) == 0) {
      isa = candidate;
      return static_cast<int>(candidate) <= static_cast<int>(detected_isa());
    }
  }
  return false;
}

// -1 until the first call reads SPMM_CPU_ISA; an unknown or unsupported value there means the detected ISA.
std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    Isa isa;
    if (!parse(std::getenv("SPMM_CPU_ISA"), isa)) isa = detected_isa();
    int expected = -1;
    g_active.compare_exchange_strong(expected, static_cast<int>(isa));
    v = g_active.load(std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

bool set_forced_isa(const char* name) {
  Isa isa;
  if (!parse(name, isa)) return false;
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

namespace {
std::atomic<int> g_forced_path{-1};
}  // namespace

bool set_forced_path(const char* name) {
  if (name == nullptr) return false;
  if (std::strcmp(name, "auto") == 0) g_forced_path = -1;
  else if (std::strcmp(name, "register") == 0) g_forced_path = static_cast<int>(CpuPath::kRegister);
  else if (std::strcmp(name, "gemm") == 0) g_forced_path = static_cast<int>(CpuPath::kGemm);
  else if (std::strcmp(name, "tokens") == 0) g_forced_path = static_cast<int>(CpuPath::kTokens);
  else return false;
  return true;
}

int forced_path() { return g_forced_path.load(std::memory_order_relaxed); }

const KernelTable& active_kernels() {
  switch (active_isa()) {
#if SPMM_CPU_X86_KERNELS
    case Isa::kAvx512: return avx512_kernels();
    case Isa::kAvx2: return avx2_kernels();
#endif
    default: return portable_kernels();
  }
}

}  // namespace spmm::kernels::cpu
