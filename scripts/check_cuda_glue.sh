#!/usr/bin/env bash
# Compile-checks (syntax and types, no code generation) the torch glue of the CUDA kernels, csrc/ops/*_cuda.cpp,
# on a machine without a CUDA build of torch: a CPU torch wheel ships the ATen/c10 CUDA headers, and nvcc's
# cuda_runtime_api.h is enough for them once the CUDA *libraries'* headers they name (cuBLAS, cuSPARSE, cuSOLVER,
# absent without the toolkit's math libraries) are stubbed with the few types torch's headers mention.
# Every kernel family is switched on, so no #if SPMM_HAS_* block escapes the check. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
cuda_include=${CUDA_HOME:-/usr/local/cuda}/include
[ -f "$cuda_include/cuda_runtime_api.h" ] || { echo "check_cuda_glue: no $cuda_include/cuda_runtime_api.h, skipped"; exit 0; }
torch_include=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
# The standard torch's own CMake package declares for its consumers (what CMakeLists.txt reads from the torch target).
cxx_std=$(sed -n 's/.*CXX_STANDARD \([0-9][0-9]*\).*/\1/p' "$torch_include/../share/cmake/Torch/TorchConfig.cmake" | head -1)
cxx_std="c++${cxx_std:-17}"
stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
mkdir -p "$stubs/c10/cuda/impl"
touch "$stubs/c10/cuda/impl/cuda_cmake_macros.h"
cat > "$stubs/cublas_v2.h" <<'H'
#pragma once
#include <cuda_runtime_api.h>
typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;
#define CUBLAS_STATUS_SUCCESS 0
#define CUBLAS_STATUS_NOT_SUPPORTED 15
H
echo -e '#pragma once\ntypedef struct cublasLtContext* cublasLtHandle_t;' > "$stubs/cublasLt.h"
echo -e '#pragma once\ntypedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n#define CUSPARSE_STATUS_SUCCESS 0' > "$stubs/cusparse.h"
echo -e '#pragma once\ntypedef struct cusolverDnContext* cusolverDnHandle_t;' > "$stubs/cusolverDn.h"
echo -e '#pragma once\ntypedef int cusolverStatus_t;\n#define CUSOLVER_STATUS_SUCCESS 0' > "$stubs/cusolver_common.h"
families=$(sed -n 's/.*spmm_add_kernel_family(\([a-z0-9_]*\).*/\1/p' CMakeLists.txt | tr a-z A-Z)
defines=()
for f in $families; do defines+=("-DSPMM_HAS_$f=1"); done
status=0
for src in csrc/ops/*_cuda.cpp; do
  if ! "${CXX:-g++}" -std="$cxx_std" -fsyntax-only -DSPMM_WITH_CUDA=1 "${defines[@]}" -Icsrc -I"$stubs" \
      -I"$torch_include" -I"$torch_include/torch/csrc/api/include" -I"$cuda_include" "$src"; then
    echo "check_cuda_glue: $src does not compile" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "check_cuda_glue: $(ls csrc/ops/*_cuda.cpp | wc -l) CUDA glue files compile (${families//$'\n'/ })"
exit $status
