// CUDA entry of the Spense decode kernel: y = x W^T (+ bias) with W's dense rows and canonical 2:4 rows read where
// they are (one copy of the weight), each output row written at row_index. spmm::spense_mm runs it at decode token
// counts (spense_cuda.cpp); the internal op spmm::_spense_decode_mm exposes its knobs (loader, splits, fragment
// metadata, plain 2:4) for measuring. row_index is taken as a permutation (spense_mm and the layer check it), the
// kernel only refuses to write outside y.
#if SPMM_HAS_SPENSE_DECODE

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/spense/spense_decode.h"
#include "ops/cuda_common.h"
#include "ops/sparse24_common.h"
#include "ops/spense_cuda_entries.h"

namespace spmm::ops {
namespace {

kernels::SpenseLoader spense_loader(const char* op, c10::string_view loader) {
  if (loader == "auto") return kernels::SpenseLoader::kAuto;
  if (loader == "tma") return kernels::SpenseLoader::kTma;
  if (loader == "cp_async") return kernels::SpenseLoader::kCpAsync;
  TORCH_CHECK_VALUE(false, op, ": `loader` must be \"auto\", \"tma\" or \"cp_async\", got \"", loader, "\"");
}

}  // namespace

at::Tensor spense_decode_run(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& dense_weight,
                             const at::Tensor& values, const at::Tensor& meta,
                             const std::optional<at::Tensor>& row_index, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& meta_fragments, c10::string_view loader,
                             int64_t splits) {
  check_activation(op, x);
  check_half_dtype(op, "x", x);
  const int64_t k = x.size(-1), n = leading_rows(x);
  check_sparse24_weight(op, x, values, meta, k);
  at::Tensor dense;
  if (dense_weight.has_value()) {
    check_dim(op, "dense_weight", *dense_weight, 2);
    check_dtype(op, "dense_weight", *dense_weight, x.scalar_type());
    check_same_device(op, "dense_weight", *dense_weight, x);
    TORCH_CHECK_VALUE(dense_weight->size(1) == k, op, ": `dense_weight` must have K = ", k,
                      " columns (the last dim of `x`), got ", dense_weight->size(1));
    // Rows with a leading dimension are read in place (16-byte aligned start, even row stride); else a copy.
    const bool in_place = dense_weight->stride(1) == 1 && dense_weight->stride(0) >= k &&
                          dense_weight->stride(0) % 2 == 0 &&
                          reinterpret_cast<uintptr_t>(dense_weight->data_ptr()) % 16 == 0;
    dense = in_place ? *dense_weight : dense_weight->clone(at::MemoryFormat::Contiguous);
  }
  const int64_t md = dense.defined() ? dense.size(0) : 0, ms = values.size(0), m = md + ms;
  if (row_index.has_value()) {
    check_dim(op, "row_index", *row_index, 1);
    check_dtype(op, "row_index", *row_index, at::kInt);
    check_contiguous(op, "row_index", *row_index);
    check_same_device(op, "row_index", *row_index, x);
    TORCH_CHECK_VALUE(row_index->numel() == m, op, ": `row_index` must have one entry per output row (dense ", md,
                      " + 2:4 ", ms, " = ", m, "), got ", row_index->numel());
  }
  check_bias(op, bias, x, m);
  const auto decode_shape = kernels::sparse24_decode_shape(ms, k);
  if (meta_fragments.has_value()) {
    check_dtype(op, "meta_fragments", *meta_fragments, at::kInt);
    check_contiguous(op, "meta_fragments", *meta_fragments);
    check_same_device(op, "meta_fragments", *meta_fragments, x);
    TORCH_CHECK_VALUE(meta_fragments->numel() * 4 == decode_shape.meta_bytes(), op,
                      ": `meta_fragments` must be the 2:4 decode layout's metadata of the ", ms, " x ", k,
                      " 2:4 rows (the second output of _sparse24_decode_pack), got ", meta_fragments->numel(),
                      " int32 values");
  }
  const auto shape = kernels::spense_decode_shape(md, ms, k);
  const int64_t max_splits = std::max<int64_t>(shape.chunks, 1);
  TORCH_CHECK_VALUE(splits >= 0 && splits <= max_splits, op, ": `splits` must be 0 (the kernel's choice) or 1..",
                    max_splits, " (the weight's 128-column chunks), got ", splits);
  const kernels::SpenseLoader kernel_loader = spense_loader(op, loader);
  const c10::cuda::CUDAGuard guard(x.device());
  if (k == 0) return empty_product(x, n, m, bias);  // (bias in output order: the same with or without row_index)
  if (n == 0 || m == 0) return with_leading_dims_of(at::empty({n, m}, x.options()), x);

  const at::Tensor v = aligned16(values), mt = aligned16(meta);
  const at::Tensor fragments = meta_fragments.has_value() ? aligned16(*meta_fragments) : at::Tensor();
  const MatmulOperands io(kernel_ready_activation(x, n, k), bias, n, m);
  kernels::SpenseDecodeParams p{};
  io.set(p);
  p.dense = dense.defined() ? dense.data_ptr() : nullptr;
  p.dense_ld = dense.defined() ? dense.stride(0) : k;
  p.values = v.data_ptr();
  p.meta = mt.data_ptr();
  p.meta_fragments = fragments.defined() ? fragments.data_ptr() : nullptr;
  p.row_index = row_index.has_value() ? row_index->data_ptr<int32_t>() : nullptr;
  p.md = md;
  p.ms = ms;
  p.k = k;
  p.loader = kernel_loader;
  TORCH_CHECK_VALUE(kernel_loader != kernels::SpenseLoader::kTma || kernels::spense_decode_tma_possible(p), op,
                    ": `loader` \"tma\" needs an sm_90 GPU and tensor-map friendly rows (in_features % 16 == 0, "
                    "ceil(in_features / 8) % 16 == 0 for the canonical metadata, dense rows 16-byte aligned); use "
                    "\"auto\"");
  p.splits = splits > 0 ? static_cast<int>(splits)
                        : kernels::spense_decode_splits(md, ms, n, k,
                                                        at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const KernelWorkspace workspace(x, kernels::spense_decode_workspace_bytes(md, ms, n, k, p.splits, p.loader));
  p.workspace = workspace.data();
  check_cuda(op, kernels::spense_decode_mm(p, at::cuda::getCurrentCUDAStream()));
  return io.result(x);
}

namespace {

at::Tensor spense_decode_mm_cuda(const at::Tensor& x, const std::optional<at::Tensor>& dense_weight,
                                 const at::Tensor& values, const at::Tensor& meta,
                                 const std::optional<at::Tensor>& row_index, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& meta_fragments, c10::string_view loader,
                                 int64_t splits) {
  return spense_decode_run("spmm::_spense_decode_mm", x, dense_weight, values, meta, row_index, bias, meta_fragments,
                           loader, splits);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("_spense_decode_mm", &spense_decode_mm_cuda); }

}  // namespace spmm::ops

#endif  // SPMM_HAS_SPENSE_DECODE
