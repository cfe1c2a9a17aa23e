// The fast CPU kernels of the spmm ops: raw pointers and sizes, no torch. One table of functions per instruction
// set (AVX-512, AVX2, portable C++), each built in its own translation unit with its own compiler flags and chosen
// at run time by cpu_isa.h. They compute y[t, dst(i)] = sum_c W[i, c] * x[t, c] (+ bias) in fp32 for weight rows i
// given as 2:4 (canonical values + meta), dense rows, or Tiled-CSL tiles read through a bitmap.
//
// Semantics against the fp64 reference (the tests' oracle): products and sums in fp32 (bf16 x bf16 products are
// exact in fp32, so only the order and width of the sums differ), written as fp32; the caller rounds once to the
// output dtype. The vectorized kernels multiply every column of a weight row, the pruned ones as zeros, so they
// need finite x (0 * Inf = NaN would appear where the reference multiplies nothing); the portable kernels visit
// only the stored elements, like the reference, and are what the ops run when x holds a NaN or an Inf.
#pragma once

#include <cstdint>

namespace spmm::kernels::cpu {

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
enum class Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// x as the kernels read it: [n, stride] contiguous in x_dtype (see KernelTable), columns k .. stride-1 zero.
// stride >= padded_x_cols(k): whole vectors and whole 64-column bitmap words may be read past k.
struct Activations {
  const void* data;
  int64_t n, k, stride;
};
constexpr int64_t padded_x_cols(int64_t k) { return (k + 63) / 64 * 64 + 64; }

// fp32 result: out[t * stride + dst(i)] = sum + bias[dst(i)] for weight row i (dst(i) = dst_row[i], or i when
// dst_row is null); bias nullable, indexed by output column.
struct Output {
  float* data;
  int64_t stride;
  const int32_t* dst_row;
  const float* bias;
};

// Canonical 2:4 rows: values [rows, k/2], meta uint8 [rows, (k/4 + 1)/2] (sparse24_layout.h), k % 4 == 0.
struct Sparse24Rows {
  const void* values;
  const uint8_t* meta;
  int64_t k;
};

// Dense rows [rows, k].
struct DenseRows {
  const void* values;
  int64_t k;
};

// Tiled-CSL read through its CPU layout: tiles of tile_m x tile_k, row-tile major; tile t's values are
// values[tile_offsets[t] .. tile_offsets[t + 1]) in row-major order inside the tile (the Tiled-CSL stream's own
// order), and bitmap[(t * tile_m + r) * words_per_row + w] has bit b set where row r, column 64 w + b of the tile
// holds a stored value (bitmap_words_per_row(tile_k) words per tile row, tile_m rows per tile even in the last
// row tile; no bit outside the tile is set).
struct BitmapTiles {
  const void* values;
  const int32_t* tile_offsets;
  const uint64_t* bitmap;
  int64_t m, k, tile_m, tile_k;
};
constexpr int64_t bitmap_words_per_row(int64_t tile_k) { return (tile_k + 63) / 64; }
constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct KernelTable {
  Isa isa;
  const char* name;
  // The dtype x must be handed in for weights of dtype w.
  Dtype (*x_dtype)(Dtype w);
  // Rows [row_begin, row_end) of a 2:4 weight times every token of x. False if a meta code in them is not
  // canonical (idx0 < idx1): the outputs are then unspecified and the caller raises.
  bool (*sparse24_rows)(Dtype w, const Sparse24Rows& weight, const Activations& x, int64_t row_begin, int64_t row_end,
                        const Output& out);
  void (*dense_rows)(Dtype w, const DenseRows& weight, const Activations& x, int64_t row_begin, int64_t row_end,
                     const Output& out);
  // Row tiles [tile_begin, tile_end) of a Tiled-CSL weight. scratch: bitmap_scratch_floats(tile_m) floats.
  // False if a tile's bitmap does not hold exactly its tile_offsets' count of values, or sets a bit outside the
  // tile (nothing is read past the tile's values then; the outputs are unspecified and the caller raises).
  bool (*bitmap_rows)(Dtype w, const BitmapTiles& weight, const Activations& x, int64_t tile_begin, int64_t tile_end,
                      const Output& out, float* scratch);
  // The same weights written out densely in their own dtype: dense[(i - row_begin) * ld + c] for rows
  // [row_begin, row_end) (2:4) or for the rows of row tiles [tile_begin, tile_end) (Tiled-CSL).
  bool (*sparse24_expand)(Dtype w, const Sparse24Rows& weight, int64_t row_begin, int64_t row_end, void* dense,
                          int64_t ld);
  bool (*bitmap_expand)(Dtype w, const BitmapTiles& weight, int64_t tile_begin, int64_t tile_end, void* dense,
                        int64_t ld);
  // Whether x[t, c] is finite for every t < n, c < k (x in dtype d, rows `stride` elements apart).
  bool (*all_finite)(Dtype d, const void* x, int64_t n, int64_t k, int64_t stride);
  // Many tokens (null where an ISA has none): row tiles [tile_begin, tile_end) of a Tiled-CSL weight times x^T,
  // vectorized over tokens: for every stored element, its value times the element's row of x^T, accumulated per
  // weight row. xt: x^T fp32 [k, n_pad] (n_pad a multiple of 16, zero past n); out_t: fp32 [m, n_pad], written
  // for the tiles' rows (no bias). cursors: 2 * ceil(k / tile_k) int64 of scratch. False as for bitmap_rows.
  bool (*bitmap_tokens)(Dtype w, const BitmapTiles& weight, const float* xt, int64_t n_pad, int64_t tile_begin,
                        int64_t tile_end, float* out_t, int64_t* cursors);
};

// Floats of scratch a bitmap_rows call needs (accumulators of one row tile).
constexpr int64_t bitmap_scratch_floats(int64_t tile_m) { return tile_m * 16 * 8; }

const KernelTable& portable_kernels();
const KernelTable& avx2_kernels();    // only call when the CPU has AVX2 + FMA + F16C + BMI2 (cpu_isa.h)
const KernelTable& avx512_kernels();  // only call when the CPU has the AVX-512 set of cpu_isa.h

}  // namespace spmm::kernels::cpu
