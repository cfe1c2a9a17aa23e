// Tiled-CSL (Flash-LLM) layout rules shared by the packer and the matmul.
#pragma once

#include "ops/checks.h"

namespace spmm::ops {

constexpr int64_t kMaxTileElements = int64_t{1} << 16;  // in-tile locations are 16-bit

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_tile_shape(const char* op, int64_t tile_m, int64_t tile_k) {
  TORCH_CHECK_VALUE(tile_m > 0 && tile_k > 0, op, ": `tile_m` and `tile_k` must be positive, got ", tile_m, " x ",
                    tile_k);
  TORCH_CHECK_VALUE(tile_m * tile_k <= kMaxTileElements, op, ": a tile of `tile_m` x `tile_k` = ", tile_m, " x ",
                    tile_k, " has more than 65536 elements; in-tile locations are 16-bit");
}

// Tiles are numbered row-tile major: tile (i, j) covers rows [i*tile_m, ...) and columns [j*tile_k, ...).
inline int64_t tile_count(int64_t m, int64_t k, int64_t tile_m, int64_t tile_k) {
  return ceil_div(m, tile_m) * ceil_div(k, tile_k);
}

}  // namespace spmm::ops
