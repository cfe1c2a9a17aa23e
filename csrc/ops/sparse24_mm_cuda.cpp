// spmm::sparse24_mm on CUDA, from the canonical layout: the kernel layout is packed for this one call (an extra pass
// over the weight; Sparse24Linear caches its layouts instead). A few tokens take the weight-streaming kernel; more
// (sparse24_decode_max_tokens) the Hopper CUTLASS GEMM where it can run, else the Ampere one (also on Hopper, for
// shapes the Hopper GEMM does not take), else the decode kernel over slices of 64 tokens.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/sparse24/sparse24_dispatch_rules.h"
#include "ops/cuda_common.h"
#include "ops/sparse24_common.h"
#include "ops/sparse24_cuda_entries.h"

namespace spmm::ops {
namespace {

at::Tensor sparse24_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::sparse24_mm";
  check_activation(op, x);
  check_half_dtype(op, "x", x);
  check_sparse24_weight(op, x, values, meta, x.size(-1));
  check_bias(op, bias, x, values.size(0));
  const int64_t m = values.size(0), k = x.size(-1);
#if SPMM_HAS_SPARSE24_SM90
  const bool hopper_gemm = sparse24_sm90_usable(x, m, k);
#else
  const bool hopper_gemm = false;
#endif
  // Above this many tokens a GEMM (sparse24_dispatch_rules.h).
  const bool prefill = leading_rows(x) > kernels::sparse24_decode_max_tokens(m, k, hopper_gemm);
#if SPMM_HAS_SPARSE24_SM90
  if (prefill && hopper_gemm) {
    return sparse24_sm90_mm_cuda(x, values, sparse24_sm90_pack_cuda(values, meta), m, bias);
  }
#endif
#if SPMM_HAS_SPARSE24_SM80
  if (prefill && m > 0 && k > 0 && sparse24_sm80_usable(x)) {
    const auto [a, e] = sparse24_sm80_pack_cuda(values, meta);
    return sparse24_sm80_mm_cuda(x, a, e, m, bias);
  }
#endif
  const auto [dvalues, dmeta] = sparse24_decode_pack_cuda(values, meta, 0);
  return sparse24_decode_mm_cuda(x, dvalues, dmeta, m, bias, "auto");
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("sparse24_mm", &sparse24_mm_cuda); }

}  // namespace spmm::ops
