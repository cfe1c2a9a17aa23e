// CUDA entry of the Tiled-CSL delta kernel (kernels/tiled_csl/tiled_csl_delta.h): spmm::_tiled_csl_delta_mm, and
// the same call for spmm::tiled_csl_mm when it is given a delta layout. The layout's contents are trusted (reading
// them back would cost a sync per call); a corrupt one gives wrong numbers, never a fault (the kernel clamps).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#if SPMM_HAS_TILED_CSL_DELTA
#include "kernels/tiled_csl/tiled_csl_delta.h"
#include "ops/cuda_common.h"
#include "ops/tiled_csl_cuda_entries.h"
#include "ops/tiled_csl_delta_common.h"

namespace spmm::ops {

at::Tensor tiled_csl_delta_mm_cuda(const char* op, const DeltaLayoutArgs& layout, const at::Tensor& x,
                                   int64_t out_features, const std::optional<at::Tensor>& bias,
                                   c10::string_view kernel, int64_t tokens_per_pass) {
  check_activation(op, x);
  check_tiled_csl_kernel_dtype(op, x);
  TORCH_CHECK_VALUE(out_features >= 0, op, ": `out_features` must be >= 0, got ", out_features);
  check_delta_layout(op, x, layout.values, layout.codes, layout.offsets, out_features, layout.names[0],
                     layout.names[1], layout.names[2]);
  check_bias(op, bias, x, out_features);
  check_tokens_per_pass(op, tokens_per_pass);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = out_features, k = x.size(-1), n = leading_rows(x);
  const bool tensor_cores = delta_tensor_cores(op, kernel, n);
  if (n == 0 || m == 0 || k == 0) return empty_product(x, n, m, bias);
  const MatmulOperands operands(kernel_ready_activation(x, n, k), bias, n, m);
  const at::Tensor values = aligned16(layout.values);
  kernels::TiledCSLDeltaMMParams p{};
  operands.set(p);
  p.m = m;
  p.k = k;  // the weight's K (the slices follow it); x's padding columns are never read
  p.values = values.data_ptr();
  p.codes = reinterpret_cast<const uint32_t*>(layout.codes.data_ptr<int32_t>());
  p.offsets = layout.offsets.data_ptr<int32_t>();
  p.chunks = layout.codes.numel();
  p.slice_width = kernels::tiled_csl_delta_slice_width(m, k);
  p.tensor_cores = tensor_cores;
  p.tokens_per_pass = tokens_per_pass > 0 ? tokens_per_pass : kernels::tiled_csl_delta_tokens_per_pass(n);
  const KernelWorkspace workspace(x, kernels::tiled_csl_delta_workspace_bytes(m, n, k, tensor_cores,
                                                                              p.tokens_per_pass));
  p.workspace = workspace.data();
  check_cuda(op, kernels::tiled_csl_delta_mm(p, at::cuda::getCurrentCUDAStream()));
  return operands.result(x);
}

namespace {

at::Tensor delta_mm_op(const at::Tensor& x, const at::Tensor& values, const at::Tensor& codes,
                       const at::Tensor& offsets, int64_t out_features, const std::optional<at::Tensor>& bias,
                       c10::string_view kernel, int64_t tokens_per_pass) {
  return tiled_csl_delta_mm_cuda("spmm::_tiled_csl_delta_mm", DeltaLayoutArgs{values, codes, offsets}, x,
                                 out_features, bias, kernel, tokens_per_pass);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("_tiled_csl_delta_mm", &delta_mm_op); }

}  // namespace spmm::ops
#endif  // SPMM_HAS_TILED_CSL_DELTA
