// Device self-test of the 2:4 decode kernel, torch-free (builds in seconds with nvcc alone, for a quick device
// run): for each problem, a random 2:4 weight in the canonical layout (small integers, so every result is exact),
// packed into the decode layout by sparse24_decode_pack, and y = x W^T + bias computed by the kernel with each of
// its loaders (sm_90 bulk copies, cp.async), each compared bit for bit with a host reference; then each timed
// (CUDA events, L2 flushed by reading a large buffer before each rep, median). Exit status 1 on any mismatch.
// SPMM_SELFTEST_EARLY_LAUNCH=1 runs every launch with early_launch (programmatic dependent launch, sm_90), and
// each checked call right after a kernel that writes x late: a kernel that read x before waiting would be wrong.
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc \
//        csrc/kernels/sparse24/sparse24_decode_selftest.cu csrc/kernels/sparse24/sparse24_decode_kernel.cu -o t && ./t
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/sparse24/sparse24_layout.h"

namespace {

using namespace spmm::selftest;  // CHECK, to_bits, from_bits, device_copy, median_us, time_read, Flush

struct Problem {
  int64_t m, k, n;
  DType dtype;
  bool timed;
};

struct Weight {  // the canonical layout, and the kept (column, value) pairs of each row for the reference
  std::vector<uint16_t> values;
  std::vector<uint8_t> meta;
  std::vector<int32_t> cols;  // [m][k / 2]
  std::vector<float> vals;    // [m][k / 2]
};

Weight random_weight(int64_t m, int64_t k, DType t, std::mt19937& rng) {
  Weight w;
  w.values.assign(m * k / 2, 0);
  w.meta.assign(m * spmm::sparse24::meta_bytes_per_row(k), 0);
  w.cols.assign(m * k / 2, 0);
  w.vals.assign(m * k / 2, 0.f);
  std::uniform_int_distribution<int> pos(0, 3), val(-2, 2);
  const int64_t groups = k / 4, meta_row = spmm::sparse24::meta_bytes_per_row(k);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      int a = pos(rng), b = pos(rng);
      while (b == a) b = pos(rng);
      const int idx0 = std::min(a, b), idx1 = std::max(a, b);
      const float v0 = static_cast<float>(val(rng)), v1 = static_cast<float>(val(rng));
      w.values[r * (k / 2) + 2 * g] = to_bits(v0, t);
      w.values[r * (k / 2) + 2 * g + 1] = to_bits(v1, t);
      w.cols[r * (k / 2) + 2 * g] = static_cast<int32_t>(4 * g + idx0);
      w.cols[r * (k / 2) + 2 * g + 1] = static_cast<int32_t>(4 * g + idx1);
      w.vals[r * (k / 2) + 2 * g] = v0;
      w.vals[r * (k / 2) + 2 * g + 1] = v1;
      w.meta[r * meta_row + g / 2] |= spmm::sparse24::encode_group(idx0, idx1) << (4 * (g % 2));
    }
  return w;
}

bool early_launch() {
  const char* v = std::getenv("SPMM_SELFTEST_EARLY_LAUNCH");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// The kernel before an early-launched one: it writes x only after ~20 µs, so the decode kernel's early part
// overlaps it and any read of x before griddepcontrol.wait would see the 0xFF poison.
__global__ void late_copy(const uint16_t* src, uint16_t* dst, size_t n) {
  const long long start = clock64();
  while (clock64() - start < 40000) {
  }
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    dst[i] = src[i];
}

// Runs the kernel with one loader; returns the median µs over `reps` (0: just once, untimed) and fills y.
float run(const Problem& pr, spmm::kernels::DecodeLoader loader, const void* wv, const void* wm, const void* x,
          const void* bias, void* y, const Flush& flush, int reps, int splits = 0) {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  spmm::kernels::Sparse24DecodeParams p{};
  p.x = x;
  p.x_ld = pr.k;
  p.dvalues = wv;
  p.dmeta = wm;
  p.bias = bias;
  p.y = y;
  p.y_ld = pr.m;
  p.m = pr.m;
  p.n = pr.n;
  p.k = pr.k;
  p.splits = splits > 0 ? splits : spmm::kernels::sparse24_decode_splits(pr.m, pr.n, pr.k, sms);
  p.dtype = pr.dtype;
  p.loader = loader;
  void* ws = nullptr;
  const size_t ws_bytes = spmm::kernels::sparse24_decode_workspace_bytes(pr.m, pr.n, pr.k, p.splits, loader);
  if (ws_bytes) CHECK(cudaMalloc(&ws, ws_bytes));
  p.workspace = ws;
  p.early_launch = early_launch();
  if (p.early_launch) {  // x poisoned, then rewritten late by the kernel just before
    const size_t elems = static_cast<size_t>(pr.n * pr.k);
    uint16_t* pristine = nullptr;
    CHECK(cudaMalloc(&pristine, std::max<size_t>(elems, 1) * 2));
    CHECK(cudaMemcpy(pristine, x, elems * 2, cudaMemcpyDeviceToDevice));
    CHECK(cudaMemset(const_cast<void*>(x), 0xFF, elems * 2));
    late_copy<<<64, 256>>>(pristine, static_cast<uint16_t*>(const_cast<void*>(x)), elems);
    CHECK(spmm::kernels::sparse24_decode_mm(p, 0));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaFree(pristine));
  } else {
    CHECK(spmm::kernels::sparse24_decode_mm(p, 0));
  }
  CHECK(cudaDeviceSynchronize());
  const float us = median_us([&] { CHECK(spmm::kernels::sparse24_decode_mm(p, 0)); }, flush, reps);
  if (ws) CHECK(cudaFree(ws));
  return us;
}

}  // namespace

// SPMM_SELFTEST_LOADERS=cp.async (say) runs only the loaders named (on an sm_80 GPU: the bulk loader needs sm_90).
bool wanted(const char* loader) {
  const char* only = std::getenv("SPMM_SELFTEST_LOADERS");
  return only == nullptr || std::strstr(only, loader) != nullptr;
}

const char* verdict(const char* loader, bool ok) { return !wanted(loader) ? "-" : ok ? "exact" : "WRONG"; }

int main() {
  const Problem problems[] = {
      {64, 256, 8, DType::kFloat16, false},      {300, 1024, 7, DType::kFloat16, false},
      {300, 1024, 7, DType::kBFloat16, false},   {1000, 512, 64, DType::kBFloat16, false},
      {4096, 11008, 33, DType::kBFloat16, false}, {257, 640, 100, DType::kFloat16, false},
      {136, 72, 3, DType::kFloat16, false},      {4096, 4096, 1, DType::kFloat16, true},
      {4096, 4096, 8, DType::kFloat16, true},    {4096, 4096, 16, DType::kFloat16, true},
      {4096, 4096, 32, DType::kFloat16, true},   {4096, 4096, 64, DType::kFloat16, true},
      {12288, 4096, 16, DType::kFloat16, true},  {22016, 4096, 1, DType::kFloat16, true},
      {22016, 4096, 16, DType::kFloat16, true},  {22016, 4096, 64, DType::kFloat16, true},
      {4096, 11008, 8, DType::kFloat16, true},   {8192, 28672, 1, DType::kFloat16, true},
      {8192, 28672, 16, DType::kBFloat16, true},
  };
  const Flush flush;
  std::mt19937 rng(1234);
  bool all_ok = true;
  std::printf("%6s %6s %4s %5s | %-8s %-8s | %10s %10s  (median us, L2 flushed)\n", "M", "K", "N", "dtype", "bulk",
              "cp.async", "bulk", "cp.async");
  const char* only = std::getenv("SPMM_SELFTEST_ONLY");  // e.g. "4096x4096x1": just that problem
  for (const Problem& pr : problems) {
    char name[64];
    std::snprintf(name, sizeof(name), "%lldx%lldx%lld", static_cast<long long>(pr.m), static_cast<long long>(pr.k),
                  static_cast<long long>(pr.n));
    if (only && std::strcmp(only, name) != 0) continue;
    const Weight w = random_weight(pr.m, pr.k, pr.dtype, rng);
    std::uniform_int_distribution<int> xd(-2, 2);
    std::vector<uint16_t> x(pr.n * pr.k), bias(pr.m);
    std::vector<float> xf(pr.n * pr.k), bf(pr.m);
    for (size_t i = 0; i < x.size(); ++i) x[i] = to_bits(xf[i] = static_cast<float>(xd(rng)), pr.dtype);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = to_bits(bf[i] = static_cast<float>(xd(rng)), pr.dtype);
    // host reference: exact integers, rounded once to the output dtype
    std::vector<uint16_t> expected(pr.n * pr.m);
    for (int64_t n = 0; n < pr.n; ++n)
      for (int64_t r = 0; r < pr.m; ++r) {
        double acc = bf[r];
        for (int64_t e = r * (pr.k / 2); e < (r + 1) * (pr.k / 2); ++e)
          acc += static_cast<double>(xf[n * pr.k + w.cols[e]]) * w.vals[e];
        expected[n * pr.m + r] = to_bits(static_cast<float>(acc), pr.dtype);
      }
    uint16_t* dvalues_canon = device_copy(w.values);
    uint8_t* dmeta_canon = device_copy(w.meta);
    uint16_t* dx = device_copy(x);
    uint16_t* dbias = device_copy(bias);
    const auto shape = spmm::kernels::sparse24_decode_shape(pr.m, pr.k);
    void *dvalues = nullptr, *dmeta = nullptr, *dy = nullptr;
    CHECK(cudaMalloc(&dvalues, shape.values_bytes()));
    CHECK(cudaMalloc(&dmeta, shape.meta_bytes()));
    CHECK(cudaMalloc(&dy, pr.n * pr.m * 2));
    spmm::kernels::Sparse24DecodePackParams pk{dvalues_canon, dmeta_canon, dvalues, dmeta, pr.m, pr.k, 0};
    CHECK(spmm::kernels::sparse24_decode_pack(pk, 0));
    const int reps = pr.timed ? 30 : 0;
    constexpr int kLoaders = 2;
    const char* names[kLoaders] = {"bulk", "cp.async"};
    float us[kLoaders];
    bool ok[kLoaders];
    const spmm::kernels::DecodeLoader loaders[kLoaders] = {spmm::kernels::DecodeLoader::kBulk,
                                                           spmm::kernels::DecodeLoader::kCpAsync};
    for (int l = 0; l < kLoaders; ++l) {
      us[l] = 0.f;
      ok[l] = true;
      if (!wanted(names[l])) continue;
      CHECK(cudaMemset(dy, 0xFF, pr.n * pr.m * 2));
      us[l] = run(pr, loaders[l], dvalues, dmeta, dx, dbias, dy, flush, reps);
      std::vector<uint16_t> y(pr.n * pr.m);
      CHECK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
      ok[l] = exact(y, expected, pr.m, pr.dtype, names[l]);
      all_ok = all_ok && ok[l];
    }
    const double bytes = 1.125 * pr.m * pr.k;
    std::printf("%6lld %6lld %4lld %5s | %-8s %-8s", static_cast<long long>(pr.m), static_cast<long long>(pr.k),
                static_cast<long long>(pr.n), pr.dtype == DType::kFloat16 ? "fp16" : "bf16",
                verdict(names[0], ok[0]), verdict(names[1], ok[1]));
    if (pr.timed) {
      const float floor = time_read(static_cast<size_t>(shape.values_bytes() + shape.meta_bytes()), flush, reps);
      std::printf(" | %7.1f us %7.1f us  (bulk %4.0f GB/s)  read floor %5.1f us", us[0], us[1], bytes / us[0] / 1e3,
                  floor);
    }
    std::printf("\n");
    if (pr.timed && std::getenv("SPMM_SELFTEST_SWEEP")) {  // time every split-K factor (bulk loader)
      int sms = 0;
      CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
      std::printf("      splits (heuristic %d):", spmm::kernels::sparse24_decode_splits(pr.m, pr.n, pr.k, sms));
      for (int sp : {1, 2, 3, 4, 6, 8, 12, 16, 24, 32})
        if (sp <= shape.chunks)
          std::printf(" %d:%.1f", sp, run(pr, loaders[0], dvalues, dmeta, dx, dbias, dy, flush, 15, sp));
      std::printf("\n");
    }
    for (void* ptr : {static_cast<void*>(dvalues_canon), static_cast<void*>(dmeta_canon), static_cast<void*>(dx),
                      static_cast<void*>(dbias), dvalues, dmeta, dy})
      CHECK(cudaFree(ptr));
  }
  std::printf(all_ok ? "sparse24 decode selftest: all exact\n" : "sparse24 decode selftest: FAILED\n");
  return all_ok ? 0 : 1;
}
