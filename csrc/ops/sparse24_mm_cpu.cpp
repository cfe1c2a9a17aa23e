// sparse24_mm on CPU: the fast kernels (kernels/cpu) on the path the one rule picks (cpu_dispatch_rules.h). They read
// the canonical values and meta as they are, so a 2:4 weight needs no CPU layout of its own; the meta codes are
// checked inside the kernels as they are decoded (a broken code is reported by the fp64 reference's own check).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>

#include "ops/cpu_fast_linear.h"
#include "ops/sparse24_common.h"
#include "ops/sparse24_cpu.h"

namespace spmm::ops {
namespace {

// The kernel layouts (dvalues .. sm80_e) are the CUDA kernels' copies of the canonical weight: not read here.
at::Tensor sparse24_mm_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& /*dvalues*/,
                           const std::optional<at::Tensor>& /*dmeta*/, const std::optional<at::Tensor>& /*sm90_e*/,
                           const std::optional<at::Tensor>& /*sm80_a*/, const std::optional<at::Tensor>& /*sm80_e*/) {
  constexpr const char* op = "spmm::sparse24_mm";
  check_sparse24_mm_args(op, x, values, meta, bias);
  const int64_t k = x.size(-1), n = leading_rows(x), m = values.size(0);
  if (n == 0 || m == 0 || k == 0) return sparse24_mm_reference(x, values, meta, bias);

  namespace kc = kernels::cpu;
  cpu_fast::Plan plan = cpu_fast::plan_call(x, n, k, kc::CpuFormat::kSparse24, 0.5);
  const kc::KernelTable& kernels = *plan.table;
  const kc::Dtype dtype = cpu_fast::kernel_dtype(x.scalar_type());
  const kc::Sparse24Rows weight{values.data_ptr(), meta.data_ptr<uint8_t>(), k};
  std::atomic<bool> ok{true};
  at::Tensor y;
  if (plan.path == kc::CpuPath::kGemm) {
    y = at::empty({n, m}, x.options());
    const at::Tensor bias_t = bias.has_value() ? *bias : at::Tensor();
    ok = cpu_fast::gemm_by_blocks(x.reshape({n, k}), y, bias_t, 0, m, 1, [&](int64_t b, int64_t e, void* dense, int64_t ld) {
      return kernels.sparse24_expand(dtype, weight, b, e, dense, ld);
    });
  } else {
    cpu_fast::Float32Result result = cpu_fast::float32_result(x, n, m, bias);
    const kc::Output out = result.output();
    cpu_fast::parallel_chunks(m, cpu_fast::row_grain(k, n), [&](int64_t b, int64_t e) {
      if (!kernels.sparse24_rows(dtype, weight, plan.x.act, b, e, out)) ok = false;
    });
    y = result.y;
  }
  if (!ok) raise_bad_meta(op, meta, k);
  return cpu_fast::finish(y, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CPU, m) { m.impl("sparse24_mm", &sparse24_mm_cpu); }

}  // namespace spmm::ops
