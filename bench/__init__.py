"""spmm benchmark harness: `python -m bench --help` (run from the repository root).

Every figure is a ratio against dense F.linear on the same (masked) weight, measured in the same process;
see /work/shared/DESIGN.md "Measuring" for the method and bench/README.md for usage.
"""
