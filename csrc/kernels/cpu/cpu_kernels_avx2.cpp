// The AVX2 CPU kernels (compiled with -mavx2 -mfma -mf16c -mbmi2 -mpopcnt; cpu_isa.cpp calls them only on CPUs that
// have these): the next path where AVX-512 is missing. Same plan as the AVX-512 kernels (each weight row read
// once, expanded in registers, multiplied with dense x), 8 columns at a time, without an expand instruction:
//   2:4: one meta byte covers 8 columns (2 groups, 4 packed values); a 256-entry table gives the vpermps indices
//        that move the 4 packed values (in the low half of a register whose high half is zero) to their columns,
//        the pruned columns picking a zero lane;
//   Tiled-CSL: one bitmap byte covers 8 columns; the next popcount(byte) values are loaded (lanes past them zero)
//        and a table gives the vpermps indices from the byte, the unset columns picking lane 7 (zero unless all 8
//        are set).
// Values are widened to fp32 in registers (bf16: a shift; fp16: vcvtph2ps); x comes as fp32; FMA in fp32.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_scalar.h"

namespace spmm::kernels::cpu {
namespace {

// vpermps indices, 8 per table entry. Built by the compiler (constexpr): no code of this translation unit may run
// before cpu_isa.cpp has seen AVX2 on the CPU, so there is no dynamic initialization here.
struct PermuteTables {
  alignas(32) int32_t sparse24[256][8] = {};  // meta byte -> columns' packed index, 4 (a zero lane) where pruned
  alignas(32) int32_t bitmap[256][8] = {};    // bitmap byte -> columns' packed index, 7 where unset
  alignas(32) int32_t first[9][8] = {};       // n -> maskload mask of the first n lanes
  constexpr PermuteTables() {
    for (int b = 0; b < 256; ++b) {
      for (int j = 0; j < 8; ++j) sparse24[b][j] = 4;
      for (int half = 0; half < 2; ++half) {
        const int code = (b >> (4 * half)) & 0xF, keep = kCodeMask[code];
        if (keep == 0) continue;
        sparse24[b][4 * half + (code & 3)] = 2 * half;
        sparse24[b][4 * half + (code >> 2)] = 2 * half + 1;
      }
      int packed = 0;
      for (int j = 0; j < 8; ++j) bitmap[b][j] = (b >> j) & 1 ? packed++ : 7;
    }
    for (int n = 0; n <= 8; ++n)
      for (int j = 0; j < 8; ++j) first[n][j] = j < n ? -1 : 0;
  }
};
constexpr PermuteTables kTables{};

inline __m256i table_row(const int32_t (&row)[8]) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(row)); }

// ------------------------------------------------------------------------------------- dtype policies --------
// Packed values in, fp32 register out: load4 (4 packed values into the low half, high half zero), load8 (8 values),
// loadn (the first n <= 8 values, the rest zero, never reading past them).
struct F32 {
  using Raw = float;
  static __m256 load4(const Raw* p) { return _mm256_zextps128_ps256(_mm_loadu_ps(p)); }
  static __m256 load2(const Raw* p) {
    return _mm256_zextps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
  }
  static __m256 load8(const Raw* p) { return _mm256_loadu_ps(p); }
  static __m256 loadn(const Raw* p, int n) { return _mm256_maskload_ps(p, table_row(kTables.first[n])); }
};

template <bool kBf16>
struct Half16 {
  using Raw = uint16_t;
  static __m128 widen4(__m128i h) {  // 4 values in the low 64 bits
    if constexpr (kBf16) return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
    else return _mm_cvtph_ps(h);
  }
  static __m256 widen8(__m128i h) {
    if constexpr (kBf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else return _mm256_cvtph_ps(h);
  }
  static __m256 load4(const Raw* p) { return _mm256_zextps128_ps256(widen4(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))); }
  static __m256 load2(const Raw* p) {
    uint32_t two;
    std::memcpy(&two, p, 4);
    return _mm256_zextps128_ps256(widen4(_mm_cvtsi32_si128(static_cast<int>(two))));
  }
  static __m256 load8(const Raw* p) { return widen8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static __m256 loadn(const Raw* p, int n) {
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, p, n * sizeof(Raw));
    return widen8(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
};
using BF16 = Half16<true>;
using F16 = Half16<false>;

// ----------------------------------------------------------------------------------- 2:4 and dense rows ------
constexpr int64_t kWindowCols = 256;  // columns whose meta (32 bytes) is checked and copied at once
constexpr int kPrefetchRows = 4;       // rows ahead that are prefetched (see the AVX-512 kernels)

// Whether the meta bytes [b0, b0 + n) of a row hold canonical codes (the high nibble of byte groups/2 unused
// when the group count is odd).
inline bool window_ok(const uint8_t* bytes, int64_t b0, int64_t n, int64_t groups) {
  const __m256i valid_lut = _mm256_setr_epi8(0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0,
                                             0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
  const __m256i lo = _mm256_shuffle_epi8(valid_lut, _mm256_and_si256(m, nib));
  const __m256i hi = _mm256_shuffle_epi8(valid_lut, _mm256_and_si256(_mm256_srli_epi16(m, 4), nib));
  const uint32_t lo_ok = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi8(lo, _mm256_setzero_si256())));
  const uint32_t hi_ok = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi8(hi, _mm256_setzero_si256())));
  const int64_t both = groups / 2 - b0;  // bytes of this window whose two groups exist
  const uint32_t need_lo = static_cast<uint32_t>(low_bits(n));
  const uint32_t need_hi = static_cast<uint32_t>(low_bits(both < 0 ? 0 : min64(both, n)));
  return (lo_ok & need_lo) == need_lo && (hi_ok & need_hi) == need_hi;
}

template <class P, int R>
struct Sparse24Source {
  const typename P::Raw* vals;
  const uint8_t* meta;
  int64_t k, half, meta_bytes, groups;
  alignas(32) uint8_t window[R][32];
  bool ok = true;
  void prepare(int64_t c0) {
    const int64_t b0 = c0 / 8, n = min64(32, meta_bytes - b0);
    for (int r = 0; r < R; ++r) {
      std::memset(window[r], 0, 32);
      std::memcpy(window[r], meta + r * meta_bytes + b0, n);
      ok &= window_ok(window[r], b0, n, groups);
      _mm_prefetch(reinterpret_cast<const char*>(meta + (kPrefetchRows + r) * meta_bytes + b0), _MM_HINT_T0);
    }
  }
  __m256 step(int r, int64_t c, int64_t c0) const {
    const typename P::Raw* p = vals + r * half + c / 2;
    const __m256 packed = c + 8 <= k ? P::load4(p) : P::load2(p);  // K % 8 == 4: the last step has one byte's half
    return _mm256_permutevar8x32_ps(packed, table_row(kTables.sparse24[window[r][(c - c0) / 8]]));
  }
  void prefetch(int r, int64_t c) const {
    _mm_prefetch(reinterpret_cast<const char*>(vals + (kPrefetchRows + r) * half + c / 2), _MM_HINT_T0);
  }
};

template <class P, int R>
struct DenseSource {
  const typename P::Raw* vals;
  int64_t k;
  void prepare(int64_t) {}
  __m256 step(int r, int64_t c, int64_t) const {
    const typename P::Raw* p = vals + r * k + c;
    return c + 8 <= k ? P::load8(p) : P::loadn(p, static_cast<int>(k - c));
  }
  void prefetch(int r, int64_t c) const {
    _mm_prefetch(reinterpret_cast<const char*>(vals + (kPrefetchRows + r) * k + c), _MM_HINT_T0);
  }
};

inline float reduce8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R rows x T tokens of accumulators, U per (row, token) over consecutive 8-column steps; 16 ymm registers.
template <class P, int R, int T, int U, class Source>
void rows_block(Source& src, const Activations& x, int64_t i0, int64_t t0, const Output& out) {
  const int64_t kp = round_up(x.k, 8);
  const float* xs = static_cast<const float*>(x.data) + t0 * x.stride;
  __m256 acc[U][R][T];
#pragma GCC unroll 32
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int t = 0; t < T; ++t) acc[u][r][t] = _mm256_setzero_ps();
  auto step = [&](int u, int64_t c, int64_t c0) {
    __m256 w[R];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) w[r] = src.step(r, c, c0);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) src.prefetch(r, c);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(xs + t * x.stride + c);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) acc[u][r][t] = _mm256_fmadd_ps(w[r], xv, acc[u][r][t]);
    }
  };
  for (int64_t c0 = 0; c0 < kp; c0 += kWindowCols) {
    src.prepare(c0);
    const int64_t c1 = min64(c0 + kWindowCols, kp);
    int64_t c = c0;
    for (; c + U * 8 <= c1; c += U * 8)
#pragma GCC unroll 32
      for (int u = 0; u < U; ++u) step(u, c + u * 8, c0);
    for (; c < c1; c += 8) step(0, c, c0);
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      __m256 sum = acc[0][r][t];
#pragma GCC unroll 32
      for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[u][r][t]);
      write_output(out, t0 + t, i0 + r, reduce8(sum));
    }
}

constexpr int kUnroll[5] = {1, 4, 2, 1, 1};

// All tokens for R rows from i0, 4 tokens (or the rest) at a time.
template <int R, class P, class Source>
void rows_all_tokens(Source& src, const Activations& x, int64_t i0, const Output& out) {
  for (int64_t t0 = 0; t0 < x.n; t0 += 4) {
    switch (min64(4, x.n - t0)) {
      case 1: rows_block<P, R, 1, kUnroll[1]>(src, x, i0, t0, out); break;
      case 2: rows_block<P, R, 2, kUnroll[2]>(src, x, i0, t0, out); break;
      case 3: rows_block<P, R, 3, kUnroll[3]>(src, x, i0, t0, out); break;
      default: rows_block<P, R, 4, kUnroll[4]>(src, x, i0, t0, out); break;
    }
  }
}

// Rows per block: 1 for one token (a single stream through the weight), else 2 (2 x 4 accumulators + 2 + 1 <= 16).
template <class Block>
void for_row_blocks(int64_t n, int64_t b, int64_t e, Block block) {
  int64_t i = b;
  if (n > 1)
    for (; i + 2 <= e; i += 2) block(std::integral_constant<int, 2>{}, i);
  for (; i < e; ++i) block(std::integral_constant<int, 1>{}, i);
}

template <class P>
bool sparse24_rows_t(const Sparse24Rows& w, const Activations& x, int64_t b, int64_t e, const Output& out) {
  bool ok = true;
  for_row_blocks(x.n, b, e, [&](auto rows, int64_t i) {
    constexpr int R = decltype(rows)::value;
    Sparse24Source<P, R> s;
    s.k = w.k;
    s.half = w.k / 2;
    s.meta_bytes = meta_cols(w.k);
    s.groups = w.k / 4;
    s.vals = static_cast<const typename P::Raw*>(w.values) + i * s.half;
    s.meta = w.meta + i * s.meta_bytes;
    rows_all_tokens<R, P>(s, x, i, out);
    ok &= s.ok;
  });
  return ok;
}

template <class P>
void dense_rows_t(const DenseRows& w, const Activations& x, int64_t b, int64_t e, const Output& out) {
  for_row_blocks(x.n, b, e, [&](auto rows, int64_t i) {
    constexpr int R = decltype(rows)::value;
    DenseSource<P, R> s{static_cast<const typename P::Raw*>(w.values) + i * w.k, w.k};
    rows_all_tokens<R, P>(s, x, i, out);
  });
}

// ------------------------------------------------------------------------------------------- Tiled-CSL -------
// bitmap_tile_ok: cpu_scalar.h

// The stored values of one bitmap byte at p, spread over its 8 columns (loads never pass `end`).
template <class P>
inline __m256 bitmap_byte(unsigned byte, const typename P::Raw* p, const typename P::Raw* end) {
  const __m256 packed = p + 8 <= end ? P::load8(p) : P::loadn(p, static_cast<int>(end - p));
  const int n = _mm_popcnt_u32(byte);
  const __m256 live = n == 8 ? packed : _mm256_and_ps(packed, _mm256_castsi256_ps(table_row(kTables.first[n])));
  return _mm256_permutevar8x32_ps(live, table_row(kTables.bitmap[byte]));
}

template <class P, int T>
bool bitmap_row_tile(const BitmapTiles& w, const Activations& x, int64_t i, int64_t t0, const Output& out,
                     float* scratch) {
  const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m), col_tiles = ceil_div(w.k, w.tile_k);
  const int64_t wpr = bitmap_words_per_row(w.tile_k);
  const typename P::Raw* vals = static_cast<const typename P::Raw*>(w.values);
  const typename P::Raw* end = vals + w.tile_offsets[ceil_div(w.m, w.tile_m) * col_tiles];
  const float* xs = static_cast<const float*>(x.data) + t0 * x.stride;
  for (int64_t v = 0; v < rows * T; ++v) _mm256_storeu_ps(scratch + 8 * v, _mm256_setzero_ps());
  bool ok = true;
  for (int64_t j = 0; j < col_tiles; ++j) {
    const int64_t t = i * col_tiles + j;
    if (!bitmap_tile_ok(w, t, rows, min64(w.tile_k, w.k - j * w.tile_k))) {
      ok = false;
      continue;
    }
    const typename P::Raw* p = vals + w.tile_offsets[t];
    const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
    for (int64_t r = 0; r < rows; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(p + 512), _MM_HINT_T0);  // see the AVX-512 kernels
      __m256 a[T];
#pragma GCC unroll 32
      for (int q = 0; q < T; ++q) a[q] = _mm256_loadu_ps(scratch + 8 * (T * r + q));
      for (int64_t c = 0; c < wpr; ++c) {
        uint64_t word = bm[r * wpr + c];
        const float* xc = xs + j * w.tile_k + 64 * c;
        for (int b = 0; word != 0; ++b, word >>= 8) {  // bytes past the last set bit hold nothing
          const unsigned byte = static_cast<unsigned>(word & 0xFF);
          if (byte == 0) continue;
          const __m256 wv = bitmap_byte<P>(byte, p, end);
          p += _mm_popcnt_u32(byte);
#pragma GCC unroll 32
          for (int q = 0; q < T; ++q) a[q] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xc + q * x.stride + 8 * b), a[q]);
        }
      }
#pragma GCC unroll 32
      for (int q = 0; q < T; ++q) _mm256_storeu_ps(scratch + 8 * (T * r + q), a[q]);
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int q = 0; q < T; ++q) write_output(out, t0 + q, i * w.tile_m + r, reduce8(_mm256_loadu_ps(scratch + 8 * (T * r + q))));
  return ok;
}

template <class P>
bool bitmap_rows_t(const BitmapTiles& w, const Activations& x, int64_t b, int64_t e, const Output& out,
                   float* scratch) {
  bool ok = true;
  for (int64_t i = b; i < e; ++i)
    for (int64_t t0 = 0; t0 < x.n; t0 += 4) {
      switch (min64(4, x.n - t0)) {
        case 1: ok &= bitmap_row_tile<P, 1>(w, x, i, t0, out, scratch); break;
        case 2: ok &= bitmap_row_tile<P, 2>(w, x, i, t0, out, scratch); break;
        case 3: ok &= bitmap_row_tile<P, 3>(w, x, i, t0, out, scratch); break;
        default: ok &= bitmap_row_tile<P, 4>(w, x, i, t0, out, scratch); break;
      }
    }
  return ok;
}

// ------------------------------------------------------------------------------------ dense copies (GEMM) ----
// Values of 4 (2:4) or 8 bytes of storage moved as raw bits: fp32 lanes through vpermps, 16-bit values through
// the same indices on their widened (zero-extended) form and narrowed back.
template <typename Raw>
inline void store_columns(__m256i spread, Raw* d, int n) {
  if constexpr (sizeof(Raw) == 4) {
    if (n == 8) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), spread);
    else _mm256_maskstore_epi32(reinterpret_cast<int*>(d), table_row(kTables.first[n]), spread);
  } else {
    const __m128i narrow = _mm_packus_epi32(_mm256_castsi256_si128(spread), _mm256_extracti128_si256(spread, 1));
    if (n == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d), narrow);
    } else {
      alignas(16) Raw tmp[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(tmp), narrow);
      std::memcpy(d, tmp, n * sizeof(Raw));
    }
  }
}

template <typename Raw>
inline __m256i load_raw(const Raw* p, int n) {  // the first n <= 8 values, zero-extended to 32-bit lanes
  alignas(32) Raw tmp[8] = {};
  std::memcpy(tmp, p, n * sizeof(Raw));
  if constexpr (sizeof(Raw) == 4) return _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
  else return _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}

template <typename Raw>
bool sparse24_expand_t(const Sparse24Rows& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  const int64_t k = w.k, half = k / 2, mb = meta_cols(k), groups = k / 4;
  const Raw* vals = static_cast<const Raw*>(w.values);
  Raw* d = static_cast<Raw*>(dense);
  bool ok = true;
  alignas(32) uint8_t window[32];
  for (int64_t i = b; i < e; ++i) {
    for (int64_t c0 = 0; c0 < k; c0 += kWindowCols) {
      const int64_t b0 = c0 / 8, n = min64(32, mb - b0);
      std::memset(window, 0, 32);
      std::memcpy(window, w.meta + i * mb + b0, n);
      ok &= window_ok(window, b0, n, groups);
      for (int64_t c = c0; c < min64(c0 + kWindowCols, k); c += 8) {
        const int cols = static_cast<int>(min64(8, k - c));
        const __m256i packed = load_raw(vals + i * half + c / 2, cols / 2);  // lanes 4.. (and past the row) zero
        const __m256i spread = _mm256_permutevar8x32_epi32(packed, table_row(kTables.sparse24[window[(c - c0) / 8]]));
        store_columns(spread, d + (i - b) * ld + c, cols);
      }
    }
  }
  return ok;
}

template <typename Raw>
bool bitmap_expand_t(const BitmapTiles& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  const int64_t col_tiles = ceil_div(w.k, w.tile_k), wpr = bitmap_words_per_row(w.tile_k);
  const Raw* vals = static_cast<const Raw*>(w.values);
  Raw* d = static_cast<Raw*>(dense);
  bool ok = true;
  for (int64_t i = b; i < e; ++i) {
    const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m);
    Raw* block = d + (i - b) * w.tile_m * ld;
    for (int64_t j = 0; j < col_tiles; ++j) {
      const int64_t t = i * col_tiles + j, cols = min64(w.tile_k, w.k - j * w.tile_k);
      if (!bitmap_tile_ok(w, t, rows, cols)) {
        ok = false;
        for (int64_t r = 0; r < rows; ++r) std::memset(block + r * ld + j * w.tile_k, 0, cols * sizeof(Raw));
        continue;
      }
      const Raw* p = vals + w.tile_offsets[t];
      const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; c += 8) {
          const unsigned byte = static_cast<unsigned>((bm[r * wpr + c / 64] >> (c % 64)) & 0xFF);
          const int n = _mm_popcnt_u32(byte);
          const __m256i spread = _mm256_permutevar8x32_epi32(load_raw(p, n), table_row(kTables.bitmap[byte]));
          store_columns(spread, block + r * ld + j * w.tile_k + c, static_cast<int>(min64(8, cols - c)));
          p += n;
        }
    }
  }
  return ok;
}

// ------------------------------------------------------------------------------------------ finiteness -------
bool all_finite(Dtype d, const void* x, int64_t n, int64_t k, int64_t stride) {
  if (d == Dtype::kFloat32) {
    const __m256i em = _mm256_set1_epi32(0x7F800000);
    const int32_t* xs = static_cast<const int32_t*>(x);
    for (int64_t t = 0; t < n; ++t) {
      int64_t c = 0;
      for (; c + 8 <= k; c += 8) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + t * stride + c)), em);
        if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(v, em))) return false;
      }
      for (; c < k; ++c)
        if ((xs[t * stride + c] & 0x7F800000) == 0x7F800000) return false;
    }
    return true;
  }
  const uint16_t exp_mask = d == Dtype::kBFloat16 ? 0x7F80 : 0x7C00;
  const __m256i em = _mm256_set1_epi16(static_cast<short>(exp_mask));
  const uint16_t* xs = static_cast<const uint16_t*>(x);
  for (int64_t t = 0; t < n; ++t) {
    int64_t c = 0;
    for (; c + 16 <= k; c += 16) {
      const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + t * stride + c)), em);
      if (_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, em))) return false;
    }
    for (; c < k; ++c)
      if ((xs[t * stride + c] & exp_mask) == exp_mask) return false;
  }
  return true;
}

// ------------------------------------------------------------------------------------------- the table -------
Dtype x_as_fp32(Dtype) { return Dtype::kFloat32; }

SPMM_CPU_ROW_ENTRY_POINTS
bool sparse24_expand(Dtype d, const Sparse24Rows& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  return d == Dtype::kFloat32 ? sparse24_expand_t<uint32_t>(w, b, e, dense, ld)
                              : sparse24_expand_t<uint16_t>(w, b, e, dense, ld);
}
bool bitmap_expand(Dtype d, const BitmapTiles& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  return d == Dtype::kFloat32 ? bitmap_expand_t<uint32_t>(w, b, e, dense, ld)
                              : bitmap_expand_t<uint16_t>(w, b, e, dense, ld);
}

}  // namespace

const KernelTable& avx2_kernels() {
  static const KernelTable table{Isa::kAvx2,  "avx2",          x_as_fp32,     sparse24_rows, dense_rows,
                                 bitmap_rows, sparse24_expand, bitmap_expand, all_finite, nullptr};
  return table;
}

}  // namespace spmm::kernels::cpu
