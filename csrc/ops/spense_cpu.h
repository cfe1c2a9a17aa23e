// The Spense CPU pieces the fast matmul (spense_mm_cpu.cpp) shares with the reference (spense_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "ops/spense_common.h"  // the argument checks (CPU and CUDA alike)

namespace spmm::ops {

// The fp64 reference of spense_mm (spmm::_spense_mm_reference).
at::Tensor spense_mm_reference(const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                               const at::Tensor& meta, const at::Tensor& row_index, const std::optional<at::Tensor>& bias);

}  // namespace spmm::ops
