#!/usr/bin/env bash
# Builds and installs spmm on the GPU machine (no network there): torch, scikit-build-core, cmake and ninja are
# preinstalled; the CUTLASS headers come from the nvidia-cutlass wheel carried in .whl/.
# Usage: SPMM_CUDA_ARCHS=90a bash scripts/device_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export SPMM_CUDA_ARCHS="${SPMM_CUDA_ARCHS:-90a}" SPMM_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}"
# The C++ runtime must be torch's shared libstdc++: skip a compiler that only has a static one (CMake checks too).
if [[ "$(${CXX:-c++} -print-file-name=libstdc++.so)" != /* ]] && [ -x /usr/bin/g++ ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++
fi
for cache in build/*/CMakeCache.txt; do  # a build folder configured with another compiler starts over
  [ -f "$cache" ] && ! grep -q "^CMAKE_CXX_COMPILER:FILEPATH=${CXX:-}$" "$cache" && rm -rf "$(dirname "$cache")" || true
done
start=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps --no-index -q .
echo "spmm build + install: $(( $(date +%s) - start )) s (archs ${SPMM_CUDA_ARCHS})"
(cd /tmp && python3 -c "import spmm._C as c; assert c.cuda_built, 'CUDA kernels were not built'; print('spmm._C cuda_built', c.cuda_built, 'archs', c.cuda_archs)")
