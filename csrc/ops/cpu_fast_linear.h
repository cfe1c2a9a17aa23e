// What the fast CPU paths of the matmul ops share: x as the kernels read it, the one path rule, threads over weight
// rows, and the GEMM path (weight blocks expanded into a cache-sized dense buffer for torch's addmm).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <optional>

#include "kernels/cpu/cpu_dispatch_rules.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/cpu_kernels.h"
#include "ops/checks.h"

namespace spmm::ops::cpu_fast {

namespace kc = spmm::kernels::cpu;

inline int dtype_code(at::ScalarType t) { return t == at::kFloat ? 0 : t == at::kBFloat16 ? 1 : 2; }
inline kc::Dtype kernel_dtype(at::ScalarType t) { return static_cast<kc::Dtype>(dtype_code(t)); }

// x [..., K] as [n, padded_x_cols(K)] in the dtype the kernels of `table` take, zero past K.
struct XOperand {
  at::Tensor buffer;
  kc::Activations act;
};

inline XOperand prepare_x(const at::Tensor& x, int64_t n, int64_t k, const kc::KernelTable& table) {
  const kc::Dtype want = table.x_dtype(kernel_dtype(x.scalar_type()));
  const int64_t stride = kc::padded_x_cols(k);
  at::Tensor buffer = at::empty({n, stride}, x.options().dtype(want == kc::Dtype::kFloat32 ? at::kFloat : x.scalar_type()));
  buffer.narrow(1, k, stride - k).zero_();
  buffer.narrow(1, 0, k).copy_(x.reshape({n, k}));
  return {buffer, kc::Activations{buffer.data_ptr(), n, k, stride}};
}

// The kernels and the x operand one call runs on, and the path the rule picks for it.
struct Plan {
  kc::CpuPath path;
  const kc::KernelTable* table;
  XOperand x;
};

inline Plan plan_call(const at::Tensor& x, int64_t n, int64_t k, kc::CpuFormat format, double density) {
  const kc::KernelTable& active = kc::active_kernels();
  XOperand xo = prepare_x(x, n, k, active);
  const bool finite = active.all_finite(active.x_dtype(kernel_dtype(x.scalar_type())), xo.act.data, n, k, xo.act.stride);
  const kc::CpuPath path = kc::cpu_path(format, dtype_code(x.scalar_type()), density, n, finite);
  if (path != kc::CpuPath::kPortable) return {path, &active, xo};
  const kc::KernelTable& portable = kc::portable_kernels();
  return {path, &portable, &portable == &active ? xo : prepare_x(x, n, k, portable)};
}

inline at::Tensor bias_as_float(const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
}

inline kc::Output output_of(at::Tensor& out32, const at::Tensor& bias32, const int32_t* dst_row) {
  return kc::Output{out32.data_ptr<float>(), out32.size(1), dst_row,
                    bias32.defined() ? bias32.data_ptr<float>() : nullptr};
}

// Runs body(begin, end) over [0, count) on torch's threads, in chunks of at least `grain` items.
template <typename Body>
void parallel_chunks(int64_t count, int64_t grain, Body body) {
  at::parallel_for(0, count, std::max<int64_t>(1, grain), body);
}

// Weight rows per thread chunk: enough work (~64K multiply-adds) to pay for a thread.
inline int64_t row_grain(int64_t k, int64_t n) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k * n)); }

// fp32 result [n, m] -> x's dtype, shaped [..., m].
inline at::Tensor finish(const at::Tensor& out32, const at::Tensor& x) {
  return with_leading_dims_of(out32.scalar_type() == x.scalar_type() ? out32 : out32.to(x.scalar_type()), x);
}

// y[:, col0 + r] = x2d @ W[r].T (+ bias[col0 + r]) for the `rows` weight rows that expand(r0, r1, dense, ld) writes
// densely (in x's dtype), a cache-sized block of rows at a time; `align` rows per expand unit (a tile's height).
// Returns false as soon as expand does (a broken layout: the caller raises).
template <typename Expand>
bool gemm_by_blocks(const at::Tensor& x2d, at::Tensor& y, const at::Tensor& bias, int64_t col0, int64_t rows,
                    int64_t align, Expand expand) {
  constexpr int64_t kBlockBytes = int64_t{2} << 20;  // a block stays in L2/L3 between its expansion and the GEMM
  const int64_t k = x2d.size(1);
  const int64_t per_row = std::max<int64_t>(1, k * static_cast<int64_t>(x2d.element_size()));
  const int64_t units = kc::ceil_div(rows, align);
  const int64_t units_per_block = std::max<int64_t>(1, kBlockBytes / (per_row * align));
  at::Tensor block = at::empty({std::min(units, units_per_block) * align, k}, x2d.options());
  const at::Tensor xt = x2d;
  bool ok = true;
  for (int64_t u0 = 0; u0 < units && ok; u0 += units_per_block) {
    const int64_t u1 = std::min(units, u0 + units_per_block);
    const int64_t r0 = u0 * align, r1 = std::min(rows, u1 * align);
    char* base = static_cast<char*>(block.data_ptr());
    std::atomic<bool> fine{true};
    parallel_chunks(u1 - u0, 1, [&](int64_t b, int64_t e) {
      if (!expand(u0 + b, u0 + e, base + b * align * per_row, k)) fine = false;
    });
    ok = fine;
    at::Tensor w = block.narrow(0, 0, r1 - r0);
    at::Tensor y_cols = y.narrow(1, col0 + r0, r1 - r0);
    if (bias.defined()) {
      at::addmm_out(y_cols, bias.narrow(0, col0 + r0, r1 - r0), xt, w.t());
    } else {
      at::mm_out(y_cols, xt, w.t());
    }
  }
  return ok;
}

}  // namespace spmm::ops::cpu_fast
