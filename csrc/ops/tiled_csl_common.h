// Tiled-CSL (Flash-LLM) layout rules and argument checks shared by the packer and the matmul, on CPU and CUDA.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>

#include "ops/checks.h"

namespace spmm::ops {

constexpr int64_t kMaxTileElements = int64_t{1} << 16;  // in-tile locations are 16-bit

inline void check_tile_shape(const char* op, int64_t tile_m, int64_t tile_k) {
  TORCH_CHECK_VALUE(tile_m > 0 && tile_k > 0, op, ": `tile_m` and `tile_k` must be positive, got ", tile_m, " x ",
                    tile_k);
  // each bounded first: the product of two large values would wrap
  TORCH_CHECK_VALUE(tile_m <= kMaxTileElements && tile_k <= kMaxTileElements && tile_m * tile_k <= kMaxTileElements,
                    op, ": a tile of `tile_m` x `tile_k` = ", tile_m, " x ", tile_k,
                    " has more than 65536 elements; in-tile locations are 16-bit");
}

// Tiles are numbered row-tile major: tile (i, j) covers rows [i*tile_m, ...) and columns [j*tile_k, ...).
inline int64_t tile_count(int64_t m, int64_t k, int64_t tile_m, int64_t tile_k, const char* op = "spmm") {
  return checked_mul(op, "the tile count", ceil_div(m, tile_m), ceil_div(k, tile_k));
}

// Arguments of tiled_csl_compress (CPU and CUDA alike).
inline void check_tiled_csl_compress_args(const char* op, const at::Tensor& dense,
                                          const std::optional<at::Tensor>& mask, int64_t tile_m, int64_t tile_k) {
  check_dim(op, "dense", dense, 2);
  check_float_dtype(op, "dense", dense);
  check_tile_shape(op, tile_m, tile_k);
  if (mask.has_value()) {
    check_dtype(op, "mask", *mask, at::kBool);
    TORCH_CHECK_VALUE(mask->sizes() == dense.sizes(), op, ": `mask` must have the shape of `dense` ", dense.sizes(),
                      ", got ", mask->sizes());
    check_same_device(op, "mask", *mask, dense);
  }
}

// The packers' findings, in the same words on CPU and CUDA.
inline void report_nonfinite(const char* op, int64_t k, int64_t index) {
  TORCH_CHECK_VALUE(false, op, ": `dense` has a NaN or infinite value at row ", index / k, ", column ", index % k,
                    "; a weight to pack must be finite");
}

inline void check_nnz_fits(const char* op, int64_t nnz) {
  TORCH_CHECK_VALUE(nnz <= std::numeric_limits<int32_t>::max(), op, ": ", nnz,
                    " nonzeros do not fit the int32 tile offsets; split the weight");
}

// Arguments of tiled_csl_mm that need no look at the stream's contents (CPU and CUDA alike).
inline void check_tiled_csl_mm_args(const char* op, const at::Tensor& x, const at::Tensor& values,
                                    const at::Tensor& locations, const at::Tensor& tile_offsets, int64_t out_features,
                                    int64_t tile_m, int64_t tile_k, const std::optional<at::Tensor>& bias) {
  check_activation(op, x);
  check_tile_shape(op, tile_m, tile_k);
  check_out_features(op, out_features);
  check_dim(op, "values", values, 1);
  check_dim(op, "locations", locations, 1);
  check_dim(op, "tile_offsets", tile_offsets, 1);
  check_dtype(op, "values", values, x.scalar_type());
  check_dtype(op, "locations", locations, at::kShort);
  check_dtype(op, "tile_offsets", tile_offsets, at::kInt);
  for (auto [name, t] : {std::pair{"values", &values}, {"locations", &locations}, {"tile_offsets", &tile_offsets}}) {
    check_contiguous(op, name, *t);
    check_same_device(op, name, *t, x);
  }
  TORCH_CHECK_VALUE(locations.numel() == values.numel(), op, ": `locations` must have one entry per value (",
                    values.numel(), "), got ", locations.numel());
  const int64_t k = x.size(-1), tiles = tile_count(out_features, k, tile_m, tile_k, op);
  TORCH_CHECK_VALUE(tile_offsets.numel() == tiles + 1, op, ": `tile_offsets` must have ", tiles + 1, " entries for a ",
                    out_features, " x ", k, " weight in ", tile_m, " x ", tile_k, " tiles, got ", tile_offsets.numel());
  check_bias(op, bias, x, out_features);
}

}  // namespace spmm::ops
