// spmm::sparse24_mm on CUDA, and the one 2:4 dispatch it shares with spmm::spense_mm's 2:4 rows: the rule of
// kernels/sparse24/sparse24_dispatch_rules.h picks the decode kernel (a few tokens), the Hopper GEMM or the Ampere GEMM
// from the shape, the device and the kernel layouts the caller holds (a layer builds them once). A call without
// layouts packs, for itself, the one its kernel reads (an extra pass over the weight).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include "kernels/sparse24/sparse24_dispatch_rules.h"
#include "ops/cuda_common.h"
#include "ops/sparse24_common.h"
#include "ops/sparse24_cuda_entries.h"

namespace spmm::ops {
namespace {

using kernels::Sparse24Kernel;

const char* gemm_name(Sparse24Kernel gemm) {
  switch (gemm) {
    case Sparse24Kernel::kSm90Gemm: return "the Hopper GEMM";
    case Sparse24Kernel::kSm80Gemm: return "the Ampere GEMM";
    default: return "no 2:4 GEMM (the decode kernel serves every N)";
  }
}

}  // namespace

Sparse24Kernel sparse24_cuda_kernel(const char* op, const at::Tensor& x, int64_t m, int64_t k,
                                    const Sparse24Layouts& layouts) {
  const cudaDeviceProp* props = at::cuda::getDeviceProperties(x.get_device());
  const int capability = props->major * 10 + props->minor;
  const int64_t n = leading_rows(x);
  if (!layouts.any()) {
    return kernels::sparse24_pick_kernel(m, k, n, true, kernels::sparse24_prefill_gemm(m, k, capability));
  }
  TORCH_CHECK_VALUE(layouts.dvalues.has_value() == layouts.dmeta.has_value(), op, ": `dvalues` and `dmeta` (the "
                    "decode kernel's layout) are given together; got only `", layouts.dvalues ? "dvalues" : "dmeta",
                    "`");
  TORCH_CHECK_VALUE(layouts.sm80_a.has_value() == layouts.sm80_e.has_value(), op, ": `sm80_a` and `sm80_e` (the "
                    "Ampere GEMM's layout) are given together; got only `", layouts.sm80_a ? "sm80_a" : "sm80_e", "`");
  TORCH_CHECK_VALUE(!(layouts.sm90_e.has_value() && layouts.sm80_a.has_value()), op, ": give one prefill GEMM's "
                    "layout, `sm90_e` (Hopper) or `sm80_a`/`sm80_e` (Ampere), not both");
  Sparse24Kernel gemm = Sparse24Kernel::kDecode;
  if (layouts.sm90_e.has_value()) {
    gemm = Sparse24Kernel::kSm90Gemm;
    const Sparse24Kernel runs = kernels::sparse24_prefill_gemm(m, k, capability);
    TORCH_CHECK_VALUE(runs == gemm, op, ": `sm90_e` is the Hopper GEMM's layout, but for a ", m, " x ", k,
                      " weight this build and device (compute capability ", props->major, ".", props->minor,
                      ") run ", gemm_name(runs));
  } else if (layouts.sm80_a.has_value()) {
    gemm = Sparse24Kernel::kSm80Gemm;  // also runs on Hopper, where the build has its sm_90a code
    const Sparse24Kernel runs = kernels::sparse24_prefill_gemm(m, k, capability, false, kernels::kSparse24Sm80Built);
    TORCH_CHECK_VALUE(runs == gemm, op, ": `sm80_a`/`sm80_e` are the Ampere GEMM's layout, but for a ", m, " x ", k,
                      " weight this build and device (compute capability ", props->major, ".", props->minor,
                      ") do not run it");
  }
  return kernels::sparse24_pick_kernel(m, k, n, layouts.dvalues.has_value(), gemm);
}

at::Tensor sparse24_mm_dispatch(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                const std::optional<at::Tensor>& bias, const Sparse24Layouts& layouts) {
  const int64_t m = values.size(0), k = x.size(-1);
  at::Tensor packed_a, packed_b;  // a layout packed for this call only (none given)
  switch (sparse24_cuda_kernel(op, x, m, k, layouts)) {
#if SPMM_HAS_SPARSE24_SM90
    case Sparse24Kernel::kSm90Gemm: {
      if (!layouts.sm90_e.has_value()) packed_a = sparse24_sm90_pack_cuda(values, meta);
      const at::Tensor& e = layouts.sm90_e.has_value() ? *layouts.sm90_e : packed_a;
      return sparse24_sm90_run(op, "sm90_e", x, values, e, m, bias);
    }
#endif
#if SPMM_HAS_SPARSE24_SM80
    case Sparse24Kernel::kSm80Gemm: {
      if (!layouts.sm80_a.has_value()) std::tie(packed_a, packed_b) = sparse24_sm80_pack_cuda(values, meta);
      const at::Tensor& a = layouts.sm80_a.has_value() ? *layouts.sm80_a : packed_a;
      const at::Tensor& e = layouts.sm80_e.has_value() ? *layouts.sm80_e : packed_b;
      return sparse24_sm80_run(op, "sm80_a", "sm80_e", x, a, e, m, bias);
    }
#endif
    default: break;  // the decode kernel (the rule picks a GEMM only where this build has it)
  }
  if (!layouts.dvalues.has_value()) std::tie(packed_a, packed_b) = sparse24_decode_pack_cuda(values, meta, 0);
  const at::Tensor& dvalues = layouts.dvalues.has_value() ? *layouts.dvalues : packed_a;
  const at::Tensor& dmeta = layouts.dmeta.has_value() ? *layouts.dmeta : packed_b;
  return sparse24_decode_run(op, x, dvalues, dmeta, m, bias, "auto", 0);
}

namespace {

at::Tensor sparse24_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& dvalues,
                            const std::optional<at::Tensor>& dmeta, const std::optional<at::Tensor>& sm90_e,
                            const std::optional<at::Tensor>& sm80_a, const std::optional<at::Tensor>& sm80_e) {
  constexpr const char* op = "spmm::sparse24_mm";
  check_activation(op, x);
  check_half_dtype(op, "x", x);
  check_sparse24_weight(op, x, values, meta, x.size(-1));
  check_bias(op, bias, x, values.size(0));
  return sparse24_mm_dispatch(op, x, values, meta, bias, Sparse24Layouts{dvalues, dmeta, sm90_e, sm80_a, sm80_e});
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("sparse24_mm", &sparse24_mm_cuda); }

}  // namespace spmm::ops
