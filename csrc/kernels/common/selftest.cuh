// Helpers shared by the torch-free kernel self-tests (programs run on the GPU machine, built with
// -DSPMM_BUILD_SELFTESTS=ON): error checks, fp16/bf16 bits, device copies, and timing with the L2 flushed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/common/dtype.h"

namespace spmm::selftest {

using kernels::DType;

#define CHECK(call)                                                                               \
  do {                                                                                            \
    const cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(2);                                                                               \
    }                                                                                             \
  } while (0)

inline uint16_t to_bits(float v, DType t) {
  uint16_t bits;
  if (t == DType::kFloat16) {
    const __half h = __float2half_rn(v);
    std::memcpy(&bits, &h, 2);
  } else {
    const __nv_bfloat16 b = __float2bfloat16_rn(v);
    std::memcpy(&bits, &b, 2);
  }
  return bits;
}

inline float from_bits(uint16_t bits, DType t) {
  if (t == DType::kFloat16) {
    __half h;
    std::memcpy(&h, &bits, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, &bits, 2);
  return __bfloat162float(b);
}

template <typename T>
T* device_copy(const std::vector<T>& host) {
  T* d = nullptr;
  CHECK(cudaMalloc(&d, std::max<size_t>(host.size(), 1) * sizeof(T)));
  CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

static __global__ void read_all(const float4* p, size_t n, float* sink) {  // evicts L2 without leaving dirty lines
  float acc = 0.f;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) acc += p[i].x;
  if (acc == 12345.f) *sink = acc;
}

// The flush buffer and its sink: reading 256 MB evicts the 50 MB L2 before each timed rep.
struct Flush {
  float4* buffer = nullptr;
  float* sink = nullptr;
  size_t n = (size_t{256} << 20) / sizeof(float4);
  Flush() {
    CHECK(cudaMalloc(&buffer, n * sizeof(float4)));
    CHECK(cudaMemset(buffer, 0, n * sizeof(float4)));
    CHECK(cudaMalloc(&sink, sizeof(float)));
  }
};

// Median µs of `launch` over `reps` (0 if reps is 0), CUDA events around it, L2 flushed before each rep.
template <typename Launch>
float median_us(Launch&& launch, const Flush& flush, int reps) {
  std::vector<float> times;
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < reps; ++i) {
    read_all<<<1024, 256>>>(flush.buffer, flush.n, flush.sink);
    CHECK(cudaEventRecord(start));
    launch();
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1000.f);
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  if (times.empty()) return 0.f;
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

static __global__ void read_floor(const uint4* p, size_t n, uint32_t* sink) {  // reads n vectors once: the copy floor
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) acc ^= p[i].x;
  if (acc == 0x12345u) *sink = acc;
}

// Median µs to read `bytes` from memory once (L2 flushed before each rep): what any kernel of that size costs.
inline float time_read(size_t bytes, const Flush& flush, int reps) {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  uint4* buf = nullptr;
  CHECK(cudaMalloc(&buf, bytes));
  CHECK(cudaMemset(buf, 0, bytes));
  const float us = median_us(
      [&] { read_floor<<<sms * 4, 512>>>(buf, bytes / 16, reinterpret_cast<uint32_t*>(flush.sink)); }, flush, reps);
  CHECK(cudaFree(buf));
  return us;
}

// Whether y ([N][M] output bits) equals the expected bits everywhere; prints the first difference if not.
inline bool exact(const std::vector<uint16_t>& y, const std::vector<uint16_t>& expected, int64_t m, DType t,
                  const char* what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < y.size(); ++i)
    if (y[i] != expected[i] && bad++ == 0) first = i;
  if (bad)
    std::printf("  MISMATCH (%s): %zu of %zu, first at n=%zu m=%zu: got %g, want %g\n", what, bad, y.size(),
                first / static_cast<size_t>(m), first % static_cast<size_t>(m), from_bits(y[first], t),
                from_bits(expected[first], t));
  return bad == 0;
}

}  // namespace spmm::selftest
