// tiled_csl_mm on CPU: the fast kernels (kernels/cpu) on the path the one rule picks (cpu_dispatch_rules.h). They read
// the stream's values in place, with a bitmap of the stored elements instead of the 16-bit locations
// (tiled_csl_cpu_layout: TiledCSLLinear holds it; a call without it derives it from the stream, which costs a pass
// over the locations). The kernels check each tile's bitmap against its offsets before they read its values.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "ops/cpu_fast_linear.h"
#include "ops/tiled_csl_common.h"
#include "ops/tiled_csl_cpu.h"

namespace spmm::ops {
namespace {

namespace kc = kernels::cpu;

// The offsets' own rules (cheap: one per tile); what they promise about the values is checked by the kernels.
void check_offsets(const char* op, const at::Tensor& tile_offsets, int64_t nnz) {
  const int32_t* offs = tile_offsets.data_ptr<int32_t>();
  const int64_t tiles = tile_offsets.numel() - 1;
  TORCH_CHECK_VALUE(offs[0] == 0 && offs[tiles] == nnz, op, ": `tile_offsets` must start at 0 and end at nnz = ", nnz,
                    ", got ", offs[0], " and ", offs[tiles]);
  for (int64_t t = 0; t < tiles; ++t)
    TORCH_CHECK_VALUE(offs[t] <= offs[t + 1], op, ": `tile_offsets` must not decrease (tile ", t, ")");
}

void check_cpu_bitmap(const char* op, const at::Tensor& bitmap, const at::Tensor& x, int64_t tiles, int64_t tile_m,
                      int64_t tile_k) {
  check_dim(op, "cpu_bitmap", bitmap, 1);
  check_dtype(op, "cpu_bitmap", bitmap, at::kLong);
  check_contiguous(op, "cpu_bitmap", bitmap);
  check_same_device(op, "cpu_bitmap", bitmap, x);
  const int64_t words = tiles * tile_m * kc::bitmap_words_per_row(tile_k);
  TORCH_CHECK_VALUE(bitmap.numel() == words, op, ": `cpu_bitmap` must have ", words,
                    " words for these tiles (spmm.ops.tiled_csl_cpu_layout makes it), got ", bitmap.numel());
}

// The CUDA kernel layouts (words, delta_*) are not read here: on CPU the op reads the stream, which must be given.
at::Tensor tiled_csl_mm_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                            const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& words,
                            const std::optional<at::Tensor>& /*word_offsets*/,
                            const std::optional<at::Tensor>& delta_values,
                            const std::optional<at::Tensor>& /*delta_codes*/,
                            const std::optional<at::Tensor>& /*delta_offsets*/,
                            const std::optional<at::Tensor>& cpu_bitmap) {
  constexpr const char* op = "spmm::tiled_csl_mm";
  TORCH_CHECK_VALUE(tile_offsets.numel() > 0 || !(words.has_value() || delta_values.has_value()), op,
                    ": on CPU the op reads the stream (`values`, `locations`, `tile_offsets`), not a CUDA kernel "
                    "layout; pass the stream");
  check_tiled_csl_mm_args(op, x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias);
  const int64_t k = x.size(-1), n = leading_rows(x), m = out_features;
  const int64_t tiles = tile_count(m, k, tile_m, tile_k);
  at::Tensor bitmap;
  if (cpu_bitmap.has_value()) {
    check_cpu_bitmap(op, *cpu_bitmap, x, tiles, tile_m, tile_k);
    check_offsets(op, tile_offsets, values.numel());
    bitmap = *cpu_bitmap;
  } else {
    bitmap = tiled_csl_cpu_bitmap(locations, tile_offsets, m, k, tile_m, tile_k);  // checks the stream
  }
  if (n == 0 || m == 0 || k == 0) return tiled_csl_mm_reference(x, values, locations, tile_offsets, m, tile_m, tile_k, bias);

  const double density = static_cast<double>(values.numel()) / static_cast<double>(m * k);
  cpu_fast::Plan plan = cpu_fast::plan_call(x, n, k, kc::CpuFormat::kTiledCsl, density);
  const kc::KernelTable& kernels = *plan.table;
  const kc::Dtype dtype = cpu_fast::kernel_dtype(x.scalar_type());
  const kc::BitmapTiles weight{values.data_ptr(), tile_offsets.data_ptr<int32_t>(),
                               reinterpret_cast<const uint64_t*>(bitmap.data_ptr<int64_t>()), m, k, tile_m, tile_k};
  const int64_t row_tiles = kc::ceil_div(m, tile_m);
  std::atomic<bool> ok{true};
  at::Tensor y;
  if (plan.path == kc::CpuPath::kTokens) {
    const int64_t n_pad = (n + 15) / 16 * 16;
    at::Tensor xt = at::zeros({k, n_pad}, x.options().dtype(at::kFloat));
    xt.narrow(1, 0, n).copy_(x.reshape({n, k}).t());
    at::Tensor out_t = at::empty({m, n_pad}, xt.options());
    const int64_t col_tiles = kc::ceil_div(k, tile_k);
    cpu_fast::parallel_chunks(row_tiles, 1, [&](int64_t b, int64_t e) {
      int64_t* cursors = static_cast<int64_t*>(
          cpu_fast::workspace(cpu_fast::Workspace::kKernelScratch, 2 * col_tiles * 8).data_ptr());
      if (!kernels.bitmap_tokens(dtype, weight, xt.data_ptr<float>(), n_pad, b, e, out_t.data_ptr<float>(), cursors))
        ok = false;
    });
    y = out_t.narrow(1, 0, n).t();
    if (bias.has_value()) y = y + bias->to(at::kFloat);  // fp32 sum + bias, rounded once below
  } else if (plan.path == kc::CpuPath::kGemm) {
    y = at::empty({n, m}, x.options());
    const at::Tensor bias_t = bias.has_value() ? *bias : at::Tensor();
    ok = cpu_fast::gemm_by_blocks(x.reshape({n, k}), y, bias_t, 0, m, tile_m, [&](int64_t b, int64_t e, void* dense, int64_t ld) {
      return kernels.bitmap_expand(dtype, weight, b, e, dense, ld);
    });
  } else {
    cpu_fast::Float32Result result = cpu_fast::float32_result(x, n, m, bias);
    const kc::Output out = result.output();
    const double tile_work = density * static_cast<double>(tile_m * k * n);  // multiply-adds per row tile
    const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>((1 << 18) / std::max(1.0, tile_work)));
    cpu_fast::parallel_chunks(row_tiles, grain, [&](int64_t b, int64_t e) {
      float* scratch = static_cast<float*>(
          cpu_fast::workspace(cpu_fast::Workspace::kKernelScratch, kc::bitmap_scratch_floats(tile_m) * 4).data_ptr());
      if (!kernels.bitmap_rows(dtype, weight, plan.x.act, b, e, out, scratch)) ok = false;
    });
    y = result.y;
  }
  TORCH_CHECK_VALUE(ok, op, ": `cpu_bitmap` does not match the weight: a tile's bitmap holds another count of values "
                    "than its `tile_offsets`, or marks an element outside the tile; make it with "
                    "spmm.ops.tiled_csl_cpu_layout from this weight's locations");
  return cpu_fast::finish(y, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CPU, m) { m.impl("tiled_csl_mm", &tiled_csl_mm_cpu); }

}  // namespace spmm::ops
