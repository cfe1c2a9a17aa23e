// spense_mm on CPU: the fast kernels (kernels/cpu) on the path the one rule picks (cpu_dispatch_rules.h): the dense
// rows and the 2:4 rows each through their register kernel, every result written straight to its output column
// row_index[i]; with many tokens both blocks through torch's GEMM into a block-ordered result, gathered once into
// the output order (one pass over y, small beside the GEMM). No CPU layout beyond the saved format.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>

#include "ops/cpu_fast_linear.h"
#include "ops/sparse24_common.h"
#include "ops/sparse24_cpu.h"
#include "ops/spense_cpu.h"

namespace spmm::ops {
namespace {

namespace kc = kernels::cpu;

// The kernel layouts of the 2:4 block (dvalues .. sm80_e) are the CUDA kernels' copies: not read here.
at::Tensor spense_mm_cpu(const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                         const at::Tensor& meta, const at::Tensor& row_index, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& /*dvalues*/, const std::optional<at::Tensor>& /*dmeta*/,
                         const std::optional<at::Tensor>& /*sm90_e*/, const std::optional<at::Tensor>& /*sm80_a*/,
                         const std::optional<at::Tensor>& /*sm80_e*/) {
  constexpr const char* op = "spmm::spense_mm";
  check_spense_args(op, x, dense_weight, values, meta, row_index, bias);
  check_row_index_permutation(op, row_index);
  const int64_t k = x.size(-1), n = leading_rows(x), md = dense_weight.size(0), ms = values.size(0), m = md + ms;
  if (n == 0 || m == 0 || k == 0) return spense_mm_reference(x, dense_weight, values, meta, row_index, bias);

  const double density = (static_cast<double>(md) + 0.5 * static_cast<double>(ms)) / static_cast<double>(m);
  cpu_fast::Plan plan = cpu_fast::plan_call(x, n, k, kc::CpuFormat::kSpense, density);
  const kc::KernelTable& kernels = *plan.table;
  const kc::Dtype dtype = cpu_fast::kernel_dtype(x.scalar_type());
  const at::Tensor wd = dense_weight.contiguous();
  const kc::DenseRows dense{wd.data_ptr(), k};
  const kc::Sparse24Rows sparse{values.data_ptr(), meta.data_ptr<uint8_t>(), k};
  std::atomic<bool> ok{true};
  at::Tensor y;
  if (plan.path == kc::CpuPath::kGemm) {
    const at::Tensor x2d = x.reshape({n, k});
    const at::Tensor order = row_index.to(at::kLong);
    const at::Tensor bias_blocks = bias.has_value() ? bias->index_select(0, order) : at::Tensor();
    at::Tensor y_blocks = at::empty({n, m}, x.options());  // columns in block order: dense rows, then 2:4 rows
    if (md > 0) {
      at::Tensor y_dense = y_blocks.narrow(1, 0, md);
      if (bias_blocks.defined()) at::addmm_out(y_dense, bias_blocks.narrow(0, 0, md), x2d, wd.t());
      else at::mm_out(y_dense, x2d, wd.t());
    }
    ok = cpu_fast::gemm_by_blocks(x2d, y_blocks, bias_blocks, md, ms, 1, [&](int64_t b, int64_t e, void* d, int64_t ld) {
      return kernels.sparse24_expand(dtype, sparse, b, e, d, ld);
    });
    y = at::empty_like(y_blocks);
    y.index_copy_(1, order, y_blocks);
  } else {
    cpu_fast::Float32Result result = cpu_fast::float32_result(x, n, m, bias);
    const int32_t* dst = row_index.data_ptr<int32_t>();
    const kc::Output dense_out = result.output(dst), sparse_out = result.output(dst + md);
    cpu_fast::parallel_chunks(m, cpu_fast::row_grain(k, n), [&](int64_t b, int64_t e) {
      if (b < md) kernels.dense_rows(dtype, dense, plan.x.act, b, std::min(e, md), dense_out);
      if (e > md && !kernels.sparse24_rows(dtype, sparse, plan.x.act, std::max(b, md) - md, e - md, sparse_out))
        ok = false;
    });
    y = result.y;
  }
  if (!ok) raise_bad_meta(op, meta, k);
  return cpu_fast::finish(y, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CPU, m) { m.impl("spense_mm", &spense_mm_cpu); }

}  // namespace spmm::ops
