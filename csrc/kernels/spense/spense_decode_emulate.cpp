// Host emulation of the Spense decode kernel (spense_decode_kernel.cu), for checking its index math on a CPU:
// every block, stage, warp and lane of a launch is replayed with the kernel's own address and fragment rules
// (spense_decode_layout.h) around models of the hardware written from the PTX ISA and the CUDA driver API -- TMA 2-D
// boxes (row-major box, 128-byte swizzle, zero fill out of bounds), cp.async with zero fill, ldmatrix.x4 (lane ->
// row addresses, thread t gets row t / 4, elements 2 (t % 4) .. + 1 of each matrix), mma.sp m16n8k32 (compressed A in
// the m16n8k16 A order, metadata of lanes 4g / 4g + 1 under sparsity selector 0, ordered indices enforced) and
// mma.sync m16n8k16 -- and the epilogue's split-K sums and row_index scatter. Every stage is poisoned (0xFF: NaN,
// metadata code 15) before it is filled, so a read of a byte the producer did not write shows up.
//
// g++ -std=c++17 -O2 -Icsrc csrc/kernels/spense/spense_decode_emulate.cpp -o emulate
// emulate <problem file> <output file>, driven by tests/test_spense_decode_emulation.py. Problem file (little
// endian): 16 int64 header values (see Header), then dense [md][dense_ld] u16, values [ms][k/2] u16, meta
// [ms][ceil(k/8)] u8, x [n][x_ld] u16, bias [m] u16 (if any), row_index [m] int32 (if any). Output: y [n][y_ld]
// float32 (NaN where never written), then write counts [n][y_ld] int32. Exit status 3 on an invalid metadata code
// reaching an mma.sp, 2 on bad input.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/sparse24/sparse24_layout.h"
#include "kernels/spense/spense_decode_layout.h"

namespace {

namespace L = spmm::kernels::spense_decode;

struct Header {
  int64_t md, ms, k, n, bf16, has_bias, has_row_index, splits, tma, fragments, cluster, dense_ld, x_ld, y_ld,
      mutation, reserved;
};

// Deliberate mistakes (tests check that the emulation catches each): 1 = metadata halves of the other lane,
// 2 = A read without the swizzle, 3 = no fix of zero-filled metadata codes, 4 = dense half-chunks not summed.
int g_mutation = 0;
bool g_bad_code = false;

float half_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(man), -24);
  else if (exp == 31) v = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else v = std::ldexp(static_cast<float>(man + 1024), exp - 25);
  return sign ? -v : v;
}

// ------------------------------------------------------------------------------------------ hardware models ----
// TMA tile load of the map `map` over `tensor`: the box [box_rows][box_cols] at element coordinates (c0, c1), laid out
// row-major in shared memory (rows of box_cols * element_bytes bytes) from `dst`, zeros out of bounds; SWIZZLE_128B
// permutes the 16-byte pieces of every 128-byte line: piece p of line l (counted from a 1024-byte aligned address)
// goes to piece p ^ (l % 8). Also checks the map against the driver's rules (cuTensorMapEncodeTiled).
void tma_load(uint8_t* stage, uint32_t dst, const uint8_t* tensor, const L::MapShape& map, int64_t c0, int64_t c1) {
  const int esize = map.element_bytes, row_bytes = map.box_cols * esize;
  if (dst % 128 != 0 || (map.swizzle && dst % 1024 != 0) || map.stride % 16 != 0 || row_bytes % 16 != 0 ||
      (map.swizzle && row_bytes > 128) || map.box_cols > 256 || map.box_rows > 256 || map.cols < 1 || map.rows < 1 ||
      map.stride < map.cols * esize) {
    std::fprintf(stderr, "TMA map or destination not allowed\n");
    std::exit(2);
  }
  for (int j = 0; j < map.box_rows; ++j)
    for (int i = 0; i < map.box_cols; ++i)
      for (int b = 0; b < esize; ++b) {
        const int64_t r = c1 + j, c = c0 + i;
        const uint8_t v = (r < map.rows && c < map.cols) ? tensor[r * map.stride + c * esize + b] : 0;
        uint32_t at = static_cast<uint32_t>(j * row_bytes + i * esize + b);
        if (map.swizzle) {
          const uint32_t line = at / 128, piece = (at / 16) % 8;
          at = line * 128 + ((piece ^ (line % 8)) * 16) + at % 16;
        }
        stage[dst + at] = v;
      }
}

// cp.async of `size` bytes, the first `src_bytes` from `src`, the rest zeros.
void cp_async(uint8_t* stage, uint32_t dst, const uint8_t* src, int size, int src_bytes) {
  if (dst % size != 0) {
    std::fprintf(stderr, "cp.async destination %u not %d-byte aligned\n", dst, size);
    std::exit(2);
  }
  for (int b = 0; b < size; ++b) stage[dst + b] = b < src_bytes ? src[b] : 0;
}

// ldmatrix.x4 (b16, no transpose): lane 8i + r gives the address of row r of matrix i; thread t gets, for each
// matrix i, its row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1, as register i.
void ldmatrix_x4(const uint8_t* smem, const uint32_t (&addr)[32], uint32_t (&reg)[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    if (addr[lane] % 16 != 0) {
      std::fprintf(stderr, "ldmatrix row address %u not 16-byte aligned\n", addr[lane]);
      std::exit(2);
    }
  for (int t = 0; t < 32; ++t)
    for (int i = 0; i < 4; ++i) {
      const uint8_t* row = smem + addr[8 * i + t / 4] + 4 * (t % 4);
      reg[t][i] = static_cast<uint32_t>(row[0]) | row[1] << 8 | row[2] << 16 | static_cast<uint32_t>(row[3]) << 24;
    }
}

struct Acc {
  float v[32][4];
};

// D (16 x 8) of a per-thread C fragment: c0, c1 = row g, columns 2q, 2q + 1; c2, c3 = row g + 8.
void accumulate(Acc& acc, const float (&d)[16][8]) {
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    acc.v[t][0] += d[g][2 * q];
    acc.v[t][1] += d[g][2 * q + 1];
    acc.v[t][2] += d[g + 8][2 * q];
    acc.v[t][3] += d[g + 8][2 * q + 1];
  }
}

// mma.sp.m16n8k32 (16-bit A/B, fp32 C), sparsity selector 0. A: thread 4g + q holds, in registers 0 | 1 | 2 | 3,
// the two kept elements of rows g | g + 8 | g | g + 8 in the 4-column groups q | q | q + 4 | q + 4; metadata:
// thread 4g holds rows g (bits 0-15) and g + 8 (bits 16-31), groups 0-3 (nibble j = group j, idx0 | idx1 << 2),
// thread 4g + 1 the same rows' groups 4-7. B (32 x 8): thread 4g + q, register j = rows 8j + 2q, + 1 of column g.
void mma_sp(Acc& acc, const uint32_t (&a)[32][4], const uint32_t (&b)[32][4], const uint32_t (&meta)[32], bool bf16) {
  float A[16][32] = {}, B[32][8] = {};
  for (int r = 0; r < 16; ++r)
    for (int group = 0; group < 8; ++group) {
      const int g = r % 8, t = 4 * g + group % 4, reg = (group < 4 ? 0 : 2) + (r >= 8 ? 1 : 0);
      const uint32_t code = (meta[4 * g + group / 4] >> ((r >= 8 ? 16 : 0) + 4 * (group % 4))) & 0xF;
      const int idx0 = code & 3, idx1 = code >> 2;
      if (idx0 >= idx1) g_bad_code = true;
      A[r][4 * group + idx0] += half_to_float(a[t][reg] & 0xFFFF, bf16);
      A[r][4 * group + idx1] += half_to_float(a[t][reg] >> 16, bf16);
    }
  for (int t = 0; t < 32; ++t)
    for (int j = 0; j < 4; ++j) {
      B[8 * j + 2 * (t % 4)][t / 4] = half_to_float(b[t][j] & 0xFFFF, bf16);
      B[8 * j + 2 * (t % 4) + 1][t / 4] = half_to_float(b[t][j] >> 16, bf16);
    }
  float d[16][8] = {};
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c)
      for (int kk = 0; kk < 32; ++kk) d[r][c] += A[r][kk] * B[kk][c];
  accumulate(acc, d);
}

// mma.sync.m16n8k16 (16-bit A/B, fp32 C): A thread 4g + q, registers 0-3 = (row g, columns 2q, 2q + 1),
// (g + 8, 2q ..), (g, 2q + 8 ..), (g + 8, 2q + 8 ..); B registers b0 = rows 2q, 2q + 1 and b1 = rows 2q + 8, 2q + 9
// of column g.
void mma_dense(Acc& acc, const uint32_t (&a)[32][4], const uint32_t (&b)[32][4], int b0, bool bf16) {
  float A[16][16] = {}, B[16][8] = {};
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    for (int reg = 0; reg < 4; ++reg) {
      const int r = g + (reg % 2) * 8, c = 2 * q + (reg / 2) * 8;
      A[r][c] = half_to_float(a[t][reg] & 0xFFFF, bf16);
      A[r][c + 1] = half_to_float(a[t][reg] >> 16, bf16);
    }
    for (int j = 0; j < 2; ++j) {
      B[2 * q + 8 * j][g] = half_to_float(b[t][b0 + j] & 0xFFFF, bf16);
      B[2 * q + 8 * j + 1][g] = half_to_float(b[t][b0 + j] >> 16, bf16);
    }
  }
  float d[16][8] = {};
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c)
      for (int kk = 0; kk < 16; ++kk) d[r][c] += A[r][kk] * B[kk][c];
  accumulate(acc, d);
}

// ------------------------------------------------------------------------------------------------- problem ----
struct Problem {
  Header h;
  std::vector<uint8_t> dense, values, meta, x, bias, fragments;
  std::vector<int32_t> row_index;
  int64_t meta_row_bytes;
};

template <typename V>
void read_into(FILE* f, V& v, size_t count) {
  v.resize(count);
  if (count && std::fread(v.data(), sizeof(v[0]), count, f) != count) {
    std::fprintf(stderr, "problem file too short\n");
    std::exit(2);
  }
}

// The fragment-order metadata of sparse24_decode_pack (its documented layout, built here from the canonical
// bytes): per (2:4 group, chunk), [tile 8][lane 16][k-step 4] uint32, lane index 2g + q holding the mma.sp register
// of lane 4g + q; zero-filled codes past the weight are the fill code 4.
std::vector<uint8_t> fragment_meta(const Problem& p) {
  const int64_t groups = L::sparse_groups(p.h.ms), chunks = L::ceil_div64(p.h.k, L::kChunkK);
  std::vector<uint8_t> out(groups * chunks * L::kMetaBytes);
  auto code = [&](int64_t row, int64_t grp) -> uint32_t {
    if (row >= p.h.ms || grp >= p.h.k / 4) return 4;
    return (p.meta[row * p.meta_row_bytes + grp / 2] >> (4 * (grp % 2))) & 0xF;
  };
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t c = 0; c < chunks; ++c)
      for (int tile = 0; tile < 8; ++tile)
        for (int li = 0; li < 16; ++li)
          for (int step = 0; step < 4; ++step) {
            const int g = li / 2, q = li % 2;
            const int64_t row = gi * 128 + tile * 16 + g, first = (c * 4 + step) * 8 + 4 * q;
            uint32_t word = 0;
            for (int j = 0; j < 4; ++j) word |= code(row, first + j) << (4 * j) | code(row + 8, first + j) << (16 + 4 * j);
            std::memcpy(&out[((gi * chunks + c) * 8 + tile) * 256 + (li * 4 + step) * 4], &word, 4);
          }
  return out;
}

// ---------------------------------------------------------------------------------------- the emulated launch --
struct Output {
  std::vector<float> y;
  std::vector<int32_t> writes;
};

int ntiles_for(int64_t n) { return n <= 8 ? 1 : n <= 16 ? 2 : n <= 32 ? 4 : 8; }

// The producer's cp.async copy of a RowCopy (the kernel's copy_rows), every lane's pieces.
template <typename Dst>
void copy_rows(uint8_t* stage, const uint8_t* tensor, const L::RowCopy& c, int granule, Dst&& dst) {
  const int piece = granule == 0 ? 4 : granule;
  for (int lane = 0; lane < 32; ++lane)
    for (int v = lane; v < c.rows * c.row_bytes / piece; v += 32) {
      const L::Piece pc = L::piece_of(v, c.row_bytes, piece);
      const int bytes = L::piece_bytes(pc.row < c.rows_valid, c.limit, pc.byte, piece);
      cp_async(stage, dst(pc.row, pc.byte), bytes > 0 ? tensor + c.offset + pc.row * c.stride + pc.byte : tensor,
               piece, bytes);
    }
}

void emulate_launch(const Problem& pr, int64_t n0, int64_t n, Output& out) {
  const Header& h = pr.h;
  const bool bf16 = h.bf16 != 0;
  const int ntiles = ntiles_for(n), xrows = 8 * ntiles;
  const uint32_t x_offset = L::kABytes + L::kMetaBytes;
  const uint32_t stage_bytes = (x_offset + xrows * L::kXPitch * 2 + 1023) / 1024 * 1024;
  const int64_t chunks = L::ceil_div64(h.k, L::kChunkK), groups = L::dense_groups(h.md) + L::sparse_groups(h.ms);
  const int64_t m = h.md + h.ms;
  std::vector<uint8_t> stage(stage_bytes);
  for (int64_t group = 0; group < groups; ++group) {
    const L::Group grp = L::group_of(group, h.md, h.ms);
    std::vector<std::vector<float>> red(h.splits, std::vector<float>(n * L::kRegionRows, 0.f));
    for (int64_t split = 0; split < h.splits; ++split) {
      const int64_t c_begin = split * chunks / h.splits, c_end = (split + 1) * chunks / h.splits;
      std::vector<Acc> acc(L::kWarps * ntiles);
      for (Acc& a : acc) std::memset(a.v, 0, sizeof(a.v));
      for (int64_t chunk = c_begin; chunk < c_end; ++chunk) {
        std::memset(stage.data(), 0xFF, stage.size());
        // ---- producer
        for (int v = 0; v < xrows * 16; ++v) {
          const L::XPiece xp = L::x_piece(v, chunk, h.k, n);
          cp_async(stage.data(), x_offset + 2 * xp.stage_offset,
                   xp.bytes > 0 ? &pr.x[((n0 + xp.token) * h.x_ld + xp.col) * 2] : pr.x.data(), 16, xp.bytes);
        }
        const int64_t sparse_group = group - L::dense_groups(h.md);
        auto a_region = [](bool dense_rows) {
          return [dense_rows](int row, int byte) { return L::a_region_offset(dense_rows, row, byte); };
        };
        if (h.tma) {
          if (grp.dense) {
            for (int half = 0; half < 2; ++half) {
              const L::Box box = L::dense_box(chunk, grp.src_row, half);
              tma_load(stage.data(), box.smem, pr.dense.data(), L::dense_map(h.md, h.k, h.dense_ld), box.col, box.row);
            }
          } else {
            const L::Box vbox = L::values_box(chunk, grp.src_row);
            tma_load(stage.data(), vbox.smem, pr.values.data(), L::values_map(h.ms, h.k), vbox.col, vbox.row);
            if (h.fragments) {
              std::memcpy(&stage[L::kABytes], &pr.fragments[L::fragment_meta_offset(sparse_group, chunks, chunk)],
                          L::kMetaBytes);
            } else {
              const L::Box mbox = L::meta_box(chunk, grp.src_row);
              tma_load(stage.data(), mbox.smem, pr.meta.data(), L::meta_map(h.ms, h.k), mbox.col, mbox.row);
            }
          }
        } else if (grp.dense) {
          copy_rows(stage.data(), pr.dense.data(), L::dense_copy(grp, chunk, h.k, h.dense_ld),
                    L::copy_granule(h.dense_ld * 2), a_region(true));
        } else {
          copy_rows(stage.data(), pr.values.data(), L::values_copy(grp, chunk, h.k), L::copy_granule(h.k),
                    a_region(false));
          if (h.fragments) {
            std::memcpy(&stage[L::kABytes], &pr.fragments[L::fragment_meta_offset(sparse_group, chunks, chunk)],
                        L::kMetaBytes);
          } else {
            copy_rows(stage.data(), pr.meta.data(), L::meta_copy(grp, chunk, h.k), L::copy_granule(pr.meta_row_bytes),
                      [](int row, int byte) { return L::kABytes + row * L::kMetaRowBytes + byte; });
          }
        }
        // ---- consumers
        const uint8_t* xs = stage.data() + x_offset;
        for (int warp = 0; warp < L::kWarps; ++warp) {
          auto a_offset = [&](int lane, int step) {
            const uint32_t off = L::a_ldmatrix_offset(warp, lane, step);
            return g_mutation == 2 ? L::swizzle128(off) : off;  // (the swizzle is an involution)
          };
          // x as the kernel addresses it (a lane base plus constants), checked against the plain rule
          auto load_x = [&](int j, int load, uint32_t (&b)[32][4]) {
            uint32_t addr[32];
            for (int lane = 0; lane < 32; ++lane) {
              addr[lane] = L::x_lane_bytes(grp.dense, warp, lane) + j * L::kXTileBytes + load * L::kXLoadBytes;
              if (addr[lane] != 2u * L::x_ldmatrix_offset(j, lane, L::x_columns(grp.dense, warp, load))) {
                std::fprintf(stderr, "x address decomposition differs\n");
                std::exit(2);
              }
            }
            ldmatrix_x4(xs, addr, b);
          };
          if (grp.dense) {
            for (int load = 0; load < 2; ++load) {
              uint32_t addr0[32], addr1[32], a0[32][4], a1[32][4];
              for (int lane = 0; lane < 32; ++lane) {
                addr0[lane] = a_offset(lane, 2 * load);
                addr1[lane] = a_offset(lane, 2 * load + 1);
              }
              ldmatrix_x4(stage.data(), addr0, a0);
              ldmatrix_x4(stage.data(), addr1, a1);
              for (int j = 0; j < ntiles; ++j) {
                uint32_t b[32][4];
                load_x(j, load, b);
                mma_dense(acc[warp * ntiles + j], a0, b, 0, bf16);
                mma_dense(acc[warp * ntiles + j], a1, b, 2, bf16);
              }
            }
          } else {
            uint32_t meta[4][32];
            // (the kernel's test: its tile runs past the rows, or this is K's last, partial chunk)
            const bool tail = (warp + 1) * L::kTileRows > grp.rows || (h.k % L::kChunkK != 0 && chunk == chunks - 1);
            for (int lane = 0; lane < 32; ++lane) {
              uint32_t lo[4], hi[4];
              if (h.fragments) {
                if (lane % 4 < 2) std::memcpy(lo, &stage[L::kABytes + 16 * L::meta_fragment_index(warp, lane)], 16);
                else std::memset(lo, 0, 16);
                for (int s = 0; s < 4; ++s) meta[s][lane] = lo[s];
                continue;
              }
              std::memcpy(lo, &stage[L::kABytes + 16 * L::meta_row(warp, lane, 0)], 16);
              std::memcpy(hi, &stage[L::kABytes + 16 * L::meta_row(warp, lane, 0) + 8 * L::kMetaRowBytes], 16);
              for (int s = 0; s < 4; ++s) {
                meta[s][lane] = L::meta_register(lo[s], hi[s], L::meta_selector(g_mutation == 1 ? lane + 1 : lane));
                if (tail && g_mutation != 3) meta[s][lane] = L::fill_empty_codes(meta[s][lane]);
              }
            }
            for (int s = 0; s < L::kSteps; ++s) {
              uint32_t addr[32], a[32][4];
              for (int lane = 0; lane < 32; ++lane) addr[lane] = a_offset(lane, s);
              ldmatrix_x4(stage.data(), addr, a);
              for (int j = 0; j < ntiles; ++j) {
                uint32_t b[32][4];
                load_x(j, s, b);
                mma_sp(acc[warp * ntiles + j], a, b, meta[s], bf16);
              }
            }
          }
        }
      }
      // ---- partials [token][slot]
      for (int warp = 0; warp < L::kWarps; ++warp)
        for (int j = 0; j < ntiles; ++j)
          for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
              const int token = L::acc_token(j, lane, i);
              if (token < n) red[split][token * L::kRegionRows + L::acc_slot(warp, lane, i)] = acc[warp * ntiles + j].v[lane][i];
            }
    }
    // ---- sums over the splits (each block its share in a cluster; otherwise one block all), row_index scatter
    const int quads = L::quads_of(n, grp.dense);
    const int reducers = h.splits > 1 && h.cluster ? static_cast<int>(h.splits) : 1;
    for (int block = 0; block < reducers; ++block) {
      const int begin = reducers > 1 ? L::share_begin(quads, reducers, block) : 0;
      const int end = reducers > 1 ? L::share_end(quads, reducers, block) : quads;
      for (int idx = begin; idx < end; ++idx) {
        const L::Quad qd = L::quad_of(idx, grp.dense);
        if (qd.row >= grp.rows) continue;
        float sum[4] = {};
        for (int64_t sp = 0; sp < h.splits; ++sp)
          for (int j = 0; j < 4; ++j) {
            sum[j] += red[sp][qd.token * L::kRegionRows + qd.row + j];
            if (grp.dense && g_mutation != 4) sum[j] += red[sp][qd.token * L::kRegionRows + qd.row + j + 64];
          }
        for (int j = 0; j < 4 && qd.row + j < grp.rows; ++j) {
          const int64_t block_row = grp.first_row + qd.row + j;
          const int64_t o = h.has_row_index ? pr.row_index[block_row] : block_row;
          if (o < 0 || o >= m) continue;
          const float b = h.has_bias ? half_to_float(pr.bias[2 * o] | pr.bias[2 * o + 1] << 8, bf16) : 0.f;
          const int64_t at = (n0 + qd.token) * h.y_ld + o;
          out.y[at] = sum[j] + b;
          out.writes[at] += 1;
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s problem output\n", argv[0]);
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 2;
  Problem pr;
  if (std::fread(&pr.h, sizeof(Header), 1, f) != 1) return 2;
  const Header& h = pr.h;
  if (h.md < 0 || h.ms < 0 || h.n < 0 || h.k < 0 || h.k % 4 != 0 || h.splits < 1 || h.x_ld < h.k ||
      h.y_ld < h.md + h.ms || (h.md > 0 && h.dense_ld < h.k))
    return 2;
  g_mutation = static_cast<int>(h.mutation);
  pr.meta_row_bytes = spmm::sparse24::meta_bytes_per_row(h.k);
  const int64_t m = h.md + h.ms;
  read_into(f, pr.dense, h.md * h.dense_ld * 2);
  read_into(f, pr.values, h.ms * h.k);
  read_into(f, pr.meta, h.ms * pr.meta_row_bytes);
  read_into(f, pr.x, h.n * h.x_ld * 2);
  if (h.has_bias) read_into(f, pr.bias, m * 2);
  if (h.has_row_index) read_into(f, pr.row_index, m);
  std::fclose(f);
  if (h.fragments) pr.fragments = fragment_meta(pr);

  Output out;
  out.y.assign(h.n * h.y_ld, std::numeric_limits<float>::quiet_NaN());
  out.writes.assign(h.n * h.y_ld, 0);
  for (int64_t n0 = 0; n0 < h.n; n0 += L::kMaxTokens)  // the launcher's slices of 64 tokens
    emulate_launch(pr, n0, h.n - n0 < L::kMaxTokens ? h.n - n0 : L::kMaxTokens, out);

  FILE* o = std::fopen(argv[2], "wb");
  if (!o) return 2;
  std::fwrite(out.y.data(), sizeof(float), out.y.size(), o);
  std::fwrite(out.writes.data(), sizeof(int32_t), out.writes.size(), o);
  std::fclose(o);
  if (g_bad_code) {
    std::fprintf(stderr, "an mma.sp read a metadata code with idx0 >= idx1\n");
    return 3;
  }
  return 0;
}
