// CUDA entries of the Tiled-CSL ops: the packer (dense + mask -> stream, same output as the CPU packer) and
// y = x W^T (+ bias) on the SpMM kernel. Checks are the CPU op's (tiled_csl_common.h); the stream's contents
// (offsets, locations) are trusted here -- reading them back would cost a sync per call -- and a corrupt stream
// gives wrong numbers but never a fault (the kernel clamps).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/tiled_csl/tiled_csl_spmm.h"
#include "ops/cuda_common.h"
#include "ops/tiled_csl_common.h"

namespace spmm::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiled_csl_compress_cuda(const at::Tensor& dense,
                                                                       const std::optional<at::Tensor>& mask,
                                                                       int64_t tile_m, int64_t tile_k) {
  constexpr const char* op = "spmm::tiled_csl_compress";
  check_tiled_csl_compress_args(op, dense, mask, tile_m, tile_k);
  const c10::cuda::CUDAGuard guard(dense.device());
  const int64_t m = dense.size(0), k = dense.size(1);
  // The kernels take a row stride; anything else (transposed views) is made row-major first.
  const at::Tensor w = dense.stride(1) == 1 ? dense : dense.contiguous();
  at::Tensor keep;
  if (mask.has_value()) keep = mask->stride(1) == 1 ? *mask : mask->contiguous();
  const int64_t tiles = tile_count(m, k, tile_m, tile_k);
  at::Tensor offsets = at::empty({tiles + 1}, dense.options().dtype(at::kLong));
  at::Tensor first_bad = at::empty({1}, dense.options().dtype(at::kLong));

  kernels::TiledCSLPackParams p{};
  p.dense = w.data_ptr();
  p.dense_ld = w.stride(0);
  p.mask = mask.has_value() ? reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>()) : nullptr;
  p.mask_ld = mask.has_value() ? keep.stride(0) : 0;
  p.m = m;
  p.k = k;
  p.tile_m = tile_m;
  p.tile_k = tile_k;
  p.dtype = kernel_dtype(dense.scalar_type());
  p.offsets = offsets.data_ptr<int64_t>();
  p.first_bad = reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  check_cuda(op, kernels::tiled_csl_pack_count(p, stream));

  // nnz sizes the outputs: one read-back (packing is offline work), which also brings the non-finite flag.
  const at::Tensor found = at::cat({offsets.narrow(0, tiles, 1), first_bad}).cpu();
  const int64_t nnz = found[0].item<int64_t>();
  const auto bad = static_cast<uint64_t>(found[1].item<int64_t>());
  if (bad != std::numeric_limits<uint64_t>::max()) report_nonfinite(op, k, static_cast<int64_t>(bad));
  check_nnz_fits(op, nnz);

  at::Tensor values = at::empty({nnz}, dense.options());
  at::Tensor locations = at::empty({nnz}, dense.options().dtype(at::kShort));
  p.values = values.data_ptr();
  p.locations = locations.data_ptr<int16_t>();
  check_cuda(op, kernels::tiled_csl_pack_fill(p, stream));
  return {values, locations, offsets.to(at::kInt)};
}

// The kernel streams values and locations in 16-byte granules from a 16-byte aligned start.
at::Tensor aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();  // clone: fresh, aligned
}

at::Tensor tiled_csl_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                             const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                             const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::tiled_csl_mm";
  check_tiled_csl_mm_args(op, x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
                   ": `x` must be float16 or bfloat16 for the CUDA Tiled-CSL kernel, got ", x.scalar_type());
  TORCH_CHECK_NOT_IMPLEMENTED(kernels::tiled_csl_mm_supports(tile_m, tile_k), op,
                              ": the CUDA kernel takes tiles of tile_m x tile_k = 256 x 64 or 128 x 64, got ",
                              "`tile_m` = ", tile_m, ", `tile_k` = ", tile_k, "; pack the weight with one of those");
  const int64_t k = x.size(-1), n = leading_rows(x), m = out_features;
  const c10::cuda::CUDAGuard guard(x.device());
  if (n == 0 || m == 0 || k == 0) {  // nothing to stream: y is the bias (or zeros)
    // clone: a fresh tensor even where the expanded bias is already contiguous (the output must not alias it)
    at::Tensor y = bias.has_value() ? bias->unsqueeze(0).expand({n, m}).clone(at::MemoryFormat::Contiguous)
                                    : at::zeros({n, m}, x.options());
    return with_leading_dims_of(y, x);
  }
  const at::Tensor xk = kernel_ready_activation(x, n, k);
  const at::Tensor vals = aligned16(values), locs = aligned16(locations);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({n, m}, x.options());
  kernels::TiledCSLMMParams p{};
  p.x = xk.data_ptr();
  p.x_ld = xk.stride(0);
  p.values = vals.data_ptr();
  p.locations = locs.data_ptr<int16_t>();
  p.tile_offsets = tile_offsets.data_ptr<int32_t>();
  p.nnz = values.numel();
  p.bias = bias.has_value() ? b.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.y_ld = m;
  p.m = m;
  p.n = n;
  p.k = xk.size(1);
  p.tile_m = tile_m;
  p.dtype = kernel_dtype(x.scalar_type());
  p.splits = kernels::tiled_csl_mm_splits(m, n, k, p.nnz, tile_m,
                                          at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const size_t ws = kernels::tiled_csl_mm_workspace_bytes(m, n, tile_m, p.splits);
  const KernelWorkspace workspace(x, ws);
  p.workspace = workspace.data();
  check_cuda(op, kernels::tiled_csl_mm(p, at::cuda::getCurrentCUDAStream()));
  return with_leading_dims_of(y, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) {
  m.impl("tiled_csl_compress", &tiled_csl_compress_cuda);
  m.impl("tiled_csl_mm", &tiled_csl_mm_cuda);
}

}  // namespace spmm::ops
