// Build check, not a kernel: compiles the CUTLASS headers that the 2:4 GEMMs build on (2.x sparse GEMM for
// sm80, 3.x collective builders with wgmma.sp for sm90a) with our flags, for every requested arch, so a broken
// CUTLASS install or flag shows up at build time in CI rather than in the first kernel that needs it.
#include <cutlass/cutlass.h>
#include <cutlass/version.h>
#include <cutlass/gemm/device/gemm_sparse.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

static_assert(CUTLASS_MAJOR > 3 || (CUTLASS_MAJOR == 3 && CUTLASS_MINOR >= 9),
              "spmm needs CUTLASS >= 3.9 (sm90 sparse collective builders); install nvidia-cutlass >= 3.9");
