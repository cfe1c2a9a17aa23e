// What the Tiled-CSL self-tests share (tiled_csl_selftest.cu, tiled_csl_delta_selftest.cu): a dense weight's stream
// packed on the host, its word layout built on the GPU, and one (timed) run of the stream or word kernel.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/common/selftest.cuh"
#include "kernels/tiled_csl/tiled_csl_spmm.h"

namespace spmm::selftest::tiled_csl {

// The Tiled-CSL stream of a dense [m, k] weight (the CPU packer's order: tiles row-tile major, each tile's
// nonzeros in row-major order, location = row * 64 + col within the tile).
struct Stream {
  std::vector<uint16_t> values;
  std::vector<int16_t> locations;
  std::vector<int32_t> offsets;
};

inline Stream pack(const std::vector<float>& w, int64_t m, int64_t k, int64_t tile_m, DType t) {
  constexpr int64_t kTileK = kernels::kTiledCSLTileK;
  const int64_t row_tiles = (m + tile_m - 1) / tile_m, col_tiles = (k + kTileK - 1) / kTileK;
  Stream s;
  s.offsets.push_back(0);
  for (int64_t rt = 0; rt < row_tiles; ++rt)
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      for (int64_t r = rt * tile_m; r < std::min(m, (rt + 1) * tile_m); ++r)
        for (int64_t c = ct * kTileK; c < std::min(k, (ct + 1) * kTileK); ++c)
          if (w[r * k + c] != 0.f) {
            s.values.push_back(to_bits(w[r * k + c], t));
            s.locations.push_back(static_cast<int16_t>(static_cast<uint16_t>((r - rt * tile_m) * kTileK + c - ct * kTileK)));
          }
      s.offsets.push_back(static_cast<int32_t>(s.values.size()));
    }
  return s;
}

// The stream on the device and its word layout, made there by tiled_csl_to_words.
struct DeviceStream {
  uint16_t* values;
  int16_t* locations;
  int32_t* offsets;
  int64_t nnz, tiles, tile_m;
  uint32_t* words = nullptr;
  int32_t* word_offsets = nullptr;
  int64_t* scratch = nullptr;
  int64_t word_rows;

  DeviceStream(const Stream& s, int64_t tile_m_)
      : values(device_copy(s.values)), locations(device_copy(s.locations)), offsets(device_copy(s.offsets)),
        nnz(static_cast<int64_t>(s.values.size())), tiles(static_cast<int64_t>(s.offsets.size()) - 1), tile_m(tile_m_),
        word_rows(kernels::tiled_csl_word_rows(nnz, tiles)) {
    CHECK(cudaMalloc(&words, word_rows * 4));
    CHECK(cudaMemset(words, 0, word_rows * 4));
    CHECK(cudaMalloc(&word_offsets, (tiles + 1) * 4));
    CHECK(cudaMalloc(&scratch, (tiles + 1) * 8));
    CHECK(kernels::tiled_csl_to_words({values, locations, offsets, tiles, tile_m, scratch, words, word_offsets}, 0));
  }
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;
  ~DeviceStream() {
    for (void* p : {static_cast<void*>(values), static_cast<void*>(locations), static_cast<void*>(offsets),
                    static_cast<void*>(words), static_cast<void*>(word_offsets), static_cast<void*>(scratch)})
      cudaFree(p);
  }
};

enum class Path { kStream, kWords };
constexpr const char* kPathNames[] = {"stream", "words"};

// Runs the stream or the word kernel on x [n, k] (x_ld = k) into y [n, m]: once, then `reps` timed runs (L2 flushed);
// returns the median µs (0 for reps = 0). splits 0: the kernel's split-K heuristic.
inline float run(Path path, const DeviceStream& d, int64_t m, int64_t k, int64_t n, DType dtype, const void* x,
                 const void* bias, void* y, const Flush& flush, int reps, int splits = 0) {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const bool words = path == Path::kWords;
  kernels::TiledCSLMMParams p{};
  p.x = x;
  p.x_ld = k;
  p.values = words ? static_cast<const void*>(d.words) : d.values;
  p.locations = words ? nullptr : d.locations;
  p.tile_offsets = words ? d.word_offsets : d.offsets;
  p.nnz = words ? d.word_rows : d.nnz;
  p.bias = bias;
  p.y = y;
  p.y_ld = m;
  p.m = m;
  p.n = n;
  p.k = k;
  p.tile_m = d.tile_m;
  p.dtype = dtype;
  p.splits = splits > 0 ? splits : kernels::tiled_csl_mm_splits(m, n, k, p.nnz, d.tile_m, sms);
  void* ws = nullptr;
  const size_t ws_bytes = kernels::tiled_csl_mm_workspace_bytes(m, n, d.tile_m, p.splits);
  if (ws_bytes) CHECK(cudaMalloc(&ws, ws_bytes));
  p.workspace = ws;
  auto call = [&] { CHECK(words ? kernels::tiled_csl_mm_words(p, 0) : kernels::tiled_csl_mm(p, 0)); };
  call();
  CHECK(cudaDeviceSynchronize());
  const float us = median_us(call, flush, reps);
  if (ws) CHECK(cudaFree(ws));
  return us;
}

}  // namespace spmm::selftest::tiled_csl
