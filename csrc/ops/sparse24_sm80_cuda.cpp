// CUDA entries of the Ampere prefill 2:4 GEMM (CUTLASS 2.x, kernels/sparse24/sparse24_sm80_gemm.h): the canonical ->
// sm80 layout pack and y = x W^T (+ bias) on it. Internal ops; built only with the sm80 kernel family (compiled for
// sm_80 and, where requested, sm_90a, so Hopper runs it too).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/cuda_common.h"
#include "ops/sparse24_common.h"
#include "ops/sparse24_cuda_entries.h"

#if SPMM_HAS_SPARSE24_SM80
#include "kernels/sparse24/sparse24_sm80_gemm.h"

namespace spmm::ops {
namespace {

// x as the GEMM reads it: [round_up(n, 8), k_pad] rows, zero past n and past k, 16-byte aligned.
at::Tensor padded_activation(const at::Tensor& x, int64_t n, int64_t k, int64_t k_pad) {
  const int64_t n8 = (n + 7) / 8 * 8;
  if (n8 == n && k_pad == k) return kernel_ready_activation(x, n, k);
  at::Tensor padded = at::zeros({n8, k_pad}, x.options());
  padded.narrow(0, 0, n).narrow(1, 0, k).copy_(x.reshape({n, k}));
  return padded;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sparse24_sm80_pack_cuda(const at::Tensor& values, const at::Tensor& meta) {
  constexpr const char* op = "spmm::_sparse24_sm80_pack";
  check_half_dtype(op, "values", values);
  check_canonical_layout(op, values, meta);
  const int64_t m = values.size(0), k = values.size(1) * 2;
  TORCH_CHECK_VALUE(m > 0 && k > 0, op, ": the weight must not be empty, got ", m, " x ", k);
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t m_pad = kernels::sparse24_sm80_padded_rows(m), k_pad = kernels::sparse24_sm80_padded_cols(k);
  at::Tensor a = at::empty({m_pad, k_pad / 2}, values.options());
  at::Tensor e = at::empty({kernels::sparse24_sm80_meta_elements(m, k)}, values.options().dtype(at::kShort));
  kernels::Sparse24Sm80PackParams p{};
  p.values = values.data_ptr();
  p.values_ld = values.stride(0);
  p.meta = meta.data_ptr<uint8_t>();
  p.meta_ld = meta.stride(0);
  p.m = m;
  p.k = k;
  p.a = a.data_ptr();
  p.e = reinterpret_cast<uint16_t*>(e.data_ptr<int16_t>());
  check_cuda(op, kernels::sparse24_sm80_pack(p, at::cuda::getCurrentCUDAStream()));
  return {a, e};
}

at::Tensor sparse24_sm80_run(const char* op, const char* a_name, const char* e_name, const at::Tensor& x,
                             const at::Tensor& a, const at::Tensor& e, int64_t out_features,
                             const std::optional<at::Tensor>& bias) {
  check_gemm_operands(op, x, a, 2, e, at::kShort, a_name, e_name);
  check_out_features(op, out_features);
  const int64_t k = x.size(-1), n = leading_rows(x), m = out_features;
  TORCH_CHECK_VALUE(m > 0 && k > 0 && k % 4 == 0, op, ": needs out_features > 0 and in_features (the last dim of `x`)",
                    " a positive multiple of 4, got ", m, " x ", k);
  const int64_t k_pad = kernels::sparse24_sm80_padded_cols(k);
  TORCH_CHECK_VALUE(a.size(0) == kernels::sparse24_sm80_padded_rows(m) && a.size(1) == k_pad / 2 &&
                        e.numel() == kernels::sparse24_sm80_meta_elements(m, k),
                    op, ": `", a_name, "`/`", e_name, "` do not hold the Ampere GEMM layout of a ", m, " x ", k,
                    " weight; pack it with _sparse24_sm80_pack");
  check_bias(op, bias, x, m);
  const c10::cuda::CUDAGuard guard(x.device());
  if (n == 0) return with_leading_dims_of(at::empty({n, m}, x.options()), x);
  const MatmulOperands io(padded_activation(x, n, k, k_pad), bias, n, m);
  const KernelWorkspace workspace(x, kernels::sparse24_sm80_workspace_bytes(m, n));
  kernels::Sparse24Sm80GemmParams p{};
  io.set(p);
  p.a = a.data_ptr();
  p.e = reinterpret_cast<const uint16_t*>(e.data_ptr<int16_t>());
  p.m = m;
  p.k = k;
  p.workspace = workspace.data();
  check_cuda_on_device(op, kernels::sparse24_sm80_gemm(p, at::cuda::getCurrentCUDAStream()),
                       "the Ampere 2:4 GEMM needs a GPU of compute capability 8.x or 9.0");
  return io.result(x);
}

namespace {

at::Tensor sparse24_sm80_mm_cuda(const at::Tensor& x, const at::Tensor& a, const at::Tensor& e, int64_t out_features,
                                 const std::optional<at::Tensor>& bias) {
  return sparse24_sm80_run("spmm::_sparse24_sm80_mm", "a", "e", x, a, e, out_features, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) {
  m.impl("_sparse24_sm80_pack", &sparse24_sm80_pack_cuda);
  m.impl("_sparse24_sm80_mm", &sparse24_sm80_mm_cuda);
}

}  // namespace spmm::ops
#endif  // SPMM_HAS_SPARSE24_SM80
