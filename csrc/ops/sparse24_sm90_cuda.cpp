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

constexpr const char* kNeedsSm90 = "the Hopper 2:4 GEMM runs on compute capability 9.0 GPUs only";

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
  check_cuda_on_device(op, kernels::sparse24_sm90_pack_meta(p, at::cuda::getCurrentCUDAStream()), kNeedsSm90);
  return e;
}

at::Tensor sparse24_sm90_run(const char* op, const char* e_name, const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& e, int64_t out_features, const std::optional<at::Tensor>& bias,
                             int64_t config, int64_t swizzle, int64_t splits) {
  check_gemm_operands(op, x, values, 2, e, at::kByte, "values", e_name);
  check_out_features(op, out_features);
  const int64_t k = x.size(-1), n = leading_rows(x), m = out_features;
  check_sm90_shape(op, m, k);
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
  const auto chosen = config >= 0 ? static_cast<kernels::Sparse24Sm90Config>(config)
                                   : kernels::sparse24_sm90_pick_config(
                                         m, n, k, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const MatmulOperands io(kernel_ready_activation(x, n, k), bias, n, m);
  kernels::Sparse24Sm90GemmParams p{};
  io.set(p);
  p.a = values.data_ptr();
  p.e = e.data_ptr();
  p.m = m;
  p.k = k;
  p.swizzle = static_cast<int>(swizzle);
  p.splits = static_cast<int>(splits);
  size_t ws_bytes = 0;
  check_cuda_on_device(op, kernels::sparse24_sm90_workspace_bytes(p, chosen, &ws_bytes), kNeedsSm90);
  const KernelWorkspace workspace(x, ws_bytes);
  p.workspace = workspace.data();
  p.workspace_bytes = ws_bytes;
  check_cuda_on_device(op, kernels::sparse24_sm90_gemm(p, chosen, at::cuda::getCurrentCUDAStream()), kNeedsSm90);
  return io.result(x);
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
