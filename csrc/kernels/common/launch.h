// Host-side launch helpers shared by the hand-written kernels (compiled by nvcc in the kernels' .cu files).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace spmm::kernels {

// 16-byte alignment, what the kernels' vector and bulk loads need of every operand they are given.
inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Over 48 KB of dynamic shared memory must be opted into, once per kernel and device.
template <auto kKernel>
cudaError_t allow_dynamic_smem(size_t bytes) {
  static std::atomic<uint64_t> done_devices{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_relaxed) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) done_devices.fetch_or(bit, std::memory_order_relaxed);
  return err;
}

// The current device's compute capability major version (asked once per device); 0 if it cannot be read.
inline int current_device_major() {
  static std::atomic<int> majors[64] = {};
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (device >= 0 && device < 64 && (major = majors[device].load(std::memory_order_relaxed)) > 0) return major;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return 0;
  if (device >= 0 && device < 64) majors[device].store(major, std::memory_order_relaxed);
  return major;
}

}  // namespace spmm::kernels
