#!/usr/bin/env bash
# Sets up (scripts/setup.sh --test) and runs the test suite. GPU tests skip without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
. .venv/bin/activate
python -m pytest -q tests "$@"
