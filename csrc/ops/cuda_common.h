// Helpers for the CUDA entries: torch dtype -> kernel dtype, launcher status -> exception.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <optional>
#include <utility>

#include "kernels/common/dtype.h"
#include "ops/checks.h"

namespace spmm::ops {

inline kernels::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::DType::kFloat32;
    case at::kHalf: return kernels::DType::kFloat16;
    case at::kBFloat16: return kernels::DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "spmm: no CUDA kernel for dtype ", t);
  }
}

// x as [N, K] rows a tensor-core kernel can stream: unit inner stride, 16-byte aligned rows, K a multiple of 8.
inline at::Tensor kernel_ready_activation(const at::Tensor& x, int64_t n, int64_t k) {
  at::Tensor x2 = x.reshape({n, k});
  if (k % 8 != 0) return at::constant_pad_nd(x2, {0, 8 - k % 8});  // zero columns: the weight is zero there too
  const bool aligned = x2.stride(1) == 1 && x2.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(x2.data_ptr()) % 16 == 0;
  return aligned ? x2 : x2.clone(at::MemoryFormat::Contiguous);  // clone: a fresh, allocator-aligned copy
}

// What a matmul launch hands its kernel besides the weight, held together until the launch: x as the kernel reads
// it (rows of x.stride(0)), the bias made contiguous (undefined: none) and a fresh y [n, m]. set() fills the fields
// of these names that every kernel's params struct has; m and k stay the caller's (a kernel may pad them).
struct MatmulOperands {
  at::Tensor x, bias, y;
  MatmulOperands(at::Tensor kernel_x, const std::optional<at::Tensor>& b, int64_t n, int64_t m)
      : x(std::move(kernel_x)), bias(b.has_value() ? b->contiguous() : at::Tensor()),
        y(at::empty({n, m}, x.options())) {}
  template <typename Params>
  void set(Params& p) const {
    p.x = x.data_ptr();
    p.x_ld = x.stride(0);
    p.bias = bias.defined() ? bias.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.y_ld = y.size(1);
    p.n = y.size(0);
    p.dtype = kernel_dtype(y.scalar_type());
  }
  // y shaped like the caller's x's leading dims: [..., M].
  at::Tensor result(const at::Tensor& caller_x) const { return with_leading_dims_of(y, caller_x); }
};

// A weight to compress and its optional keep mask as the compress kernels read them (dense, dense_ld, mask,
// mask_ld: the same names in each params struct): rows with a unit inner stride (anything else -- transposed views --
// made row-major), the mask as bytes or null.
struct CompressInput {
  at::Tensor dense, mask;  // mask undefined: none
  CompressInput(const at::Tensor& d, const std::optional<at::Tensor>& m)
      : dense(d.stride(1) == 1 ? d : d.contiguous()),
        mask(!m.has_value() ? at::Tensor() : m->stride(1) == 1 ? *m : m->contiguous()) {}
  template <typename Params>
  void set(Params& p) const {
    p.dense = dense.data_ptr();
    p.dense_ld = dense.stride(0);
    p.mask = mask.defined() ? reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()) : nullptr;
    p.mask_ld = mask.defined() ? mask.stride(0) : 0;
  }
};

// A packed operand the kernels stream in 16-byte granules: itself if it starts 16-byte aligned, else a fresh
// (allocator-aligned) copy.
inline at::Tensor aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

// y for an empty product: the bias (or zeros), as a fresh tensor shaped like x's leading dims.
inline at::Tensor empty_product(const at::Tensor& x, int64_t n, int64_t m, const std::optional<at::Tensor>& bias) {
  // clone: a fresh tensor even where the expanded bias is already contiguous (the output must not alias it)
  at::Tensor y = bias.has_value() ? bias->unsqueeze(0).expand({n, m}).clone(at::MemoryFormat::Contiguous)
                                  : at::zeros({n, m}, x.options());
  return with_leading_dims_of(y, x);
}

// A word-based kernel layout's two tensors: `data` [rows, 2] of x's dtype (so a dtype mismatch with x is caught; the
// kernel reads 32-bit words) and `offsets` int32 [tiles + 1], both contiguous and on x's device.
inline void check_kernel_layout(const char* op, const at::Tensor& x, const char* data_name, const at::Tensor& data,
                                const char* offsets_name, const at::Tensor& offsets) {
  check_dim(op, data_name, data, 2);
  check_dim(op, offsets_name, offsets, 1);
  check_dtype(op, data_name, data, x.scalar_type());
  check_dtype(op, offsets_name, offsets, at::kInt);
  for (auto [name, t] : {std::pair{data_name, &data}, {offsets_name, &offsets}}) {
    check_contiguous(op, name, *t);
    check_same_device(op, name, *t, x);
  }
}

inline void check_half_dtype(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op, ": `", arg,
                   "` must be float16 or bfloat16 for the CUDA 2:4 kernels, got ", t.scalar_type());
}

// x and a prefill GEMM's packed weight: a (values, x's dtype, a_dim dims) and e (metadata of e_dtype, 1-D), all
// contiguous on x's device; a_name, e_name: what the calling op calls them.
inline void check_gemm_operands(const char* op, const at::Tensor& x, const at::Tensor& a, int64_t a_dim,
                                const at::Tensor& e, at::ScalarType e_dtype, const char* a_name = "a",
                                const char* e_name = "e") {
  check_activation(op, x);
  check_half_dtype(op, "x", x);
  check_dtype(op, a_name, a, x.scalar_type());
  check_dtype(op, e_name, e, e_dtype);
  check_dim(op, a_name, a, a_dim);
  check_dim(op, e_name, e, 1);
  for (auto [name, t] : {std::pair{a_name, &a}, {e_name, &e}}) {
    check_contiguous(op, name, *t);
    check_same_device(op, name, *t, x);
  }
}

// Scratch memory a launch asks for, on x's device: nothing is allocated when it asks for none (a null pointer).
struct KernelWorkspace {
  at::Tensor bytes;
  KernelWorkspace(const at::Tensor& x, size_t size) {
    if (size > 0) bytes = at::empty({static_cast<int64_t>(size)}, x.options().dtype(at::kByte));
  }
  void* data() const { return bytes.defined() ? bytes.data_ptr() : nullptr; }
};

inline void check_cuda(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

// check_cuda for a kernel built for some devices only: cudaErrorNoKernelImageForDevice is a NotImplementedError
// saying what it needs (`needs`, e.g. "the Hopper 2:4 GEMM runs on compute capability 9.0 GPUs only").
inline void check_cuda_on_device(const char* op, cudaError_t status, const char* needs) {
  TORCH_CHECK_NOT_IMPLEMENTED(status != cudaErrorNoKernelImageForDevice, op, ": ", needs);
  check_cuda(op, status);
}

}  // namespace spmm::ops
