// The CUDA entries of the Tiled-CSL kernel families, for spmm::tiled_csl_mm, which picks between them
// (tiled_csl_cuda.cpp).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include <c10/util/string_view.h>

namespace spmm::ops {

inline void check_tiled_csl_kernel_dtype(const char* op, const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
                   ": `x` must be float16 or bfloat16 for the CUDA Tiled-CSL kernels, got ", x.scalar_type());
}

// A delta layout as an op received it, with the names its arguments have there (for the messages).
struct DeltaLayoutArgs {
  const at::Tensor& values;
  const at::Tensor& codes;
  const at::Tensor& offsets;
  std::array<const char*, 3> names = {"values", "codes", "offsets"};
};

#if SPMM_HAS_TILED_CSL_DELTA
// The delta kernels (tiled_csl_delta_cuda.cpp): kernel "auto" (the rule), "cuda_cores" or "tensor_cores";
// tokens_per_pass 0: the rule's (tiled_csl_delta_tokens_per_pass).
at::Tensor tiled_csl_delta_mm_cuda(const char* op, const DeltaLayoutArgs& layout, const at::Tensor& x,
                                   int64_t out_features, const std::optional<at::Tensor>& bias,
                                   c10::string_view kernel = "auto", int64_t tokens_per_pass = 0);
#endif

}  // namespace spmm::ops
