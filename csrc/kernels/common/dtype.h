// Element types the kernels take, named without torch (kernels see no torch headers).
#pragma once

namespace spmm::kernels {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

}  // namespace spmm::kernels
