// The AVX-512 CPU kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vbmi -mavx512vbmi2
// -mavx512bf16 -mavx512vpopcntdq; cpu_isa.cpp calls them only on CPUs that have all of these).
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

// ------------------------------------------------------------------------------------- dtype policies --------
// kCols: dense columns per step. W: one expanded step of a row; X: the matching x. fma: acc += W . X.
struct F32 {
  static constexpr Dtype kDtype = Dtype::kFloat32;
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
    const __m512 v = _mm512_maskz_expandloadu_ps(m, p);
    if (store == static_cast<Bits>(~Bits{0})) _mm512_storeu_ps(d, v);  // masked stores are slow on Zen
    else _mm512_mask_storeu_ps(d, store, v);
  }
};

struct BF16 {
  static constexpr Dtype kDtype = Dtype::kBFloat16;
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
    const __m512i v = _mm512_maskz_expandloadu_epi16(m, p);
    if (store == static_cast<Bits>(~Bits{0})) _mm512_storeu_si512(d, v);
    else _mm512_mask_storeu_epi16(d, store, v);
  }
};

struct F16 {
  static constexpr Dtype kDtype = Dtype::kFloat16;
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
// Rows ahead for blocks of R rows: whole blocks, so that every row is prefetched once (R = 3: 6 rows ahead).
template <int R>
constexpr int ahead() { return R * ((kPrefetchRows + R - 1) / R); }
// Tiled-CSL values prefetched ahead of the ones being read (a tile row holds a few dozen of them).
constexpr int64_t kPrefetchValues = 512;

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
  void prefetch(int r, int64_t c) const { _mm_prefetch(reinterpret_cast<const char*>(vals + (ahead<R>() + r) * half + c / 2), _MM_HINT_T0); }
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
  void prefetch(int r, int64_t c) const { _mm_prefetch(reinterpret_cast<const char*>(vals + (ahead<R>() + r) * k + c), _MM_HINT_T0); }
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

// ------------------------------------------------------------------------------- 2:4 by gathering x ---------
// For one or two tokens the expansion is paid per use, so the packed values are used as they are and x is
// gathered instead: vpmultishiftqb pulls each packed value's 2-bit in-group column out of the meta (value p of a
// window sits in group p / 2 and its column is bits 2p..2p+1 of the window's meta), giving vpermt2w / vpermt2ps
// indices into a window of x, and the products run on the packed values only (measured, 4096 x 4096 bf16, one
// thread: N = 1 0.59 vs 0.87 ms expanded, N = 2 0.98 vs 1.40 ms; from N = 4 the expansion is cheaper, paid once
// for all tokens). Only stored columns of x are read, as in the reference.
struct BF16Gather {
  static constexpr int kCols = 64;  // 32 packed values, meta 8 bytes, x window 2 x 32 bf16
  using Raw = uint16_t;
  static __m512i index(uint64_t meta) {
    const __m512i ctrl = _mm512_set_epi8(0, 62, 0, 60, 0, 58, 0, 56, 0, 54, 0, 52, 0, 50, 0, 48, 0, 46, 0, 44, 0, 42,
                                         0, 40, 0, 38, 0, 36, 0, 34, 0, 32, 0, 30, 0, 28, 0, 26, 0, 24, 0, 22, 0, 20,
                                         0, 18, 0, 16, 0, 14, 0, 12, 0, 10, 0, 8, 0, 6, 0, 4, 0, 2, 0, 0);
    const __m512i base = _mm512_set_epi16(60, 60, 56, 56, 52, 52, 48, 48, 44, 44, 40, 40, 36, 36, 32, 32, 28, 28, 24, 24,
                                          20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
    const __m512i col = _mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64(static_cast<long long>(meta)));
    return _mm512_ternarylogic_epi64(col, _mm512_set1_epi16(3), base, 0xEA);  // (col & 3) | base
  }
  static __m512i values(const Raw* p, int64_t left) {
    return left >= 32 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(static_cast<__mmask32>(low_bits(left)), p);
  }
  static __m512 fma(__m512 acc, __m512i vals, __m512i idx, const uint16_t* x) {
    const __m512i xg = _mm512_permutex2var_epi16(_mm512_loadu_si512(x), idx, _mm512_loadu_si512(x + 32));
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(vals), reinterpret_cast<__m512bh>(xg));
  }
};

template <bool kHalf>
struct F32Gather {  // fp32 values, or fp16 values widened; fp32 x
  static constexpr int kCols = 32;  // 16 packed values, meta 4 bytes, x window 2 x 16 fp32
  using Raw = std::conditional_t<kHalf, uint16_t, float>;
  static __m512i index(uint64_t meta) {
    const __m512i ctrl = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i base = _mm512_set_epi32(28, 28, 24, 24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
    const __m512i col = _mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64(static_cast<long long>(meta & 0xFFFFFFFFu)));
    return _mm512_ternarylogic_epi32(col, _mm512_set1_epi32(3), base, 0xEA);
  }
  static __m512 values(const Raw* p, int64_t left) {
    const __mmask16 m = static_cast<__mmask16>(low_bits(left));
    if constexpr (kHalf) {
      return _mm512_cvtph_ps(left >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p));
    } else {
      return left >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
    }
  }
  static __m512 fma(__m512 acc, __m512 vals, __m512i idx, const float* x) {
    return _mm512_fmadd_ps(vals, _mm512_permutex2var_ps(_mm512_loadu_ps(x), idx, _mm512_loadu_ps(x + 16)), acc);
  }
};

// The next kBytes meta bytes (fewer where the row ends, the rest zero). A load of exactly their width: a wider one
// after a narrower copy misses store forwarding (measured: fp32 N = 1 12.5 ms instead of ~1.3).
template <int kBytes>
inline uint64_t meta_bits(const uint8_t* p, int64_t avail) {
  using Word = std::conditional_t<kBytes == 8, uint64_t, uint32_t>;
  Word bits = 0;
  if (avail >= kBytes) {
    std::memcpy(&bits, p, kBytes);
  } else {
    for (int64_t b = 0; b < avail; ++b) bits |= static_cast<Word>(p[b]) << (8 * b);
  }
  return bits;
}

template <class P> struct GatherOf;
template <> struct GatherOf<BF16> { using type = BF16Gather; };
template <> struct GatherOf<F32> { using type = F32Gather<false>; };
template <> struct GatherOf<F16> { using type = F32Gather<true>; };

// Row i times T (1 or 2) tokens; U accumulators per token over consecutive windows.
template <class P, class G, int T, int U>
bool gather24_row(const Sparse24Rows& w, const Activations& x, int64_t i, int64_t t0, const Output& out) {
  const int64_t k = w.k, half = k / 2, mb = meta_cols(k), groups = k / 4;
  const typename G::Raw* v = static_cast<const typename G::Raw*>(w.values) + i * half;
  const uint8_t* meta = w.meta + i * mb;
  const typename P::XRaw* xs = static_cast<const typename P::XRaw*>(x.data) + t0 * x.stride;
  __m512 acc[U][T];
#pragma GCC unroll 32
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[u][t] = _mm512_setzero_ps();
  alignas(64) uint8_t masks[64];
  bool ok = true;
  auto step = [&](int u, int64_t c) {
    const __m512i idx = G::index(meta_bits<G::kCols / 8>(meta + c / 8, mb - c / 8));
    const auto vals = G::values(v + c / 2, half - c / 2);
    _mm_prefetch(reinterpret_cast<const char*>(v + kPrefetchRows * half + c / 2), _MM_HINT_T0);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[u][t] = G::fma(acc[u][t], vals, idx, xs + t * x.stride + c);
  };
  for (int64_t c0 = 0; c0 < k; c0 += kWindowCols) {
    ok &= decode_window(meta, c0 / 8, mb, groups, masks);  // the codes' check; the masks are not needed here
    _mm_prefetch(reinterpret_cast<const char*>(meta + kPrefetchRows * mb + c0 / 8), _MM_HINT_T0);
    const int64_t c1 = min64(c0 + kWindowCols, k);
    int64_t c = c0;
    for (; c + U * G::kCols <= c1; c += U * G::kCols)
#pragma GCC unroll 32
      for (int u = 0; u < U; ++u) step(u, c + u * G::kCols);
    for (; c < c1; c += G::kCols) step(0, c);
  }
#pragma GCC unroll 32
  for (int t = 0; t < T; ++t) {
    __m512 sum = acc[0][t];
#pragma GCC unroll 32
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][t]);
    write_output(out, t0 + t, i, _mm512_reduce_add_ps(sum));
  }
  return ok;
}

constexpr int64_t kGatherMaxTokens = 2;  // up to here gathering x beats expanding the weight (see above)

template <class P>
bool sparse24_rows_t(const Sparse24Rows& w, const Activations& x, int64_t b, int64_t e, const Output& out) {
  bool ok = true;
  if (x.n <= kGatherMaxTokens) {
    using G = typename GatherOf<P>::type;
    for (int64_t i = b; i < e; ++i)
      ok &= x.n == 1 ? gather24_row<P, G, 1, 4>(w, x, i, 0, out) : gather24_row<P, G, 2, 2>(w, x, i, 0, out);
    return ok;
  }
  for_row_blocks<P>(x.n, b, e, [&](auto rows, int64_t i) { ok &= sparse24_rows_r<P, decltype(rows)::value>(w, x, i, out); });
  return ok;
}

template <class P>
void dense_rows_t(const DenseRows& w, const Activations& x, int64_t b, int64_t e, const Output& out) {
  for_row_blocks<P>(x.n, b, e, [&](auto rows, int64_t i) { dense_rows_r<P, decltype(rows)::value>(w, x, i, out); });
}

// ------------------------------------------------------------------------------------------- Tiled-CSL -------
// bitmap_tile_ok (cpu_scalar.h) with the count in 8-word vectors: tile t's bitmap holds exactly its count of values
// and no bit outside the tile (rows >= `rows` of a last row tile, columns >= `cols` of a last column tile).
bool bitmap_tile_ok_vector(const BitmapTiles& w, int64_t t, int64_t rows, int64_t cols) {
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

// Tiled-CSL by gathering x: vpcompressb of 0..63 by a row's 64-bit word lists the columns it stores, those x are
// gathered from the word's window of x (held in registers), and the products run on the packed values only, up to
// 32 (bf16: vpermt2w + vdpbf16ps) or 16 (fp32, fp16 widened: vpermt2ps from the window's halves + FMA) at a time.
// Measured, 4096 x 4096 at 20% density, one thread, bf16: N = 1/2/4/8 0.51/0.74/0.93/1.58 ms, against
// 1.23/0.65*/1.25/2.96 ms expanding the weight with vpexpandw (* a noisy figure); prefetching the values ~1 KB
// ahead took N = 1 from 1.2 to 0.5 ms (the loop had been waiting on memory, not computing).
struct BF16BitmapGather {
  using Raw = uint16_t;
  using XRaw = uint16_t;
  static constexpr int kGroup = 32;  // values per product step
  struct Window { __m512i lo, hi; };
  static Window window(const XRaw* x) { return {_mm512_loadu_si512(x), _mm512_loadu_si512(x + 32)}; }
  // acc[t] += values [g * 32, g * 32 + n) . x at the columns listed by bytes [g * 32, ...) of pos
  template <int T, int g>
  static void step(__m512 (&a)[T], __m512i pos, int64_t n, const Raw* p, const Window (&xw)[T]) {
    static_assert(g < 2, "32 values per step: at most two steps per 64-column word");
    const __mmask32 live = static_cast<__mmask32>(_bzhi_u64(~uint64_t{0}, n));
    const __m512i idx = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(pos, g));
    const __m512bh v = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(live, p));
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t)
      a[t] = _mm512_dpbf16_ps(a[t], v, reinterpret_cast<__m512bh>(_mm512_maskz_permutex2var_epi16(live, xw[t].lo, idx, xw[t].hi)));
  }
};

template <bool kHalf>
struct F32BitmapGather {
  using Raw = std::conditional_t<kHalf, uint16_t, float>;
  using XRaw = float;
  static constexpr int kGroup = 16;
  struct Window { __m512 q0, q1, q2, q3; };
  static Window window(const XRaw* x) {
    return {_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16), _mm512_loadu_ps(x + 32), _mm512_loadu_ps(x + 48)};
  }
  template <int T, int g>
  static void step(__m512 (&a)[T], __m512i pos, int64_t n, const Raw* p, const Window (&xw)[T]) {
    const __mmask16 live = static_cast<__mmask16>(_bzhi_u32(~0u, n));
    const __m512i col = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(pos, g));
    const __mmask16 upper = _mm512_test_epi32_mask(col, _mm512_set1_epi32(32));  // columns 32..63: the second half
    __m512 v;
    if constexpr (kHalf) v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, p));
    else v = _mm512_maskz_loadu_ps(live, p);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      const __m512 lo = _mm512_permutex2var_ps(xw[t].q0, col, xw[t].q1), hi = _mm512_permutex2var_ps(xw[t].q2, col, xw[t].q3);
      a[t] = _mm512_fmadd_ps(v, _mm512_maskz_mov_ps(live, _mm512_mask_blend_ps(upper, lo, hi)), a[t]);
    }
  }
};

template <class P> struct BitmapGatherOf;
template <> struct BitmapGatherOf<BF16> { using type = BF16BitmapGather; };
template <> struct BitmapGatherOf<F32> { using type = F32BitmapGather<false>; };
template <> struct BitmapGatherOf<F16> { using type = F32BitmapGather<true>; };

// T tokens from t0 over row tile i.
template <class G, int T>
bool bitmap_gather_tile(const BitmapTiles& w, const Activations& x, int64_t i, int64_t t0, const Output& out,
                        float* scratch) {
  const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m), col_tiles = ceil_div(w.k, w.tile_k);
  const int64_t wpr = bitmap_words_per_row(w.tile_k);
  const typename G::Raw* vals = static_cast<const typename G::Raw*>(w.values);
  const typename G::XRaw* xs = static_cast<const typename G::XRaw*>(x.data) + t0 * x.stride;
  const __m512i iota = _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44,
                                       43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24,
                                       23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t v = 0; v < rows * T; ++v) _mm512_storeu_ps(scratch + 16 * v, _mm512_setzero_ps());
  bool ok = true;
  for (int64_t j = 0; j < col_tiles; ++j) {
    const int64_t t = i * col_tiles + j;
    if (!bitmap_tile_ok_vector(w, t, rows, min64(w.tile_k, w.k - j * w.tile_k))) {
      ok = false;
      continue;
    }
    const typename G::Raw* p = vals + w.tile_offsets[t];
    const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
    typename G::Window xw[T];
    auto load_x = [&](int64_t word) {
#pragma GCC unroll 32
      for (int q = 0; q < T; ++q) xw[q] = G::window(xs + q * x.stride + j * w.tile_k + 64 * word);
    };
    auto word_step = [&](__m512 (&a)[T], uint64_t word) {
      const unsigned cnt = static_cast<unsigned>(_mm_popcnt_u64(word));
      const __m512i pos = _mm512_maskz_compress_epi8(word, iota);
      G::template step<T, 0>(a, pos, cnt < G::kGroup ? cnt : G::kGroup, p, xw);  // always: its branch never misses
      if (cnt > G::kGroup) G::template step<T, 1>(a, pos, min64(cnt - G::kGroup, G::kGroup), p + G::kGroup, xw);
      if constexpr (G::kGroup < 32) {
        if (cnt > 2 * G::kGroup) G::template step<T, 2>(a, pos, min64(cnt - 2 * G::kGroup, G::kGroup), p + 2 * G::kGroup, xw);
        if (cnt > 3 * G::kGroup) G::template step<T, 3>(a, pos, min64(cnt - 3 * G::kGroup, G::kGroup), p + 3 * G::kGroup, xw);
      }
      p += cnt;
    };
    auto row_step = [&](int64_t r, auto words) {  // words(a, r): the row's words through word_step
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchValues), _MM_HINT_T0);
      __m512 a[T];
#pragma GCC unroll 32
      for (int q = 0; q < T; ++q) a[q] = _mm512_loadu_ps(scratch + 16 * (T * r + q));
      words(a, r);
#pragma GCC unroll 32
      for (int q = 0; q < T; ++q) _mm512_storeu_ps(scratch + 16 * (T * r + q), a[q]);
    };
    if (wpr == 1) {  // one word per row (tile_k <= 64): the x windows stay in registers for the whole tile
      load_x(0);
      for (int64_t r = 0; r < rows; ++r) row_step(r, [&](__m512 (&a)[T], int64_t row) { word_step(a, bm[row]); });
    } else {
      for (int64_t r = 0; r < rows; ++r)
        row_step(r, [&](__m512 (&a)[T], int64_t row) {
          for (int64_t c = 0; c < wpr; ++c) {
            load_x(c);
            word_step(a, bm[row * wpr + c]);
          }
        });
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int q = 0; q < T; ++q)
      write_output(out, t0 + q, i * w.tile_m + r, _mm512_reduce_add_ps(_mm512_loadu_ps(scratch + 16 * (T * r + q))));
  return ok;
}

template <class P>
bool bitmap_rows_t(const BitmapTiles& w, const Activations& x, int64_t b, int64_t e, const Output& out,
                   float* scratch) {
  bool ok = true;
  using G = typename BitmapGatherOf<P>::type;
  for (int64_t i = b; i < e; ++i)
    for (int64_t t0 = 0; t0 < x.n; t0 += 4) {
      switch (min64(4, x.n - t0)) {
        case 1: ok &= bitmap_gather_tile<G, 1>(w, x, i, t0, out, scratch); break;
        case 2: ok &= bitmap_gather_tile<G, 2>(w, x, i, t0, out, scratch); break;
        case 3: ok &= bitmap_gather_tile<G, 3>(w, x, i, t0, out, scratch); break;
        default: ok &= bitmap_gather_tile<G, 4>(w, x, i, t0, out, scratch); break;
      }
    }
  return ok;
}

// ----------------------------------------------------------------------------- Tiled-CSL over tokens ---------
// Many tokens: each stored element (value v at column c of row r) adds v * x^T[c, tokens] to row r's accumulators,
// 16 tokens per FMA, Q FMAs per element; only stored elements are multiplied, so the work falls with the density
// (the GEMM path multiplies every element). Rows of a tile are walked in order with one cursor per column tile
// into its values; the row tile's values are re-read (from L2) for each block of tokens.
template <class P, int Q>
void bitmap_tokens_block(const BitmapTiles& w, const float* xt, int64_t n_pad, int64_t i, int64_t tok0,
                         float* out_t, int64_t* cursors, const uint8_t* tile_fine) {
  const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m), col_tiles = ceil_div(w.k, w.tile_k);
  const int64_t wpr = bitmap_words_per_row(w.tile_k);
  const typename P::Raw* vals = static_cast<const typename P::Raw*>(w.values);
  for (int64_t j = 0; j < col_tiles; ++j) cursors[j] = w.tile_offsets[i * col_tiles + j];
  for (int64_t r = 0; r < rows; ++r) {
    __m512 acc[Q];
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[q] = _mm512_setzero_ps();
    for (int64_t j = 0; j < col_tiles; ++j) {
      if (!tile_fine[j]) continue;
      const int64_t t = i * col_tiles + j;
      const typename P::Raw* p = vals + cursors[j];
      for (int64_t q0 = 0; q0 < wpr; ++q0) {
        uint64_t word = w.bitmap[(t * w.tile_m + r) * wpr + q0];
        const float* xcol = xt + (j * w.tile_k + 64 * q0) * n_pad + tok0;
        for (; word != 0; word &= word - 1) {
          const __m512 v = _mm512_set1_ps(load_scalar<P::kDtype>(p++, 0));
          const float* xr = xcol + static_cast<int64_t>(__builtin_ctzll(word)) * n_pad;
#pragma GCC unroll 4
          for (int q = 0; q < Q; ++q) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xr + 16 * q), acc[q]);
        }
      }
      cursors[j] = p - vals;
    }
    float* o = out_t + (i * w.tile_m + r) * n_pad + tok0;
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) _mm512_storeu_ps(o + 16 * q, acc[q]);
  }
}

template <class P>
bool bitmap_tokens_t(const BitmapTiles& w, const float* xt, int64_t n_pad, int64_t b, int64_t e, float* out_t,
                     int64_t* cursors) {
  const int64_t col_tiles = ceil_div(w.k, w.tile_k);
  // Tokens per block: 64 (4 FMAs per element) while x^T's block of them stays within ~512 KB of L2, else 32.
  const int q_max = w.k * 64 * 4 <= (int64_t{512} << 10) ? 4 : 2;
  bool ok = true;
  uint8_t* fine = reinterpret_cast<uint8_t*>(cursors + col_tiles);  // col_tiles flags after the cursors
  for (int64_t i = b; i < e; ++i) {
    const int64_t rows = min64(w.tile_m, w.m - i * w.tile_m);
    for (int64_t j = 0; j < col_tiles; ++j) {
      fine[j] = bitmap_tile_ok_vector(w, i * col_tiles + j, rows, min64(w.tile_k, w.k - j * w.tile_k));
      ok &= fine[j] != 0;
    }
    for (int64_t tok0 = 0; tok0 < n_pad; tok0 += 16 * q_max) {
      switch (min64(q_max, (n_pad - tok0) / 16)) {
        case 1: bitmap_tokens_block<P, 1>(w, xt, n_pad, i, tok0, out_t, cursors, fine); break;
        case 2: bitmap_tokens_block<P, 2>(w, xt, n_pad, i, tok0, out_t, cursors, fine); break;
        case 3: bitmap_tokens_block<P, 3>(w, xt, n_pad, i, tok0, out_t, cursors, fine); break;
        default: bitmap_tokens_block<P, 4>(w, xt, n_pad, i, tok0, out_t, cursors, fine); break;
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
      _mm_prefetch(reinterpret_cast<const char*>(w.meta + (i + kPrefetchRows) * mb + c0 / 8), _MM_HINT_T0);
      for (int64_t c = c0; c < min64(c0 + kWindowCols, k); c += P::kCols) {
        _mm_prefetch(reinterpret_cast<const char*>(vals + (i + kPrefetchRows) * half + c / 2), _MM_HINT_T0);
        P::expand_store(bits_at<P>(masks + (c - c0) / 8), vals + i * half + c / 2, row + c,
                        static_cast<typename P::Bits>(low_bits(k - c)));
      }
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
      if (!bitmap_tile_ok_vector(w, t, rows, cols)) {
        ok = false;
        for (int64_t r = 0; r < rows; ++r) std::memset(block + r * ld + j * w.tile_k, 0, cols * sizeof(typename P::Raw));
        continue;
      }
      const typename P::Raw* p = vals + w.tile_offsets[t];
      const uint64_t* bm = w.bitmap + t * w.tile_m * wpr;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < wpr; ++c) {
          _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchValues), _MM_HINT_T0);
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

SPMM_CPU_ROW_ENTRY_POINTS
bool sparse24_expand(Dtype d, const Sparse24Rows& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  switch (d) {
    case Dtype::kFloat32: return sparse24_expand_t<F32>(w, b, e, dense, ld);
    default: return sparse24_expand_t<BF16>(w, b, e, dense, ld);  // 16-bit values move as they are
  }
}
bool bitmap_tokens(Dtype d, const BitmapTiles& w, const float* xt, int64_t n_pad, int64_t b, int64_t e, float* out_t,
                   int64_t* cursors) {
  SPMM_CPU_BY_DTYPE(d, F32, BF16, F16, bitmap_tokens_t<P>(w, xt, n_pad, b, e, out_t, cursors))
}
bool bitmap_expand(Dtype d, const BitmapTiles& w, int64_t b, int64_t e, void* dense, int64_t ld) {
  switch (d) {
    case Dtype::kFloat32: return bitmap_expand_t<F32>(w, b, e, dense, ld);
    default: return bitmap_expand_t<BF16>(w, b, e, dense, ld);
  }
}

}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table{Isa::kAvx512, "avx512",        x_dtype,       sparse24_rows, dense_rows,    bitmap_rows,
                                 sparse24_expand, bitmap_expand, all_finite, bitmap_tokens};
  return table;
}

}  // namespace spmm::kernels::cpu
