// CPU reference of spense_mm in fp64 (the tests' oracle, spmm::_spense_mm_reference; spense_mm runs the fast
// kernels, spense_mm_cpu.cpp): a dense row block and a 2:4 row block own disjoint output rows; each block row's
// result is written straight to its original output position row_index[i] (dense rows first), no gather after.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "ops/sparse24_cpu.h"
#include "ops/spense_cpu.h"

namespace spmm::ops {

at::Tensor spense_mm_reference(const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                               const at::Tensor& meta, const at::Tensor& row_index, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::spense_mm";
  check_spense_args(op, x, dense_weight, values, meta, row_index, bias);
  check_row_index_permutation(op, row_index);
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
