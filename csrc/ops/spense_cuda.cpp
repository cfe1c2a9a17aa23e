// spmm::spense_mm on CUDA. At decode token counts (where the whole weight would take the 2:4 decode kernel:
// spense_runs_decode_kernel) one launch of the Spense decode kernel streams the dense and the 2:4 row tiles as they
// are saved and writes each output row at row_index. Above, it is composed from kernels that are each tested on their
// own: the 2:4 rows through the one 2:4 dispatch (sparse24_mm_dispatch: Hopper or Ampere GEMM, on the 2:4 block's
// kernel layouts), the dense rows through cuBLAS (at::addmm), each result written into its own columns of y through
// row_index (index_copy_: one pass over y in all). The bias is gathered into block order once (M elements), so each
// GEMM adds its part in its epilogue.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/checked_contents.h"
#include "ops/cuda_common.h"
#include "ops/sparse24_cuda_entries.h"
#include "ops/spense_common.h"
#include "ops/spense_cuda_entries.h"

namespace spmm::ops {
namespace {

// row_index must be a permutation: an index outside [0, M) would make index_copy_ fault on the device. Reading it
// back costs a synchronization, so each row_index (a weight's, unchanged between calls) is read once.
void check_row_index_cuda(const char* op, const at::Tensor& row_index) {
  static auto* checked = new CheckedContents();  // never destroyed: no teardown-order questions at exit
  if (checked->contains(row_index)) return;
  TORCH_CHECK_VALUE(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None, op,
                    ": `row_index` must be checked (a permutation of the output rows) by reading it back to the host, "
                    "which a CUDA graph capture forbids; make one call with this row_index before capturing");
  check_row_index_permutation(op, row_index.cpu());
  checked->add(row_index);
}

// The one rule of the decode path: the Spense decode kernel takes the token counts at which the 2:4 dispatch, given
// no layouts, would run a weight of the layer's whole shape [m, k] through the 2:4 decode kernel (it streams the
// weight the same way; the dense rows only make the stream longer).
bool spense_runs_decode_kernel(const char* op, const at::Tensor& x, int64_t m, int64_t k) {
#if SPMM_HAS_SPENSE_DECODE
  const std::optional<at::Tensor> none;
  return sparse24_cuda_kernel(op, x, m, k, Sparse24Layouts{none, none, none, none, none}) ==
         kernels::Sparse24Kernel::kDecode;
#else
  return false;
#endif
}

at::Tensor spense_mm_cuda(const at::Tensor& x, const at::Tensor& dense_weight, const at::Tensor& values,
                          const at::Tensor& meta, const at::Tensor& row_index, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& dvalues, const std::optional<at::Tensor>& dmeta,
                          const std::optional<at::Tensor>& sm90_e, const std::optional<at::Tensor>& sm80_a,
                          const std::optional<at::Tensor>& sm80_e) {
  constexpr const char* op = "spmm::spense_mm";
  check_spense_args(op, x, dense_weight, values, meta, row_index, bias);
  check_half_dtype(op, "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_row_index_cuda(op, row_index);
  const Sparse24Layouts layouts{dvalues, dmeta, sm90_e, sm80_a, sm80_e};
  const int64_t k = x.size(-1), n = leading_rows(x), md = dense_weight.size(0), ms = values.size(0), m = md + ms;
  if (n == 0 || m == 0 || k == 0) return empty_product(x, n, m, bias);
  if (spense_runs_decode_kernel(op, x, m, k)) {
    if (ms > 0 && layouts.any()) sparse24_cuda_kernel(op, x, ms, k, layouts);  // bad layouts fail on every path
    // no dense rows: the kernel's plain 2:4 case (as its tests run it), not a dense block of zero rows
    const std::optional<at::Tensor> dense = md > 0 ? std::optional<at::Tensor>(dense_weight) : std::nullopt;
    return spense_decode_run(op, x, dense, values, meta, row_index, bias);
  }

  const at::Tensor index = row_index.to(at::kLong);  // index_copy_ takes int64 indices
  const at::Tensor block_bias = bias.has_value() ? bias->index_select(0, index) : at::Tensor();
  at::Tensor y = at::empty({n, m}, x.options());
  if (md > 0) {
    const at::Tensor x2 = x.reshape({n, k}), wt = dense_weight.t();
    const at::Tensor yd = bias.has_value() ? at::addmm(block_bias.narrow(0, 0, md), x2, wt) : at::mm(x2, wt);
    y.index_copy_(1, index.narrow(0, 0, md), yd);
  }
  if (ms > 0) {
    const std::optional<at::Tensor> sparse_bias =
        bias.has_value() ? std::optional<at::Tensor>(block_bias.narrow(0, md, ms)) : std::nullopt;
    const at::Tensor ys = sparse24_mm_dispatch(op, x, values, meta, sparse_bias, layouts);
    y.index_copy_(1, index.narrow(0, md, ms), ys.reshape({n, ms}));
  }
  return with_leading_dims_of(y, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CUDA, m) { m.impl("spense_mm", &spense_mm_cuda); }

}  // namespace spmm::ops
