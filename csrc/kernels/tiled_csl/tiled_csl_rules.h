// The Tiled-CSL kernel-choice rules and layout sizes, header-only and free of CUDA and torch: the kernels, the op
// glue and spmm._C (for Python: TiledCSLLinear and the fake kernels) all read them from here.
//
// Three CUDA kernels read a Tiled-CSL weight, each from its own form of it:
//   - the stream kernel: the saved stream itself (values + 16-bit locations per tile; what the functional op runs
//     when it is given nothing else);
//   - the word kernel: the word layout (one 32-bit word per nonzero, tiles of 256 or 128 x 64), what
//     TiledCSLLinear derives by default;
//   - the delta kernels: the delta layout (tiled_csl_delta_layout.h: values + 4-bit column gaps, 2.5 bytes per stored
//     entry), derived instead of the word layout when the switch SPMM_TILED_CSL_DELTA=1 is set -- off by default
//     until a GPU run measures it ahead of the word kernel (csrc/kernels/tiled_csl/DESIGN.md).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace spmm::kernels {

// ------------------------------------------------------------------------------------------ the stream ------
inline int64_t tiled_csl_tile_count(int64_t m, int64_t k, int64_t tile_m, int64_t tile_k) {
  return tile_m > 0 && tile_k > 0 ? (m + tile_m - 1) / tile_m * ((k + tile_k - 1) / tile_k) : 0;
}

// --------------------------------------------------------------------------------------- word layout ------
constexpr int64_t kTiledCSLTileK = 64;  // the tile width the stream and word kernels take

// Tiles the stream and word kernels are built for: tile_k = 64 and tile_m = 256 (the default) or 128.
inline bool tiled_csl_word_tiles(int64_t tile_m, int64_t tile_k) {
  return tile_k == kTiledCSLTileK && (tile_m == 256 || tile_m == 128);
}

// Rows of the word layout's `words` [rows, 2]: one per nonzero, each tile's run padded to a multiple of 4 (at most 3
// more per tile), the whole rounded up to 4 and never empty.
inline int64_t tiled_csl_word_rows(int64_t nnz, int64_t tiles) {
  return std::max<int64_t>((nnz + 3 * tiles + 3) / 4 * 4, 4);
}

// -------------------------------------------------------------------------------------- delta layout ------
constexpr int64_t kDeltaGroupRows = 32;        // rows of one jagged record: one per lane of a warp
constexpr int64_t kDeltaMinSliceWidth = 256;   // a slice's columns: a multiple of 64 in [256, 2048]
constexpr int64_t kDeltaMaxSliceWidth = 2048;  //   (bounded above by the x slice each block stages as fp32)
constexpr int64_t kDeltaTargetWarps = 2048;    // enough (row group, slice) records to fill an H100/H200 with warps
constexpr int64_t kDeltaMaxTokensPerPass = 8;  // tokens one delta-kernel pass multiplies (more: several passes)

// Columns per K slice of the delta layout of an [m, k] weight. A slice of one row is one segment, one lane's work;
// slices are narrow enough that (rows / 32) x slices records keep the GPU busy, wide enough that a segment's
// overhead (its offset, the padding of its last chunk) stays a few % of its bytes.
inline int64_t tiled_csl_delta_slice_width(int64_t m, int64_t k) {
  const int64_t groups = std::max<int64_t>((m + kDeltaGroupRows - 1) / kDeltaGroupRows, 1);
  const int64_t slices = (kDeltaTargetWarps + groups - 1) / groups;
  int64_t width = ((std::max<int64_t>(k, 1) + slices - 1) / slices + 63) / 64 * 64;
  width = std::clamp(width, kDeltaMinSliceWidth, kDeltaMaxSliceWidth);
  return std::max<int64_t>(std::min(width, (k + 63) / 64 * 64), 64);
}

inline int64_t tiled_csl_delta_slices(int64_t m, int64_t k) {
  return (k + tiled_csl_delta_slice_width(m, k) - 1) / tiled_csl_delta_slice_width(m, k);
}

// Tokens per pass of the delta kernel for N tokens: the smallest of 1, 2, 4, 8 that holds them, 8 above (N > 8
// runs ceil(N / 8) passes, each streaming the weight again).
inline int64_t tiled_csl_delta_tokens_per_pass(int64_t n) {
  return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : kDeltaMaxTokensPerPass;
}

// Which delta kernel runs N tokens: CUDA cores up to 8 (one pass), tensor cores above (the mma kernel streams the
// weight once per 64 tokens instead of once per 8).
inline bool tiled_csl_delta_tensor_cores(int64_t n) { return n > kDeltaMaxTokensPerPass; }

// -------------------------------------------------------------------------- what TiledCSLLinear derives ------
// The switch of the delta layout: SPMM_TILED_CSL_DELTA=1 in the environment (read when a layer derives its layout).
inline bool tiled_csl_delta_switch_on() {
  const char* v = std::getenv("SPMM_TILED_CSL_DELTA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

enum class TiledCSLLayout { kNone, kWords, kDelta };

// The kernel layout a TiledCSLLinear derives from its stream on a CUDA device (fp16/bf16; on CPU, or another dtype,
// the layer keeps the stream alone): the delta layout where the switch is on (any tiles), else the word layout for
// the tiles the word kernel takes, else none (the stream kernel reads the stream).
inline TiledCSLLayout tiled_csl_layer_layout(int64_t tile_m, int64_t tile_k) {
  if (tiled_csl_delta_switch_on()) return TiledCSLLayout::kDelta;
  return tiled_csl_word_tiles(tile_m, tile_k) ? TiledCSLLayout::kWords : TiledCSLLayout::kNone;
}

inline const char* tiled_csl_layout_name(TiledCSLLayout layout) {
  switch (layout) {
    case TiledCSLLayout::kWords: return "words";
    case TiledCSLLayout::kDelta: return "delta";
    default: return "";
  }
}

}  // namespace spmm::kernels
