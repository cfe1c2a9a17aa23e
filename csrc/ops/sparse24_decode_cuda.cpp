// CUDA entries of the 2:4 decode kernel: the canonical -> decode layout pack, and y = x W^T (+ bias) on it.
// Internal ops (leading underscore), for tests and tuning; spmm::sparse24_mm runs the kernel on the layout a layer
// caches (its `dvalues`, `dmeta` arguments).
#include <cstdlib>
#include <string_view>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/sparse24/sparse24_decode.h"
#include "ops/cuda_common.h"
#include "ops/sparse24_cuda_entries.h"
#include "ops/sparse24_common.h"

namespace spmm::ops {
namespace {

// Experimental: SPMM_DECODE_EARLY_LAUNCH=1 launches the decode kernel with programmatic dependent launch (sm_90),
// so its first weight stages stream while the previous kernel finishes. Read once; off by default until measured.
bool early_launch_requested() {
  static const bool requested = [] {
    const char* value = std::getenv("SPMM_DECODE_EARLY_LAUNCH");
    return value != nullptr && std::string_view(value) == "1";
  }();
  return requested;
}

kernels::DecodeLoader decode_loader(const char* op, c10::string_view loader) {
  if (loader == "auto") return kernels::DecodeLoader::kAuto;
  if (loader == "cp_async") return kernels::DecodeLoader::kCpAsync;
  if (loader == "bulk") {
    TORCH_CHECK_VALUE(at::cuda::getCurrentDeviceProperties()->major >= 9, op,
                      ": `loader` \"bulk\" needs an sm_90 GPU (the copy engine); use \"auto\" or \"cp_async\"");
    return kernels::DecodeLoader::kBulk;
  }
  TORCH_CHECK_VALUE(false, op, ": `loader` must be \"auto\", \"bulk\" or \"cp_async\", got \"", loader, "\"");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sparse24_decode_pack_cuda(const at::Tensor& values, const at::Tensor& meta,
                                                            int64_t meta_layout) {
  constexpr const char* op = "spmm::_sparse24_decode_pack";
  check_half_dtype(op, "values", values);
  check_canonical_layout(op, values, meta);
  TORCH_CHECK_VALUE(meta_layout == 0 || meta_layout == 1, op, ": `meta_layout` must be 0 or 1, got ", meta_layout);
  const int64_t m = values.size(0), k = values.size(1) * 2;
  const c10::cuda::CUDAGuard guard(values.device());
  const auto shape = kernels::sparse24_decode_shape(m, k);
  at::Tensor dvalues = at::empty({shape.row_tiles(), shape.values_cols()}, values.options());
  at::Tensor dmeta = at::empty({shape.row_tiles(), shape.meta_cols()}, values.options().dtype(at::kInt));
  kernels::Sparse24DecodePackParams p{};
  p.values = reinterpret_cast<const uint16_t*>(values.data_ptr());
  p.meta = meta.data_ptr<uint8_t>();
  p.dvalues = dvalues.data_ptr();
  p.dmeta = dmeta.data_ptr();
  p.m = m;
  p.k = k;
  p.meta_layout = static_cast<int>(meta_layout);
  check_cuda(op, kernels::sparse24_decode_pack(p, at::cuda::getCurrentCUDAStream()));
  return {dvalues, dmeta};
}

at::Tensor sparse24_decode_run(const char* op, const at::Tensor& x, const at::Tensor& dvalues, const at::Tensor& dmeta,
                               int64_t out_features, const std::optional<at::Tensor>& bias, c10::string_view loader,
                               int64_t splits) {
  check_activation(op, x);
  check_half_dtype(op, "x", x);
  check_dtype(op, "dvalues", dvalues, x.scalar_type());
  check_dtype(op, "dmeta", dmeta, at::kInt);
  for (auto [name, t] : {std::pair{"dvalues", &dvalues}, {"dmeta", &dmeta}}) {
    check_dim(op, name, *t, 2);
    check_contiguous(op, name, *t);
    check_same_device(op, name, *t, x);
  }
  check_out_features(op, out_features);
  const int64_t k = x.size(-1), n = leading_rows(x), m = out_features;
  TORCH_CHECK_VALUE(k % sparse24::kGroup == 0, op, ": in_features K = ", k, " must be a multiple of 4");
  const auto shape = kernels::sparse24_decode_shape(m, k);
  TORCH_CHECK_VALUE(dvalues.size(0) == shape.row_tiles() && dvalues.numel() * 2 == shape.values_bytes() &&
                        dmeta.numel() * 4 == shape.meta_bytes(),
                    op, ": `dvalues`/`dmeta` do not hold the decode layout of a ", m, " x ", k,
                    " weight; pack it with _sparse24_decode_pack");
  check_bias(op, bias, x, m);
  TORCH_CHECK_VALUE(splits >= 0 && splits <= std::max<int64_t>(shape.chunks, 1), op, ": `splits` must be 0 (the "
                    "kernel's choice) or 1..", std::max<int64_t>(shape.chunks, 1), " (the weight's 128-column chunks), got ",
                    splits);
  const c10::cuda::CUDAGuard guard(x.device());
  const MatmulOperands io(kernel_ready_activation(x, n, k), bias, n, m);
  kernels::Sparse24DecodeParams p{};
  io.set(p);
  p.dvalues = dvalues.data_ptr();
  p.dmeta = dmeta.data_ptr();
  p.m = m;
  p.k = io.x.size(1);
  p.loader = decode_loader(op, loader);
  p.early_launch = early_launch_requested();
  p.splits = splits > 0 ? static_cast<int>(splits)
                        : kernels::sparse24_decode_splits(m, n, k,
                                                          at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const size_t ws = kernels::sparse24_decode_workspace_bytes(m, n, p.k, p.splits, p.loader);
  const KernelWorkspace workspace(x, ws);  // none on sm_90 (split-K sums in a cluster)
  p.workspace = workspace.data();
  check_cuda(op, kernels::sparse24_decode_mm(p, at::cuda::getCurrentCUDAStream()));
  return io.result(x);
}

namespace {

at::Tensor sparse24_decode_mm_cuda(const at::Tensor& x, const at::Tensor& dvalues, const at::Tensor& dmeta,
                                   int64_t out_features, const std::optional<at::Tensor>& bias, c10::string_view loader,
                                   int64_t splits) {
  return sparse24_decode_run("spmm::_sparse24_decode_mm", x, dvalues, dmeta, out_features, bias, loader, splits);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) {
  m.impl("_sparse24_decode_pack", &sparse24_decode_pack_cuda);
  m.impl("_sparse24_decode_mm", &sparse24_decode_mm_cuda);
}

}  // namespace spmm::ops
