// The Spense kernels' row tile, in one place for C++ and Python (spmm._C exports it as spense_row_tile): a layer's
// dense row count is rounded to a multiple of it (SpenseConfig's default), so that every tile the GPU decode
// kernel streams is all dense or all 2:4 (one m16 mma row tile: a warp-uniform choice between mma.sync and mma.sp).
// Plain constants, no includes, so the stable-ABI module can read them too.
#pragma once

namespace spmm::kernels {

constexpr int kSpenseRowTile = 16;

}  // namespace spmm::kernels
