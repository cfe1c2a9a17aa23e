// Input checks shared by the ops. Every message names the op, the argument and the rule:
// wrong dtype -> TypeError, wrong shape/value/device -> ValueError (TORCH_CHECK_TYPE / TORCH_CHECK_VALUE).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace spmm::ops {

// Integer arguments arrive as any int64 (Python ints pass through unchanged): each is bounded before arithmetic
// uses it, and products of sizes are overflow-checked, so no wrapped value can pass a later check.
constexpr int64_t kMaxFeatures = std::numeric_limits<int32_t>::max();  // kernels index rows and columns with int

inline void check_features(const char* op, const char* arg, int64_t features) {
  TORCH_CHECK_VALUE(features >= 0 && features <= kMaxFeatures, op, ": `", arg, "` must be in [0, ", kMaxFeatures,
                    "], got ", features);
}

inline void check_out_features(const char* op, int64_t out_features) {
  check_features(op, "out_features", out_features);
}

// a * b of two non-negative sizes, or an error naming what they count.
inline int64_t checked_mul(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t product = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(a, b, &product), op, ": ", what, " (", a, " x ", b, ") overflows int64");
  return product;
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b near INT64_MAX.
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_dtype(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": `", arg,
                   "` must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": `", arg, "` must be ", want, ", got ", t.scalar_type());
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": `", arg, "` must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_contiguous(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": `", arg, "` must be contiguous (it is packed data; call .contiguous())");
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": `", arg, "` is on ", t.device(), " but `x` is on ", x.device());
}

// x [..., K] with at least one dim and a supported float dtype.
inline void check_activation(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": `x` must have at least 1 dim [..., K], got a scalar");
  check_float_dtype(op, "x", x);
}

inline void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& x, int64_t m) {
  if (!bias.has_value()) return;
  check_dim(op, "bias", *bias, 1);
  TORCH_CHECK_VALUE(bias->size(0) == m, op, ": `bias` must have out_features = ", m, " elements, got ", bias->size(0));
  check_dtype(op, "bias", *bias, x.scalar_type());
  check_same_device(op, "bias", *bias, x);
}

// x as the fp64 [N, K] matrix the CPU reference computes with.
inline at::Tensor activation_matrix(const at::Tensor& x, int64_t n, int64_t k) {
  return x.reshape({n, k}).to(at::kDouble).contiguous();
}

// Rows of x as a [N, K] matrix (N = product of the leading dims; well defined when K or N is 0).
inline int64_t leading_rows(const at::Tensor& x) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) n *= x.size(d);
  return n;
}

// A result [N, M] shaped like x's leading dims: [..., M].
inline at::Tensor with_leading_dims_of(const at::Tensor& out, const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out.size(1);
  return out.reshape(shape);
}

// fp64 result [N, M] -> (+ bias) in fp64, rounded once to x's dtype, shaped [..., M].
inline at::Tensor finish_linear(at::Tensor out, const std::optional<at::Tensor>& bias, const at::Tensor& x) {
  if (bias.has_value()) out.add_(bias->to(at::kDouble));
  return with_leading_dims_of(out.to(x.scalar_type()), x);
}

}  // namespace spmm::ops
