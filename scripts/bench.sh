#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the benchmark on its default: the GPU suites where a CUDA device is,
# else the CPU reference ops vs torch.matmul on scaled-down standard shapes. Extra arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m bench "$@"
