#!/usr/bin/env bash
# One device call that builds, tests and measures (run from the repo root on the GPU machine, `.whl` carried):
#   bash scripts/device_check.sh [tests|sanitize|bench-decode|bench-prefill|all]   (default: tests)
#   bash scripts/device_check.sh spense         the Spense decode kernel: its torch-free self-test (exact + timed
#                                              beside today's decode kernel), its GPU tests, memcheck and racecheck
#                                              on a subset (~6-8 min with the build)
#   bash scripts/device_check.sh spense-bench   its bench suites (sparse24_decode, spense_decode; graphed, N = 1-64)
#   bash scripts/device_check.sh tiled-csl-delta         the Tiled-CSL delta kernels: their self-test (bit-exact,
#     timed beside the word kernel), then every Tiled-CSL GPU test on the four kernel paths (stream, words, delta,
#     delta on tensor cores)
#   bash scripts/device_check.sh tiled-csl-delta-bench   old (spmm: the layer's word layout) vs new (spmm_delta: the
#     rule's delta kernel; spmm_delta_cores / spmm_delta_tc: each kernel at every N) on the 14 layers, graphed, 80%,
#     N = 1..64; tiled-csl-delta-levels: the same at 50 / 70 / 90% and N = 1, 8, 16, then memcheck on delta tests.
#     Each ends with the medians per backend. Every mode stays under the 10-minute limit of one device call.
# Results go to $OUT (or bench/out); the end of the output is the summary to read.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-bench/out}"
what="${1:-tests}"
bash scripts/device_build.sh 2>&1 | tail -2 || exit 1
# Every test marked `gpu` (tests/conftest.py refuses a tests/test_cuda_*.py test without it), so a new GPU test
# file needs no list here.
case "$what" in tests|all)
  python3 -m pytest -q -p no:cacheprovider --tb=line -m gpu tests 2>&1 | grep -E "passed|failed|FAILED|XPASS|^E " | head -40 ;;
esac
case "$what" in sanitize|all)
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider -x \
      tests/test_cuda_sparse24_decode.py tests/test_cuda_sparse24_compress.py tests/test_cuda_spense.py \
      -k "not 4096 and not 14336 and not 11008 and not 2048" \
      2>&1 | tail -1
  done ;;
esac
case "$what" in bench-decode|all)
  timeout 300 python3 -m bench sparse24 --graph --tokens 1 8 16 32 64 --out "$out/decode" 2>&1 | tail -3 ;;
esac
case "$what" in tiled-csl-delta)
  bash scripts/device_selftests.sh tiled_csl_delta 2>&1 | tail -40
  timeout 420 python3 -m pytest -q -p no:cacheprovider --tb=line tests/test_cuda_tiled_csl.py 2>&1 \
    | grep -E "passed|failed|FAILED|^E " | head -30 ;;
esac
case "$what" in tiled-csl-delta-bench|tiled-csl-delta-levels)
  if [ "$what" = tiled-csl-delta-bench ]; then run=(--sparsity 0.8 --tokens 1 8 16 32 64); else
    run=(--sparsity 0.5 0.7 0.9 --tokens 1 8 16); fi
  timeout 400 python3 -m bench tiled_csl --graph "${run[@]}" --backends spmm spmm_delta spmm_delta_cores spmm_delta_tc \
    --reps 20 --warmup 5 --out "$out/$what" 2>&1 | tail -2
  python3 -m bench.summary "$out/$what/bench.json" --backends spmm spmm_delta spmm_delta_cores spmm_delta_tc
  if [ "$what" = tiled-csl-delta-levels ]; then
    subset="delta and (fully_dense_tiles or k_not_a_multiple or leading_dims or empty_tensors or misaligned or one_copy)"
    timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider -x \
      tests/test_cuda_tiled_csl.py -k "$subset" 2>&1 | tail -1
  fi ;;
esac
case "$what" in bench-prefill|all)
  timeout 300 python3 -m bench sparse24 --tokens 512 2048 8192 --out "$out/prefill" 2>&1 | tail -3 ;;
esac
case "$what" in spense)
  mkdir -p "$out"
  SPMM_SELFTEST_ARCH=90a timeout 240 bash scripts/device_selftests.sh spense_decode 2>&1 | tail -40
  timeout 240 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_cuda_spense_decode.py \
    tests/test_spense_decode_emulation.py 2>&1 | tee "$out/spense_tests.txt" | grep -E "passed|failed|FAILED|^E " | head -40
  memcheck_k="(exact_mixes and float16 and (True-1- or True-64-)) or (k_tails and (1- or 100-)) or (split_factor and (3] or 12])) or fragment or leading_dims"
  racecheck_k="leading_dims or graph or (split_factor and (2 or 12)) or (fragment and auto)"
  for tool in memcheck racecheck; do
    [ $tool = memcheck ] && k="$memcheck_k" || k="$racecheck_k"
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider -x \
      tests/test_cuda_spense_decode.py -k "$k" 2>&1 | tee -a "$out/spense_tests.txt" | tail -2
  done ;;
esac
case "$what" in spense-bench)
  timeout 540 python3 -m bench sparse24_decode spense_decode --graph --tokens 1 8 16 32 64 --out "$out/spense_bench" \
    2>&1 | tail -40 ;;
esac
