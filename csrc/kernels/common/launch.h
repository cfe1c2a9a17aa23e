// Host-side launch helpers shared by the hand-written kernels (compiled by nvcc in the kernels' .cu files).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace spmm::kernels {

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

// Decode kernels take at most `max_tokens` rows of x per launch: runs launch(slice) on consecutive slices of the
// params (x, y, n; 16-bit elements), each streaming the weight again -- correct for any N, fast for the few tokens
// the kernels are made for (prefill has its own GEMMs).
template <typename Params, typename Launch>
cudaError_t for_each_token_slice(const Params& p, int64_t max_tokens, Launch&& launch) {
  constexpr int64_t kElem = 2;
  for (int64_t n0 = 0; n0 < p.n; n0 += max_tokens) {
    Params slice = p;
    slice.n = std::min<int64_t>(max_tokens, p.n - n0);
    slice.x = static_cast<const char*>(p.x) + n0 * p.x_ld * kElem;
    slice.y = static_cast<char*>(p.y) + n0 * p.y_ld * kElem;
    const cudaError_t err = launch(slice);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// ------------------------------------------------------------------------------ cluster split-K launches ------
// Grid (splits, rows) where the `splits` blocks of a row form one thread-block cluster (when splits > 1). `attr`
// must outlive the launch call.
inline cudaLaunchConfig_t cluster_split_config(int splits, int64_t rows, int threads, size_t smem,
                                               cudaLaunchAttribute* attr, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(splits), static_cast<unsigned>(rows));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = static_cast<unsigned>(splits);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = splits > 1 ? 1 : 0;
  return config;
}

}  // namespace spmm::kernels
