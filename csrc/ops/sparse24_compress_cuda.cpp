// CUDA entry of the 2:4 compressor (spmm::sparse24_compress: dense + mask -> the canonical layout): checks, then
// the kernel launcher; the only place its at::Tensors are seen.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/sparse24/sparse24_compress.h"
#include "ops/cuda_common.h"
#include "ops/sparse24_common.h"

namespace spmm::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> sparse24_compress_cuda(const at::Tensor& dense, const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "spmm::sparse24_compress";
  check_sparse24_compress_args(op, dense, mask);
  const c10::cuda::CUDAGuard guard(dense.device());
  const int64_t m = dense.size(0), k = dense.size(1);
  const CompressInput in(dense, mask);
  at::Tensor values = at::empty({m, k / 2}, dense.options());
  at::Tensor meta = at::empty({m, sparse24::meta_bytes_per_row(k)}, dense.options().dtype(at::kByte));
  at::Tensor first_bad = at::empty({2}, dense.options().dtype(at::kLong));

  kernels::Sparse24CompressParams p{};
  in.set(p);
  p.values = values.data_ptr();
  p.meta = meta.data_ptr<uint8_t>();
  p.first_bad = reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>());
  p.m = m;
  p.k = k;
  p.dtype = kernel_dtype(dense.scalar_type());
  check_cuda(op, kernels::sparse24_compress(p, at::cuda::getCurrentCUDAStream()));

  // Compressing is offline work: reading the two flags back (one sync) buys an exact error instead of bad output.
  const at::Tensor bad = first_bad.cpu();
  report_compress_problems(op, mask.has_value(), k, static_cast<uint64_t>(bad[0].item<int64_t>()),
                           static_cast<uint64_t>(bad[1].item<int64_t>()));
  return {values, meta};
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("sparse24_compress", &sparse24_compress_cuda); }

}  // namespace spmm::ops
