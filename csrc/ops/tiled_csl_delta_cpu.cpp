// spmm::_tiled_csl_delta_mm on CPU: the delta kernel the call names (or the rule picks for N) emulated lane by lane
// with the kernels' own __host__ __device__ index math and clamps (kernels/tiled_csl/tiled_csl_delta_layout.h):
//   - CUDA cores: emulate_delta_mm, in the kernel's fp32 fma order and split-K order (the GPU kernel must agree with
//     it bit for bit);
//   - tensor cores: emulate_delta_tiles places every entry where the kernel's windows store it, and the product of
//     that matrix is taken in fp64 (the mma's own order is the hardware's).
// So the CPU tests check the layout and the kernels' decode at once. A reference for tests, not a fast path.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "kernels/tiled_csl/tiled_csl_delta_layout.h"
#include "ops/tiled_csl_delta_common.h"

namespace spmm::ops {
namespace {

at::Tensor tiled_csl_delta_mm_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& codes,
                                  const at::Tensor& offsets, int64_t out_features,
                                  const std::optional<at::Tensor>& bias, c10::string_view kernel,
                                  int64_t tokens_per_pass) {
  constexpr const char* op = "spmm::_tiled_csl_delta_mm";
  check_activation(op, x);
  TORCH_CHECK_VALUE(out_features >= 0, op, ": `out_features` must be >= 0, got ", out_features);
  check_delta_layout(op, x, values, codes, offsets, out_features);
  check_bias(op, bias, x, out_features);
  check_tokens_per_pass(op, tokens_per_pass);  // the emulation's result does not depend on it
  const int64_t m = out_features, k = x.size(-1), n = leading_rows(x), chunks = codes.numel();
  const int32_t* offs = offsets.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(offs[0] == 0 && offs[offsets.numel() - 1] == chunks, op, ": `offsets` must start at 0 and end at ",
                    "the chunk count ", chunks, ", got ", offs[0], " and ", offs[offsets.numel() - 1]);
  for (int64_t i = 0; i + 1 < offsets.numel(); ++i)
    TORCH_CHECK_VALUE(offs[i] <= offs[i + 1], op, ": `offsets` must not decrease (entry ", i, ")");

  const int64_t width = kernels::tiled_csl_delta_slice_width(m, k);
  if (delta_tensor_cores(op, kernel, n)) {
    at::Tensor dense = at::zeros({m, k}, x.options().dtype(at::kDouble));
    double* d = dense.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "tiled_csl_delta_tiles_cpu", [&] {
      const scalar_t* vals = values.data_ptr<scalar_t>();
      kernels::delta::emulate_delta_tiles(reinterpret_cast<const uint32_t*>(codes.data_ptr<int32_t>()), offs, chunks, m,
                                          k, width, [&](int64_t r, int64_t c, int64_t e) {
                                            // past K only the padding lands (x is zero there in the kernel)
                                            if (c < k) d[r * k + c] = static_cast<double>(vals[e]);
                                          });
    });
    return finish_linear(at::matmul(activation_matrix(x, n, k), dense.t()), bias, x);
  }
  const at::Tensor xf = x.reshape({n, k}).to(at::kFloat).contiguous();
  const at::Tensor bf = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor y = at::empty({n, m}, x.options().dtype(at::kFloat));
  if (n > 0 && m > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "tiled_csl_delta_mm_cpu", [&] {
      const scalar_t* vals = values.data_ptr<scalar_t>();
      kernels::delta::emulate_delta_mm(reinterpret_cast<const uint32_t*>(codes.data_ptr<int32_t>()), offs, chunks, m,
                                       k, n, width, xf.data_ptr<float>(),
                                       bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                                       [&](int64_t i) { return static_cast<float>(vals[i]); });
    });
  } else if (bias.has_value()) {
    y.copy_(bf.unsqueeze(0).expand({n, m}));
  } else {
    y.zero_();
  }
  return with_leading_dims_of(y.to(x.scalar_type()), x);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CPU, m) { m.impl("_tiled_csl_delta_mm", &tiled_csl_delta_mm_cpu); }

}  // namespace spmm::ops
