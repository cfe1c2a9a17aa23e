// The AVX-512 CPU kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vbmi2 -mavx512bf16
// -mavx512vpopcntdq; cpu_isa.cpp calls them only on CPUs that have all of these).
//
// Decode-sized calls are bound by the bytes of the weight, so each weight row is read once, as stored, and
// expanded in registers: vpexpandw / vexpandps place the packed values of a row at the kept columns of a 32 (16)
// column window, by a bit mask of those columns, and the expanded vector meets x densely:
//   bf16: vdpbf16ps on bf16 x (products exact in fp32, sums in fp32);
//   fp16: the expanded halves widened by vcvtph2ps, FMA with fp32 x;
//   fp32: vexpandps, FMA with fp32 x.
// 2:4 masks come from the canonical meta itself (a vpshufb over 64 meta bytes gives 512 columns of masks; the
// meta is as small as a bitmask would be, so no other layout is kept), and the values pointer of a 2:4 row moves
// by exactly half the columns. Tiled-CSL tiles are read in their stored order through a bitmap per tile row
// segment: each 16/32-column part of a 64-bit word expands popcount(part) values and moves the pointer by it.
// Register blocking: R weight rows x T tokens of accumulators (R x T <= 24), x reloaded from L1 per row block.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_scalar.h"

namespace spmm::kernels::cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline uint64_t low_bits(int64_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }

// ------------------------------------------------------------------------------------- dtype policies --------
// kCols: dense columns per step. W: one expanded step of a row; X: the matching x. fma: acc += W . X.
struct F32 {
  static constexpr int kCols = 16;
  using Raw = float;
  using XRaw = float;
  using Bits = uint16_t;
  struct W { __m512 v; };
  struct X { __m512 v; };
  static W expand(Bits m, const Raw* p) { return {_mm512_maskz_expandloadu_ps(m, p)}; }
  static W load(const Raw* p) { return {_mm512_loadu_ps(p)}; }
  static W load_part(Bits m, const Raw* p) { return {_mm512_maskz_loadu_ps(m, p)}; }
  static X load_x(const XRaw* p) { return {_mm512_loadu_ps(p)}; }
  static __m512 fma(__m512 acc, const W& w, const X& x) { return _mm512_fmadd_ps(w.v, x.v, acc); }
  // Raw expansion for the dense copy (GEMM path).
  static void expand_store(Bits m, const Raw* p, Raw* d, Bits store) {
    _mm512_mask_storeu_ps(d, store, _mm512_maskz_expandloadu_ps(m, p));
  }
};

struct BF16 {
  static constexpr int kCols = 32;
  using Raw = uint16_t;
  using XRaw = uint16_t;
  using Bits = uint32_t;
  struct W { __m512i v; };
  struct X { __m512i v; };
  static W expand(Bits m, const Raw* p) { return {_mm512_maskz_expandloadu_epi16(m, p)}; }
  static W load(const Raw* p) { return {_mm512_loadu_si512(p)}; }
  static W load_part(Bits m, const Raw* p) { return {_mm512_maskz_loadu_epi16(m, p)}; }
  static X load_x(const XRaw* p) { return {_mm512_loadu_si512(p)}; }
  static __m512 fma(__m512 acc, const W& w, const X& x) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(w.v), reinterpret_cast<__m512bh>(x.v));
  }
  static void expand_store(Bits m, const Raw* p, Raw* d, Bits store) {
    _mm512_mask_storeu_epi16(d, store, _mm512_maskz_expandloadu_epi16(m, p));
  }
};

struct F16 {
  static constexpr int kCols = 32;
  using Raw = uint16_t;
  using XRaw = float;
  using Bits = uint32_t;
  struct W { __m512 lo, hi; };
  struct X { __m512 lo, hi; };
  static W widen(__m512i h) {
    return {_mm512_cvtph_ps(_mm512_castsi512_si256(h)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1))};
  }
  static W expand(Bits m, const Raw* p) { return widen(_mm512_maskz_expandloadu_epi16(m, p)); }
  static W load(const Raw* p) { return widen(_mm512_loadu_si512(p)); }
  static W load_part(Bits m, const Raw* p) { return widen(_mm512_maskz_loadu_epi16(m, p)); }
  static X load_x(const XRaw* p) { return {_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16)}; }
  static __m512 fma(__m512 acc, const W& w, const X& x) {
    return _mm512_fmadd_ps(w.hi, x.hi, _mm512_fmadd_ps(w.lo, x.lo, acc));
  }
  static void expand_store(Bits m, const Raw* p, Raw* d, Bits store) { BF16::expand_store(m, p, d, store); }
};

// Rows of accumulators per block for T tokens: R x T accumulators + R expanded steps + one x in 32 registers.
template <class P>
constexpr int rows_per_block(int tokens) {
  constexpr int w_regs = sizeof(typename P::W) / 64, x_regs = sizeof(typename P::X) / 64;
  if (tokens == 1) return 1;  // one sequential stream through the weight; U accumulators cover the latency
  for (int r = 4; r > 1; --r)
    if (r * tokens + r * w_regs + x_regs <= 30) return r;
  return 1;
}

template <class P>
inline typename P::Bits bits_at(const uint8_t* masks) {
  typename P::Bits b;
  std::memcpy(&b, masks, sizeof(b));
  return b;
}

// ----------------------------------------------------------------------------------- 2:4 mask decode ---------
// Meta bytes [b0, b0 + 64) of one row -> the kept-column masks of columns [8 b0, 8 b0 + 512): one byte per 8
// columns, bit j = column 8 b + j. Bytes past the row and the unused high nibble of an odd group count are 0.
// Returns false if a used code is not canonical (its mask is then 0: nothing is read for that group).
inline bool decode_window(const uint8_t* meta_row, int64_t b0, int64_t meta_bytes, int64_t groups, uint8_t* out) {
  const __m512i lut_lo = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 0x3, 0, 0, 0, 0x5, 0x6, 0, 0, 0x9, 0xA, 0xC, 0));
  const __m512i lut_hi = _mm512_slli_epi16(lut_lo, 4);  // no carry between bytes: the masks are < 16
  const __m512i nib = _mm512_set1_epi8(0x0F);
  const __mmask64 loaded = low_bits(min64(64, meta_bytes - b0));
  const __mmask64 both = low_bits(groups / 2 - b0 < 0 ? 0 : min64(64, groups / 2 - b0));  // bytes with two groups
  const __m512i m = _mm512_maskz_loadu_epi8(loaded, meta_row + b0);
  const __m512i lo = _mm512_shuffle_epi8(lut_lo, _mm512_and_si512(m, nib));
  const __m512i hi = _mm512_maskz_mov_epi8(both, _mm512_shuffle_epi8(lut_hi, _mm512_and_si512(_mm512_srli_epi16(m, 4), nib)));
  _mm512_storeu_si512(out, _mm512_or_si512(lo, hi));
  const __mmask64 bad = _mm512_mask_cmpeq_epi8_mask(loaded, lo, _mm512_setzero_si512()) |
                        _mm512_mask_cmpeq_epi8_mask(both, hi, _mm512_setzero_si512());
  return bad == 0;
}

constexpr int64_t kWindowCols = 512;  // columns of 2:4 masks decoded at once (64 meta bytes)
// Rows ahead that are prefetched: a row block's R rows are R streams, each starting a new page every few KB,
// which the hardware prefetcher picks up late (measured: 2:4 fp32 N = 1 1.9 -> 1.5 ms on 4096 x 4096).
constexpr int kPrefetchRows = 4;

// --------------------------------------------------------------------------------- rows x tokens blocks ------
// The two row formats read by the same blocked loop: prepare(c0) runs once per 512-column window, step(r, c)
// gives row r's expanded columns [c, c + kCols).
template <class P, int R>
struct Sparse24Source {
  const typename P::Raw* vals;  // row i0's values
  const uint8_t* meta;          // row i0's meta
  int64_t half, meta_bytes, groups;
  alignas(64) uint8_t masks[R][64];
  bool ok = true;
  void prepare(int64_t c0) {
    #pragma GCC unroll 32
    for (int r = 0; r < R; ++r) ok &= decode_window(meta + r * meta_bytes, c0 / 8, meta_bytes, groups, masks[r]);
  }
  typename P::W step(int r, int64_t c, int64_t c0) const {
    return P::expand(bits_at<P>(masks[r] + (c - c0) / 8), vals + r * half + c / 2);
  }
  void prefetch(int r, int64_t c) const { _mm_prefetch(reinterpret_cast<const char*>(vals + (kPrefetchRows + r) * half + c / 2), _MM_HINT_T0); }
};

template <class P, int R>
struct DenseSource {
  const typename P::Raw* vals;  // row i0
  int64_t k;
  void prepare(int64_t) {}
  typename P::W step(int r, int64_t c, int64_t) const {
    const typename P::Raw* p = vals + r * k + c;
    if (c + P::kCols <= k) return P::load(p);
    return P::load_part(static_cast<typename P::Bits>(low_bits(k - c)), p);
  }
  void prefetch(int r, int64_t c) const { _mm_prefetch(reinterpret_cast<const char*>(vals + (kPrefetchRows + r) * k + c), _MM_HINT_T0); }
};

// R rows x T tokens, U independent accumulators per (row, token) over consecutive column steps (latency cover).
template <class P, int R, int T, int U, class Source>
void rows_block(Source& src, const Activations& x, int64_t i0, int64_t t0, const Output& out) {
  const int64_t kp = round_up(x.k, P::kCols);
  const typename P::XRaw* xs = static_cast<const typename P::XRaw*>(x.data) + t0 * x.stride;
  __m512 acc[U][R][T];
#pragma GCC unroll 32
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int t = 0; t < T; ++t) acc[u][r][t] = _mm512_setzero_ps();
  auto step = [&](int u, int64_t c, int64_t c0) {
    typename P::W w[R];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) w[r] = src.step(r, c, c0);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) src.prefetch(r, c);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      const typename P::X xv = P::load_x(xs + t * x.stride + c);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) acc[u][r][t] = P::fma(acc[u][r][t], w[r], xv);
    }
  };
  for (int64_t c0 = 0; c0 < kp; c0 += kWindowCols) {
    src.prepare(c0);
    const int64_t c1 = min64(c0 + kWindowCols, kp);
    int64_t c = c0;
    for (; c + U * P::kCols <= c1; c += U * P::kCols)
#pragma GCC unroll 32
      for (int u = 0; u < U; ++u) step(u, c + u * P::kCols, c0);
    for (; c < c1; c += P::kCols) step(0, c, c0);
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      __m512 sum = acc[0][r][t];
#pragma GCC unroll 32
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][r][t]);
      write_output(out, t0 + t, i0 + r, _mm512_reduce_add_ps(sum));
    }
}

constexpr int kUnroll[9] = {1, 4, 2, 2, 1, 1, 1, 1, 1};

// All tokens for R rows starting at i0, 8 tokens (or the rest) at a time: the R rows stay in L1 between blocks.
template <class P, int R, class Source>
void rows_all_tokens(Source& src, const Activations& x, int64_t i0, const Output& out) {
  for (int64_t t0 = 0; t0 < x.n; t0 += 8) {
    switch (min64(8, x.n - t0)) {
      case 1: rows_block<P, R, 1, kUnroll[1]>(src, x, i0, t0, out); break;
      case 2: rows_block<P, R, 2, kUnroll[2]>(src, x, i0, t0, out); break;
      case 3: rows_block<P, R, 3, kUnroll[3]>(src, x, i0, t0, out); break;
      case 4: rows_block<P, R, 4, kUnroll[4]>(src, x, i0, t0, out); break;
      case 5: rows_block<P, R, 5, kUnroll[5]>(src, x, i0, t0, out); break;
      case 6: rows_block<P, R, 6, kUnroll[6]>(src, x, i0, t0, out); break;
      case 7: rows_block<P, R, 7, kUnroll[7]>(src, x, i0, t0, out); break;
      default: rows_block<P, R, 8, kUnroll[8]>(src, x, i0, t0, out); break;
    }
  }
}

template <class P, int R>
Sparse24Source<P, R> sparse24_source(const Sparse24Rows& w, int64_t i0) {
  Sparse24Source<P, R> s;
  s.half = w.k / 2;
  s.meta_bytes = meta_cols(w.k);
  s.groups = w.k / 4;
  s.vals = static_cast<const typename P::Raw*>(w.values) + i0 * s.half;
  s.meta = w.meta + i0 * s.meta_bytes;
  return s;
}

template <class P, int R>
bool sparse24_rows_r(const Sparse24Rows& w, const Activations& x, int64_t i0, const Output& out) {
  Sparse24Source<P, R> s = sparse24_source<P, R>(w, i0);
  rows_all_tokens<P, R>(s, x, i0, out);
  return s.ok;
}

template <class P, int R>
void dense_rows_r(const DenseRows& w, const Activations& x, int64_t i0, const Output& out) {
  DenseSource<P, R> s{static_cast<const typename P::Raw*>(w.values) + i0 * w.k, w.k};
  rows_all_tokens<P, R>(s, x, i0, out);
}

// Rows [b, e) in blocks of R (R from the token count), the last rows in a smaller block.
template <class P, class Block>
void for_row_blocks(int64_t n, int64_t b, int64_t e, Block block) {
  const int r = rows_per_block<P>(static_cast<int>(min64(n, 8)));
  int64_t i = b;
  auto run = [&](auto rows) {
    for (; i + decltype(rows)::value <= e; i += decltype(rows)::value) block(rows, i);
  };
  if (r >= 4) run(std::integral_constant<int, 4>{});
  if (r >= 3) run(std::integral_constant<int, 3>{});
  if (r >= 2) run(std::integral_constant<int, 2>{});
  run(std::integral_constant<int, 1>{});
}

template <class P>
bool sparse24_rows_t(const Sparse24Rows& w, const Activations& x, int64_t b, int64_t e, const Output& out) {
  bool ok = true;
  for_row_blocks<P>(x.n, b, e, [&](auto rows, int64_t i) { ok &= sparse24_rows_r<P, decltype(rows)::value>(w, x, i, out); });
  return ok;
}

template <class P>
void dense_rows_t(const DenseRows& w, const Activations& x, int64_t b, int64_t e, const Output& out) {
  for_row_blocks<P>(x.n, b, e, [&](auto rows, int64_t i) { dense_rows_r<P, decltype(rows)::value>(w, x, i, out); });
}

// ------------------------------------------------------------------------------------------- Tiled-CSL -------
// Tile t's bitmap holds exactly its count of values and no bit outside the tile (rows >= `rows` of a last row
// tile, columns >= `cols` of a last column tile).
bool bitmap_tile_ok(const BitmapTiles& w, int64_t t, int64_t rows, int64_t cols) {
  const int64_t wpr = bitmap_words_per_row(w.tile_k), words = w.tile_m * wpr;
  const uint64_t* bm = w.bitmap + t * words;
  __m512i count = _mm512_setzero_si512();
  int64_t q = 0;
  for (; q + 8 <= words; q += 8) count = _mm512_add_epi64(count, _mm512_popcnt_epi64(_mm512_loadu_si512(bm + q)));
  count = _mm512_add_epi64(count, _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(static_cast<__mmask8>(low_bits(words - q)), bm + q)));
  if (_mm512_reduce_add_epi64(count) != static_cast<int64_t>(w.tile_offsets[t + 1]) - w.tile_offsets[t]) return false;
  for (int64_t r = rows; r < w.tile_m; ++r)  // padding rows of the last row tile
    for (int64_t c = 0; c < wpr; ++c)
      if (bm[r * wpr + c] != 0) return false;
  if (cols < w.tile_k || cols < 64 * wpr) {  // columns past a narrow tile or past K
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < wpr; ++c) {
        const int64_t valid = cols - 64 * c;
        if (bm[r * wpr + c] & ~low_bits(valid < 0 ? 0 : valid)) return false;
      }
  }
  return true;
}

// One 64-column bitmap word of a row: acc[t] += the word's expanded values . x[t] (xc: column of bit 0).
template <class P, int T>
inline void bitmap_word(uint64_t word, const typename P::Raw*& p, const typename P::XRaw* xc, int64_t stride,
                        __m512 (&a)[T]) {
  constexpr int kParts = 64 / P::kCols;
  constexpr uint64_t kPartMask = (uint64_t{1} << P::kCols) - 1;
  int64_t before[kParts];  // values before each part: independent popcounts, not a chain
  before[0] = 0;
  #pragma GCC unroll 32
  for (int q = 1; q < kParts; ++q) before[q] = _mm_popcnt_u64(word & low_bits(q * P::kCols));
  #pragma GCC unroll 32
  for (int q = 0; q < kParts; ++q) {
    const typename P::W w = P::expand(static_cast<typename P::Bits>((word >> (q * P::kCols)) & kPartMask), p + before[q]);
    #pragma GCC unroll 32
    for (int t = 0; t < T; ++t) a[t] = P::fma(a[t], w, P::load_x(xc + t * stride + q * P::kCols));
  }
  p += _mm_popcnt_u64(word);
}

template <class P, int T>
bool bitmap_row_tile(const BitmapTiles& w, const Activations& x, int64_t i, int64_t t0, const Output& out,
                     float* scratch) {
  const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m), col_tiles = ceil_div(w.k, w.tile_k);
  const int64_t wpr = bitmap_words_per_row(w.tile_k);
  const typename P::Raw* vals = static_cast<const typename P::Raw*>(w.values);
  const typename P::XRaw* xs = static_cast<const typename P::XRaw*>(x.data) + t0 * x.stride;
  for (int64_t v = 0; v < rows * T; ++v) _mm512_storeu_ps(scratch + 16 * v, _mm512_setzero_ps());
  bool ok = true;
  for (int64_t j = 0; j < col_tiles; ++j) {
    const int64_t t = i * col_tiles + j;
    if (!bitmap_tile_ok(w, t, rows, min64(w.tile_k, w.k - j * w.tile_k))) {
      ok = false;
      continue;
    }
    const typename P::Raw* p = vals + w.tile_offsets[t];
    const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
    const typename P::XRaw* xj = xs + j * w.tile_k;
    for (int64_t r = 0; r < rows; ++r) {
      float* acc = scratch + 16 * T * r;
      __m512 a[T];
      #pragma GCC unroll 32
      for (int q = 0; q < T; ++q) a[q] = _mm512_loadu_ps(acc + 16 * q);
      if (wpr == 1) {
        bitmap_word<P, T>(bm[r], p, xj, x.stride, a);
      } else {
        for (int64_t c = 0; c < wpr; ++c) bitmap_word<P, T>(bm[r * wpr + c], p, xj + 64 * c, x.stride, a);
      }
      #pragma GCC unroll 32
      for (int q = 0; q < T; ++q) _mm512_storeu_ps(acc + 16 * q, a[q]);
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    #pragma GCC unroll 32
    for (int q = 0; q < T; ++q)
      write_output(out, t0 + q, i * w.tile_m + r, _mm512_reduce_add_ps(_mm512_loadu_ps(scratch + 16 * (T * r + q))));
  return ok;
}

template <class P>
bool bitmap_rows_t(const BitmapTiles& w, const Activations& x, int64_t b, int64_t e, const Output& out,
                   float* scratch) {
  bool ok = true;
  for (int64_t i = b; i < e; ++i) {
    for (int64_t t0 = 0; t0 < x.n; t0 += 8) {
      switch (min64(8, x.n - t0)) {
        case 1: ok &= bitmap_row_tile<P, 1>(w, x, i, t0, out, scratch); break;
        case 2: ok &= bitmap_row_tile<P, 2>(w, x, i, t0, out, scratch); break;
        case 3: ok &= bitmap_row_tile<P, 3>(w, x, i, t0, out, scratch); break;
        case 4: ok &= bitmap_row_tile<P, 4>(w, x, i, t0, out, scratch); break;
        case 5: ok &= bitmap_row_tile<P, 5>(w, x, i, t0, out, scratch); break;
        case 6: ok &= bitmap_row_tile<P, 6>(w, x, i, t0, out, scratch); break;
        case 7: ok &= bitmap_row_tile<P, 7>(w, x, i, t0, out, scratch); break;
        default: ok &= bitmap_row_tile<P, 8>(w, x, i, t0, out, scratch); break;
      }
    }
  }
  return ok;
}

// ------------------------------------------------------------------------------------ dense copies (GEMM) ----
template <class P>
bool sparse24_expand_t(const Sparse24Rows& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  const int64_t k = w.k, half = k / 2, mb = meta_cols(k), groups = k / 4;
  const typename P::Raw* vals = static_cast<const typename P::Raw*>(w.values);
  typename P::Raw* d = static_cast<typename P::Raw*>(dense);
  alignas(64) uint8_t masks[64];
  bool ok = true;
  for (int64_t i = b; i < e; ++i) {
    typename P::Raw* row = d + (i - b) * ld;
    for (int64_t c0 = 0; c0 < k; c0 += kWindowCols) {
      ok &= decode_window(w.meta + i * mb, c0 / 8, mb, groups, masks);
      for (int64_t c = c0; c < min64(c0 + kWindowCols, k); c += P::kCols)
        P::expand_store(bits_at<P>(masks + (c - c0) / 8), vals + i * half + c / 2, row + c,
                        static_cast<typename P::Bits>(low_bits(k - c)));
    }
  }
  return ok;
}

template <class P>
bool bitmap_expand_t(const BitmapTiles& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  const int64_t col_tiles = ceil_div(w.k, w.tile_k), wpr = bitmap_words_per_row(w.tile_k);
  const typename P::Raw* vals = static_cast<const typename P::Raw*>(w.values);
  typename P::Raw* d = static_cast<typename P::Raw*>(dense);
  constexpr uint64_t kPartMask = (uint64_t{1} << P::kCols) - 1;
  bool ok = true;
  for (int64_t i = b; i < e; ++i) {
    const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m);
    typename P::Raw* block = d + (i - b) * w.tile_m * ld;
    for (int64_t j = 0; j < col_tiles; ++j) {
      const int64_t t = i * col_tiles + j, cols = min64(w.tile_k, w.k - j * w.tile_k);
      if (!bitmap_tile_ok(w, t, rows, cols)) {
        ok = false;
        for (int64_t r = 0; r < rows; ++r) std::memset(block + r * ld + j * w.tile_k, 0, cols * sizeof(typename P::Raw));
        continue;
      }
      const typename P::Raw* p = vals + w.tile_offsets[t];
      const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < wpr; ++c) {
          const uint64_t word = bm[r * wpr + c];
          typename P::Raw* dst = block + r * ld + j * w.tile_k + 64 * c;
          for (int q = 0; q < 64 / P::kCols; ++q) {
            const int64_t left = cols - 64 * c - q * P::kCols;
            if (left <= 0) break;
            const auto bits = static_cast<typename P::Bits>((word >> (q * P::kCols)) & kPartMask);
            P::expand_store(bits, p, dst + q * P::kCols, static_cast<typename P::Bits>(low_bits(left)));
            p += _mm_popcnt_u32(bits);
          }
        }
    }
  }
  return ok;
}

// ------------------------------------------------------------------------------------------ finiteness -------
bool all_finite_16(const uint16_t* x, int64_t n, int64_t k, int64_t stride, uint16_t exp_mask) {
  const __m512i em = _mm512_set1_epi16(static_cast<short>(exp_mask));
  for (int64_t t = 0; t < n; ++t) {
    const uint16_t* row = x + t * stride;
    for (int64_t c = 0; c < k; c += 32) {
      const __m512i v = _mm512_maskz_loadu_epi16(static_cast<__mmask32>(low_bits(k - c)), row + c);
      if (_mm512_cmpeq_epi16_mask(_mm512_and_si512(v, em), em)) return false;
    }
  }
  return true;
}

bool all_finite(Dtype d, const void* x, int64_t n, int64_t k, int64_t stride) {
  if (d == Dtype::kBFloat16) return all_finite_16(static_cast<const uint16_t*>(x), n, k, stride, 0x7F80);
  if (d == Dtype::kFloat16) return all_finite_16(static_cast<const uint16_t*>(x), n, k, stride, 0x7C00);
  const __m512i em = _mm512_set1_epi32(0x7F800000);
  const uint32_t* xs = static_cast<const uint32_t*>(x);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < k; c += 16) {
      const __m512i v = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(low_bits(k - c)), xs + t * stride + c);
      if (_mm512_cmpeq_epi32_mask(_mm512_and_si512(v, em), em)) return false;
    }
  return true;
}

// ------------------------------------------------------------------------------------------- the table -------
Dtype x_dtype(Dtype w) { return w == Dtype::kBFloat16 ? Dtype::kBFloat16 : Dtype::kFloat32; }

#define SPMM_CPU_BY_DTYPE(d, call)                           \
  switch (d) {                                               \
    case Dtype::kFloat32: { using P = F32; return call; }    \
    case Dtype::kBFloat16: { using P = BF16; return call; }  \
    default: { using P = F16; return call; }                 \
  }

bool sparse24_rows(Dtype d, const Sparse24Rows& w, const Activations& x, int64_t b, int64_t e, const Output& o) {
  SPMM_CPU_BY_DTYPE(d, sparse24_rows_t<P>(w, x, b, e, o))
}
void dense_rows(Dtype d, const DenseRows& w, const Activations& x, int64_t b, int64_t e, const Output& o) {
  SPMM_CPU_BY_DTYPE(d, dense_rows_t<P>(w, x, b, e, o))
}
bool bitmap_rows(Dtype d, const BitmapTiles& w, const Activations& x, int64_t b, int64_t e, const Output& o,
                 float* scratch) {
  SPMM_CPU_BY_DTYPE(d, bitmap_rows_t<P>(w, x, b, e, o, scratch))
}
bool sparse24_expand(Dtype d, const Sparse24Rows& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  switch (d) {
    case Dtype::kFloat32: return sparse24_expand_t<F32>(w, b, e, dense, ld);
    default: return sparse24_expand_t<BF16>(w, b, e, dense, ld);  // 16-bit values move as they are
  }
}
bool bitmap_expand(Dtype d, const BitmapTiles& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  switch (d) {
    case Dtype::kFloat32: return bitmap_expand_t<F32>(w, b, e, dense, ld);
    default: return bitmap_expand_t<BF16>(w, b, e, dense, ld);
  }
}
#undef SPMM_CPU_BY_DTYPE

}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table{Isa::kAvx512, "avx512", x_dtype,         sparse24_rows, dense_rows,
                                 bitmap_rows,  sparse24_expand, bitmap_expand, all_finite};
  return table;
}

}  // namespace spmm::kernels::cpu
