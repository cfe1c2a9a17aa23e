// What the CPU kernel translation units share: small integer helpers, 16-bit float conversions, the 2:4 code ->
// kept-columns mask, the output write, the Tiled-CSL bitmap check (the AVX-512 unit has a vector one), and the dtype switch of their tables. The functions sit in an unnamed
// namespace on purpose: each unit is compiled for its own instruction set, and an inline function emitted by two of
// them would be merged by the linker into one copy, possibly the AVX-512 one, run then on a CPU without it.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace spmm::kernels::cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline uint64_t low_bits(int64_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }  // n >= 0

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// IEEE binary16 -> binary32, exact (subnormals, Inf, NaN included).
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | ((112u - static_cast<uint32_t>(e)) << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <Dtype D>
inline float load_scalar(const void* p, int64_t i) {
  if constexpr (D == Dtype::kFloat32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (D == Dtype::kBFloat16) {
    return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  } else {
    return fp16_to_float(static_cast<const uint16_t*>(p)[i]);
  }
}

// 2:4 group code (idx0 | idx1 << 2, idx0 < idx1) -> the 4-bit mask of its two columns; 0 for a code that is
// not canonical.
constexpr uint8_t kCodeMask[16] = {0, 0, 0, 0, 0x3, 0, 0, 0, 0x5, 0x6, 0, 0, 0x9, 0xA, 0xC, 0};

inline int64_t meta_cols(int64_t k) { return (k / 4 + 1) / 2; }

inline void write_output(const Output& out, int64_t t, int64_t row, float sum) {
  const int64_t col = out.dst_row ? out.dst_row[row] : row;
  out.data[t * out.stride + col] = sum + (out.bias ? out.bias[col] : 0.0f);
}

// Tile t's bitmap holds exactly its count of values and no bit outside the tile (rows >= `rows` of a last row
// tile, columns >= `cols` of a last column tile).
inline bool bitmap_tile_ok(const BitmapTiles& w, int64_t t, int64_t rows, int64_t cols) {
  const int64_t wpr = bitmap_words_per_row(w.tile_k);
  const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
  int64_t count = 0;
  for (int64_t r = 0; r < w.tile_m; ++r)
    for (int64_t q = 0; q < wpr; ++q) {
      const int64_t valid = cols - 64 * q;
      const uint64_t allowed = r >= rows ? 0 : low_bits(valid < 0 ? 0 : valid);
      const uint64_t word = bm[r * wpr + q];
      if (word & ~allowed) return false;
      count += __builtin_popcountll(word);
    }
  return count == static_cast<int64_t>(w.tile_offsets[t + 1]) - w.tile_offsets[t];
}

}  // namespace
}  // namespace spmm::kernels::cpu

// The table entries switch from the run-time dtype to a compiled kernel: `call` is evaluated with the type P bound
// to F32T, BF16T or F16T, each unit's own per-dtype policy.
#define SPMM_CPU_BY_DTYPE(d, F32T, BF16T, F16T, call) \
  switch (d) {                                        \
    case Dtype::kFloat32: {                           \
      using P = F32T;                                 \
      return call;                                    \
    }                                                 \
    case Dtype::kBFloat16: {                          \
      using P = BF16T;                                \
      return call;                                    \
    }                                                 \
    default: {                                        \
      using P = F16T;                                 \
      return call;                                    \
    }                                                 \
  }

// The table's row entry points of a unit whose kernels are sparse24_rows_t<P>, dense_rows_t<P> and
// bitmap_rows_t<P> for its per-dtype policies F32, BF16, F16 (the same three functions in every unit).
#define SPMM_CPU_ROW_ENTRY_POINTS                                                                               \
  bool sparse24_rows(Dtype d, const Sparse24Rows& w, const Activations& x, int64_t b, int64_t e, const Output& o) { \
    SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, sparse24_rows_t<P>(w, x, b, e, o))                                     \
  }                                                                                                             \
  void dense_rows(Dtype d, const DenseRows& w, const Activations& x, int64_t b, int64_t e, const Output& o) {   \
    SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, dense_rows_t<P>(w, x, b, e, o))                                        \
  }                                                                                                             \
  bool bitmap_rows(Dtype d, const BitmapTiles& w, const Activations& x, int64_t b, int64_t e, const Output& o,  \
                   float* scratch) {                                                                            \
    SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, bitmap_rows_t<P>(w, x, b, e, o, scratch))                              \
  }
