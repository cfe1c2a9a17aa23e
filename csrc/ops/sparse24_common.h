// Checks and error reports shared by the CPU and CUDA implementations of the 2:4 ops.
#pragma once

#include <limits>

#include "kernels/sparse24/sparse24_layout.h"
#include "ops/checks.h"

namespace spmm::ops {

// values [M, K/2] and meta [M, ceil(K/8)] in the canonical layout for an activation of width k.
inline void check_sparse24_weight(const char* op, const at::Tensor& x, const at::Tensor& values,
                                  const at::Tensor& meta, int64_t k) {
  check_dim(op, "values", values, 2);
  check_dim(op, "meta", meta, 2);
  check_dtype(op, "values", values, x.scalar_type());
  check_dtype(op, "meta", meta, at::kByte);
  check_contiguous(op, "values", values);
  check_contiguous(op, "meta", meta);
  check_same_device(op, "values", values, x);
  check_same_device(op, "meta", meta, x);
  TORCH_CHECK_VALUE(k % sparse24::kGroup == 0, op, ": in_features K = ", k,
                    " (the last dim of `x`) must be a multiple of 4 for 2:4 sparsity");
  TORCH_CHECK_VALUE(values.size(1) == k / 2, op, ": `values` must have K/2 = ", k / 2,
                    " columns for x's K = ", k, ", got ", values.size(1));
  TORCH_CHECK_VALUE(meta.size(0) == values.size(0), op, ": `meta` must have as many rows as `values` (",
                    values.size(0), "), got ", meta.size(0));
  TORCH_CHECK_VALUE(meta.size(1) == sparse24::meta_bytes_per_row(k), op, ": `meta` must have ceil(K/8) = ",
                    sparse24::meta_bytes_per_row(k), " columns for K = ", k, ", got ", meta.size(1));
}

// A canonical pair on its own (values [M, K/2], meta uint8 [M, ceil(K/8)], K = 2 * values' columns), as the
// kernel-layout packers take it.
inline void check_canonical_layout(const char* op, const at::Tensor& values, const at::Tensor& meta) {
  check_dim(op, "values", values, 2);
  check_dim(op, "meta", meta, 2);
  check_dtype(op, "meta", meta, at::kByte);
  check_contiguous(op, "values", values);
  check_contiguous(op, "meta", meta);
  check_same_device(op, "meta", meta, values);
  const int64_t m = values.size(0), k = values.size(1) * 2;
  TORCH_CHECK_VALUE(meta.size(0) == m && meta.size(1) == sparse24::meta_bytes_per_row(k), op,
                    ": `meta` must be [", m, ", ", sparse24::meta_bytes_per_row(k), "] for `values` ", values.sizes());
}

inline void check_sparse24_compress_args(const char* op, const at::Tensor& dense, const std::optional<at::Tensor>& mask) {
  check_dim(op, "dense", dense, 2);
  check_float_dtype(op, "dense", dense);
  TORCH_CHECK_VALUE(dense.size(1) % sparse24::kGroup == 0, op, ": `dense` has K = ", dense.size(1),
                    " columns; 2:4 sparsity needs a multiple of 4");
  if (mask.has_value()) {
    check_dtype(op, "mask", *mask, at::kBool);
    TORCH_CHECK_VALUE(mask->sizes() == dense.sizes(), op, ": `mask` must have the shape of `dense` ", dense.sizes(),
                      ", got ", mask->sizes());
    check_same_device(op, "mask", *mask, dense);
  }
}

constexpr uint64_t kNoBadIndex = std::numeric_limits<uint64_t>::max();

// Turns the compressor's findings into an error naming the first offending place (same text on CPU and CUDA).
inline void report_compress_problems(const char* op, bool has_mask, int64_t k, uint64_t first_bad_group,
                                     uint64_t first_nonfinite) {
  TORCH_CHECK_VALUE(first_nonfinite == kNoBadIndex, op, ": `dense` has a NaN or infinite value at row ",
                    first_nonfinite / k, ", column ", first_nonfinite % k, "; a weight to pack must be finite");
  if (first_bad_group != kNoBadIndex) {
    const int64_t groups = k / sparse24::kGroup;
    const int64_t row = first_bad_group / groups, col = (first_bad_group % groups) * sparse24::kGroup;
    TORCH_CHECK_VALUE(false, op, ": `", has_mask ? "mask" : "dense", "` keeps more than 2 of the 4 elements at row ",
                      row, ", columns ", col, "..", col + 3, "; 2:4 sparsity keeps at most 2 of every 4 along K",
                      has_mask ? "" : " (without a mask the nonzeros are kept)");
  }
}

}  // namespace spmm::ops
