#!/usr/bin/env bash
# One device call that builds, tests and measures (run from the repo root on the GPU machine, `.whl` carried):
#   bash scripts/device_check.sh [tests|sanitize|bench-decode|bench-prefill|all]   (default: tests)
# Results go to $OUT (or bench/out); the end of the output is the summary to read.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-bench/out}"
what="${1:-tests}"
bash scripts/device_build.sh 2>&1 | tail -2 || exit 1
# Every test marked `gpu` (each CUDA test file carries the marker), so a new GPU test file needs no list here.
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
case "$what" in bench-prefill|all)
  timeout 300 python3 -m bench sparse24 --tokens 512 2048 8192 --out "$out/prefill" 2>&1 | tail -3 ;;
esac
