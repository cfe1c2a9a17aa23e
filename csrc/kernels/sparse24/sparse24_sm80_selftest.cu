// Device self-test of the sm_80 2:4 GEMM (sparse24_sm80_gemm.h), torch-free (nvcc alone; runs on any GPU of
// compute capability >= 8.0, the H100 included): random 2:4 weights of small integers compressed on the host into
// the canonical layout, packed on the GPU (sparse24_sm80_pack), multiplied with x, compared bit for bit with a host
// reference (every product and sum is exact in fp32). Then one prefill-sized problem timed (unchecked: its host
// reference would take minutes). Exit status 1 on any mismatch.
//
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -Icsrc -I<cutlass>/include \
//        csrc/kernels/sparse24/sparse24_sm80_selftest.cu csrc/kernels/sparse24/sparse24_sm80_gemm.cu \
//        csrc/kernels/sparse24/sparse24_sm80_pack_kernel.cu -o t && ./t
#include <cuda_runtime.h>

#include <cstdio>
#include <random>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/sparse24/sparse24_sm80_gemm.h"

namespace {

using namespace spmm::selftest;  // CHECK, to_bits, device_copy, median_us, Flush, exact

struct Problem {
  int64_t m, k, n;
  DType dtype;
  bool bias;
};

// A random 2:4 weight [m, k] of small integers in the canonical layout (ops.py): values [m, k/2], meta [m, ceil(k/8)]
// (group code idx0 | idx1 << 2, even group in the low nibble); `dense` gets the same weight expanded.
struct Canonical {
  std::vector<uint16_t> values;
  std::vector<uint8_t> meta;
  std::vector<float> dense;
};

Canonical random_weight(int64_t m, int64_t k, DType t, std::mt19937& rng) {
  static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  const int64_t meta_cols = (k + 7) / 8;
  Canonical w{std::vector<uint16_t>(m * k / 2), std::vector<uint8_t>(m * meta_cols, 0), std::vector<float>(m * k, 0.f)};
  std::uniform_int_distribution<int> pair(0, 5), val(-3, 3);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g = 0; g < k / 4; ++g) {
      const int* cols = kPairs[pair(rng)];
      for (int j = 0; j < 2; ++j) {
        const float v = static_cast<float>(val(rng));
        w.values[r * (k / 2) + 2 * g + j] = to_bits(v, t);
        w.dense[r * k + 4 * g + cols[j]] = v;
      }
      w.meta[r * meta_cols + g / 2] |= static_cast<uint8_t>((cols[0] | cols[1] << 2) << (4 * (g % 2)));
    }
  return w;
}

}  // namespace

int main() {
  const DType f16 = DType::kFloat16, bf16 = DType::kBFloat16;
  const Problem checked[] = {
      {256, 512, 64, f16, true},   {256, 512, 64, bf16, false}, {300, 200, 33, f16, true},  {32, 64, 1, f16, false},
      {1000, 1024, 129, bf16, true}, {4, 100, 7, f16, true},    {2048, 1024, 256, f16, false},
  };
  std::mt19937 rng(1234);
  bool all_ok = true;
  for (const Problem& pr : checked) {
    const Canonical w = random_weight(pr.m, pr.k, pr.dtype, rng);
    const int64_t k_pad = spmm::kernels::sparse24_sm80_padded_cols(pr.k), m_pad = spmm::kernels::sparse24_sm80_padded_rows(pr.m);
    std::uniform_int_distribution<int> xd(-2, 2);
    const int64_t n4 = (pr.n + 7) / 8 * 8;  // x's rows: zero past n
    std::vector<float> xf(n4 * k_pad, 0.f), bf(pr.m, 0.f);
    std::vector<uint16_t> x(n4 * k_pad, 0), bias(pr.m);
    for (int64_t i = 0; i < pr.n; ++i)
      for (int64_t c = 0; c < pr.k; ++c) x[i * k_pad + c] = to_bits(xf[i * k_pad + c] = static_cast<float>(xd(rng)), pr.dtype);
    for (int64_t r = 0; r < pr.m; ++r) bias[r] = to_bits(bf[r] = pr.bias ? static_cast<float>(xd(rng)) : 0.f, pr.dtype);
    std::vector<uint16_t> expected(pr.n * pr.m);
    for (int64_t i = 0; i < pr.n; ++i)
      for (int64_t r = 0; r < pr.m; ++r) {
        float acc = bf[r];
        for (int64_t c = 0; c < pr.k; ++c) acc += xf[i * k_pad + c] * w.dense[r * pr.k + c];
        expected[i * pr.m + r] = to_bits(acc, pr.dtype);
      }

    uint16_t* d_values = device_copy(w.values);
    uint8_t* d_meta = device_copy(w.meta);
    uint16_t* dx = device_copy(x);
    uint16_t* d_bias = device_copy(bias);
    void *d_a = nullptr, *d_e = nullptr, *dy = nullptr, *ws = nullptr;
    CHECK(cudaMalloc(&d_a, m_pad * k_pad / 2 * 2));
    CHECK(cudaMalloc(&d_e, spmm::kernels::sparse24_sm80_meta_elements(pr.m, pr.k) * 2));
    CHECK(cudaMalloc(&dy, pr.n * pr.m * 2));
    CHECK(cudaMalloc(&ws, spmm::kernels::sparse24_sm80_workspace_bytes(pr.m, pr.n)));
    const spmm::kernels::Sparse24Sm80PackParams pp{d_values, pr.k / 2, d_meta, (pr.k + 7) / 8, pr.m, pr.k,
                                                   d_a, static_cast<uint16_t*>(d_e)};
    CHECK(spmm::kernels::sparse24_sm80_pack(pp, 0));
    CHECK(cudaMemset(dy, 0xFF, pr.n * pr.m * 2));
    const spmm::kernels::Sparse24Sm80GemmParams gp{d_a, static_cast<uint16_t*>(d_e), dx, k_pad,
                                                   pr.bias ? d_bias : nullptr, dy, pr.m, pr.m, pr.n, pr.k, pr.dtype, ws};
    CHECK(spmm::kernels::sparse24_sm80_gemm(gp, 0));
    CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> y(pr.n * pr.m);
    CHECK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
    const bool ok = exact(y, expected, pr.m, pr.dtype, "sm80 gemm");
    all_ok = all_ok && ok;
    std::printf("%6lld %6lld %5lld %s bias=%d | %s\n", static_cast<long long>(pr.m), static_cast<long long>(pr.k),
                static_cast<long long>(pr.n), pr.dtype == f16 ? "fp16" : "bf16", pr.bias, ok ? "exact" : "WRONG");
    for (void* p : {static_cast<void*>(d_values), static_cast<void*>(d_meta), static_cast<void*>(dx),
                    static_cast<void*>(d_bias), d_a, d_e, dy, ws})
      CHECK(cudaFree(p));
  }

  // Timing: a prefill-sized layer (values are irrelevant to the speed; uninitialised memory is fine for that).
  Flush flush;
  for (const int64_t n : {512, 2048, 8192}) {
    const int64_t m = 4096, k = 4096;
    void *d_a, *d_e, *dx, *dy, *ws;
    CHECK(cudaMalloc(&d_a, m * k));
    CHECK(cudaMalloc(&d_e, spmm::kernels::sparse24_sm80_meta_elements(m, k) * 2));
    CHECK(cudaMalloc(&dx, n * k * 2));
    CHECK(cudaMalloc(&dy, n * m * 2));
    CHECK(cudaMalloc(&ws, spmm::kernels::sparse24_sm80_workspace_bytes(m, n)));
    CHECK(cudaMemset(d_a, 0, m * k));
    CHECK(cudaMemset(d_e, 0x44, spmm::kernels::sparse24_sm80_meta_elements(m, k) * 2));
    CHECK(cudaMemset(dx, 0, n * k * 2));
    const spmm::kernels::Sparse24Sm80GemmParams gp{d_a, static_cast<uint16_t*>(d_e), dx, k, nullptr, dy, m, m, n, k, f16, ws};
    const float us = median_us([&] { CHECK(spmm::kernels::sparse24_sm80_gemm(gp, 0)); }, flush, 20);
    std::printf("timed %lld x %lld x %lld fp16: %.1f us, %.0f dense-equivalent TFLOP/s\n", static_cast<long long>(m),
                static_cast<long long>(k), static_cast<long long>(n), us, 2.0 * m * n * k / us * 1e-6);
    for (void* p : {d_a, d_e, dx, dy, ws}) CHECK(cudaFree(p));
  }
  std::printf(all_ok ? "sparse24 sm80 selftest: all exact\n" : "sparse24 sm80 selftest: FAILED\n");
  return all_ok ? 0 : 1;
}
