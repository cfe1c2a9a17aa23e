// Build check, not a kernel: compiles the CUTLASS headers the sm_80 2:4 GEMM will build on (2.x sparse GEMM) with
// our flags, so a broken CUTLASS install or flag shows up in CI before that kernel exists. (On sm_90a the real
// CUTLASS kernels, sparse24_sm90_gemm_*.cu, do this.)
#include <cutlass/cutlass.h>
#include <cutlass/version.h>
#include <cutlass/gemm/device/gemm_sparse.h>

static_assert(CUTLASS_MAJOR > 3 || (CUTLASS_MAJOR == 3 && CUTLASS_MINOR >= 9),
              "spmm needs CUTLASS >= 3.9 (its sm90 sparse GEMM uses the 3.9 sparse collective builders)");
