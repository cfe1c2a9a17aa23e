#!/usr/bin/env bash
# The torch-free kernel self-tests on the GPU machine, built with nvcc alone (about a minute, no torch build):
#   bash scripts/device_selftests.sh [decode|sm80|tiled_csl|tiled_csl_delta|spense_decode|all]   (default: all; .whl carried for sm80)
# Each prints one line per problem (exact or WRONG per path, timings next to a plain read of the same bytes) and
# exits non-zero on a mismatch; a hang (e.g. a bad mbarrier protocol) is cut by the timeout. The output is
# also saved under $OUT (or bench/out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
what="${1:-all}"
status=0
arch="${SPMM_SELFTEST_ARCH:-90a}"
build() {  # name, sources...
  local name=$1
  shift
  nvcc -std=c++17 -O3 -gencode "arch=compute_${arch},code=sm_${arch}" -Icsrc "$@" -o "/tmp/spmm_${name}_selftest"
}
check() {  # name, log file, seconds: runs the built program
  timeout "$3" "/tmp/spmm_$1_selftest" 2>&1 | tee "$out/$2"
  local rc=${PIPESTATUS[0]}
  echo "$2: exit $rc"
  [ "$rc" -eq 0 ] || status=1
}
case "$what" in decode|all)
  if build decode csrc/kernels/sparse24/sparse24_decode_selftest.cu csrc/kernels/sparse24/sparse24_decode_kernel.cu; then
    check decode decode_selftest.txt 240
    # the early launch (programmatic dependent launch, off by default), each checked call after a late writer of x
    SPMM_SELFTEST_EARLY_LAUNCH=1 check decode decode_early_selftest.txt 240
  else
    echo "decode selftest: build failed"; status=1
  fi ;;
esac
case "$what" in sm80|all)  # the Ampere GEMM (CUTLASS 2.x): the CUTLASS headers come from the carried wheel
  cutlass_include=/tmp/spmm_cutlass/cutlass_library/source/include
  [ -d "$cutlass_include" ] || python3 -c "import zipfile, glob; zipfile.ZipFile(sorted(glob.glob('.whl/nvidia_cutlass*.whl'))[-1]).extractall('/tmp/spmm_cutlass')"
  if build sm80 --expt-relaxed-constexpr -I"$cutlass_include" csrc/kernels/sparse24/sparse24_sm80_selftest.cu \
      csrc/kernels/sparse24/sparse24_sm80_gemm.cu csrc/kernels/sparse24/sparse24_sm80_pack_kernel.cu; then
    check sm80 sm80_selftest.txt 120
  else
    echo "sm80 selftest: build failed"; status=1
  fi ;;
esac
case "$what" in tiled_csl|all)
  if build tiled_csl csrc/kernels/tiled_csl/tiled_csl_selftest.cu csrc/kernels/tiled_csl/tiled_csl_spmm_kernel.cu \
      csrc/kernels/tiled_csl/tiled_csl_pack_kernel.cu; then
    check tiled_csl tiled_csl_selftest.txt 240
  else
    echo "tiled_csl selftest: build failed"; status=1
  fi ;;
esac
case "$what" in spense_decode|all)  # exact on every problem (each loader, each metadata source), timed beside today's
  if build spense_decode csrc/kernels/spense/spense_decode_selftest.cu csrc/kernels/spense/spense_decode_kernel.cu \
      csrc/kernels/sparse24/sparse24_decode_kernel.cu; then
    check spense_decode spense_decode_selftest.txt 200
  else
    echo "spense decode selftest: build failed"; status=1
  fi ;;
esac
case "$what" in tiled_csl_delta|all)  # the delta kernel: bit-exact on odd shapes and masks, then timed next to the word kernel
  if build tiled_csl_delta csrc/kernels/tiled_csl/tiled_csl_delta_selftest.cu csrc/kernels/tiled_csl/tiled_csl_delta_kernel.cu \
      csrc/kernels/tiled_csl/tiled_csl_spmm_kernel.cu csrc/kernels/tiled_csl/tiled_csl_pack_kernel.cu; then
    check tiled_csl_delta tiled_csl_delta_selftest.txt 240
  else
    echo "tiled_csl_delta selftest: build failed"; status=1
  fi ;;
esac
exit $status
