// CUDA entries of the Hopper prefill 2:4 GEMM (CUTLASS, kernels/sparse24/sparse24_sm90_gemm.h): the canonical ->
// CUTLASS metadata pack and y = x W^T (+ bias) on the canonical values and that metadata. Internal ops; built only
// with the sm_90a kernel family.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/cuda_common.h"
#include "ops/sparse24_cuda_entries.h"
#include "ops/sparse24_common.h"

#if SPMM_HAS_SPARSE24_SM90
#include "kernels/sparse24/sparse24_sm90_gemm.h"

namespace spmm::ops {
namespace {

void check_sm90_shape(const char* op, int64_t m, int64_t k) {
  TORCH_CHECK_VALUE(kernels::sparse24_sm90_weight_supported(m, k), op, ": the Hopper 2:4 GEMM needs out_features % 8 "
                    "== 0 and in_features % 16 == 0 (and both > 0), got ", m, " x ", k);
}

void check_sm90_status(const char* op, cudaError_t status) {
  TORCH_CHECK_NOT_IMPLEMENTED(status != cudaErrorNoKernelImageForDevice, op,
                              ": the Hopper 2:4 GEMM runs on compute capability 9.0 GPUs only");
  check_cuda(op, status);
}

}  // namespace

at::Tensor sparse24_sm90_pack_cuda(const at::Tensor& values, const at::Tensor& meta) {
  constexpr const char* op = "spmm::_sparse24_sm90_pack";
  check_half_dtype(op, "values", values);
  check_canonical_layout(op, values, meta);
  const int64_t m = values.size(0), k = values.size(1) * 2;
  check_sm90_shape(op, m, k);
  const c10::cuda::CUDAGuard guard(values.device());
  size_t e_bytes = 0;
  check_cuda(op, kernels::sparse24_sm90_meta_bytes(m, k, &e_bytes));
  at::Tensor e = at::empty({static_cast<int64_t>(e_bytes)}, values.options().dtype(at::kByte));
  kernels::Sparse24Sm90MetaParams p{};
  p.meta = meta.data_ptr<uint8_t>();
  p.meta_ld = meta.size(1);
  p.e = e.data_ptr();
  p.m = m;
  p.k = k;
  check_sm90_status(op, kernels::sparse24_sm90_pack_meta(p, at::cuda::getCurrentCUDAStream()));
  return e;
}

at::Tensor sparse24_sm90_run(const char* op, const char* e_name, const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& e, int64_t out_features, const std::optional<at::Tensor>& bias,
                             int64_t config, int64_t swizzle, int64_t splits) {
  check_gemm_operands(op, x, values, 2, e, at::kByte, "values", e_name);
  check_out_features(op, out_features);
  const int64_t k = x.size(-1), n = leading_rows(x), m = out_features;
  check_sm90_shape(op, m, k);
  const kernels::DType dtype = kernel_dtype(x.scalar_type());
  TORCH_CHECK_VALUE(values.size(0) == m && values.size(1) == k / 2, op, ": `values` must be the canonical [",
                    m, ", ", k / 2, "] of a ", m, " x ", k, " weight, got ", values.sizes());
  size_t e_bytes = 0;
  check_cuda(op, kernels::sparse24_sm90_meta_bytes(m, k, &e_bytes));
  TORCH_CHECK_VALUE(static_cast<size_t>(e.numel()) == e_bytes, op, ": `", e_name, "` does not hold the Hopper GEMM metadata of a ",
                    m, " x ", k, " weight (", e_bytes, " bytes); pack it with _sparse24_sm90_pack");
  check_bias(op, bias, x, m);
  TORCH_CHECK_VALUE(config >= -1 && config < kernels::kSparse24Sm90NumConfigs, op, ": `config` must be -1 (the "
                    "heuristic's choice) or a config number 0..", kernels::kSparse24Sm90NumConfigs - 1, ", got ", config);
  TORCH_CHECK_VALUE(swizzle <= 8 && kernels::sparse24_sm90_valid_swizzle(static_cast<int>(swizzle)), op,
                    ": `swizzle` must be 0 (default), 1, 2, 4 or 8, got ", swizzle);
  TORCH_CHECK_VALUE(splits >= 0 && splits <= kernels::kSparse24Sm90MaxSplits, op, ": `splits` must be in 0..",
                    kernels::kSparse24Sm90MaxSplits, ", got ", splits);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xk = kernel_ready_activation(x, n, k);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({n, m}, x.options());
  const auto chosen = config >= 0 ? static_cast<kernels::Sparse24Sm90Config>(config)
                                   : kernels::sparse24_sm90_pick_config(
                                         m, n, k, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  kernels::Sparse24Sm90GemmParams p{};
  p.a = values.data_ptr();
  p.e = e.data_ptr();
  p.x = xk.data_ptr();
  p.x_ld = xk.stride(0);
  p.bias = bias.has_value() ? b.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.y_ld = m;
  p.m = m;
  p.n = n;
  p.k = k;
  p.dtype = dtype;
  p.swizzle = static_cast<int>(swizzle);
  p.splits = static_cast<int>(splits);
  size_t ws_bytes = 0;
  check_sm90_status(op, kernels::sparse24_sm90_workspace_bytes(p, chosen, &ws_bytes));
  const KernelWorkspace workspace(x, ws_bytes);
  p.workspace = workspace.data();
  p.workspace_bytes = ws_bytes;
  check_sm90_status(op, kernels::sparse24_sm90_gemm(p, chosen, at::cuda::getCurrentCUDAStream()));
  return with_leading_dims_of(y, x);
}

namespace {

at::Tensor sparse24_sm90_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& e,
                                 int64_t out_features, const std::optional<at::Tensor>& bias, int64_t config,
                                 int64_t swizzle, int64_t splits) {
  return sparse24_sm90_run("spmm::_sparse24_sm90_mm", "e", x, values, e, out_features, bias, config, swizzle, splits);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) {
  m.impl("_sparse24_sm90_pack", &sparse24_sm90_pack_cuda);
  m.impl("_sparse24_sm90_mm", &sparse24_sm90_mm_cuda);
}

}  // namespace spmm::ops
#endif  // SPMM_HAS_SPARSE24_SM90
