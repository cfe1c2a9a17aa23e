// The Hopper 2:4 GEMM's kernel configs, by name: plain constants with no includes, so the stable-ABI module
// (csrc/module.cpp) can export the names to Python (spmm.ops.SM90_CONFIGS) and the bench can sweep them.
// What each config is and why it exists: sparse24_sm90_gemm_impl.cuh. The numbers are the op's `config` argument.
// Tried and dropped (H200 sweep, bench/results/h200_sparse24_sm90_config_sweep_*): a 128x128 ping-pong with a 2x1
// cluster was never the fastest config on any standard layer at any N (7-25% behind the best at N >= 512).
#pragma once

namespace spmm::kernels {

enum class Sparse24Sm90Config : int {
  kCoop128x128 = 0,            // 128x128x128 tile, 1x1 cluster, cooperative, persistent
  kCoop256x128Cluster2x1 = 1,  // 256x128x128 tile, 2x1 cluster, cooperative, persistent: large problems
  kCoop128x128StreamK = 2,     // 128x128x128 tile, cooperative, stream-K: fewer tiles than SMs
  kCoop128x64StreamK = 3,      // 128x64x128 tile, cooperative, stream-K: 33-64 tokens (weight streaming)
  kCoop128x32StreamK = 4,      // 128x32x128 tile, cooperative, stream-K: 9-32 tokens (weight streaming)
};
constexpr int kSparse24Sm90NumConfigs = 5;

// Index = the config's number.
constexpr const char* kSparse24Sm90ConfigNames[kSparse24Sm90NumConfigs] = {
    "coop128x128", "coop256x128_c2x1", "coop128x128_streamk", "coop128x64_streamk", "coop128x32_streamk",
};

// The tuning knobs of Sparse24Sm90GemmParams (0 = the tile scheduler's own choice), one rule for the kernel API and
// the op's argument check: the raster swizzle is a power of two up to 8; splits (stream-K configs) at most 64.
constexpr bool sparse24_sm90_valid_swizzle(int swizzle) {
  return swizzle == 0 || swizzle == 1 || swizzle == 2 || swizzle == 4 || swizzle == 8;
}
constexpr int kSparse24Sm90MaxSplits = 64;

}  // namespace spmm::kernels
