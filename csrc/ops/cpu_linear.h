// The CPU reference's inner loop: out[n, dst(i)] = sum_j vals[j] * x[n, cols[j]] for weight rows given sparsely.
// Accumulates in fp64 (at least the fp32 the kernels use; the reference should be the most accurate number
// around), in a fixed order, parallel over weight rows; no dense copy of the weight is made.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace spmm::ops {

// decode_row(i, cols, vals) writes row i's stored (column, value) pairs and returns how many (<= max_row_nnz).
// dst_row (nullable) maps weight row i to its output column; out is [n, out_cols] fp64, x is [n, k] fp64.
template <typename DecodeRow>
void sparse_rows_linear(const double* x, int64_t n, int64_t k, int64_t rows, int64_t max_row_nnz,
                        const int32_t* dst_row, double* out, int64_t out_cols, DecodeRow decode_row) {
  const int64_t work_per_row = n * max_row_nnz + 1;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / work_per_row);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> cols(max_row_nnz);
    std::vector<double> vals(max_row_nnz);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t count = decode_row(i, cols.data(), vals.data());
      const int64_t dst = dst_row ? dst_row[i] : i;
      for (int64_t t = 0; t < n; ++t) {
        const double* xr = x + t * k;
        double acc = 0.0;
        for (int64_t j = 0; j < count; ++j) acc += vals[j] * xr[cols[j]];
        out[t * out_cols + dst] = acc;
      }
    }
  });
}

}  // namespace spmm::ops
