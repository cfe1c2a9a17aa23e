// The Tiled-CSL CPU pieces the fast matmul (tiled_csl_mm_cpu.cpp) uses from tiled_csl_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace spmm::ops {

// The fp64 reference of tiled_csl_mm (spmm::_tiled_csl_mm_reference).
at::Tensor tiled_csl_mm_reference(const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                                  const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                                  const std::optional<at::Tensor>& bias);

// The CPU kernels' bitmap of a checked Tiled-CSL stream (int64 [tiles * tile_m * ceil(tile_k / 64)]; the layout of
// kernels::cpu::BitmapTiles); raises on a malformed stream or a repeated location (spmm::tiled_csl_cpu_layout).
at::Tensor tiled_csl_cpu_bitmap(const at::Tensor& locations, const at::Tensor& tile_offsets, int64_t out_features,
                                int64_t in_features, int64_t tile_m, int64_t tile_k);

}  // namespace spmm::ops
