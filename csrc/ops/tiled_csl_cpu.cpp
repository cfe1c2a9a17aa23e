// CPU reference of the Tiled-CSL ops: the packer (dense + any mask -> per-tile (value, 16-bit location) stream)
// and y = x @ W.T (+ bias) in fp64, parallel over row tiles so each task owns its output rows (the tests' oracle,
// spmm::_tiled_csl_mm_reference; tiled_csl_mm runs the fast kernels, tiled_csl_mm_cpu.cpp); and the CPU kernels'
// layout, a bitmap of the stored elements built from the checked stream (spmm::tiled_csl_cpu_layout).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "ops/tiled_csl_common.h"
#include "ops/tiled_csl_cpu.h"

namespace spmm::ops {
namespace {

struct TileGrid {
  int64_t m, k, tile_m, tile_k, row_tiles, col_tiles;
  TileGrid(int64_t m_, int64_t k_, int64_t tm, int64_t tk)
      : m(m_), k(k_), tile_m(tm), tile_k(tk), row_tiles(ceil_div(m_, tm)), col_tiles(ceil_div(k_, tk)) {}
  int64_t rows_in(int64_t i) const { return std::min(tile_m, m - i * tile_m); }
  int64_t cols_in(int64_t j) const { return std::min(tile_k, k - j * tile_k); }
};

// Calls visit(r, c, location) for the kept elements of tile (i, j) in ascending location order.
template <typename Keep, typename Visit>
void for_each_kept(const TileGrid& g, int64_t i, int64_t j, Keep keep, Visit visit) {
  for (int64_t r = 0; r < g.rows_in(i); ++r)
    for (int64_t c = 0; c < g.cols_in(j); ++c) {
      const int64_t row = i * g.tile_m + r, col = j * g.tile_k + c;
      if (keep(row, col)) visit(row, col, r * g.tile_k + c);
    }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> pack(const at::Tensor& dense, const bool* mask, const TileGrid& g) {
  const T* w = dense.data_ptr<T>();
  const int64_t k = g.k;
  for (int64_t e = 0; e < g.m * k; ++e)
    if (!std::isfinite(static_cast<float>(w[e]))) report_nonfinite("spmm::tiled_csl_compress", k, e);
  // Only nonzeros are stored (-0.0 counts as zero): a zero the mask keeps would cost bytes and add nothing.
  auto keep = [&](int64_t row, int64_t col) {
    return (!mask || mask[row * k + col]) && static_cast<float>(w[row * k + col]) != 0.0f;
  };

  const int64_t tiles = g.row_tiles * g.col_tiles;
  std::vector<int64_t> counts(tiles + 1, 0);
  at::parallel_for(0, g.row_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = 0; j < g.col_tiles; ++j)
        for_each_kept(g, i, j, keep, [&](int64_t, int64_t, int64_t) { ++counts[i * g.col_tiles + j + 1]; });
  });
  for (int64_t t = 0; t < tiles; ++t) counts[t + 1] += counts[t];
  check_nnz_fits("spmm::tiled_csl_compress", counts[tiles]);

  at::Tensor values = at::empty({counts[tiles]}, dense.options());
  at::Tensor locations = at::empty({counts[tiles]}, dense.options().dtype(at::kShort));
  at::Tensor offsets = at::empty({tiles + 1}, dense.options().dtype(at::kInt));
  T* vals = values.data_ptr<T>();
  int16_t* locs = locations.data_ptr<int16_t>();
  int32_t* offs = offsets.data_ptr<int32_t>();
  for (int64_t t = 0; t <= tiles; ++t) offs[t] = static_cast<int32_t>(counts[t]);
  at::parallel_for(0, g.row_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = 0; j < g.col_tiles; ++j) {
        int64_t e = counts[i * g.col_tiles + j];
        for_each_kept(g, i, j, keep, [&](int64_t row, int64_t col, int64_t loc) {
          vals[e] = w[row * k + col];
          locs[e++] = static_cast<int16_t>(static_cast<uint16_t>(loc));  // unsigned 16-bit location in int16
        });
      }
  });
  return {values, locations, offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiled_csl_compress_cpu(const at::Tensor& dense_in,
                                                                      const std::optional<at::Tensor>& mask,
                                                                      int64_t tile_m, int64_t tile_k) {
  constexpr const char* op = "spmm::tiled_csl_compress";
  check_tiled_csl_compress_args(op, dense_in, mask, tile_m, tile_k);
  const at::Tensor dense = dense_in.contiguous();
  const at::Tensor mask_c = mask.has_value() ? mask->contiguous() : at::Tensor();
  const TileGrid grid(dense.size(0), dense.size(1), tile_m, tile_k);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "tiled_csl_compress_cpu", [&] {
    out = pack<scalar_t>(dense, mask.has_value() ? mask_c.data_ptr<bool>() : nullptr, grid);
  });
  return out;
}

// The stream must be well formed before the matmul trusts it: offsets rise from 0 to nnz, locations inside
// their (possibly partial) tile and strictly increasing within it (the packer's order; so no element twice).
// A stream read with another tile shape of the same tile count whose tiles are all full passes: the tile shape
// is the caller's statement, as out_features is (the format, the layer and the saved file carry it).
void check_stream(const char* op, const TileGrid& g, const int32_t* offs, const int16_t* locs, int64_t nnz) {
  const int64_t tiles = g.row_tiles * g.col_tiles;
  TORCH_CHECK_VALUE(offs[0] == 0 && offs[tiles] == nnz, op, ": `tile_offsets` must start at 0 and end at nnz = ",
                    nnz, ", got ", offs[0], " and ", offs[tiles]);
  for (int64_t t = 0; t < tiles; ++t)
    TORCH_CHECK_VALUE(offs[t] <= offs[t + 1], op, ": `tile_offsets` must not decrease (tile ", t, ")");
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t i = t / g.col_tiles, j = t % g.col_tiles, rows = g.rows_in(i), cols = g.cols_in(j);
    const int64_t end = rows * g.tile_k;  // row-major locations: inside the tile's rows iff below this
    const bool full_width = cols == g.tile_k;  // else the column needs its own check
    int64_t previous = -1;
    for (int64_t e = offs[t]; e < offs[t + 1]; ++e) {
      const int64_t loc = static_cast<uint16_t>(locs[e]);
      TORCH_CHECK_VALUE(loc < end && (full_width || loc % g.tile_k < cols), op, ": `locations`[", e, "] = ", loc,
                        " lies outside tile ", t, " (", rows, " x ", cols, ")");
      TORCH_CHECK_VALUE(loc > previous, op, ": `locations`[", e, "] = ", loc, " repeats or precedes the location ",
                        "before it in tile ", t, "; each tile lists its elements once, in increasing order");
      previous = loc;
    }
  }
}

}  // namespace

at::Tensor tiled_csl_mm_reference(const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                                  const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "spmm::tiled_csl_mm";
  check_tiled_csl_mm_args(op, x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias);
  const int64_t k = x.size(-1), n = leading_rows(x);
  const TileGrid g(out_features, k, tile_m, tile_k);
  const int32_t* offs = tile_offsets.data_ptr<int32_t>();
  const int16_t* locs = locations.data_ptr<int16_t>();
  check_stream(op, g, offs, locs, values.numel());

  // x as [K, N] so the innermost loop (over tokens) is contiguous.
  const at::Tensor xt = activation_matrix(x, n, k).t().contiguous();
  const double* xs = xt.data_ptr<double>();
  at::Tensor out = at::empty({n, out_features}, x.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "tiled_csl_mm_cpu", [&] {
    const scalar_t* vals = values.data_ptr<scalar_t>();
    at::parallel_for(0, g.row_tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc;
      for (int64_t i = begin; i < end; ++i) {
        acc.assign(g.rows_in(i) * n, 0.0);  // acc[r * n + t]
        for (int64_t j = 0; j < g.col_tiles; ++j) {
          const int64_t t = i * g.col_tiles + j;
          for (int64_t e = offs[t]; e < offs[t + 1]; ++e) {
            const int64_t loc = static_cast<uint16_t>(locs[e]);
            const double v = static_cast<double>(vals[e]);
            const double* xc = xs + (j * tile_k + loc % tile_k) * n;
            double* a = acc.data() + (loc / tile_k) * n;
            for (int64_t tok = 0; tok < n; ++tok) a[tok] += v * xc[tok];
          }
        }
        for (int64_t r = 0; r < g.rows_in(i); ++r)
          for (int64_t tok = 0; tok < n; ++tok) o[tok * out_features + i * tile_m + r] = acc[r * n + tok];
      }
    });
  });
  return finish_linear(out, bias, x);
}

namespace {

// A stream's locations and offsets on their own, checked as the matmul checks them (shapes, then check_stream: a
// loop over the stream); the tile grid they describe.
TileGrid checked_stream_grid(const char* op, const at::Tensor& locations, const at::Tensor& tile_offsets,
                             int64_t out_features, int64_t in_features, int64_t tile_m, int64_t tile_k) {
  check_tile_shape(op, tile_m, tile_k);
  check_out_features(op, out_features);
  check_features(op, "in_features", in_features);
  check_dim(op, "locations", locations, 1);
  check_dim(op, "tile_offsets", tile_offsets, 1);
  check_dtype(op, "locations", locations, at::kShort);
  check_dtype(op, "tile_offsets", tile_offsets, at::kInt);
  check_contiguous(op, "locations", locations);
  check_contiguous(op, "tile_offsets", tile_offsets);
  TORCH_CHECK_VALUE(locations.device().is_cpu() && tile_offsets.device().is_cpu(), op,
                    ": `locations` and `tile_offsets` must be on the CPU");
  const int64_t tiles = tile_count(out_features, in_features, tile_m, tile_k, op);
  TORCH_CHECK_VALUE(tile_offsets.numel() == tiles + 1, op, ": `tile_offsets` must have ", tiles + 1, " entries for a ",
                    out_features, " x ", in_features, " weight in ", tile_m, " x ", tile_k, " tiles, got ",
                    tile_offsets.numel());
  const TileGrid g(out_features, in_features, tile_m, tile_k);
  check_stream(op, g, tile_offsets.data_ptr<int32_t>(), locations.data_ptr<int16_t>(), locations.numel());
  return g;
}

// The matmul's stream checks on their own: TiledCSLWeight.validate().
void tiled_csl_check_cpu(const at::Tensor& locations, const at::Tensor& tile_offsets, int64_t out_features,
                         int64_t in_features, int64_t tile_m, int64_t tile_k) {
  checked_stream_grid("spmm::_tiled_csl_check", locations, tile_offsets, out_features, in_features, tile_m, tile_k);
}

}  // namespace

at::Tensor tiled_csl_cpu_bitmap(const at::Tensor& locations, const at::Tensor& tile_offsets, int64_t out_features,
                                int64_t in_features, int64_t tile_m, int64_t tile_k) {
  const TileGrid g = checked_stream_grid("spmm::tiled_csl_cpu_layout", locations, tile_offsets, out_features,
                                         in_features, tile_m, tile_k);
  const int64_t tiles = g.row_tiles * g.col_tiles;
  const int32_t* offs = tile_offsets.data_ptr<int32_t>();
  const int16_t* locs = locations.data_ptr<int16_t>();
  // Bit b of word (t * tile_m + r) * words + w: row r, column 64 w + b of tile t holds a value (kernels/cpu/cpu_kernels.h).
  // check_stream has made each tile's locations strictly increasing: no bit is set twice.
  const int64_t words = kernels::cpu::bitmap_words_per_row(tile_k);
  at::Tensor bitmap = at::zeros({tiles * tile_m * words}, tile_offsets.options().dtype(at::kLong));
  uint64_t* bits = reinterpret_cast<uint64_t*>(bitmap.data_ptr<int64_t>());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t e = offs[t]; e < offs[t + 1]; ++e) {
        const int64_t loc = static_cast<uint16_t>(locs[e]), r = loc / tile_k, c = loc % tile_k;
        bits[(t * tile_m + r) * words + c / 64] |= uint64_t{1} << (c % 64);
      }
  });
  return bitmap;
}

TORCH_LIBRARY_IMPL(spmm, CPU, m) {
  m.impl("tiled_csl_compress", &tiled_csl_compress_cpu);
  m.impl("_tiled_csl_mm_reference", &tiled_csl_mm_reference);
  m.impl("_tiled_csl_check", &tiled_csl_check_cpu);
  m.impl("tiled_csl_cpu_layout", &tiled_csl_cpu_bitmap);
}

}  // namespace spmm::ops
