// Self-test of the sm_90a 2:4 GEMM (sparse24_sm90_gemm.h) on the device; not part of the library. Built as
// `spmm_sm90_selftest` with -DSPMM_BUILD_SELFTESTS=ON; run it on an H100: `spmm_sm90_selftest [--time]`.
//
// Integer-valued inputs (CUTLASS examples 15/62): every product and partial sum is an integer below 2^24, exact in fp32
// in any order, so the kernel and a plain fp32 reference GEMM round the same exact value once and must agree exactly.
// The weight's 2:4 groups include the corner cases: one nonzero (also at position 3), none, and a kept -0.0. For every
// dtype x shape the weight is packed once, as the library does (canonical values + meta on the host here, the
// metadata reordered by sparse24_sm90_pack_meta), and every config runs on the same (a, e): that also checks that all
// configs read one layout. Output padding (y_ld > M, one row past N) must stay untouched.
// Exit code: 0 all passed, 1 some case failed, 2 no sm_90 device or a CUDA error outside the kernels under test.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/sparse24/sparse24_sm90_gemm.h"

using namespace spmm::kernels;


namespace {

constexpr uint16_t kSentinel = 0xFFFF;  // a NaN in fp16 and in bf16

__device__ __host__ inline float to_float(__half v) { return __half2float(v); }
__device__ __host__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __host__ inline T from_float(float v);
template <>
__device__ __host__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __host__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// y[n, m] = round(sum_k w[m, k] * x[n, k] + bias[m]), fp32 accumulation; 16x16 output tile per block.
template <class T>
__global__ void reference_gemm(const T* w, const T* x, int64_t x_ld, const T* bias, T* y, int64_t y_ld, int m, int n,
                               int k) {
  __shared__ float ws[16][17], xs[16][17];
  const int om = blockIdx.x * 16 + threadIdx.x, on = blockIdx.y * 16 + threadIdx.y;
  float acc = 0.0f;
  for (int k0 = 0; k0 < k; k0 += 16) {
    const int lm = blockIdx.x * 16 + threadIdx.y, ln = blockIdx.y * 16 + threadIdx.y, lk = k0 + threadIdx.x;
    ws[threadIdx.y][threadIdx.x] = lm < m && lk < k ? to_float(w[int64_t(lm) * k + lk]) : 0.0f;
    xs[threadIdx.y][threadIdx.x] = ln < n && lk < k ? to_float(x[int64_t(ln) * x_ld + lk]) : 0.0f;
    __syncthreads();
    for (int kk = 0; kk < 16; ++kk) acc += ws[threadIdx.x][kk] * xs[threadIdx.y][kk];
    __syncthreads();
  }
  if (om < m && on < n) y[int64_t(on) * y_ld + om] = from_float<T>(acc + (bias ? to_float(bias[om]) : 0.0f));
}

template <class T>
uint16_t bits_of(float v) {
  const T t = from_float<T>(v);
  uint16_t b;
  std::memcpy(&b, &t, 2);
  return b;
}

template <class T>
float float_of(uint16_t b) {
  T t;
  std::memcpy(&t, &b, 2);
  return to_float(t);
}

// Dense [m, k] 2:4 weight with small integers; groups: mostly two nonzeros, some with one (anywhere, or at position
// 3), none, or a kept -0.0.
template <class T>
std::vector<uint16_t> random_weight(int m, int k, std::mt19937& rng) {
  std::vector<uint16_t> w(size_t(m) * k, bits_of<T>(0.0f));
  std::uniform_int_distribution<int> value(1, 3), sign(0, 1), kind(0, 99), pos(0, 3);
  auto nonzero = [&] { return float(value(rng) * (sign(rng) ? 1 : -1)); };
  for (int r = 0; r < m; ++r) {
    for (int g = 0; g < k / 4; ++g) {
      uint16_t* group = &w[size_t(r) * k + g * 4];
      const int kd = kind(rng);
      int p0 = pos(rng), p1 = pos(rng);
      while (p1 == p0) p1 = pos(rng);
      if (kd < 80) {  // two nonzeros
        group[p0] = bits_of<T>(nonzero());
        group[p1] = bits_of<T>(nonzero());
      } else if (kd < 88) {  // one nonzero anywhere
        group[p0] = bits_of<T>(nonzero());
      } else if (kd < 92) {  // one nonzero at position 3
        group[3] = bits_of<T>(nonzero());
      } else if (kd < 96) {  // a kept -0.0 beside a nonzero
        group[p0] = bits_of<T>(nonzero());
        group[p1] = bits_of<T>(-0.0f);
      }  // else: all zero
    }
  }
  return w;
}

// The canonical layout of a 2:4 weight (spmm.ops.sparse24_compress): per group of 4 the kept positions i < j (a
// -0.0 counts as kept; groups keeping fewer are padded with +0.0 positions) -> values [m, k/2] and the 4-bit code
// i | j << 2, group 2c in the low nibble of meta byte c.
struct Canonical {
  std::vector<uint16_t> values;
  std::vector<uint8_t> meta;
};
Canonical canonical_of(const std::vector<uint16_t>& w, int m, int k) {
  Canonical c{std::vector<uint16_t>(size_t(m) * k / 2), std::vector<uint8_t>(size_t(m) * k / 8, 0)};
  for (int r = 0; r < m; ++r) {
    for (int g = 0; g < k / 4; ++g) {
      const uint16_t* group = &w[size_t(r) * k + g * 4];
      int kept[2], count = 0;
      for (int p = 0; p < 4; ++p)
        if (group[p] != 0 && count < 2) kept[count++] = p;
      if (count == 0) {
        kept[0] = 0, kept[1] = 1;
      } else if (count == 1) {  // pad with a zero position after it (before it when it is the last)
        if (kept[0] == 3) kept[0] = 2, kept[1] = 3;
        else kept[1] = 3;
      }
      c.values[size_t(r) * k / 2 + g * 2] = group[kept[0]];
      c.values[size_t(r) * k / 2 + g * 2 + 1] = group[kept[1]];
      c.meta[size_t(r) * k / 8 + g / 2] |= uint8_t((kept[0] | kept[1] << 2) << (g % 2 ? 4 : 0));
    }
  }
  return c;
}

template <class T>
std::vector<uint16_t> random_ints(size_t count, int lo, int hi, std::mt19937& rng) {
  std::uniform_int_distribution<int> value(lo, hi);
  std::vector<uint16_t> v(count);
  for (auto& e : v) e = bits_of<T>(float(value(rng)));
  return v;
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { CHECK(cudaMalloc(&ptr, std::max<size_t>(bytes, 16))); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class V>
  void upload(const std::vector<V>& host) {
    CHECK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(V), cudaMemcpyHostToDevice));
  }
};

struct Case {
  int m, n, k;
  int x_pad, y_pad;  // x_ld = k + x_pad, y_ld = m + y_pad
  bool bias;
};

const char* config_name(Sparse24Sm90Config c) { return kSparse24Sm90ConfigNames[static_cast<int>(c)]; }

int failures = 0;

void report(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++failures;
}

template <class T>
void run_case(const Case& c, DType dtype, const char* dtype_name, bool time_it, std::mt19937& rng) {
  const int64_t x_ld = c.k + c.x_pad, y_ld = c.m + c.y_pad, y_rows = c.n + 1;  // one extra row: must stay untouched
  const std::vector<uint16_t> w = random_weight<T>(c.m, c.k, rng);
  const std::vector<uint16_t> x = random_ints<T>(size_t(c.n) * x_ld, -3, 3, rng);
  const std::vector<uint16_t> bias = random_ints<T>(size_t(c.m), -8, 8, rng);

  DeviceBuffer d_w(w.size() * 2), d_x(x.size() * 2), d_bias(bias.size() * 2);
  DeviceBuffer d_ref(size_t(y_rows) * y_ld * 2), d_y(size_t(y_rows) * y_ld * 2);
  d_w.upload(w);
  d_x.upload(x);
  d_bias.upload(bias);
  const T* bias_ptr = c.bias ? static_cast<const T*>(d_bias.ptr) : nullptr;

  CHECK(cudaMemset(d_ref.ptr, 0xFF, size_t(y_rows) * y_ld * 2));
  const dim3 grid((c.m + 15) / 16, (c.n + 15) / 16);
  reference_gemm<T><<<grid, dim3(16, 16)>>>(static_cast<const T*>(d_w.ptr), static_cast<const T*>(d_x.ptr), x_ld,
                                            bias_ptr, static_cast<T*>(d_ref.ptr), y_ld, c.m, c.n, c.k);
  CHECK(cudaGetLastError());
  std::vector<uint16_t> ref(size_t(y_rows) * y_ld);
  CHECK(cudaMemcpy(ref.data(), d_ref.ptr, ref.size() * 2, cudaMemcpyDeviceToHost));

  char what[256];
  const Canonical canonical = canonical_of(w, c.m, c.k);
  size_t e_bytes = 0;
  CHECK(sparse24_sm90_meta_bytes(c.m, c.k, &e_bytes));
  DeviceBuffer d_a(canonical.values.size() * 2), d_meta(canonical.meta.size()), d_e(e_bytes);
  d_a.upload(canonical.values);
  d_meta.upload(canonical.meta);
  const Sparse24Sm90MetaParams mp{static_cast<const uint8_t*>(d_meta.ptr), c.k / 8, d_e.ptr, c.m, c.k};
  cudaError_t pack_status = sparse24_sm90_pack_meta(mp, nullptr);
  if (pack_status == cudaSuccess) pack_status = cudaDeviceSynchronize();
  std::snprintf(what, sizeof what, "%s pack m=%d k=%d (e %zu B): %s", dtype_name, c.m, c.k, e_bytes,
                cudaGetErrorString(pack_status));
  report(pack_status == cudaSuccess, what);
  if (pack_status != cudaSuccess) return;

  const Sparse24Sm90Config picked = sparse24_sm90_pick_config(c.m, c.n, c.k);
  for (int ci = 0; ci < kSparse24Sm90NumConfigs; ++ci) {
    const auto config = static_cast<Sparse24Sm90Config>(ci);
    CHECK(cudaMemset(d_y.ptr, 0xFF, size_t(y_rows) * y_ld * 2));
    Sparse24Sm90GemmParams p{};
    p.a = d_a.ptr;
    p.e = d_e.ptr;
    p.x = d_x.ptr;
    p.x_ld = x_ld;
    p.bias = bias_ptr;
    p.y = d_y.ptr;
    p.y_ld = y_ld;
    p.m = c.m;
    p.n = c.n;
    p.k = c.k;
    p.dtype = dtype;
    size_t ws_bytes = 0;
    CHECK(sparse24_sm90_workspace_bytes(p, config, &ws_bytes));
    DeviceBuffer d_ws(ws_bytes);
    p.workspace = ws_bytes ? d_ws.ptr : nullptr;
    p.workspace_bytes = ws_bytes;
    cudaError_t status = sparse24_sm90_gemm(p, config, nullptr);
    if (status == cudaSuccess) status = cudaDeviceSynchronize();  // a fault in the kernel shows up here

    std::vector<uint16_t> y(size_t(y_rows) * y_ld);
    int64_t bad = 0, first_n = -1, first_m = -1;
    if (status == cudaSuccess) {
      CHECK(cudaMemcpy(y.data(), d_y.ptr, y.size() * 2, cudaMemcpyDeviceToHost));
      for (int64_t r = 0; r < y_rows; ++r) {
        for (int64_t col = 0; col < y_ld; ++col) {
          const size_t i = size_t(r) * y_ld + col;
          const bool inside = r < c.n && col < c.m;
          // Inside: equal values (+0.0 == -0.0), never NaN. Outside: the sentinel, untouched.
          const bool ok = inside ? (!std::isnan(float_of<T>(y[i])) && float_of<T>(y[i]) == float_of<T>(ref[i]))
                                 : y[i] == kSentinel;
          if (!ok && bad++ == 0) first_n = r, first_m = col;
        }
      }
    }
    std::snprintf(what, sizeof what, "%s %-22s m=%d n=%d k=%d x_ld=%lld y_ld=%lld bias=%d%s: %s, %lld wrong",
                  dtype_name, config_name(config), c.m, c.n, c.k, (long long)x_ld, (long long)y_ld, int(c.bias),
                  config == picked ? " [picked]" : "", cudaGetErrorString(status), (long long)bad);
    report(status == cudaSuccess && bad == 0, what);
    if (bad) {
      const size_t i = size_t(first_n) * y_ld + first_m;
      std::printf("     first at y[%lld, %lld]: got %g (bits %04x), expected %g\n", (long long)first_n,
                  (long long)first_m, float_of<T>(y[i]), y[i], float_of<T>(ref[i]));
    }

    if (time_it && status == cudaSuccess) {  // indicative only: no L2 flush, default stream
      cudaEvent_t start, stop;
      CHECK(cudaEventCreate(&start));
      CHECK(cudaEventCreate(&stop));
      constexpr int kReps = 20;
      std::vector<float> ms(kReps);
      for (int r = 0; r < kReps; ++r) {
        CHECK(cudaEventRecord(start));
        CHECK(sparse24_sm90_gemm(p, config, nullptr));
        CHECK(cudaEventRecord(stop));
        CHECK(cudaEventSynchronize(stop));
        CHECK(cudaEventElapsedTime(&ms[r], start, stop));
      }
      std::sort(ms.begin(), ms.end());
      const double us = ms[kReps / 2] * 1e3;
      std::printf("     time %.1f us, %.0f dense-equivalent TFLOP/s\n", us, 2.0 * c.m * c.n * c.k / (us * 1e6));
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
  }
}

// Arguments the launcher must refuse with cudaErrorInvalidValue (the op falls back on them), launching nothing.
void run_rejections() {
  DeviceBuffer buf(1 << 20);
  char* base = static_cast<char*>(buf.ptr);
  auto params = [&](int m, int n, int k) {
    Sparse24Sm90GemmParams p{};
    p.a = base;
    p.e = base;
    p.x = base;
    p.y = base;
    p.x_ld = k;
    p.y_ld = m;
    p.m = m;
    p.n = n;
    p.k = k;
    p.dtype = DType::kFloat16;
    return p;
  };
  auto expect_invalid = [&](const Sparse24Sm90GemmParams& p, const char* what) {
    const cudaError_t status = sparse24_sm90_gemm(p, Sparse24Sm90Config::kCoop128x128, nullptr);
    char line[160];
    std::snprintf(line, sizeof line, "rejects %s: %s", what, cudaGetErrorString(status));
    report(status == cudaErrorInvalidValue, line);
  };
  expect_invalid(params(260, 16, 64), "M % 8 != 0");
  expect_invalid(params(256, 16, 72), "K % 16 != 0");
  Sparse24Sm90GemmParams p = params(256, 16, 64);
  p.x = base + 2;
  expect_invalid(p, "x not 16-byte aligned");
  p = params(256, 16, 64);
  p.x_ld = 68;
  expect_invalid(p, "x_ld % 8 != 0");
  p = params(256, 16, 64);
  p.dtype = DType::kFloat32;
  expect_invalid(p, "fp32");
  report(!sparse24_sm90_weight_supported(256, 8) && sparse24_sm90_weight_supported(256, 16), "weight_supported");
}

}  // namespace

int main(int argc, char** argv) {
  const bool time_it = argc > 1 && std::strcmp(argv[1], "--time") == 0;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("SKIP: %s is sm_%d%d; the kernels are sm_90a only\n", prop.name, prop.major, prop.minor);
    return 2;
  }
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  const Case cases[] = {
      {256, 128, 4096, 0, 0, true},     {256, 2048, 4096, 0, 0, false},  {256, 1000, 4096, 0, 0, true},
      {4096, 128, 4096, 0, 0, false},   {4096, 2048, 4096, 0, 0, true},  {4096, 1000, 4096, 8, 24, true},
      {4096, 1, 4096, 0, 0, true},      {264, 33, 1040, 0, 8, true},     {4096, 8192, 4096, 0, 0, true},
  };
  std::mt19937 rng(2024);
  for (const Case& c : cases) run_case<__half>(c, DType::kFloat16, "fp16", time_it, rng);
  for (const Case& c : cases) run_case<__nv_bfloat16>(c, DType::kBFloat16, "bf16", time_it, rng);
  run_rejections();

  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}
