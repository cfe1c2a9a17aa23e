// Entry points of the sm_90a 2:4 sparse GEMM (sparse24_sm90_gemm.h): argument checks, the device check, dtype
// dispatch and the config heuristic. No CUTLASS here: the kernels live in sm90/<config>_<dtype>.cu and the
// metadata pack in sparse24_sm90_pack_kernel.cu.
#include <array>
#include <cstdint>
#include <utility>

#include "kernels/common/launch.h"
#include "kernels/sparse24/sparse24_dispatch_rules.h"
#include "kernels/sparse24/sparse24_kernel_layouts.h"
#include "kernels/sparse24/sparse24_sm90_gemm.h"

namespace spmm::kernels {
namespace {

bool supported_dtype(DType dtype) { return dtype == DType::kFloat16 || dtype == DType::kBFloat16; }

bool valid_config(Sparse24Sm90Config config) {
  const int c = static_cast<int>(config);
  return c >= 0 && c < kSparse24Sm90NumConfigs;
}

// The current device, if it runs sm_90a code (compute capability 9.0 exactly), and its SM count.
cudaError_t current_sm90_device(int* device, int* sm_count) {
  int major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, *device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, *device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(sm_count, cudaDevAttrMultiProcessorCount, *device);
  if (err != cudaSuccess) return err;
  return major == 9 && minor == 0 ? cudaSuccess : cudaErrorNoKernelImageForDevice;
}

// Config number -> that config's functions, per dtype (the definitions are in the instantiation files).
struct KernelEntry {
  cudaError_t (*workspace_bytes)(const Sparse24Sm90GemmParams&, int, int, size_t*);
  cudaError_t (*gemm)(const Sparse24Sm90GemmParams&, int, int, cudaStream_t);
};

template <DType kDType, size_t... kConfigs>
constexpr std::array<KernelEntry, sizeof...(kConfigs)> kernel_table(std::index_sequence<kConfigs...>) {
  return {KernelEntry{&detail::Sparse24Sm90Kernel<static_cast<Sparse24Sm90Config>(kConfigs), kDType>::workspace_bytes,
                      &detail::Sparse24Sm90Kernel<static_cast<Sparse24Sm90Config>(kConfigs), kDType>::gemm}...};
}

const KernelEntry& kernel_entry(DType dtype, Sparse24Sm90Config config) {
  static constexpr auto kHalf =
      kernel_table<DType::kFloat16>(std::make_index_sequence<kSparse24Sm90NumConfigs>{});
  static constexpr auto kBFloat =
      kernel_table<DType::kBFloat16>(std::make_index_sequence<kSparse24Sm90NumConfigs>{});
  return (dtype == DType::kFloat16 ? kHalf : kBFloat)[static_cast<int>(config)];
}

bool valid_knobs(const Sparse24Sm90GemmParams& p) {
  return sparse24_sm90_valid_swizzle(p.swizzle) && p.splits >= 0 && p.splits <= kSparse24Sm90MaxSplits;
}

}  // namespace

bool sparse24_sm90_weight_supported(int64_t m, int64_t k) {
  return sparse24_sm90_shape_supported(m, k);
}

cudaError_t sparse24_sm90_meta_bytes(int64_t m, int64_t k, size_t* e_bytes) {
  if (!sparse24_sm90_weight_supported(m, k) || e_bytes == nullptr) return cudaErrorInvalidValue;
  *e_bytes = static_cast<size_t>(sparse24_sm90_e_bytes(m, k));
  return cudaSuccess;
}

cudaError_t sparse24_sm90_pack_meta(const Sparse24Sm90MetaParams& p, cudaStream_t stream) {
  if (!sparse24_sm90_weight_supported(p.m, p.k) || p.meta_ld < p.k / 8 || p.meta == nullptr || p.e == nullptr ||
      !aligned16(p.e))
    return cudaErrorInvalidValue;
  return detail::sparse24_sm90_pack_meta_unchecked(p, stream);
}

// Coarse buckets of N, then of M and the tile waves, from the H200 sweep of every config on the 14 standard layers
// (bench/results/h200_sparse24_sm90_config_sweep_*; `python -m bench sparse24_sm90`). K does not enter: it only
// lengthens each tile's main loop.
//  - N <= 64 is weight streaming: the narrow stream-K tiles keep every SM reading the weight whatever M is. The
//    32-token tile is best up to 32 tokens, and at 33-64 tokens below ~80 row tiles (a second pass over the weight
//    comes from L2); above that the 64-token tile (one pass). 128x32 at N = 16-32: median 1.48x of cuBLAS.
//  - N <= 128 on up to 64 row tiles (M <= 8192): the 64-token stream-K tile (0.94-1.48x; the big tiles run only
//    32-64 CTAs there, 0.6-0.9x).
//  - Otherwise the 256x128 tile, the most efficient per tile (1.2-1.4x at N >= 2048), unless its last wave runs
//    mostly empty (under 85% of the SM-slots busy); then 128x128 tiles if their waves fill, else stream-K, which
//    has no wave quantization (e.g. M = 4096, N = 512: 1.20x instead of 0.75x).
Sparse24Sm90Config sparse24_sm90_pick_config(int64_t m, int64_t n, int64_t k, int sm_count) {
  (void)k;
  const int64_t sms = sm_count > 0 ? sm_count : 132;
  const int64_t row_tiles = ceil_div(m, 128);
  if (n <= 32 || (n <= 64 && row_tiles < 80)) return Sparse24Sm90Config::kCoop128x32StreamK;
  if (n <= 64 || (n <= 128 && row_tiles <= 64)) return Sparse24Sm90Config::kCoop128x64StreamK;
  // Fraction of the SM-slots of all waves that have a tile to run.
  auto wave_fill = [sms](int64_t tiles) { return double(tiles) / double(ceil_div(tiles, sms) * sms); };
  if (wave_fill(ceil_div(m, 256) * ceil_div(n, 128)) >= 0.85) return Sparse24Sm90Config::kCoop256x128Cluster2x1;
  if (wave_fill(row_tiles * ceil_div(n, 128)) >= 0.85) return Sparse24Sm90Config::kCoop128x128;
  return Sparse24Sm90Config::kCoop128x128StreamK;
}

cudaError_t sparse24_sm90_workspace_bytes(const Sparse24Sm90GemmParams& p, Sparse24Sm90Config config, size_t* bytes) {
  if (bytes == nullptr || !valid_config(config) || !supported_dtype(p.dtype) || p.n < 0 || p.n > kSparse24GemmMaxDim ||
      !sparse24_sm90_weight_supported(p.m, p.k) || !valid_knobs(p))
    return cudaErrorInvalidValue;
  int device = 0, sm_count = 0;
  if (const cudaError_t err = current_sm90_device(&device, &sm_count); err != cudaSuccess) return err;
  return kernel_entry(p.dtype, config).workspace_bytes(p, device, sm_count, bytes);
}

cudaError_t sparse24_sm90_gemm(const Sparse24Sm90GemmParams& p, Sparse24Sm90Config config, cudaStream_t stream) {
  if (!valid_config(config) || !supported_dtype(p.dtype) || p.n < 0 || p.n > kSparse24GemmMaxDim ||
      !sparse24_sm90_weight_supported(p.m, p.k) || !valid_knobs(p))
    return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  if (p.x_ld < p.k || p.y_ld < p.m || p.x_ld % 8 != 0 || p.y_ld % 8 != 0) return cudaErrorInvalidValue;
  if (p.a == nullptr || p.e == nullptr || p.x == nullptr || p.y == nullptr) return cudaErrorInvalidValue;
  if (!aligned16(p.a) || !aligned16(p.e) || !aligned16(p.x) || !aligned16(p.y) ||
      (p.bias != nullptr && !aligned16(p.bias)))
    return cudaErrorInvalidValue;
  int device = 0, sm_count = 0;
  if (const cudaError_t err = current_sm90_device(&device, &sm_count); err != cudaSuccess) return err;
  return kernel_entry(p.dtype, config).gemm(p, device, sm_count, stream);
}

}  // namespace spmm::kernels
