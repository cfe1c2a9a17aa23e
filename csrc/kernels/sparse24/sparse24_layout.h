// The canonical 2:4 layout's group code, shared by the CPU and CUDA compressors (and by the CPU reference matmul).
//
// Each group of 4 consecutive elements along K keeps two of them, at in-group columns idx0 < idx1; the group's
// 4-bit code is idx0 | idx1 << 2. Two codes share a byte (even group in the low nibble). A group that keeps fewer
// than two elements is filled up with its lowest unused columns, whose stored values are +0.0.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPMM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SPMM_HOST_DEVICE inline
#endif

namespace spmm::sparse24 {

constexpr int kGroup = 4;  // elements per group along K
constexpr int kKept = 2;   // elements kept per group

SPMM_HOST_DEVICE int popcount4(unsigned bits) {
  return (bits & 1u) + ((bits >> 1) & 1u) + ((bits >> 2) & 1u) + ((bits >> 3) & 1u);
}

SPMM_HOST_DEVICE int lowest_bit_index(unsigned bits) {  // bits != 0, < 16
  return (bits & 1u) ? 0 : (bits & 2u) ? 1 : (bits & 4u) ? 2 : 3;
}

// keep: 4-bit mask of the kept elements of a group. Returns false if it keeps more than two; otherwise writes
// the group's two stored columns.
SPMM_HOST_DEVICE bool pick_columns(unsigned keep, int& idx0, int& idx1) {
  if (popcount4(keep) > kKept) return false;
  while (popcount4(keep) < kKept) keep |= ~keep & (keep + 1u);  // add the lowest unused column
  idx0 = lowest_bit_index(keep);
  idx1 = lowest_bit_index(keep & (keep - 1u));
  return true;
}

SPMM_HOST_DEVICE uint8_t encode_group(int idx0, int idx1) { return static_cast<uint8_t>(idx0 | (idx1 << 2)); }

SPMM_HOST_DEVICE void decode_group(uint8_t code, int& idx0, int& idx1) {
  idx0 = code & 3;
  idx1 = (code >> 2) & 3;
}

// Bytes of metadata per row of K elements: one nibble per group of 4, two groups per byte.
SPMM_HOST_DEVICE int64_t meta_bytes_per_row(int64_t k) { return (k / kGroup + 1) / 2; }

}  // namespace spmm::sparse24
