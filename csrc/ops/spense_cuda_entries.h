// The CUDA entry of the Spense decode kernel (spense_decode_cuda.cpp), which spmm::spense_mm runs at decode token
// counts and spmm::_spense_decode_mm exposes with its tuning knobs.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace spmm::ops {

// y = x W^T (+ bias, in output order) over the dense rows `dense_weight` (none: plain 2:4) and the canonical 2:4 rows
// (values, meta), block row i written to output row row_index[i] (none: identity). Checks its arguments, naming `op`.
// meta_fragments: the decode layout's metadata instead of the canonical one; loader "auto" / "tma" / "cp_async";
// splits 0: the kernel's split-K rule.
at::Tensor spense_decode_run(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& dense_weight,
                             const at::Tensor& values, const at::Tensor& meta,
                             const std::optional<at::Tensor>& row_index, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& meta_fragments = std::nullopt,
                             c10::string_view loader = "auto", int64_t splits = 0);

}  // namespace spmm::ops
