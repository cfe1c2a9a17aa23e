// Argument checks of the Tiled-CSL delta layout (kernels/tiled_csl/tiled_csl_delta_layout.h), CPU and CUDA alike.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "kernels/tiled_csl/tiled_csl_rules.h"
#include "ops/checks.h"

namespace spmm::ops {

// The three tensors of the delta layout of an [m, k] weight (k = x's last dim): values [8 * chunks] of x's dtype,
// codes int32 [chunks], offsets int32 [slices * m + 1], contiguous, on x's device. Their contents are not read here.
inline void check_delta_layout(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& codes,
                               const at::Tensor& offsets, int64_t m, const char* values_name = "values",
                               const char* codes_name = "codes", const char* offsets_name = "offsets") {
  for (auto [name, t] : {std::pair{values_name, &values}, {codes_name, &codes}, {offsets_name, &offsets}}) {
    check_dim(op, name, *t, 1);
    check_contiguous(op, name, *t);
    check_same_device(op, name, *t, x);
  }
  check_dtype(op, values_name, values, x.scalar_type());
  check_dtype(op, codes_name, codes, at::kInt);
  check_dtype(op, offsets_name, offsets, at::kInt);
  TORCH_CHECK_VALUE(values.numel() == 8 * codes.numel(), op, ": `", values_name, "` must hold 8 entries per code word (",
                    8 * codes.numel(), "), got ", values.numel());
  const int64_t k = x.size(-1), entries = kernels::tiled_csl_delta_slices(m, k) * m + 1;
  TORCH_CHECK_VALUE(offsets.numel() == entries, op, ": `", offsets_name, "` must have ", entries, " entries for a ", m,
                    " x ", k, " weight (", kernels::tiled_csl_delta_slices(m, k), " slices of ",
                    kernels::tiled_csl_delta_slice_width(m, k), " columns), got ", offsets.numel(),
                    "; build the layout for this shape");
}

// The delta kernel an op call runs for N tokens: "auto" (tiled_csl_delta_tensor_cores, the rule), "cuda_cores" or
// "tensor_cores" (tuning knobs).
inline bool delta_tensor_cores(const char* op, c10::string_view kernel, int64_t n) {
  if (kernel == "auto") return kernels::tiled_csl_delta_tensor_cores(n);
  if (kernel == "cuda_cores") return false;
  if (kernel == "tensor_cores") return true;
  TORCH_CHECK_VALUE(false, op, ": `kernel` must be \"auto\", \"cuda_cores\" or \"tensor_cores\", got \"", kernel, "\"");
}

inline void check_tokens_per_pass(const char* op, int64_t tokens_per_pass) {
  TORCH_CHECK_VALUE(tokens_per_pass == 0 || tokens_per_pass == 1 || tokens_per_pass == 2 || tokens_per_pass == 4 ||
                        tokens_per_pass == kernels::kDeltaMaxTokensPerPass,
                    op, ": `tokens_per_pass` must be 0 (the rule's), 1, 2, 4 or 8, got ", tokens_per_pass);
}

}  // namespace spmm::ops
