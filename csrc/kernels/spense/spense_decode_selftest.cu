// Device self-test of the Spense decode kernel, torch-free: for each problem a random Spense weight of small integers
// (dense rows + a canonical 2:4 block + a row_index permutation, or none), x and bias, so every result is exact; the
// kernel's y with each loader (TMA on sm_90, cp.async) and each metadata source (canonical bytes, or the 2:4 decode
// kernel's fragment-order copy) compared bit for bit with a host reference; then, for the timed problems (CUDA
// events, L2 flushed, median), the kernel beside the shipping 2:4 decode kernel on its own reordered copy of the same
// 2:4 rows, the same kernel with every row dense (a dense baseline that needs no cuBLAS), and a plain read of the
// bytes. Exit status 1 on any mismatch.
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc csrc/kernels/spense/spense_decode_selftest.cu \
//        csrc/kernels/spense/spense_decode_kernel.cu csrc/kernels/sparse24/sparse24_decode_kernel.cu -o t && ./t
// SPMM_SELFTEST_ONLY=MDxMSxKxN runs one problem; SPMM_SELFTEST_QUICK=1 skips the timed ones.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/sparse24/sparse24_decode.h"
#include "kernels/sparse24/sparse24_layout.h"
#include "kernels/spense/spense_decode.h"

namespace {

using namespace spmm::selftest;  // CHECK, to_bits, from_bits, device_copy, median_us, time_read, exact, Flush
using spmm::kernels::SpenseLoader;

struct Problem {
  int64_t md, ms, k, n;
  DType dtype;
  bool bias, permute, timed;
  int64_t x_pad = 0;  // x rows x_pad elements longer than K (strided x)
};

struct Host {  // the weight in its saved layouts, and a float copy of W in output-row order for the reference
  std::vector<uint16_t> dense, values, x, bias;
  std::vector<uint8_t> meta;
  std::vector<int32_t> row_index;
  std::vector<float> w;  // [m][k], output rows
  std::vector<float> xf, bf;
};

Host make(const Problem& pr, std::mt19937& rng) {
  Host h;
  const int64_t m = pr.md + pr.ms, k = pr.k, meta_row = spmm::sparse24::meta_bytes_per_row(k);
  std::uniform_int_distribution<int> val(-2, 2), pos(0, 3), xv(-3, 3);
  h.row_index.resize(m);
  std::iota(h.row_index.begin(), h.row_index.end(), 0);
  if (pr.permute) std::shuffle(h.row_index.begin(), h.row_index.end(), rng);
  h.w.assign(m * k, 0.f);
  h.dense.resize(pr.md * k);
  for (int64_t r = 0; r < pr.md; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const float v = static_cast<float>(val(rng));
      h.dense[r * k + c] = to_bits(v, pr.dtype);
      h.w[h.row_index[r] * k + c] = v;
    }
  h.values.assign(pr.ms * k / 2, 0);
  h.meta.assign(pr.ms * meta_row, 0);
  for (int64_t r = 0; r < pr.ms; ++r)
    for (int64_t g = 0; g < k / 4; ++g) {
      int a = pos(rng), b = pos(rng);
      while (b == a) b = pos(rng);
      const int idx0 = std::min(a, b), idx1 = std::max(a, b);
      const float v0 = static_cast<float>(val(rng)), v1 = static_cast<float>(val(rng));
      h.values[r * (k / 2) + 2 * g] = to_bits(v0, pr.dtype);
      h.values[r * (k / 2) + 2 * g + 1] = to_bits(v1, pr.dtype);
      h.meta[r * meta_row + g / 2] |= spmm::sparse24::encode_group(idx0, idx1) << (4 * (g % 2));
      h.w[h.row_index[pr.md + r] * k + 4 * g + idx0] = v0;
      h.w[h.row_index[pr.md + r] * k + 4 * g + idx1] = v1;
    }
  const int64_t x_ld = k + pr.x_pad;
  h.x.assign(pr.n * x_ld, to_bits(99.f, pr.dtype));  // (the padding must not be read)
  h.xf.assign(pr.n * k, 0.f);
  for (int64_t t = 0; t < pr.n; ++t)
    for (int64_t c = 0; c < k; ++c) h.x[t * x_ld + c] = to_bits(h.xf[t * k + c] = static_cast<float>(xv(rng)), pr.dtype);
  h.bf.assign(m, 0.f);
  h.bias.resize(m);
  for (int64_t r = 0; r < m; ++r) h.bias[r] = to_bits(h.bf[r] = static_cast<float>(val(rng)), pr.dtype);
  return h;
}

std::vector<uint16_t> reference(const Problem& pr, const Host& h) {
  const int64_t m = pr.md + pr.ms, k = pr.k;
  std::vector<uint16_t> y(pr.n * m);
  for (int64_t t = 0; t < pr.n; ++t)
    for (int64_t r = 0; r < m; ++r) {
      double acc = pr.bias ? h.bf[r] : 0.0;
      const float* w = &h.w[r * k];
      const float* x = &h.xf[t * k];
      for (int64_t c = 0; c < k; ++c) acc += static_cast<double>(w[c]) * x[c];
      y[t * m + r] = to_bits(static_cast<float>(acc), pr.dtype);
    }
  return y;
}

struct Device {
  void *dense = nullptr, *values = nullptr, *meta = nullptr, *x = nullptr, *bias = nullptr, *y = nullptr;
  void *fragments = nullptr, *dvalues = nullptr;  // the 2:4 decode kernel's layout of the 2:4 rows
  int32_t* row_index = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

int num_sms() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  return sms;
}

spmm::kernels::SpenseDecodeParams params(const Problem& pr, Device& d, SpenseLoader loader, bool fragments) {
  spmm::kernels::SpenseDecodeParams p{};
  p.x = d.x;
  p.x_ld = pr.k + pr.x_pad;
  p.dense = d.dense;
  p.dense_ld = pr.k;
  p.values = d.values;
  p.meta = d.meta;
  p.meta_fragments = fragments ? d.fragments : nullptr;
  p.row_index = pr.permute ? d.row_index : nullptr;
  p.bias = pr.bias ? d.bias : nullptr;
  p.y = d.y;
  p.y_ld = pr.md + pr.ms;
  p.md = pr.md;
  p.ms = pr.ms;
  p.n = pr.n;
  p.k = pr.k;
  p.splits = spmm::kernels::spense_decode_splits(pr.md, pr.ms, pr.n, pr.k, num_sms());
  p.dtype = pr.dtype;
  p.loader = loader;
  const size_t ws = spmm::kernels::spense_decode_workspace_bytes(pr.md, pr.ms, pr.n, pr.k, p.splits, loader);
  if (ws > d.workspace_bytes) {
    if (d.workspace) CHECK(cudaFree(d.workspace));
    CHECK(cudaMalloc(&d.workspace, ws));
    d.workspace_bytes = ws;
  }
  p.workspace = ws ? d.workspace : nullptr;
  return p;
}

const char* only() { return std::getenv("SPMM_SELFTEST_ONLY"); }
bool quick() { return std::getenv("SPMM_SELFTEST_QUICK") != nullptr; }

}  // namespace

int main() {
  const DType f16 = DType::kFloat16, b16 = DType::kBFloat16;
  // md, ms, k, n, dtype, bias, permute, timed[, x_pad]
  const Problem problems[] = {
      {0, 256, 256, 1, f16, true, false, false},       // plain 2:4
      {16, 240, 256, 1, f16, false, true, false},      // one dense row tile
      {32, 224, 1024, 7, b16, true, true, false},      // 12.5 %
      {64, 192, 1024, 16, f16, true, true, false},     // 25 %
      {128, 128, 640, 64, b16, false, true, false},    // 50 %
      {256, 0, 512, 3, f16, true, true, false},        // 100 %
      {20, 37, 200, 5, f16, true, true, false, 8},     // M, Md, K odd sizes (cp.async, byte-loaded metadata)
      {70, 1000, 4128, 33, b16, true, true, false},    // K % 128 != 0 (cp.async: metadata rows of 516 bytes)
      {1000, 3096, 4096, 100, f16, true, true, false},  // N > 64 (two launches)
      {0, 4096, 11008, 9, b16, false, false, false, 16},
      {4, 4092, 256, 17, f16, true, true, false},      // a dense group of 4 rows
      {0, 4096, 4096, 1, f16, false, false, true},     // the 2:4 decode kernel's shapes, vs that kernel
      {0, 4096, 4096, 8, f16, false, false, true},
      {0, 4096, 4096, 16, f16, false, false, true},
      {0, 22016, 4096, 1, f16, false, false, true},
      {0, 22016, 4096, 16, f16, false, false, true},
      {0, 4096, 11008, 8, f16, false, false, true},
      {0, 8192, 28672, 1, f16, false, false, true},
      {512, 3584, 4096, 1, f16, false, true, true},    // Spense 12.5 / 25 / 50 / 100 % dense
      {1024, 3072, 4096, 1, f16, false, true, true},
      {1024, 3072, 4096, 8, f16, false, true, true},
      {1024, 3072, 4096, 16, f16, false, true, true},
      {2048, 2048, 4096, 1, f16, false, true, true},
      {4096, 0, 4096, 1, f16, false, true, true},
      {4096, 0, 4096, 8, f16, false, true, true},
      {5504, 16512, 4096, 8, f16, false, true, true},  // 25 % of 22016 x 4096
      {22016, 0, 4096, 8, f16, false, true, true},
  };
  int major = 0;
  CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  const Flush flush;
  std::mt19937 rng(4321);
  bool all_ok = true;
  std::printf("%6s %6s %6s %4s %5s | %-6s %-6s %-6s %-6s | %8s %8s %8s %8s %8s %8s  (median us, L2 flushed)\n", "Md",
              "Ms", "K", "N", "dtype", "tma", "tma+fr", "cp", "cp+fr", "tma", "tma+fr", "cp", "dense", "decode",
              "floor");
  for (const Problem& pr : problems) {
    char name[96];
    std::snprintf(name, sizeof(name), "%lldx%lldx%lldx%lld", static_cast<long long>(pr.md),
                  static_cast<long long>(pr.ms), static_cast<long long>(pr.k), static_cast<long long>(pr.n));
    if (only() && std::strcmp(only(), name) != 0) continue;
    if (quick() && pr.timed) continue;
    const int64_t m = pr.md + pr.ms;
    const Host h = make(pr, rng);
    const std::vector<uint16_t> expected = reference(pr, h);
    Device d;
    d.dense = device_copy(h.dense);
    d.values = device_copy(h.values);
    d.meta = device_copy(h.meta);
    d.x = device_copy(h.x);
    d.bias = device_copy(h.bias);
    d.row_index = device_copy(h.row_index);
    CHECK(cudaMalloc(&d.y, std::max<int64_t>(pr.n * m, 1) * 2));
    const auto shape = spmm::kernels::sparse24_decode_shape(pr.ms, pr.k);
    if (pr.ms > 0) {
      CHECK(cudaMalloc(&d.dvalues, shape.values_bytes()));
      CHECK(cudaMalloc(&d.fragments, shape.meta_bytes()));
      spmm::kernels::Sparse24DecodePackParams pk{static_cast<const uint16_t*>(d.values),
                                                 static_cast<const uint8_t*>(d.meta), d.dvalues, d.fragments, pr.ms,
                                                 pr.k, 0};
      CHECK(spmm::kernels::sparse24_decode_pack(pk, 0));
    }
    struct Variant {
      const char* name;
      SpenseLoader loader;
      bool fragments;
    };
    const Variant variants[] = {{"tma", SpenseLoader::kTma, false}, {"tma+fr", SpenseLoader::kTma, true},
                                {"cp", SpenseLoader::kCpAsync, false}, {"cp+fr", SpenseLoader::kCpAsync, true}};
    const char* verdict[4];
    float us[4] = {};
    const int reps = pr.timed ? 30 : 0;
    for (int v = 0; v < 4; ++v) {
      const Variant& var = variants[v];
      spmm::kernels::SpenseDecodeParams p = params(pr, d, var.loader, var.fragments && pr.ms > 0);
      if ((var.fragments && pr.ms == 0) || (var.loader == SpenseLoader::kTma && !spmm::kernels::spense_decode_tma_possible(p))) {
        verdict[v] = "-";
        continue;
      }
      CHECK(cudaMemset(d.y, 0xFF, pr.n * m * 2));
      CHECK(spmm::kernels::spense_decode_mm(p, 0));
      CHECK(cudaDeviceSynchronize());
      std::vector<uint16_t> y(pr.n * m);
      CHECK(cudaMemcpy(y.data(), d.y, y.size() * 2, cudaMemcpyDeviceToHost));
      const bool ok = exact(y, expected, m, pr.dtype, var.name);
      all_ok = all_ok && ok;
      verdict[v] = ok ? "exact" : "WRONG";
      us[v] = median_us([&] { CHECK(spmm::kernels::spense_decode_mm(p, 0)); }, flush, reps);
    }
    std::printf("%6lld %6lld %6lld %4lld %5s | %-6s %-6s %-6s %-6s", static_cast<long long>(pr.md),
                static_cast<long long>(pr.ms), static_cast<long long>(pr.k), static_cast<long long>(pr.n),
                pr.dtype == f16 ? "fp16" : "bf16", verdict[0], verdict[1], verdict[2], verdict[3]);
    if (pr.timed) {
      // The same rows all dense (our kernel as the dense baseline), and the shipping decode kernel on the 2:4 rows.
      Problem all_dense = pr;
      all_dense.md = m;
      all_dense.ms = 0;
      void* wide = nullptr;
      CHECK(cudaMalloc(&wide, m * pr.k * 2));
      CHECK(cudaMemset(wide, 0, m * pr.k * 2));
      Device dd = d;
      dd.dense = wide;
      dd.workspace = nullptr;
      dd.workspace_bytes = 0;
      spmm::kernels::SpenseDecodeParams pd = params(all_dense, dd, SpenseLoader::kAuto, false);
      const float dense_us = median_us([&] { CHECK(spmm::kernels::spense_decode_mm(pd, 0)); }, flush, reps);
      if (dd.workspace) CHECK(cudaFree(dd.workspace));
      CHECK(cudaFree(wide));
      float decode_us = 0.f;
      if (pr.md == 0) {
        spmm::kernels::Sparse24DecodeParams q{};
        q.x = d.x;
        q.x_ld = pr.k + pr.x_pad;
        q.dvalues = d.dvalues;
        q.dmeta = d.fragments;
        q.y = d.y;
        q.y_ld = m;
        q.m = pr.ms;
        q.n = pr.n;
        q.k = pr.k;
        q.splits = spmm::kernels::sparse24_decode_splits(pr.ms, pr.n, pr.k, num_sms());
        q.dtype = pr.dtype;
        q.loader = spmm::kernels::DecodeLoader::kAuto;
        void* ws = nullptr;
        const size_t ws_bytes = spmm::kernels::sparse24_decode_workspace_bytes(pr.ms, pr.n, pr.k, q.splits);
        if (ws_bytes) CHECK(cudaMalloc(&ws, ws_bytes));
        q.workspace = ws;
        decode_us = median_us([&] { CHECK(spmm::kernels::sparse24_decode_mm(q, 0)); }, flush, reps);
        if (ws) CHECK(cudaFree(ws));
      }
      const size_t bytes = static_cast<size_t>(pr.md * pr.k * 2 + pr.ms * pr.k / 2 * 2 +
                                               pr.ms * spmm::sparse24::meta_bytes_per_row(pr.k));
      const float floor = time_read(bytes, flush, reps);
      std::printf(" | %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f  (%s %.0f GB/s)", us[0], us[1], us[2], dense_us, decode_us,
                  floor, major >= 9 ? "tma" : "cp", bytes / (major >= 9 ? us[0] : us[2]) / 1e3);
    }
    std::printf("\n");
    for (void* ptr : {d.dense, d.values, d.meta, d.x, d.bias, d.y, d.fragments, d.dvalues,
                      static_cast<void*>(d.row_index), d.workspace})
      if (ptr) CHECK(cudaFree(ptr));
  }
  std::printf(all_ok ? "spense decode selftest: all exact\n" : "spense decode selftest: FAILED\n");
  return all_ok ? 0 : 1;
}
