// The CUDA entries of the 2:4 kernel families, and the one dispatch that picks between them (sparse24_mm_cuda.cpp),
// which spmm::sparse24_mm and spmm::spense_mm (its 2:4 rows) both run. Each entry takes the name of the op that
// calls it and of the layout arguments, so an error names what the caller passed.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "kernels/sparse24/sparse24_dispatch_rules.h"

namespace spmm::ops {

// The kernel layouts of one 2:4 weight a caller holds (the layer builds them once; spmm.ops.sparse24_kernel_layouts):
// the decode kernel's (dvalues, dmeta), the Hopper GEMM's metadata sm90_e (it reads the canonical values), the
// Ampere GEMM's padded copy (sm80_a, sm80_e). None given: the call packs, for itself, what the rule picks.
struct Sparse24Layouts {
  const std::optional<at::Tensor>& dvalues;
  const std::optional<at::Tensor>& dmeta;
  const std::optional<at::Tensor>& sm90_e;
  const std::optional<at::Tensor>& sm80_a;
  const std::optional<at::Tensor>& sm80_e;
  bool any() const {
    return dvalues.has_value() || dmeta.has_value() || sm90_e.has_value() || sm80_a.has_value() || sm80_e.has_value();
  }
};

// The kernel that runs x through the canonical weight [m, k] on x's device (the rule of sparse24_dispatch_rules.h
// over the layouts given, or, with none, over what this device runs). Checks that the layouts come in whole pairs and
// that the device runs the GEMM a given layout is for (ValueError naming the argument otherwise).
kernels::Sparse24Kernel sparse24_cuda_kernel(const char* op, const at::Tensor& x, int64_t m, int64_t k,
                                             const Sparse24Layouts& layouts);

// y = x W^T (+ bias) through the kernel sparse24_cuda_kernel picks. x, values, meta and bias are checked by the
// caller (check_sparse24_weight, check_bias); the layouts here.
at::Tensor sparse24_mm_dispatch(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                const std::optional<at::Tensor>& bias, const Sparse24Layouts& layouts);

// Decode kernel (sparse24_decode_cuda.cpp): spmm::_sparse24_decode_pack / _sparse24_decode_mm.
std::tuple<at::Tensor, at::Tensor> sparse24_decode_pack_cuda(const at::Tensor& values, const at::Tensor& meta,
                                                            int64_t meta_layout);
// splits 0: the kernel's own split-K rule (sparse24_decode_splits); else that many K slices (a tuning knob).
at::Tensor sparse24_decode_run(const char* op, const at::Tensor& x, const at::Tensor& dvalues, const at::Tensor& dmeta,
                               int64_t out_features, const std::optional<at::Tensor>& bias, c10::string_view loader,
                               int64_t splits);

#if SPMM_HAS_SPARSE24_SM90
// Hopper prefill GEMM (sparse24_sm90_cuda.cpp): spmm::_sparse24_sm90_pack / _sparse24_sm90_mm.
// The metadata e for the canonical (values, meta); the GEMM reads the canonical values themselves.
at::Tensor sparse24_sm90_pack_cuda(const at::Tensor& values, const at::Tensor& meta);
// config -1: the heuristic's; swizzle, splits 0: the tile scheduler's own (the op's tuning knobs).
at::Tensor sparse24_sm90_run(const char* op, const char* e_name, const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& e, int64_t out_features, const std::optional<at::Tensor>& bias,
                             int64_t config = -1, int64_t swizzle = 0, int64_t splits = 0);
#endif

#if SPMM_HAS_SPARSE24_SM80
// Ampere prefill GEMM (sparse24_sm80_cuda.cpp): spmm::_sparse24_sm80_pack / _sparse24_sm80_mm.
std::tuple<at::Tensor, at::Tensor> sparse24_sm80_pack_cuda(const at::Tensor& values, const at::Tensor& meta);
at::Tensor sparse24_sm80_run(const char* op, const char* a_name, const char* e_name, const at::Tensor& x,
                             const at::Tensor& a, const at::Tensor& e, int64_t out_features,
                             const std::optional<at::Tensor>& bias);
#endif

}  // namespace spmm::ops
