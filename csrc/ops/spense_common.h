// Checks shared by the CPU and CUDA implementations of spmm::spense_mm (same rules, same messages).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "ops/sparse24_common.h"

namespace spmm::ops {

// Shapes, dtypes and devices of every argument (row_index's contents: check_row_index_permutation).
inline void check_spense_args(const char* op, const at::Tensor& x, const at::Tensor& dense_weight,
                              const at::Tensor& values, const at::Tensor& meta, const at::Tensor& row_index,
                              const std::optional<at::Tensor>& bias) {
  check_activation(op, x);
  const int64_t k = x.size(-1);
  check_dim(op, "dense_weight", dense_weight, 2);
  check_dtype(op, "dense_weight", dense_weight, x.scalar_type());
  check_same_device(op, "dense_weight", dense_weight, x);
  TORCH_CHECK_VALUE(dense_weight.size(1) == k, op, ": `dense_weight` must have K = ", k,
                    " columns (the last dim of `x`), got ", dense_weight.size(1));
  check_sparse24_weight(op, x, values, meta, k);
  check_dim(op, "row_index", row_index, 1);
  check_dtype(op, "row_index", row_index, at::kInt);
  check_contiguous(op, "row_index", row_index);
  check_same_device(op, "row_index", row_index, x);
  const int64_t md = dense_weight.size(0), ms = values.size(0);
  TORCH_CHECK_VALUE(row_index.numel() == md + ms, op, ": `row_index` must have one entry per output row (dense ", md,
                    " + sparse ", ms, " = ", md + ms, "), got ", row_index.numel());
  check_bias(op, bias, x, md + ms);
}

// row_index (on the host) must be a permutation of 0..M-1: every output row written exactly once.
inline void check_row_index_permutation(const char* op, const at::Tensor& row_index) {
  const int64_t m = row_index.numel();
  const int32_t* idx = row_index.data_ptr<int32_t>();
  std::vector<bool> seen(m, false);
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < m, op, ": `row_index`[", i, "] = ", idx[i], " is outside [0, ", m, ")");
    TORCH_CHECK_VALUE(!seen[idx[i]], op, ": `row_index` names output row ", idx[i], " twice; it must be a permutation");
    seen[idx[i]] = true;
  }
}

}  // namespace spmm::ops
