// Device self-test of the Tiled-CSL SpMM kernel, torch-free (nvcc alone; a quick device run): for each problem, a
// random unstructured-sparse weight of small integers (so every result is exact) packed on the host into the
// Tiled-CSL stream, y = x W^T + bias computed by the kernel from (a) the stream (tiled_csl_mm) and (b) its word
// layout made on the GPU (tiled_csl_to_words + tiled_csl_mm_words), each compared bit for bit with a host
// reference; then both timed (CUDA events, L2 flushed, median) next to a plain read of the stream's bytes.
// Exit status 1 on any mismatch. SPMM_SELFTEST_SPLIT_SWEEP=1 instead times the word layout on decode-sized layers
// at every split-K factor (each result still checked), next to the heuristic's pick: the data to tune it.
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc csrc/kernels/tiled_csl/tiled_csl_selftest.cu \
//        csrc/kernels/tiled_csl/tiled_csl_spmm_kernel.cu csrc/kernels/tiled_csl/tiled_csl_pack_kernel.cu -o t && ./t
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/tiled_csl/tiled_csl_selftest.cuh"
#include "kernels/tiled_csl/tiled_csl_spmm.h"

namespace {

using namespace spmm::selftest;            // CHECK, to_bits, from_bits, device_copy, median_us, time_read, Flush
using namespace spmm::selftest::tiled_csl;  // Stream, pack, DeviceStream, Path, run

struct Problem {
  int64_t m, k, n, tile_m;
  double sparsity;
  DType dtype;
  bool timed;
};

}  // namespace

int main() {
  const DType f16 = DType::kFloat16, bf16 = DType::kBFloat16;
  const char* sweep_env = std::getenv("SPMM_SELFTEST_SPLIT_SWEEP");
  const bool sweep = sweep_env != nullptr && std::strcmp(sweep_env, "1") == 0;
  std::vector<Problem> problems = {
      {64, 64, 1, 256, 0.5, f16, false},     {300, 200, 7, 128, 0.7, f16, false},   {300, 200, 7, 256, 0.7, bf16, false},
      {1000, 520, 33, 256, 0.0, f16, false}, {512, 256, 5, 256, 1.0, f16, false},   {257, 1000, 100, 128, 0.8, f16, false},
      {4096, 4096, 1, 256, 0.8, f16, true},  {4096, 4096, 16, 256, 0.8, f16, true}, {4096, 4096, 64, 256, 0.9, f16, true},
      {4096, 4096, 1, 256, 0.5, f16, true},  {22016, 4096, 1, 256, 0.8, f16, true}, {22016, 4096, 16, 256, 0.8, bf16, true},
  };
  if (sweep) {
    problems.clear();
    for (const auto& [m, k] : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {12288, 4096}, {4096, 11008},
                                                                       {22016, 4096}})
      for (const int64_t n : {1, 16, 32, 64}) {
        for (const int64_t tile_m : {256, 128}) problems.push_back({m, k, n, tile_m, 0.8, f16, true});
        problems.push_back({m, k, n, 256, 0.5, f16, true});
      }
  }
  Flush flush;
  std::mt19937 rng(4321);
  bool all_ok = true;
  std::printf("%6s %6s %4s %4s %5s %5s | %-7s %-7s | %9s %9s  (median us, L2 flushed)\n", "M", "K", "N", "tm", "spars",
              "dtype", "stream", "words", "stream", "words");
  for (const Problem& pr : problems) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::uniform_int_distribution<int> val(1, 2), sign(0, 1), xd(-2, 2);
    std::vector<float> w(pr.m * pr.k, 0.f), xf(pr.n * pr.k), bf(pr.m);
    for (float& v : w)
      if (u(rng) >= pr.sparsity) v = static_cast<float>(val(rng) * (sign(rng) ? 1 : -1));
    std::vector<uint16_t> x(xf.size()), bias(bf.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = to_bits(xf[i] = static_cast<float>(xd(rng)), pr.dtype);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = to_bits(bf[i] = static_cast<float>(xd(rng)), pr.dtype);
    std::vector<uint16_t> expected(pr.n * pr.m);
    for (int64_t n = 0; n < (sweep ? 0 : pr.n); ++n)  // the sweep checks each split against the first instead
      for (int64_t r = 0; r < pr.m; ++r) {
        double acc = bf[r];
        for (int64_t c = 0; c < pr.k; ++c) acc += static_cast<double>(xf[n * pr.k + c]) * w[r * pr.k + c];
        expected[n * pr.m + r] = to_bits(static_cast<float>(acc), pr.dtype);
      }
    const DeviceStream d(pack(w, pr.m, pr.k, pr.tile_m, pr.dtype), pr.tile_m);
    uint16_t* dx = device_copy(x);
    uint16_t* dbias = device_copy(bias);
    void* dy = nullptr;
    CHECK(cudaMalloc(&dy, std::max<int64_t>(pr.n * pr.m, 1) * 2));
    auto fetch = [&] {
      std::vector<uint16_t> y(pr.n * pr.m);
      CHECK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
      return y;
    };
    if (sweep) {  // the word layout at every split factor: "splits:us", the heuristic's pick marked with *
      int sms = 0;
      CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
      const int pick = spmm::kernels::tiled_csl_mm_splits(pr.m, pr.n, pr.k, d.word_rows, pr.tile_m, sms);
      std::printf("%6lld %6lld %4lld %4lld %5.2f |", static_cast<long long>(pr.m), static_cast<long long>(pr.k),
                  static_cast<long long>(pr.n), static_cast<long long>(pr.tile_m), pr.sparsity);
      const int col_tiles = static_cast<int>((pr.k + 63) / 64);
      std::vector<uint16_t> first;  // integer sums are exact: every split factor must give the same bits
      for (const int splits : {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}) {
        if (splits > col_tiles) break;
        CHECK(cudaMemset(dy, 0xFF, pr.n * pr.m * 2));
        const float us = run(Path::kWords, d, pr.m, pr.k, pr.n, pr.dtype, dx, dbias, dy, flush, 20, splits);
        const std::vector<uint16_t> y = fetch();
        if (first.empty()) first = y;
        const bool ok = exact(y, first, pr.m, pr.dtype, "words");
        all_ok = all_ok && ok;
        std::printf(" %d%s:%.1f%s", splits, splits == pick ? "*" : "", us, ok ? "" : "(WRONG)");
      }
      std::printf("\n");
      std::fflush(stdout);
    } else {
      const int reps = pr.timed ? 30 : 0;
      float us[2];
      bool ok[2];
      for (const Path path : {Path::kStream, Path::kWords}) {
        const int i = static_cast<int>(path);
        CHECK(cudaMemset(dy, 0xFF, pr.n * pr.m * 2));
        us[i] = run(path, d, pr.m, pr.k, pr.n, pr.dtype, dx, dbias, dy, flush, reps);
        ok[i] = exact(fetch(), expected, pr.m, pr.dtype, kPathNames[i]);
        all_ok = all_ok && ok[i];
      }
      std::printf("%6lld %6lld %4lld %4lld %5.2f %5s | %-7s %-7s", static_cast<long long>(pr.m),
                  static_cast<long long>(pr.k), static_cast<long long>(pr.n), static_cast<long long>(pr.tile_m),
                  pr.sparsity, pr.dtype == f16 ? "fp16" : "bf16", ok[0] ? "exact" : "WRONG", ok[1] ? "exact" : "WRONG");
      if (pr.timed) {
        const float floor = time_read(static_cast<size_t>(d.nnz * 4 + (d.tiles + 1) * 4), flush, reps);
        std::printf(" | %6.1f us %6.1f us  read floor %5.1f us", us[0], us[1], floor);
      }
      std::printf("\n");
    }
    for (void* ptr : {static_cast<void*>(dx), static_cast<void*>(dbias), dy}) CHECK(cudaFree(ptr));
  }
  std::printf(all_ok ? "tiled-csl selftest: all exact\n" : "tiled-csl selftest: FAILED\n");
  return all_ok ? 0 : 1;
}
