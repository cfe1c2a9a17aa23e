// The CUDA entries of the 2:4 kernel families, for the op that picks between them (sparse24_mm_cuda.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace spmm::ops {

// Decode kernel (sparse24_decode_cuda.cpp): spmm::_sparse24_decode_pack / _sparse24_decode_mm.
std::tuple<at::Tensor, at::Tensor> sparse24_decode_pack_cuda(const at::Tensor& values, const at::Tensor& meta,
                                                            int64_t meta_layout);
// splits 0: the kernel's own split-K rule (sparse24_decode_splits); else that many K slices (a tuning knob).
at::Tensor sparse24_decode_mm_cuda(const at::Tensor& x, const at::Tensor& dvalues, const at::Tensor& dmeta,
                                   int64_t out_features, const std::optional<at::Tensor>& bias, c10::string_view loader,
                                   int64_t splits = 0);

#if SPMM_HAS_SPARSE24_SM90
// Hopper prefill GEMM (sparse24_sm90_cuda.cpp): spmm::_sparse24_sm90_pack / _sparse24_sm90_mm.
// Whether it can take a weight [m, k] on the device of `like` (an sm_90 GPU, m % 8 == 0, k % 16 == 0).
bool sparse24_sm90_usable(const at::Tensor& like, int64_t m, int64_t k);
// The metadata e for the canonical (values, meta); the GEMM reads the canonical values themselves.
at::Tensor sparse24_sm90_pack_cuda(const at::Tensor& values, const at::Tensor& meta);
// config -1: the heuristic's; swizzle, splits 0: the tile scheduler's own (the op's tuning knobs).
at::Tensor sparse24_sm90_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& e,
                                 int64_t out_features, const std::optional<at::Tensor>& bias, int64_t config = -1,
                                 int64_t swizzle = 0, int64_t splits = 0);
#endif

#if SPMM_HAS_SPARSE24_SM80
// Ampere prefill GEMM (sparse24_sm80_cuda.cpp): spmm::_sparse24_sm80_pack / _sparse24_sm80_mm.
// Whether it runs on the device of `like` (compute capability 8.x, or 9.0 where the sm_90a build of it exists).
bool sparse24_sm80_usable(const at::Tensor& like);
std::tuple<at::Tensor, at::Tensor> sparse24_sm80_pack_cuda(const at::Tensor& values, const at::Tensor& meta);
at::Tensor sparse24_sm80_mm_cuda(const at::Tensor& x, const at::Tensor& a, const at::Tensor& e, int64_t out_features,
                                 const std::optional<at::Tensor>& bias);
#endif

}  // namespace spmm::ops
