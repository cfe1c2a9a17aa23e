// CPU reference of spense_mm in fp64 (the tests' oracle, spmm::_spense_mm_reference; spense_mm runs the fast
// kernels, spense_mm_cpu.cpp): a dense row block and a 2:4 row block own disjoint output rows; each block row's
// result is written straight to its original output position row_index[i] (dense rows first), no gather after.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "ops/sparse24_cpu.h"
#include "ops/spense_cpu.h"

namespace spmm::ops {
namespace {

// row_index must be a permutation of 0..M-1: every output row written exactly once.
void check_row_index(const char* op, const at::Tensor& row_index) {
  const int64_t m = row_index.numel();
  const int32_t* idx = row_index.data_ptr<int32_t>();
  std::vector<bool> seen(m, false);
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < m, op, ": `row_index`[", i, "] = ", idx[i], " is outside [0, ", m, ")");
    TORCH_CHECK_VALUE(!seen[idx[i]], op, ": `row_index` names output row ", idx[i], " twice; it must be a permutation");
    seen[idx[i]] = true;
  }
}

}  // namespace

void check_spense_mm_args(const char* op, const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                          const at::Tensor& meta, const at::Tensor& row_index, const std::optional<at::Tensor>& bias) {
  check_activation(op, x);
  const int64_t k = x.size(-1);
  check_dim(op, "dense_weight", dense_weight, 2);
  check_dtype(op, "dense_weight", dense_weight, x.scalar_type());
  check_same_device(op, "dense_weight", dense_weight, x);
  TORCH_CHECK_VALUE(dense_weight.size(1) == k, op, ": `dense_weight` must have K = ", k, " columns (the last dim of `x`), got ",
                    dense_weight.size(1));
  check_sparse24_weight(op, x, values, meta, k);
  check_dim(op, "row_index", row_index, 1);
  check_dtype(op, "row_index", row_index, at::kInt);
  check_contiguous(op, "row_index", row_index);
  check_same_device(op, "row_index", row_index, x);
  const int64_t md = dense_weight.size(0), ms = values.size(0), m = md + ms;
  TORCH_CHECK_VALUE(row_index.numel() == m, op, ": `row_index` must have one entry per output row (dense ", md,
                    " + sparse ", ms, " = ", m, "), got ", row_index.numel());
  check_bias(op, bias, x, m);
  check_row_index(op, row_index);
}

at::Tensor spense_mm_reference(const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                               const at::Tensor& meta, const at::Tensor& row_index, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::spense_mm";
  check_spense_mm_args(op, x, dense_weight, values, meta, row_index, bias);
  const int64_t k = x.size(-1), n = leading_rows(x), md = dense_weight.size(0), m = md + values.size(0);
  check_sparse24_meta_codes(op, meta, k);

  const at::Tensor xf = activation_matrix(x, n, k);
  const at::Tensor wd = dense_weight.contiguous();
  at::Tensor out = at::empty({n, m}, x.options().dtype(at::kDouble));
  const int32_t* dst = row_index.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spense_mm_cpu", [&] {
    const scalar_t* w = wd.data_ptr<scalar_t>();
    sparse_rows_linear(xf.data_ptr<double>(), n, k, md, k, dst, out.data_ptr<double>(), m,
                       [&](int64_t i, int32_t* col, double* val) {
                         for (int64_t c = 0; c < k; ++c) {
                           col[c] = static_cast<int32_t>(c);
                           val[c] = static_cast<double>(w[i * k + c]);
                         }
                         return k;
                       });
    sparse24_rows_linear<scalar_t>(xf, values, meta, dst + md, out);
  });
  return finish_linear(out, bias, x);
}

TORCH_LIBRARY_IMPL(spmm, CPU, m) { m.impl("_spense_mm_reference", &spense_mm_reference); }

}  // namespace spmm::ops
