// Self-test of the Tiled-CSL delta kernel, torch-free (nvcc alone). For each problem: a weight of small integers
// (every sum exact) under a random or adversarial mask, its delta layout built on the host (build_host_layout), and
//   - the host emulations of the two kernels (their own index math, lane by lane): the CUDA-core kernel's products
//     (emulate_delta_mm) compared bit for bit with a dense reference, the tensor-core kernel's tile stores
//     (emulate_delta_tiles) compared with the weight;
//   - unless --host-only: the CUDA-core kernel at every pass width, and the tensor-core kernel, compared bit for bit
//     with the reference, and the CUDA-core kernel on real-valued inputs bit for bit with its emulation (same fp32
//     order); then the large problems timed (CUDA events, L2 flushed, median): both kernels, the word-layout kernel on
//     the same weight (what TiledCSLLinear runs by default), a plain read of the layout's bytes, and a plain read of
//     the dense fp16 weight (what cuBLAS reads at best).
// Exit status 1 on any mismatch.
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc csrc/kernels/tiled_csl/tiled_csl_delta_selftest.cu \
//        csrc/kernels/tiled_csl/tiled_csl_delta_kernel.cu csrc/kernels/tiled_csl/tiled_csl_spmm_kernel.cu \
//        csrc/kernels/tiled_csl/tiled_csl_pack_kernel.cu -o t && ./t           (./t --host-only: no GPU needed)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/tiled_csl/tiled_csl_delta.h"
#include "kernels/tiled_csl/tiled_csl_delta_layout.h"
#include "kernels/tiled_csl/tiled_csl_selftest.cuh"

namespace {

using namespace spmm::selftest;  // CHECK, to_bits, from_bits, device_copy, median_us, time_read, Flush, exact
namespace delta = spmm::kernels::delta;

enum class Mask { kRandom, kEmptyRows, kDenseColumn, kEmptySlices, kFullRows, kLongGaps };
constexpr const char* kMaskNames[] = {"random", "empty-rows", "dense-col", "empty-slices", "full-rows", "long-gaps"};

struct Problem {
  int64_t m, k, n;
  double sparsity;
  Mask mask;
  DType dtype;
  bool timed;
};

bool keep(const Problem& pr, int64_t r, int64_t c, int64_t width, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const bool random = u(rng) >= pr.sparsity;
  switch (pr.mask) {
    case Mask::kEmptyRows: return r % 3 != 1 && random;               // every third row empty
    case Mask::kDenseColumn: return c == pr.k / 2 || (r % 2 == 0 && random);  // one full column, odd rows else empty
    case Mask::kEmptySlices: return (c / width) % 2 == 1 && random;   // every other slice all zero
    case Mask::kFullRows: return r % 5 == 0 || random;                // some rows fully dense
    case Mask::kLongGaps: return (c * 7 + r) % 61 == 0;               // gaps of ~61 columns: fillers everywhere
    default: return random;
  }
}

std::vector<uint16_t> reference(const Problem& pr, const std::vector<float>& w, const std::vector<float>& x,
                                const std::vector<float>& bias) {
  std::vector<uint16_t> y(pr.n * pr.m);
  for (int64_t t = 0; t < pr.n; ++t)
    for (int64_t r = 0; r < pr.m; ++r) {
      double acc = bias[r];
      for (int64_t c = 0; c < pr.k; ++c) acc += static_cast<double>(x[t * pr.k + c]) * w[r * pr.k + c];
      y[t * pr.m + r] = to_bits(static_cast<float>(acc), pr.dtype);
    }
  return y;
}

// Whether the tensor-core kernel's windows store exactly the weight (entries past K are padding: zeros).
bool tiles_exact(const Problem& pr, const delta::HostLayout& lay, int64_t width, const std::vector<float>& w) {
  std::vector<float> stored(pr.m * pr.k, 0.f);
  delta::emulate_delta_tiles(lay.codes.data(), lay.offsets.data(), static_cast<int64_t>(lay.codes.size()), pr.m, pr.k,
                             width, [&](int64_t r, int64_t c, int64_t e) {
                               if (c < pr.k) stored[r * pr.k + c] = from_bits(lay.values[e], pr.dtype);
                             });
  const bool ok = stored == w;
  if (!ok) std::printf("  MISMATCH (tile emulation): the stored entries differ from the weight\n");
  return ok;
}

std::vector<uint16_t> emulate(const Problem& pr, const delta::HostLayout& lay, int64_t width,
                              const std::vector<uint16_t>& x, const std::vector<uint16_t>& bias) {
  std::vector<float> xf(x.size()), bf(bias.size()), y(pr.n * pr.m);
  for (size_t i = 0; i < x.size(); ++i) xf[i] = from_bits(x[i], pr.dtype);
  for (size_t i = 0; i < bias.size(); ++i) bf[i] = from_bits(bias[i], pr.dtype);
  delta::emulate_delta_mm(lay.codes.data(), lay.offsets.data(), static_cast<int64_t>(lay.codes.size()), pr.m, pr.k,
                          pr.n, width, xf.data(), bf.data(), y.data(),
                          [&](int64_t i) { return from_bits(lay.values[i], pr.dtype); });
  std::vector<uint16_t> out(y.size());
  for (size_t i = 0; i < y.size(); ++i) out[i] = to_bits(y[i], pr.dtype);
  return out;
}

struct DeviceLayout {
  uint16_t* values;
  uint32_t* codes;
  int32_t* offsets;
  int64_t chunks;
};

float run(const Problem& pr, const DeviceLayout& d, int64_t width, bool tensor_cores, int64_t tokens_per_pass,
          const void* x, const void* bias, void* y, const Flush& flush, int reps) {
  spmm::kernels::TiledCSLDeltaMMParams p{};
  p.x = x;
  p.x_ld = pr.k;
  p.values = d.values;
  p.codes = d.codes;
  p.offsets = d.offsets;
  p.chunks = d.chunks;
  p.bias = bias;
  p.y = y;
  p.y_ld = pr.m;
  p.m = pr.m;
  p.n = pr.n;
  p.k = pr.k;
  p.slice_width = width;
  p.tensor_cores = tensor_cores;
  p.tokens_per_pass = tokens_per_pass;
  p.dtype = pr.dtype;
  void* ws = nullptr;
  const size_t ws_bytes =
      spmm::kernels::tiled_csl_delta_workspace_bytes(pr.m, pr.n, pr.k, tensor_cores, tokens_per_pass);
  if (ws_bytes) CHECK(cudaMalloc(&ws, ws_bytes));
  p.workspace = ws;
  auto call = [&] { CHECK(spmm::kernels::tiled_csl_delta_mm(p, 0)); };
  call();
  CHECK(cudaDeviceSynchronize());
  const float us = median_us(call, flush, reps);
  if (ws) CHECK(cudaFree(ws));
  return us;
}

std::vector<uint16_t> fetch(const void* dy, size_t count) {
  std::vector<uint16_t> y(count);
  CHECK(cudaMemcpy(y.data(), dy, count * 2, cudaMemcpyDeviceToHost));
  return y;
}

}  // namespace

int main(int argc, char** argv) {
  const bool host_only = argc > 1 && std::string(argv[1]) == "--host-only";
  const DType f16 = DType::kFloat16, bf16 = DType::kBFloat16;
  std::vector<Problem> problems;
  for (const double s : {0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0})
    problems.push_back({300, 1000, 3, s, Mask::kRandom, s < 0.6 ? f16 : bf16, false});
  for (const auto& [m, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {33, 7}, {257, 520}, {64, 4100}, {513, 63}})
    for (const int64_t n : {1, 2, 5, 9})
      problems.push_back({m, k, n, 0.8, Mask::kRandom, n % 2 ? f16 : bf16, false});
  for (const Mask mask : {Mask::kEmptyRows, Mask::kDenseColumn, Mask::kEmptySlices, Mask::kFullRows, Mask::kLongGaps})
    problems.push_back({520, 3000, 4, 0.85, mask, f16, false});
  problems.push_back({2048, 2048, 17, 0.5, Mask::kRandom, bf16, false});  // three passes of 8
  if (!host_only)
    for (const double s : {0.5, 0.7, 0.8, 0.9})
      for (const auto& [m, k] : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {22016, 4096}, {4096, 11008}})
        for (const int64_t n : {1, 8}) problems.push_back({m, k, n, s, Mask::kRandom, f16, true});

  Flush* flush = host_only ? nullptr : new Flush();
  std::mt19937 rng(2024);
  bool all_ok = true;
  std::printf("%6s %6s %3s %5s %-12s %4s | %6s %7s %-6s %-10s | %8s %8s %8s %8s %8s  (median us: delta CUDA-core "
              "and tensor-core kernels, word kernel, read of the delta layout, read of dense fp16)\n", "M", "K", "N",
              "spars", "mask", "type", "slice", "B/elem", "emul", "kernels", "cores", "tensor", "words", "layout",
              "dense");
  for (const Problem& pr : problems) {
    const int64_t width = spmm::kernels::tiled_csl_delta_slice_width(pr.m, pr.k);
    std::uniform_int_distribution<int> val(1, 3), sign(0, 1), xd(-2, 2);
    std::vector<float> w(pr.m * pr.k, 0.f), xf(pr.n * pr.k), bf(pr.m);
    std::vector<int64_t> row_begin{0}, cols;
    std::vector<uint16_t> value_bits;
    for (int64_t r = 0; r < pr.m; ++r) {
      for (int64_t c = 0; c < pr.k; ++c)
        if (keep(pr, r, c, width, rng)) {
          w[r * pr.k + c] = static_cast<float>(val(rng) * (sign(rng) ? 1 : -1));
          cols.push_back(c);
          value_bits.push_back(to_bits(w[r * pr.k + c], pr.dtype));
        }
      row_begin.push_back(static_cast<int64_t>(cols.size()));
    }
    std::vector<uint16_t> x(xf.size()), bias(bf.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = to_bits(xf[i] = static_cast<float>(xd(rng)), pr.dtype);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = to_bits(bf[i] = static_cast<float>(xd(rng)), pr.dtype);
    const delta::HostLayout lay = delta::build_host_layout(pr.m, pr.k, width, row_begin, cols, value_bits);
    const double bytes = lay.values.size() * 2.0 + lay.codes.size() * 4.0 + lay.offsets.size() * 4.0;
    const std::vector<uint16_t> expected = pr.timed ? std::vector<uint16_t>() : reference(pr, w, xf, bf);
    bool emul_ok = true;
    if (!pr.timed) {
      emul_ok = exact(emulate(pr, lay, width, x, bias), expected, pr.m, pr.dtype, "emulation");
      emul_ok = tiles_exact(pr, lay, width, w) && emul_ok;
      all_ok = all_ok && emul_ok;
    }
    std::printf("%6lld %6lld %3lld %5.2f %-12s %4s | %6lld %7.3f %-6s", static_cast<long long>(pr.m),
                static_cast<long long>(pr.k), static_cast<long long>(pr.n), pr.sparsity,
                kMaskNames[static_cast<int>(pr.mask)], pr.dtype == f16 ? "fp16" : "bf16",
                static_cast<long long>(width), bytes / static_cast<double>(pr.m * pr.k),
                pr.timed ? "-" : emul_ok ? "exact" : "WRONG");
    if (host_only) {
      std::printf("\n");
      continue;
    }
    DeviceLayout d{device_copy(lay.values), device_copy(lay.codes), device_copy(lay.offsets),
                   static_cast<int64_t>(lay.codes.size())};
    uint16_t* dx = device_copy(x);
    uint16_t* dbias = device_copy(bias);
    void* dy = nullptr;
    CHECK(cudaMalloc(&dy, std::max<int64_t>(pr.n * pr.m, 1) * 2));
    const int64_t rule = spmm::kernels::tiled_csl_delta_tokens_per_pass(pr.n);
    if (!pr.timed) {
      bool ok = true;
      for (const int64_t tpp : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{4}, int64_t{8}}) {  // 0: tensor cores
        CHECK(cudaMemset(dy, 0xFF, pr.n * pr.m * 2));
        run(pr, d, width, tpp == 0, tpp == 0 ? rule : tpp, dx, dbias, dy, *flush, 0);
        const std::string what = tpp == 0 ? "tensor cores" : "CUDA cores, passes of " + std::to_string(tpp);
        ok = exact(fetch(dy, pr.n * pr.m), expected, pr.m, pr.dtype, what.c_str()) && ok;
      }
      // Real values: the kernel sums in the emulation's order, so the bits agree exactly.
      std::normal_distribution<float> normal(0.f, 1.f);
      std::vector<uint16_t> xr(x.size());
      for (auto& v : xr) v = to_bits(normal(rng), pr.dtype);
      CHECK(cudaMemcpy(dx, xr.data(), xr.size() * 2, cudaMemcpyHostToDevice));
      run(pr, d, width, false, rule, dx, dbias, dy, *flush, 0);
      ok = exact(fetch(dy, pr.n * pr.m), emulate(pr, lay, width, xr, bias), pr.m, pr.dtype, "kernel vs emulation") && ok;
      all_ok = all_ok && ok;
      std::printf(" %-10s\n", ok ? "exact" : "WRONG");
    } else {
      const float cores_us = run(pr, d, width, false, rule, dx, dbias, dy, *flush, 30);
      const float tensor_us = run(pr, d, width, true, rule, dx, dbias, dy, *flush, 30);
      namespace tcsl = spmm::selftest::tiled_csl;  // the word kernel on the same weight, 256 x 64 tiles
      const tcsl::DeviceStream stream(tcsl::pack(w, pr.m, pr.k, 256, pr.dtype), 256);
      const float words_us = tcsl::run(tcsl::Path::kWords, stream, pr.m, pr.k, pr.n, pr.dtype, dx, dbias, dy, *flush, 30);
      const float layout_us = time_read(static_cast<size_t>(bytes) / 16 * 16, *flush, 30);
      const float dense_us = time_read(static_cast<size_t>(pr.m * pr.k * 2), *flush, 30);
      std::printf(" %-10s | %8.1f %8.1f %8.1f %8.1f %8.1f\n", "timed", cores_us, tensor_us, words_us, layout_us,
                  dense_us);
    }
    std::fflush(stdout);
    for (void* ptr : {static_cast<void*>(d.values), static_cast<void*>(d.codes), static_cast<void*>(d.offsets),
                      static_cast<void*>(dx), static_cast<void*>(dbias), dy})
      CHECK(cudaFree(ptr));
  }
  std::printf(all_ok ? "tiled-csl delta selftest: all exact\n" : "tiled-csl delta selftest: FAILED\n");
  return all_ok ? 0 : 1;
}
