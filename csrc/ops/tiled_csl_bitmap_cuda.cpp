// CUDA entry of the Tiled-CSL pair-bitmap matmul (kernels/tiled_csl/tiled_csl_bitmap.h; sm_90a builds only). The
// layout is built in torch by spmm.ops.tiled_csl_bitmap; its contents are trusted here (checking them would cost a
// read-back per call) and a corrupt one gives wrong numbers, never a fault (the kernel clamps).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#if SPMM_HAS_TILED_CSL_BITMAP
#include "kernels/tiled_csl/tiled_csl_bitmap.h"
#include "ops/cuda_common.h"
#include "ops/tiled_csl_common.h"

namespace spmm::ops {
namespace {

// records [words, 2] of the weight's dtype, record_offsets int32 [tiles + 1] in words, max_record_words = the longest
// record.
at::Tensor tiled_csl_bitmap_mm_cuda(const at::Tensor& x, const at::Tensor& records, const at::Tensor& record_offsets,
                                    int64_t out_features, int64_t max_record_words,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::_tiled_csl_bitmap_mm";
  check_activation(op, x);
  check_half_dtype(op, "x", x);
  check_out_features(op, out_features);
  check_kernel_layout(op, x, "records", records, "record_offsets", record_offsets);
  TORCH_CHECK_VALUE(records.size(1) == 2 && records.size(0) % 4 == 0, op,
                    ": `records` must be [4j, 2] (from spmm.ops.tiled_csl_bitmap), got ", records.sizes());
  TORCH_CHECK_VALUE(max_record_words >= kernels::kBitmapHeaderWords &&
                        max_record_words <= kernels::kBitmapMaxRecordWords,
                    op, ": `max_record_words` must be in [", kernels::kBitmapHeaderWords, ", ",
                    kernels::kBitmapMaxRecordWords, "], got ", max_record_words);
  const int64_t k = x.size(-1);
  const int64_t tiles = tile_count(out_features, k, kernels::kBitmapTileM, kernels::kBitmapTileK, op);
  TORCH_CHECK_VALUE(record_offsets.numel() == tiles + 1, op, ": `record_offsets` must have ", tiles + 1,
                    " entries for a ", out_features, " x ", k, " weight in 128 x 64 tiles, got ",
                    record_offsets.numel());
  check_bias(op, bias, x, out_features);
  TORCH_CHECK_NOT_IMPLEMENTED(kernels::tiled_csl_bitmap_available(), op,
                              ": the kernel runs on compute capability 9.0 GPUs (sm_90a) only");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = leading_rows(x);
  if (n == 0 || out_features == 0 || k == 0) return empty_product(x, n, out_features, bias);
  const at::Tensor xk = kernel_ready_activation(x, n, k);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor recs = aligned16(records);
  at::Tensor y = at::empty({n, out_features}, x.options());
  kernels::TiledCSLBitmapMMParams p{};
  p.x = xk.data_ptr();
  p.x_ld = xk.stride(0);
  p.records = static_cast<const uint32_t*>(recs.data_ptr());
  p.record_offsets = record_offsets.data_ptr<int32_t>();
  p.record_words = records.size(0);
  p.max_record_words = max_record_words;
  p.bias = bias.has_value() ? b.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.y_ld = out_features;
  p.m = out_features;
  p.n = n;
  p.k = xk.size(1);
  p.dtype = kernel_dtype(x.scalar_type());
  p.splits = 0;  // the kernel's own choice
  check_cuda(op, kernels::tiled_csl_bitmap_mm(p, at::cuda::getCurrentCUDAStream()));
  return with_leading_dims_of(y, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("_tiled_csl_bitmap_mm", &tiled_csl_bitmap_mm_cuda); }

}  // namespace spmm::ops
#endif  // SPMM_HAS_TILED_CSL_BITMAP
