// Table of contents of the native code: every spmm op's schema. Implementations register beside their code
// (TORCH_LIBRARY_IMPL in *_cpu.cpp / *_cuda.cpp); fake (meta) implementations live in python/spmm/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(spmm, m) {
  // 2:4: dense [M, K] (+ keep mask) -> canonical values [M, K/2], meta uint8 [M, ceil(K/8)]. CPU, CUDA.
  m.def("sparse24_compress(Tensor dense, Tensor? mask) -> (Tensor values, Tensor meta)");
  // y = x @ W.T (+ bias), W in the canonical 2:4 layout. CPU (the fast kernels by one rule: kernels/cpu/
  // cpu_dispatch_rules.h); CUDA (fp16/bf16, through the decode kernel).
  m.def("sparse24_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor");
  // Internal (CPU): the fp64 reference of sparse24_mm, the tests' oracle.
  m.def("_sparse24_mm_reference(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor");
  // Tiled-CSL: dense [M, K] (+ keep mask) -> values [nnz], locations int16 [nnz], tile_offsets int32 [tiles + 1]. CPU.
  m.def("tiled_csl_compress(Tensor dense, Tensor? mask, int tile_m, int tile_k) -> (Tensor values, Tensor locations, Tensor tile_offsets)");
  // y = x @ W.T (+ bias), W [out_features, K] in Tiled-CSL. CPU (the fast kernels by one rule, reading the bitmap
  // cpu_bitmap of tiled_csl_cpu_layout, which they derive per call when it is not given); CUDA.
  m.def("tiled_csl_mm(Tensor x, Tensor values, Tensor locations, Tensor tile_offsets, int out_features, int tile_m, int tile_k, Tensor? bias, Tensor? cpu_bitmap=None) -> Tensor");
  // The CPU kernels' layout of a Tiled-CSL weight: int64 bitmap words of the stored elements (kernels/cpu/cpu_kernels.h). CPU.
  m.def("tiled_csl_cpu_layout(Tensor locations, Tensor tile_offsets, int out_features, int in_features, int tile_m, int tile_k) -> Tensor");
  // Internal (CPU): the fp64 reference of tiled_csl_mm, the tests' oracle.
  m.def("_tiled_csl_mm_reference(Tensor x, Tensor values, Tensor locations, Tensor tile_offsets, int out_features, int tile_m, int tile_k, Tensor? bias) -> Tensor");
  // Internal (CUDA): the 2:4 decode kernel's weight layout, made from the canonical one, and its matmul.
  m.def("_sparse24_decode_pack(Tensor values, Tensor meta, int meta_layout=0) -> (Tensor dvalues, Tensor dmeta)");
  m.def("_sparse24_decode_mm(Tensor x, Tensor dvalues, Tensor dmeta, int out_features, Tensor? bias, "
        "str loader=\"auto\", int splits=0) -> Tensor");
  // Internal (CUDA, sm_90a): the Hopper prefill GEMM's metadata (CUTLASS's reordered layout; the GEMM reads the
  // canonical values as they are) and its matmul; config -1 = the heuristic's pick, else a number of
  // spmm.ops.SM90_CONFIGS; swizzle and splits are tile-scheduler knobs for tuning (0 = its own choice).
  m.def("_sparse24_sm90_pack(Tensor values, Tensor meta) -> Tensor e");
  m.def("_sparse24_sm90_mm(Tensor x, Tensor values, Tensor e, int out_features, Tensor? bias, int config=-1, "
        "int swizzle=0, int splits=0) -> Tensor");
  // Internal (CUDA, sm_80 / sm_90a): the Ampere prefill GEMM's weight layout (values padded to 32 x 64, CUTLASS 2.x's
  // reordered metadata) and its matmul.
  m.def("_sparse24_sm80_pack(Tensor values, Tensor meta) -> (Tensor a, Tensor e)");
  m.def("_sparse24_sm80_mm(Tensor x, Tensor a, Tensor e, int out_features, Tensor? bias) -> Tensor");
  // Internal (CUDA): the Tiled-CSL kernel's word layout (one 32-bit word per pair, runs padded to 16 bytes),
  // made from the stream, and its matmul.
  m.def("_tiled_csl_words(Tensor values, Tensor locations, Tensor tile_offsets, int tile_m, int tile_k) -> (Tensor words, Tensor word_offsets)");
  m.def("_tiled_csl_mm_words(Tensor x, Tensor words, Tensor word_offsets, int out_features, int tile_m, Tensor? bias) -> Tensor");
  // Internal (CUDA, sm_90a): matmul on the Tiled-CSL pair-bitmap layout (spmm.ops.tiled_csl_bitmap builds it in torch).
  m.def("_tiled_csl_bitmap_mm(Tensor x, Tensor records, Tensor record_offsets, int out_features, int max_record_words, Tensor? bias) -> Tensor");
  // Spense: dense row block + 2:4 row block, output rows placed by row_index (dense rows first). CPU.
  m.def("spense_mm(Tensor x, Tensor dense_weight, Tensor values, Tensor meta, Tensor row_index, Tensor? bias) -> Tensor");
  // Internal (CPU): the fp64 reference of spense_mm, the tests' oracle.
  m.def("_spense_mm_reference(Tensor x, Tensor dense_weight, Tensor values, Tensor meta, Tensor row_index, Tensor? bias) -> Tensor");
}
