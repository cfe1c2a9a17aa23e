// The delta layout of a Tiled-CSL weight: what the delta kernels read, 2.5 bytes per stored entry, and the per-lane
// index math of those kernels as __host__ __device__ functions, so the same code runs in the kernels, in the host
// emulation below (the CPU op _tiled_csl_delta_mm, the tests) and in the self-test's reference. Torch-free.
//
// Layout of a weight W [M, K] (columns cut into slices of S = tiled_csl_delta_slice_width(M, K) columns,
// tiled_csl_rules.h):
//   - Segment (s, r): the nonzeros of row r in columns [sS, sS + S), ascending, as entries (value, 4-bit code): an
//     entry lies 1 + code columns after the previous one (the first: code columns after sS). A gap the code cannot
//     say (more than 15 columns skipped) is bridged by filler entries (value +0.0, code 15: 16 columns on). The
//     segment is padded with +0.0 entries of code 0 to a whole number of chunks of 8 entries (the padding lies at
//     most 7 columns past the segment's last nonzero, possibly past the slice: a kernel reads x there as zeros).
//   - offsets int32 [slices * M + 1]: chunks before segment (s, r) in slice-major, row-minor order; segment (s, r)
//     has offsets[sM + r + 1] - offsets[sM + r] chunks.
//   - The chunks of the 32 segments (s, 32g .. 32g + 31) -- one record, one warp's work -- occupy chunk positions
//     [offsets[sM + 32g], offsets[sM + 32g + 32]) in jagged order: first chunk 0 of every segment that has one, in
//     row order, then chunk 1 of every segment that has two, ... So in iteration j of a warp, the lanes whose
//     segment has a chunk j read consecutive chunks (coalesced), with no padding between segments of unequal length.
//   - values [chunks * 8] of the weight's dtype: entry t of chunk c at 8c + t.
//   - codes int32 [chunks]: the code of entry t of chunk c in bits [code_shift(t), code_shift(t) + 4) of codes[c]:
//     entries 0-3 in the low nibbles of bytes 0-3, entries 4-7 in the high nibbles, so that two masks and two
//     multiplications give every entry's column (chunk_columns).
// Entries stored with value +0.0 (fillers, padding) carry no weight; decoding the layout back to the stream keeps
// every other entry (the stream stores no zeros).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/tiled_csl/tiled_csl_rules.h"

#if defined(__CUDACC__)
#define SPMM_DELTA_FN __host__ __device__ __forceinline__
#else
#define SPMM_DELTA_FN inline
#endif

namespace spmm::kernels::delta {

constexpr int kChunk = 8;          // entries per chunk: 8 values (16 bytes) and one 32-bit code word
constexpr int kGroupRows = static_cast<int>(kDeltaGroupRows);  // segments per record: one per lane of a warp
constexpr int kMaxCode = 15;       // a 4-bit code
constexpr int kColumnSlack = 128;  // x columns staged (as zeros) past a slice: a chunk reaches at most 7 + 8 * 15
                                   // columns past its base, which the kernels keep <= S

SPMM_DELTA_FN int code_shift(int t) { return t < 4 ? 8 * t : 8 * (t - 4) + 4; }

SPMM_DELTA_FN uint32_t popcount(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return static_cast<uint32_t>(__builtin_popcount(v));
#endif
}

// ------------------------------------------------------------------------------------ one chunk's columns ------
// The running prefix sums of a chunk's 8 codes, four per 32-bit word (SWAR: no carry can cross a byte, as a byte
// holds at most 8 * 15 = 120): byte t of lo = codes 0..t, byte t of hi = codes 0..4+t.
struct ChunkColumns {
  uint32_t lo, hi;
};

SPMM_DELTA_FN ChunkColumns chunk_columns(uint32_t code) {
  const uint32_t lo = (code & 0x0F0F0F0Fu) * 0x01010101u;
  const uint32_t hi = ((code >> 4) & 0x0F0F0F0Fu) * 0x01010101u + (lo >> 24) * 0x01010101u;
  return {lo, hi};
}

// Column of entry t, counted from the chunk's base (the column after the previous chunk's last entry; the slice's
// first column for chunk 0): t + codes 0..t.
SPMM_DELTA_FN uint32_t entry_column(const ChunkColumns& c, int t) {
  return static_cast<uint32_t>(t) + (((t < 4 ? c.lo : c.hi) >> (8 * (t & 3))) & 0xFFu);
}

// How far the base moves to the next chunk: 8 + all 8 codes.
SPMM_DELTA_FN uint32_t chunk_advance(const ChunkColumns& c) { return 8u + (c.hi >> 24); }

// --------------------------------------------------------------------------------- the jagged record walk ------
// In iteration j of a record, `active` has bit l set for each lane l whose segment has more than j chunks (a warp
// ballot); lane l's chunk j is at record base + (chunks of iterations < j) + (active lanes below l).
SPMM_DELTA_FN uint32_t active_lanes_below(uint32_t active, int lane) {
  return popcount(active & ((1u << lane) - 1u));
}

// A segment's chunk count as the kernels trust it: [0, max_chunks] (max_segment_chunks below: a corrupt offsets array
// gives wrong numbers, never a read outside the layout; chunk indices are clamped too).
SPMM_DELTA_FN int segment_chunks(int32_t begin, int32_t end, int64_t max_chunks) {
  const int64_t len = static_cast<int64_t>(end) - static_cast<int64_t>(begin);
  return static_cast<int>(len < 0 ? 0 : len > max_chunks ? max_chunks : len);
}

// Most chunks a valid segment of a slice `slice_width` columns wide can have: its nonzeros, one filler per 16 columns,
// the padding of one chunk. The kernels clamp a segment's chunk count to it (segment_chunks).
SPMM_DELTA_FN int max_segment_chunks(int64_t slice_width) {
  return static_cast<int>(slice_width / kChunk + slice_width / (kChunk * (kMaxCode + 1)) + 1);
}

// ---------------------------------------------------------------------------- the tile kernel's windows ------
constexpr int kWindow = 64;  // columns of the tile kernel's dense shared tile (one mma K tile of 4 x k16)

// The tile kernel hands a lane's chunk (base: its first column in the slice) to window [w0, w0 + 64): entry t goes to
// column window_column(...) of the window's tile if that is < 64. Unsigned, so an entry outside the window (also one
// before it, in a corrupt layout) is never stored. The lane moves on to its next chunk once the chunk ends in the
// window (a chunk spans at most 7 + 8 * 15 columns, up to three windows), else keeps it for the next window.
SPMM_DELTA_FN uint32_t window_column(const ChunkColumns& cols, uint32_t base, uint32_t w0, int t) {
  return base + entry_column(cols, t) - w0;
}

SPMM_DELTA_FN bool chunk_ends_in_window(const ChunkColumns& cols, uint32_t base, uint32_t w0) {
  return base + entry_column(cols, kChunk - 1) < w0 + kWindow;
}

// =============================================================================================== host side ======
// Building the layout from rows of sorted columns (the self-test's builder; Python builds it in torch), and the
// kernels' computation emulated lane by lane (the CPU op _tiled_csl_delta_mm, the tests' reference of the kernels).

struct HostLayout {
  std::vector<uint16_t> values;  // fp16/bf16 bits
  std::vector<uint32_t> codes;
  std::vector<int32_t> offsets;
};

// row_begin [m + 1], cols and value bits in CSR order (columns ascending within a row, values nonzero).
inline HostLayout build_host_layout(int64_t m, int64_t k, int64_t slice_width, const std::vector<int64_t>& row_begin,
                                   const std::vector<int64_t>& cols, const std::vector<uint16_t>& value_bits) {
  const int64_t slices = (k + slice_width - 1) / slice_width;
  // Each segment's entries (value bits, code) in order, padded to whole chunks.
  std::vector<std::vector<uint16_t>> seg_values(slices * m);
  std::vector<std::vector<uint8_t>> seg_codes(slices * m);
  for (int64_t r = 0; r < m; ++r) {
    int64_t prev = -1, slice = -1;
    for (int64_t e = row_begin[r]; e < row_begin[r + 1]; ++e) {
      const int64_t s = cols[e] / slice_width, local = cols[e] - s * slice_width;
      if (s != slice) slice = s, prev = -1;
      auto& v = seg_values[s * m + r];
      auto& c = seg_codes[s * m + r];
      int64_t gap = local - prev - 1;
      for (; gap > kMaxCode; gap -= kMaxCode + 1) v.push_back(0), c.push_back(kMaxCode);
      v.push_back(value_bits[e]);
      c.push_back(static_cast<uint8_t>(gap));
      prev = local;
    }
  }
  HostLayout out;
  out.offsets.assign(slices * m + 1, 0);
  for (int64_t seg = 0; seg < slices * m; ++seg) {
    while (seg_values[seg].size() % kChunk != 0) seg_values[seg].push_back(0), seg_codes[seg].push_back(0);
    out.offsets[seg + 1] = out.offsets[seg] + static_cast<int32_t>(seg_values[seg].size() / kChunk);
  }
  const int64_t chunks = out.offsets.back();
  out.values.assign(chunks * kChunk, 0);
  out.codes.assign(chunks, 0);
  // Jagged order within each record.
  for (int64_t s = 0; s < slices; ++s)
    for (int64_t r0 = 0; r0 < m; r0 += kGroupRows) {
      const int64_t rows = std::min<int64_t>(kGroupRows, m - r0);
      int64_t pos = out.offsets[s * m + r0];
      for (int64_t j = 0;; ++j) {
        bool any = false;
        for (int64_t l = 0; l < rows; ++l) {
          const int64_t seg = s * m + r0 + l;
          if (static_cast<int64_t>(seg_values[seg].size()) <= j * kChunk) continue;
          any = true;
          uint32_t word = 0;
          for (int t = 0; t < kChunk; ++t) {
            out.values[pos * kChunk + t] = seg_values[seg][j * kChunk + t];
            word |= static_cast<uint32_t>(seg_codes[seg][j * kChunk + t]) << code_shift(t);
          }
          out.codes[pos++] = word;
        }
        if (!any) break;
      }
    }
  return out;
}

// What the delta kernels compute, in their order, in fp32: each lane (row r of record (s, g)) walks its segment's
// chunks with the same index math and clamps as the kernel and accumulates fma(w, x, acc) entry by entry; the slices'
// sums are added in slice order (one slice: acc + bias; several: 0 + acc_0 + acc_1 + ... + bias). x [n][k] and the
// result y [n][m] are fp32 (the caller converts and rounds); value(i) gives entry i's weight as fp32.
template <typename Value>
void emulate_delta_mm(const uint32_t* codes, const int32_t* offsets, int64_t chunks, int64_t m, int64_t k, int64_t n,
                      int64_t slice_width, const float* x, const float* bias, float* y, Value value) {
  const int64_t slices = (k + slice_width - 1) / slice_width;
  std::vector<float> partial(slices * n * m, 0.0f);
  std::vector<float> xs((slice_width + kColumnSlack) * n);
  for (int64_t s = 0; s < slices; ++s) {
    // The block's fp32 copy of x's slice, zero past K and past the slice.
    const int64_t col0 = s * slice_width, width = std::min(slice_width, k - col0);
    for (int64_t c = 0; c < slice_width + kColumnSlack; ++c)
      for (int64_t t = 0; t < n; ++t) xs[c * n + t] = c < width ? x[t * k + col0 + c] : 0.0f;
    const int32_t* offs = offsets + s * m;
    for (int64_t r0 = 0; r0 < m; r0 += kGroupRows) {
      int len[kGroupRows] = {};
      uint32_t base[kGroupRows] = {};
      int iters = 0;
      for (int l = 0; l < kGroupRows && r0 + l < m; ++l) {
        len[l] = chunks > 0 ? segment_chunks(offs[r0 + l], offs[r0 + l + 1], max_segment_chunks(slice_width)) : 0;
        iters = std::max(iters, len[l]);
      }
      std::vector<float> acc(kGroupRows * n, 0.0f);
      int64_t done = 0;  // chunks of earlier iterations
      for (int j = 0; j < iters; ++j) {
        uint32_t active = 0;
        for (int l = 0; l < kGroupRows; ++l) active |= static_cast<uint32_t>(j < len[l]) << l;
        for (int l = 0; l < kGroupRows; ++l) {
          if (j >= len[l]) continue;
          const int64_t c = std::min<int64_t>(offs[r0] + done + active_lanes_below(active, l), chunks - 1);
          const ChunkColumns cc = chunk_columns(codes[c]);
          const uint32_t b = std::min<uint32_t>(base[l], static_cast<uint32_t>(slice_width));
          for (int t = 0; t < kChunk; ++t) {
            const float w = value(c * kChunk + t);
            const float* xc = xs.data() + (b + entry_column(cc, t)) * n;
            for (int64_t tok = 0; tok < n; ++tok) acc[l * n + tok] = std::fma(w, xc[tok], acc[l * n + tok]);
          }
          base[l] = b + chunk_advance(cc);
        }
        done += popcount(active);
      }
      for (int l = 0; l < kGroupRows && r0 + l < m; ++l)
        for (int64_t tok = 0; tok < n; ++tok) partial[(s * n + tok) * m + r0 + l] = acc[l * n + tok];
    }
  }
  for (int64_t tok = 0; tok < n; ++tok)
    for (int64_t r = 0; r < m; ++r) {
      const float b = bias ? bias[r] : 0.0f;
      if (slices == 1) {
        y[tok * m + r] = partial[tok * m + r] + b;
      } else {
        float sum = 0.0f;
        for (int64_t s = 0; s < slices; ++s) sum += partial[(s * n + tok) * m + r];
        y[tok * m + r] = sum + b;
      }
    }
}

// The tile kernel's walk (delta_tile_kernel), emulated: each lane of each record hands its chunks to the windows of
// its slice as the kernel does (same jagged table, same clamps) and visit(row, col, entry) receives every entry the
// kernel stores into its dense tile (col: the window's column in W). Storing visit's entries (fillers and padding
// are +0.0) into a zero matrix must give back W: the tests' check of the kernel's index math; the sums themselves
// run on tensor cores, in an order the hardware chooses.
template <typename Visit>
void emulate_delta_tiles(const uint32_t* codes, const int32_t* offsets, int64_t chunks, int64_t m, int64_t k,
                         int64_t slice_width, Visit visit) {
  const int64_t slices = (k + slice_width - 1) / slice_width;
  const int max_chunks = max_segment_chunks(slice_width);
  std::vector<uint32_t> masks(max_chunks), starts(max_chunks);
  for (int64_t s = 0; s < slices; ++s) {
    const int64_t col0 = s * slice_width, windows = (std::min(slice_width, k - col0) + kWindow - 1) / kWindow;
    const int32_t* offs = offsets + s * m;
    for (int64_t r0 = 0; r0 < m; r0 += kGroupRows) {
      int len[kGroupRows] = {}, next[kGroupRows] = {}, iters = 0;
      uint32_t base[kGroupRows] = {};
      for (int l = 0; l < kGroupRows && r0 + l < m; ++l) {
        len[l] = chunks > 0 ? segment_chunks(offs[r0 + l], offs[r0 + l + 1], max_chunks) : 0;
        iters = std::max(iters, len[l]);
      }
      uint32_t start = 0;
      for (int j = 0; j < iters; ++j) {
        masks[j] = 0;
        for (int l = 0; l < kGroupRows; ++l) masks[j] |= static_cast<uint32_t>(j < len[l]) << l;
        starts[j] = start;
        start += popcount(masks[j]);
      }
      for (int64_t c = 0; c < windows; ++c) {
        const uint32_t w0 = static_cast<uint32_t>(c * kWindow);
        for (int l = 0; l < kGroupRows; ++l) {
          while (next[l] < len[l]) {
            const int j = next[l];
            const int64_t chunk = std::min<int64_t>(offs[r0] + starts[j] + active_lanes_below(masks[j], l), chunks - 1);
            const ChunkColumns cols = chunk_columns(codes[chunk]);
            const uint32_t b = std::min<uint32_t>(base[l], static_cast<uint32_t>(slice_width));
            for (int t = 0; t < kChunk; ++t) {
              const uint32_t local = window_column(cols, b, w0, t);
              if (local < static_cast<uint32_t>(kWindow)) visit(r0 + l, col0 + w0 + local, chunk * kChunk + t);
            }
            if (!chunk_ends_in_window(cols, b, w0)) {
              base[l] = b;
              break;
            }
            base[l] = b + chunk_advance(cols);
            ++next[l];
          }
        }
      }
    }
  }
}

}  // namespace spmm::kernels::delta
