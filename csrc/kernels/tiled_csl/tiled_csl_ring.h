// Tiled-CSL SpMM on Hopper from the word layout (tiled_csl_spmm.h), with the memory side decoupled from the decode:
// a producer warp streams each tile's run of words into a shared-memory ring by bulk async copies (in pieces of at
// most kTiledCSLRingPieceWords, so any density fits) and x's chunk beside it; 8 consumer warps scatter the words
// into a double-buffered dense tile, meet at one named barrier per tile, multiply their rows (mma.sync m16n8k16,
// fp32 accumulation) and zero them for the tile after next. Split-K is a thread-block cluster summing through
// distributed shared memory (no workspace, no memset). Same layout and results as tiled_csl_mm_words.
//
// Why: the register-pipelined kernel keeps one tile of words in flight per block and spends its time waiting on
// it (38-40% of copy bandwidth on the H200 at 80% sparsity); a ring several pieces deep keeps ~50 KB per block in
// flight while the consumers work (numbers in NOTES.md).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/tiled_csl/tiled_csl_spmm.h"

namespace spmm::kernels {

constexpr int kTiledCSLRingPieceWords = 2048;  // words per ring stage (8 KB): ~2 pieces per 256 x 64 tile at 80%
constexpr int kTiledCSLRingMaxSplits = 16;     // cluster size (above 8 where the GPU allows it)

// Whether the kernel was built for this device (sm_90a code and a compute capability 9.x GPU).
bool tiled_csl_ring_available();

// Enqueues y = x W^T (+ bias) on `stream`. p as for tiled_csl_mm_words (values = the words, tile_offsets = the
// word offsets, nnz = the words readable, a multiple of 4; tile_m 256 or 128); workspace and counters unused;
// p.splits = 0 chooses the split factor here (else 1..kTiledCSLRingMaxSplits, at most the K tiles). N > 64 runs as
// slices of 64. cudaErrorInvalidValue for arguments it cannot take, cudaErrorNotSupported where
// tiled_csl_ring_available() is false.
cudaError_t tiled_csl_mm_words_ring(const TiledCSLMMParams& p, cudaStream_t stream);

}  // namespace spmm::kernels
