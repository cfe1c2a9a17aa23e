#!/usr/bin/env bash
# Nsight Compute profile of the hand-written decode kernels (GPU machine, `.whl` carried; see bench/profile_kernels.py):
#   bash scripts/device_profile.sh [extra args for python -m bench.profile_kernels]
# SPMM_PROFILE_KERNELS: ncu's -k filter; SPMM_PROFILE_METRICS: extra metrics (comma-separated) to collect.
# Writes $OUT/profile.ncu-rep and a text summary $OUT/profile.txt (speed of light, memory, warp stalls, occupancy).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
bash scripts/device_build.sh 2>&1 | tail -1 || exit 1
# --clock-control none: the GPU keeps its own clocks (the device notes ask for it; timings stay comparable).
ncu --clock-control none --nvtx -k "${SPMM_PROFILE_KERNELS:-regex:decode_mm_kernel|tiled_csl_mm_kernel|delta_mm_kernel}" \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section Occupancy --section LaunchStats --section SourceCounters ${SPMM_PROFILE_METRICS:+--metrics "$SPMM_PROFILE_METRICS"} \
    -f -o "$out/profile" python3 -m bench.profile_kernels "$@" > "$out/ncu.log" 2>&1
tail -3 "$out/ncu.log"
ncu --import "$out/profile.ncu-rep" --print-summary none > "$out/profile.txt" 2>&1
grep -E "spmm |decode_mm_kernel|tiled_csl_mm_kernel|delta_mm_kernel|l1tex__|smsp__inst|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Stall|Issued Ipc" \
    "$out/profile.txt" | head -120
