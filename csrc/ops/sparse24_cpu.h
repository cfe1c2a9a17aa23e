// The 2:4 CPU reference pieces that spense_mm shares with sparse24_mm.
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "ops/cpu_linear.h"
#include "ops/sparse24_common.h"

namespace spmm::ops {

// Every used nibble of a canonical meta holds idx0 < idx1 (a corrupt code would read the wrong columns), and the
// unused high nibble of an odd group count is 0. Byte by byte through a table: a few ms for a 4096 x 4096 weight.
inline void check_sparse24_meta_codes(const char* op, const at::Tensor& meta, int64_t k) {
  const int64_t groups = k / sparse24::kGroup, cols = meta.size(1);
  const at::Tensor meta_cpu = meta.cpu().contiguous();
  const uint8_t* codes = meta_cpu.data_ptr<uint8_t>();
  auto valid_code = [](int code) {
    int idx0, idx1;
    sparse24::decode_group(static_cast<uint8_t>(code), idx0, idx1);
    return idx0 < idx1;
  };
  static const auto table = [&] {  // per byte: 1 both groups valid, 2 the low group valid and the high nibble 0
    std::array<uint8_t, 256> t{};
    for (int b = 0; b < 256; ++b)
      t[b] = (valid_code(b & 0xF) && valid_code(b >> 4) ? 1 : 0) | (valid_code(b & 0xF) && (b >> 4) == 0 ? 2 : 0);
    return t;
  }();
  const int64_t full = groups / 2;  // bytes holding two groups; an odd count leaves one more, half used
  for (int64_t r = 0; r < meta.size(0); ++r) {
    const uint8_t* row = codes + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t need = c < full ? 1 : 2;
      if (table[row[c]] & need) continue;
      const int low = row[c] & 0xF, high = row[c] >> 4;
      TORCH_CHECK_VALUE(!(need == 2 && valid_code(low)), op, ": `meta` is not in the canonical 2:4 layout: row ", r,
                        ": the unused high nibble of byte ", c, " must be 0, got ", high);
      const int64_t g = valid_code(low) ? 2 * c + 1 : 2 * c;
      int idx0, idx1;
      sparse24::decode_group(static_cast<uint8_t>(valid_code(low) ? high : low), idx0, idx1);
      TORCH_CHECK_VALUE(false, op, ": `meta` is not in the canonical 2:4 layout: row ", r, ", group ", g,
                        " names columns ", idx0, " and ", idx1, " (need idx0 < idx1); pack with sparse24_compress");
    }
  }
}

// sparse24_mm's arguments, before their contents are read (the meta codes are checked where they are decoded).
inline void check_sparse24_mm_args(const char* op, const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                   const std::optional<at::Tensor>& bias) {
  check_activation(op, x);
  check_sparse24_weight(op, x, values, meta, x.size(-1));
  check_bias(op, bias, x, values.size(0));
}

// After the CPU kernels reported a non-canonical meta code: the reference's check names the first one.
inline void raise_bad_meta(const char* op, const at::Tensor& meta, int64_t k) {
  check_sparse24_meta_codes(op, meta, k);
  TORCH_CHECK(false, op, ": the CPU kernels found a meta code that the reference's check accepts (a bug)");
}

// The fp64 reference of sparse24_mm (spmm::_sparse24_mm_reference).
at::Tensor sparse24_mm_reference(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                 const std::optional<at::Tensor>& bias);

// out[:, dst(i)] = x @ W_i for the 2:4 rows i of (values, meta); dst_row nullable (identity).
template <typename T>
void sparse24_rows_linear(const at::Tensor& xf, const at::Tensor& values, const at::Tensor& meta,
                          const int32_t* dst_row, at::Tensor& out) {
  const int64_t k = xf.size(1), half_k = k / 2, meta_cols = meta.size(1);
  const T* vals = values.data_ptr<T>();
  const uint8_t* codes = meta.data_ptr<uint8_t>();
  sparse_rows_linear(xf.data_ptr<double>(), xf.size(0), k, values.size(0), half_k, dst_row, out.data_ptr<double>(),
                     out.size(1), [&](int64_t i, int32_t* col, double* val) {
                       for (int64_t g = 0; g < k / sparse24::kGroup; ++g) {
                         int idx0, idx1;
                         sparse24::decode_group((codes[i * meta_cols + g / 2] >> (4 * (g % 2))) & 0xF, idx0, idx1);
                         col[2 * g] = static_cast<int32_t>(g * sparse24::kGroup + idx0);
                         col[2 * g + 1] = static_cast<int32_t>(g * sparse24::kGroup + idx1);
                         val[2 * g] = static_cast<double>(vals[i * half_k + 2 * g]);
                         val[2 * g + 1] = static_cast<double>(vals[i * half_k + 2 * g + 1]);
                       }
                       return half_k;
                     });
}

}  // namespace spmm::ops
