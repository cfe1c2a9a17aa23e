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

// The kernels one call runs on, the path the rule picks for it, and (register and portable paths) x as they read it.
struct Plan {
  kc::CpuPath path;
  const kc::KernelTable* table;
  XOperand x;
};

inline bool all_finite(const at::Tensor& x2d, const kc::KernelTable& table) {
  const at::Tensor rows = x2d.stride(1) == 1 ? x2d : x2d.contiguous();
  return table.all_finite(kernel_dtype(rows.scalar_type()), rows.data_ptr(), rows.size(0), rows.size(1), rows.stride(0));
}

inline Plan plan_call(const at::Tensor& x, int64_t n, int64_t k, kc::CpuFormat format, double density) {
  const kc::KernelTable& active = kc::active_kernels();
  const bool finite = all_finite(x.reshape({n, k}), active);
  kc::CpuPath path = kc::cpu_path(format, dtype_code(x.scalar_type()), density, n, finite,
                                  active.bitmap_tokens != nullptr);
  if (path != kc::CpuPath::kPortable && kc::forced_path() >= 0) path = static_cast<kc::CpuPath>(kc::forced_path());
  if (path == kc::CpuPath::kTokens && (format != kc::CpuFormat::kTiledCsl || active.bitmap_tokens == nullptr))
    path = kc::CpuPath::kGemm;
  const kc::KernelTable& table = path == kc::CpuPath::kPortable ? kc::portable_kernels() : active;
  const bool reads_x_operand = path == kc::CpuPath::kRegister || path == kc::CpuPath::kPortable;
  return {path, &table, reads_x_operand ? prepare_x(x, n, k, table) : XOperand{}};
}

// What the register and portable kernels write: fp32 y [n, m] (+ bias as fp32, added in the kernels).
struct Float32Result {
  at::Tensor y, bias;
  kc::Output output(const int32_t* dst_row = nullptr) {
    return kc::Output{y.data_ptr<float>(), y.size(1), dst_row, bias.defined() ? bias.data_ptr<float>() : nullptr};
  }
};

inline Float32Result float32_result(const at::Tensor& x, int64_t n, int64_t m, const std::optional<at::Tensor>& bias) {
  return {at::empty({n, m}, x.options().dtype(at::kFloat)),
          bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor()};
}

// Runs body(begin, end) over [0, count) on torch's threads, in chunks of at least `grain` items.
template <typename Body>
void parallel_chunks(int64_t count, int64_t grain, Body body) {
  at::parallel_for(0, count, std::max<int64_t>(1, grain), body);
}

// Weight rows per thread chunk: enough work to pay for waking a thread (~256K multiply-adds, tens of µs); a
// MiniLM-sized call at one token stays on the calling thread.
inline int64_t row_grain(int64_t k, int64_t n) { return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, k * n)); }

// fp32 result [n, m] -> x's dtype, shaped [..., m].
inline at::Tensor finish(const at::Tensor& out32, const at::Tensor& x) {
  return with_leading_dims_of(out32.scalar_type() == x.scalar_type() ? out32 : out32.to(x.scalar_type()), x);
}

// Grow-only byte buffers per thread, one per use (the GEMM path's expanded block, a kernel's accumulators): a
// fresh tensor of 128 KB or more every call is mapped afresh by the allocator and page-faults in (measured: a 32 MB
// block made a 4096 x 4096 bf16 call at N = 64 4x slower than the dense GEMM; the Tiled-CSL kernels' 128 KB of
// accumulators cost ~10 µs per call on MiniLM's 1536 x 384). Each holds the most its thread has needed.
enum class Workspace : int { kGemmBlock = 0, kKernelScratch = 1 };

inline at::Tensor workspace(Workspace use, int64_t bytes) {
  thread_local at::Tensor buffers[2];
  at::Tensor& buffer = buffers[static_cast<int>(use)];
  if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  return buffer.narrow(0, 0, bytes);
}

// y[:, col0 + r] = x2d @ W[r].T (+ bias[col0 + r]) for the `rows` weight rows that expand(r0, r1, dense, ld) writes
// densely (in x's dtype), a cache-sized block of rows at a time; `align` rows per expand unit (a tile's height).
// Returns false as soon as expand does (a broken layout: the caller raises).
template <typename Expand>
bool gemm_by_blocks(const at::Tensor& x2d, at::Tensor& y, const at::Tensor& bias, int64_t col0, int64_t rows,
                    int64_t align, Expand expand) {
  // Measured (one thread, fp32 MiniLM layers at N = 400): 2 MB blocks 0.82-0.98x of dense, 4 MB 0.93-0.95x, 8 MB
  // no better; a whole 32 MB weight at once 0.26x (page faults, before the workspace was kept).
  constexpr int64_t kBlockBytes = int64_t{4} << 20;
  const int64_t k = x2d.size(1);
  const int64_t per_row = std::max<int64_t>(1, k * static_cast<int64_t>(x2d.element_size()));
  const int64_t units = kc::ceil_div(rows, align);
  const int64_t units_per_block = std::max<int64_t>(1, kBlockBytes / (per_row * align));
  const int64_t block_rows = std::min(units, units_per_block) * align;
  at::Tensor block = workspace(Workspace::kGemmBlock, block_rows * per_row).view(x2d.scalar_type()).view({block_rows, k});
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
