// The Spense kernels' row tile, in one place for C++ and Python (spmm._C exports it as spense_row_tile): a layer's
// dense row count is rounded to a multiple of it (SpenseConfig's default tile), so the dense rows fill whole m16 mma
// row tiles of the GPU decode kernel (its dense row groups are 64 rows, its 2:4 groups 128; any count is correct,
// a partial tile only wastes its empty rows). Plain constants, no includes, so the stable-ABI module can read them.
#pragma once

namespace spmm::kernels {

constexpr int kSpenseRowTile = 16;

}  // namespace spmm::kernels
