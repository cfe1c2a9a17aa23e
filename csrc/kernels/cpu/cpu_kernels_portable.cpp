// The portable CPU kernels (plain C++, default compiler flags): every CPU runs them, and the ops run them whatever
// the CPU when x holds a NaN or an Inf, because they visit only the stored elements of each weight row, like the
// fp64 reference (a NaN at a pruned column then stays out of the result). Sums in fp32, in the stored order.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_scalar.h"

namespace spmm::kernels::cpu {
namespace {

constexpr int64_t kTokenBlock = 8;  // accumulators of one weight row held at once

Dtype x_as_fp32(Dtype) { return Dtype::kFloat32; }

// For every row: call row_pairs(i, visit) which calls visit(column, value) for its stored elements; accumulate
// for up to kTokenBlock tokens at a time.
template <typename RowPairs>
void rows_times_x(const Activations& x, int64_t row_begin, int64_t row_end, const Output& out, RowPairs row_pairs) {
  const float* xs = static_cast<const float*>(x.data);
  for (int64_t i = row_begin; i < row_end; ++i) {
    for (int64_t t0 = 0; t0 < x.n; t0 += kTokenBlock) {
      const int64_t tb = std::min(kTokenBlock, x.n - t0);
      float acc[kTokenBlock] = {};
      const float* x0 = xs + t0 * x.stride;
      row_pairs(i, [&](int64_t c, float v) {
        for (int64_t t = 0; t < tb; ++t) acc[t] += v * x0[t * x.stride + c];
      });
      for (int64_t t = 0; t < tb; ++t) write_output(out, t0 + t, i, acc[t]);
    }
  }
}

template <class P, Dtype D = P::value>
bool sparse24_rows_t(const Sparse24Rows& w, const Activations& x, int64_t row_begin, int64_t row_end,
                     const Output& out) {
  const int64_t half = w.k / 2, mc = meta_cols(w.k), groups = w.k / 4;
  bool ok = true;
  rows_times_x(x, row_begin, row_end, out, [&](int64_t i, auto visit) {
    const uint8_t* meta = w.meta + i * mc;
    for (int64_t g = 0; g < groups; ++g) {
      const unsigned code = (meta[g / 2] >> (4 * (g % 2))) & 0xFu;
      const unsigned keep = kCodeMask[code];
      if (keep == 0) {
        ok = false;
        continue;
      }
      const int idx0 = code & 3, idx1 = code >> 2;
      visit(4 * g + idx0, load_scalar<D>(w.values, i * half + 2 * g));
      visit(4 * g + idx1, load_scalar<D>(w.values, i * half + 2 * g + 1));
    }
  });
  return ok;
}

template <class P, Dtype D = P::value>
void dense_rows_t(const DenseRows& w, const Activations& x, int64_t row_begin, int64_t row_end, const Output& out) {
  rows_times_x(x, row_begin, row_end, out, [&](int64_t i, auto visit) {
    for (int64_t c = 0; c < w.k; ++c) visit(c, load_scalar<D>(w.values, i * w.k + c));
  });
}

// bitmap_tile_ok: cpu_scalar.h

// Calls visit(r, c, value_index) for every stored element of tile t (r, c inside the tile), in stored order.
template <typename Visit>
void for_each_bitmap_element(const BitmapTiles& w, int64_t t, int64_t rows, Visit visit) {
  const int64_t wpr = bitmap_words_per_row(w.tile_k);
  const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
  int64_t e = w.tile_offsets[t];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < wpr; ++q)
      for (uint64_t word = bm[r * wpr + q]; word != 0; word &= word - 1) visit(r, 64 * q + __builtin_ctzll(word), e++);
}

template <class P, Dtype D = P::value>
bool bitmap_rows_t(const BitmapTiles& w, const Activations& x, int64_t tile_begin, int64_t tile_end,
                   const Output& out, float* scratch) {
  const int64_t col_tiles = ceil_div(w.k, w.tile_k);
  const float* xs = static_cast<const float*>(x.data);
  bool ok = true;
  for (int64_t i = tile_begin; i < tile_end; ++i) {
    const int64_t rows = std::min(w.tile_m, w.m - i * w.tile_m);
    for (int64_t t0 = 0; t0 < x.n; t0 += kTokenBlock) {
      const int64_t tb = std::min(kTokenBlock, x.n - t0);
      float* acc = scratch;  // acc[r * kTokenBlock + t]
      std::fill_n(acc, rows * kTokenBlock, 0.0f);
      for (int64_t j = 0; j < col_tiles; ++j) {
        const int64_t t = i * col_tiles + j;
        if (!bitmap_tile_ok(w, t, rows, std::min(w.tile_k, w.k - j * w.tile_k))) {
          ok = false;
          continue;
        }
        const float* x0 = xs + t0 * x.stride + j * w.tile_k;
        for_each_bitmap_element(w, t, rows, [&](int64_t r, int64_t c, int64_t e) {
          const float v = load_scalar<D>(w.values, e);
          for (int64_t tok = 0; tok < tb; ++tok) acc[r * kTokenBlock + tok] += v * x0[tok * x.stride + c];
        });
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t tok = 0; tok < tb; ++tok) write_output(out, t0 + tok, i * w.tile_m + r, acc[r * kTokenBlock + tok]);
    }
  }
  return ok;
}

template <Dtype D>
using Raw = std::conditional_t<D == Dtype::kFloat32, float, uint16_t>;

template <Dtype D>
bool sparse24_expand_t(const Sparse24Rows& w, int64_t row_begin, int64_t row_end, void* dense, int64_t ld) {
  const int64_t half = w.k / 2, mc = meta_cols(w.k);
  const Raw<D>* vals = static_cast<const Raw<D>*>(w.values);
  Raw<D>* d = static_cast<Raw<D>*>(dense);
  bool ok = true;
  for (int64_t i = row_begin; i < row_end; ++i) {
    Raw<D>* row = d + (i - row_begin) * ld;
    std::fill_n(row, w.k, Raw<D>(0));
    for (int64_t g = 0; g < w.k / 4; ++g) {
      const unsigned code = (w.meta[i * mc + g / 2] >> (4 * (g % 2))) & 0xFu;
      if (kCodeMask[code] == 0) {
        ok = false;
        continue;
      }
      row[4 * g + (code & 3)] = vals[i * half + 2 * g];
      row[4 * g + (code >> 2)] = vals[i * half + 2 * g + 1];
    }
  }
  return ok;
}

template <Dtype D>
bool bitmap_expand_t(const BitmapTiles& w, int64_t tile_begin, int64_t tile_end, void* dense, int64_t ld) {
  const int64_t col_tiles = ceil_div(w.k, w.tile_k);
  const Raw<D>* vals = static_cast<const Raw<D>*>(w.values);
  Raw<D>* d = static_cast<Raw<D>*>(dense);
  bool ok = true;
  for (int64_t i = tile_begin; i < tile_end; ++i) {
    const int64_t rows = std::min(w.tile_m, w.m - i * w.tile_m);
    Raw<D>* block = d + (i - tile_begin) * w.tile_m * ld;
    for (int64_t r = 0; r < rows; ++r) std::fill_n(block + r * ld, w.k, Raw<D>(0));
    for (int64_t j = 0; j < col_tiles; ++j) {
      const int64_t t = i * col_tiles + j;
      if (!bitmap_tile_ok(w, t, rows, std::min(w.tile_k, w.k - j * w.tile_k))) {
        ok = false;
        continue;
      }
      for_each_bitmap_element(w, t, rows, [&](int64_t r, int64_t c, int64_t e) {
        block[r * ld + j * w.tile_k + c] = vals[e];
      });
    }
  }
  return ok;
}

template <Dtype D>
bool all_finite_t(const void* x, int64_t n, int64_t k, int64_t stride) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < k; ++c)
      if (!std::isfinite(load_scalar<D>(x, t * stride + c))) return false;
  return true;
}

template <Dtype D>
using As = std::integral_constant<Dtype, D>;  // the per-dtype "policy" of this unit: just the dtype
using F32 = As<Dtype::kFloat32>;
using BF16 = As<Dtype::kBFloat16>;
using F16 = As<Dtype::kFloat16>;

SPMM_CPU_ROW_ENTRY_POINTS
bool sparse24_expand(Dtype d, const Sparse24Rows& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, sparse24_expand_t<P::value>(w, b, e, dense, ld))
}
bool bitmap_expand(Dtype d, const BitmapTiles& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, bitmap_expand_t<P::value>(w, b, e, dense, ld))
}
bool all_finite(Dtype d, const void* x, int64_t n, int64_t k, int64_t stride) {
  SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, all_finite_t<P::value>(x, n, k, stride))
}

}  // namespace

const KernelTable& portable_kernels() {
  static const KernelTable table{Isa::kPortable, "portable", x_as_fp32, sparse24_rows, dense_rows,
                                 bitmap_rows,    sparse24_expand, bitmap_expand, all_finite, nullptr};
  return table;
}

}  // namespace spmm::kernels::cpu
