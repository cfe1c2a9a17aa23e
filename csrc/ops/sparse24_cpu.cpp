// CPU reference of the 2:4 ops: the packer (dense -> canonical values/meta) and y = x @ W.T (+ bias) in fp64, the
// tests' oracle (spmm::_sparse24_mm_reference; sparse24_mm itself runs the fast kernels, sparse24_mm_cpu.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "ops/cpu_linear.h"
#include "ops/sparse24_common.h"
#include "ops/sparse24_cpu.h"

namespace spmm::ops {
namespace {

using sparse24::kGroup;

template <typename T>
void compress_rows(const at::Tensor& dense, const bool* mask, at::Tensor& values, at::Tensor& meta,
                   uint64_t& first_bad_group, uint64_t& first_nonfinite) {
  const int64_t m = dense.size(0), k = dense.size(1), groups = k / kGroup;
  const int64_t meta_cols = meta.size(1);
  const T* w = dense.data_ptr<T>();
  T* vals = values.data_ptr<T>();
  uint8_t* codes = meta.data_ptr<uint8_t>();
  std::fill_n(codes, m * meta_cols, uint8_t{0});
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      unsigned allowed = 0, nonzero = 0;
      for (int j = 0; j < kGroup; ++j) {
        const int64_t at = r * k + g * kGroup + j;
        const float v = static_cast<float>(w[at]);
        if (!std::isfinite(v)) first_nonfinite = std::min<uint64_t>(first_nonfinite, at);
        allowed |= static_cast<unsigned>(mask ? mask[at] : true) << j;
        nonzero |= static_cast<unsigned>(v != 0.0f) << j;  // -0.0 counts as zero
      }
      // The mask (or, without one, the nonzeros) must be 2:4; a zero the mask keeps is stored as a filler +0.0.
      if (sparse24::popcount4(mask ? allowed : nonzero) > sparse24::kKept)
        first_bad_group = std::min<uint64_t>(first_bad_group, r * groups + g);
      const unsigned keep = allowed & nonzero;
      int idx0 = 0, idx1 = 1;
      sparse24::pick_columns(keep, idx0, idx1);
      const T* src = w + r * k + g * kGroup;
      vals[r * (k / 2) + 2 * g] = (keep >> idx0) & 1u ? src[idx0] : T(0.0f);
      vals[r * (k / 2) + 2 * g + 1] = (keep >> idx1) & 1u ? src[idx1] : T(0.0f);
      codes[r * meta_cols + g / 2] |= sparse24::encode_group(idx0, idx1) << (4 * (g % 2));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sparse24_compress_cpu(const at::Tensor& dense_in, const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "spmm::sparse24_compress";
  check_sparse24_compress_args(op, dense_in, mask);
  const at::Tensor dense = dense_in.contiguous();
  const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t m = dense.size(0), k = dense.size(1);
  at::Tensor values = at::empty({m, k / 2}, dense.options());
  at::Tensor meta = at::empty({m, sparse24::meta_bytes_per_row(k)}, dense.options().dtype(at::kByte));
  uint64_t first_bad_group = kNoBadIndex, first_nonfinite = kNoBadIndex;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "sparse24_compress_cpu", [&] {
    compress_rows<scalar_t>(dense, mask.has_value() ? mask_c.data_ptr<bool>() : nullptr, values, meta,
                            first_bad_group, first_nonfinite);
  });
  report_compress_problems(op, mask.has_value(), k, first_bad_group, first_nonfinite);
  return {values, meta};
}

}  // namespace

at::Tensor sparse24_mm_reference(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                 const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::sparse24_mm";
  check_sparse24_mm_args(op, x, values, meta, bias);
  const int64_t k = x.size(-1);
  check_sparse24_meta_codes(op, meta, k);
  const int64_t n = leading_rows(x), m = values.size(0);
  const at::Tensor xf = activation_matrix(x, n, k);
  at::Tensor out = at::empty({n, m}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "sparse24_mm_cpu", [&] {
    sparse24_rows_linear<scalar_t>(xf, values, meta, nullptr, out);
  });
  return finish_linear(out, bias, x);
}

namespace {

// The matmul's metadata checks on their own: Sparse24Weight.validate().
void sparse24_check_cpu(const at::Tensor& meta, int64_t in_features) {
  constexpr const char* op = "spmm::_sparse24_check";
  check_features(op, "in_features", in_features);
  TORCH_CHECK_VALUE(in_features % kGroup == 0, op, ": `in_features` must be a multiple of 4, got ", in_features);
  check_dim(op, "meta", meta, 2);
  check_dtype(op, "meta", meta, at::kByte);
  TORCH_CHECK_VALUE(meta.size(1) == sparse24::meta_bytes_per_row(in_features), op, ": `meta` must have ceil(K/8) = ",
                    sparse24::meta_bytes_per_row(in_features), " columns for K = ", in_features, ", got ",
                    meta.size(1));
  check_sparse24_meta_codes(op, meta, in_features);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CPU, m) {
  m.impl("sparse24_compress", &sparse24_compress_cpu);
  m.impl("_sparse24_mm_reference", &sparse24_mm_reference);
  m.impl("_sparse24_check", &sparse24_check_cpu);
}

}  // namespace spmm::ops
