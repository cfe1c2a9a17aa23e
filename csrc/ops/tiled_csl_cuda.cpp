// CUDA entries of the Tiled-CSL ops: the packer (dense + mask -> stream, same output as the CPU packer), the word
// layout's builder, and y = x W^T (+ bias) on the kernel that reads what the op is given: the delta layout
// (tiled_csl_delta_cuda.cpp), the word layout, or the stream itself. Checks are the CPU op's (tiled_csl_common.h);
// the contents of the stream and of the layouts are trusted here -- reading them back would cost a sync per call --
// and a corrupt one gives wrong numbers but never a fault (the kernels clamp).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/tiled_csl/tiled_csl_spmm.h"
#include "ops/cuda_common.h"
#include "ops/tiled_csl_common.h"
#include "ops/tiled_csl_cuda_entries.h"

namespace spmm::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiled_csl_compress_cuda(const at::Tensor& dense,
                                                                       const std::optional<at::Tensor>& mask,
                                                                       int64_t tile_m, int64_t tile_k) {
  constexpr const char* op = "spmm::tiled_csl_compress";
  check_tiled_csl_compress_args(op, dense, mask, tile_m, tile_k);
  const c10::cuda::CUDAGuard guard(dense.device());
  const int64_t m = dense.size(0), k = dense.size(1);
  // The kernels take a row stride; anything else (transposed views) is made row-major first.
  const at::Tensor w = dense.stride(1) == 1 ? dense : dense.contiguous();
  at::Tensor keep;
  if (mask.has_value()) keep = mask->stride(1) == 1 ? *mask : mask->contiguous();
  const int64_t tiles = tile_count(m, k, tile_m, tile_k);
  at::Tensor offsets = at::empty({tiles + 1}, dense.options().dtype(at::kLong));
  at::Tensor first_bad = at::empty({1}, dense.options().dtype(at::kLong));

  kernels::TiledCSLPackParams p{};
  p.dense = w.data_ptr();
  p.dense_ld = w.stride(0);
  p.mask = mask.has_value() ? reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>()) : nullptr;
  p.mask_ld = mask.has_value() ? keep.stride(0) : 0;
  p.m = m;
  p.k = k;
  p.tile_m = tile_m;
  p.tile_k = tile_k;
  p.dtype = kernel_dtype(dense.scalar_type());
  p.offsets = offsets.data_ptr<int64_t>();
  p.first_bad = reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  check_cuda(op, kernels::tiled_csl_pack_count(p, stream));

  // nnz sizes the outputs: one read-back (packing is offline work), which also brings the non-finite flag.
  const at::Tensor found = at::cat({offsets.narrow(0, tiles, 1), first_bad}).cpu();
  const int64_t nnz = found[0].item<int64_t>();
  const auto bad = static_cast<uint64_t>(found[1].item<int64_t>());
  if (bad != std::numeric_limits<uint64_t>::max()) report_nonfinite(op, k, static_cast<int64_t>(bad));
  check_nnz_fits(op, nnz);

  at::Tensor values = at::empty({nnz}, dense.options());
  at::Tensor locations = at::empty({nnz}, dense.options().dtype(at::kShort));
  p.values = values.data_ptr();
  p.locations = locations.data_ptr<int16_t>();
  check_cuda(op, kernels::tiled_csl_pack_fill(p, stream));
  return {values, locations, offsets.to(at::kInt)};
}

// Runs one of the kernel's two pair sources (the stream, or its word layout) once p's pair fields are set:
// fills in x, bias, y and the split-K plan, allocates the workspace and launches.
template <typename Launch>
at::Tensor launch_tiled_csl(const char* op, kernels::TiledCSLMMParams p, const at::Tensor& x, int64_t m,
                            int64_t tile_m, const std::optional<at::Tensor>& bias, Launch launch) {
  const int64_t n = leading_rows(x);
  const MatmulOperands operands(kernel_ready_activation(x, n, x.size(-1)), bias, n, m);
  operands.set(p);
  p.m = m;
  p.k = operands.x.size(1);
  p.tile_m = tile_m;
  p.splits = kernels::tiled_csl_mm_splits(m, n, x.size(-1), p.nnz, tile_m,
                                          at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const KernelWorkspace workspace(x, kernels::tiled_csl_mm_workspace_bytes(m, n, tile_m, p.splits));
  p.workspace = workspace.data();
  check_cuda(op, launch(p, at::cuda::getCurrentCUDAStream()));
  return operands.result(x);
}

void check_kernel_tile(const char* op, int64_t tile_m, int64_t tile_k) {
  TORCH_CHECK_NOT_IMPLEMENTED(kernels::tiled_csl_word_tiles(tile_m, tile_k), op,
                              ": the CUDA kernel takes tiles of tile_m x tile_k = 256 x 64 or 128 x 64, got ",
                              "`tile_m` = ", tile_m, ", `tile_k` = ", tile_k, "; pack the weight with one of those");
}

at::Tensor stream_mm(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                     const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                     const std::optional<at::Tensor>& bias) {
  check_tiled_csl_mm_args(op, x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias);
  check_tiled_csl_kernel_dtype(op, x);
  check_kernel_tile(op, tile_m, tile_k);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = leading_rows(x);
  if (n == 0 || out_features == 0 || x.size(-1) == 0) return empty_product(x, n, out_features, bias);
  const at::Tensor vals = aligned16(values), locs = aligned16(locations);
  kernels::TiledCSLMMParams p{};
  p.values = vals.data_ptr();
  p.locations = locs.data_ptr<int16_t>();
  p.tile_offsets = tile_offsets.data_ptr<int32_t>();
  p.nnz = values.numel();
  return launch_tiled_csl(op, p, x, out_features, tile_m, bias, kernels::tiled_csl_mm);
}

// The word layout of tiled_csl_words (tile_k = 64): words [4j, 2] of x's dtype, word_offsets int32 [tiles + 1].
at::Tensor words_mm(const char* op, const at::Tensor& x, const at::Tensor& words, const at::Tensor& word_offsets,
                    int64_t out_features, int64_t tile_m, int64_t tile_k, const std::optional<at::Tensor>& bias) {
  check_activation(op, x);
  check_tiled_csl_kernel_dtype(op, x);
  check_kernel_tile(op, tile_m, tile_k);
  TORCH_CHECK_VALUE(out_features >= 0, op, ": `out_features` must be >= 0, got ", out_features);
  check_kernel_layout(op, x, "words", words, "word_offsets", word_offsets);
  TORCH_CHECK_VALUE(words.size(1) == 2 && words.size(0) % 4 == 0 && words.size(0) > 0, op,
                    ": `words` must be [4j, 2] (from _tiled_csl_words), got ", words.sizes());
  const int64_t k = x.size(-1), tiles = tile_count(out_features, k, tile_m, tile_k);
  TORCH_CHECK_VALUE(word_offsets.numel() == tiles + 1, op, ": `word_offsets` must have ", tiles + 1, " entries for a ",
                    out_features, " x ", k, " weight in ", tile_m, " x 64 tiles, got ", word_offsets.numel());
  check_bias(op, bias, x, out_features);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = leading_rows(x);
  if (n == 0 || out_features == 0 || k == 0) return empty_product(x, n, out_features, bias);
  const at::Tensor w = aligned16(words);
  kernels::TiledCSLMMParams p{};
  p.values = w.data_ptr();
  p.tile_offsets = word_offsets.data_ptr<int32_t>();
  p.nnz = words.size(0);
  return launch_tiled_csl(op, p, x, out_features, tile_m, bias, kernels::tiled_csl_mm_words);
}

// The one rule for which kernel the op runs: the delta layout where it is given, else the word layout where it is
// given, else the stream (a layout comes whole: every one of its tensors, or none).
enum class Source { kStream, kWords, kDelta };

Source source_of(const char* op, const std::optional<at::Tensor>& words, const std::optional<at::Tensor>& word_offsets,
                 const std::optional<at::Tensor>& delta_values, const std::optional<at::Tensor>& delta_codes,
                 const std::optional<at::Tensor>& delta_offsets) {
  const int delta = delta_values.has_value() + delta_codes.has_value() + delta_offsets.has_value();
  TORCH_CHECK_VALUE(delta == 0 || delta == 3, op,
                    ": the delta layout needs all of `delta_values`, `delta_codes` and `delta_offsets`");
  TORCH_CHECK_VALUE(words.has_value() == word_offsets.has_value(), op,
                    ": the word layout needs both `words` and `word_offsets`");
  TORCH_CHECK_VALUE(delta == 0 || !words.has_value(), op, ": give one kernel layout (words or delta), not both");
  return delta == 3 ? Source::kDelta : words.has_value() ? Source::kWords : Source::kStream;
}

at::Tensor tiled_csl_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& locations,
                             const at::Tensor& tile_offsets, int64_t out_features, int64_t tile_m, int64_t tile_k,
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& words,
                             const std::optional<at::Tensor>& word_offsets,
                             const std::optional<at::Tensor>& delta_values,
                             const std::optional<at::Tensor>& delta_codes,
                             const std::optional<at::Tensor>& delta_offsets,
                             const std::optional<at::Tensor>& cpu_bitmap) {
  constexpr const char* op = "spmm::tiled_csl_mm";
  check_tile_shape(op, tile_m, tile_k);
  TORCH_CHECK_VALUE(!cpu_bitmap.has_value(), op, ": `cpu_bitmap` is the CPU kernels' layout; a CUDA call takes none");
  switch (source_of(op, words, word_offsets, delta_values, delta_codes, delta_offsets)) {
    case Source::kDelta:
#if SPMM_HAS_TILED_CSL_DELTA
      return tiled_csl_delta_mm_cuda(op, {*delta_values, *delta_codes, *delta_offsets,
                                          {"delta_values", "delta_codes", "delta_offsets"}},
                                     x, out_features, bias);
#else
      TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": this build has no delta kernel (CMake family tiled_csl_delta)");
#endif
    case Source::kWords:
      return words_mm(op, x, *words, *word_offsets, out_features, tile_m, tile_k, bias);
    case Source::kStream:
      break;
  }
  return stream_mm(op, x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias);
}

// ------------------------------------------------------------------------------------------- word layout --------
// The stream -> the kernel's word layout (tiled_csl_spmm.h): words [tiled_csl_word_rows(nnz, tiles), 2] of the
// weight's dtype (element 0 of a row = the value, element 1 = its swizzled shared-tile offset; the dtype says how to
// read the values); word_offsets int32 [tiles + 1]. Made once per weight.
std::tuple<at::Tensor, at::Tensor> tiled_csl_words_cuda(const at::Tensor& values, const at::Tensor& locations,
                                                        const at::Tensor& tile_offsets, int64_t tile_m,
                                                        int64_t tile_k) {
  constexpr const char* op = "spmm::_tiled_csl_words";
  check_dim(op, "values", values, 1);
  check_half_dtype(op, "values", values);
  check_kernel_tile(op, tile_m, tile_k);
  check_dim(op, "locations", locations, 1);
  check_dim(op, "tile_offsets", tile_offsets, 1);
  check_dtype(op, "locations", locations, at::kShort);
  check_dtype(op, "tile_offsets", tile_offsets, at::kInt);
  for (auto [name, t] : {std::pair{"locations", &locations}, {"tile_offsets", &tile_offsets}})
    check_same_device(op, name, *t, values);
  TORCH_CHECK_VALUE(locations.numel() == values.numel(), op, ": `locations` must have one entry per value (",
                    values.numel(), "), got ", locations.numel());
  TORCH_CHECK_VALUE(tile_offsets.numel() >= 1, op, ": `tile_offsets` must have tiles + 1 >= 1 entries");
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t tiles = tile_offsets.numel() - 1;
  const int64_t capacity = kernels::tiled_csl_word_rows(values.numel(), tiles);
  check_nnz_fits(op, capacity);
  const at::Tensor vals = values.contiguous(), locs = locations.contiguous(), offs = tile_offsets.contiguous();
  at::Tensor words = at::zeros({capacity, 2}, values.options());  // zeros: the rows past the last run are read too
  at::Tensor word_offsets = at::empty({tiles + 1}, values.options().dtype(at::kInt));
  at::Tensor scratch = at::empty({tiles + 1}, values.options().dtype(at::kLong));
  const kernels::TiledCSLWordsParams p{static_cast<const uint16_t*>(vals.data_ptr()), locs.data_ptr<int16_t>(),
                                       offs.data_ptr<int32_t>(), tiles, tile_m, scratch.data_ptr<int64_t>(),
                                       static_cast<uint32_t*>(words.data_ptr()), word_offsets.data_ptr<int32_t>()};
  check_cuda(op, kernels::tiled_csl_to_words(p, at::cuda::getCurrentCUDAStream()));
  return {words, word_offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) {
  m.impl("tiled_csl_compress", &tiled_csl_compress_cuda);
  m.impl("tiled_csl_mm", &tiled_csl_mm_cuda);
  m.impl("_tiled_csl_words", &tiled_csl_words_cuda);
}

}  // namespace spmm::ops
