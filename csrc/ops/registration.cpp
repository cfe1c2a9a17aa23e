// Table of contents of the native code: every spmm op's schema. Implementations register beside their code
// (TORCH_LIBRARY_IMPL in *_cpu.cpp / *_cuda.cpp; the matmul ops' Autograd kernels in matmul_autograd.cpp); fake
// (meta) implementations live in python/spmm/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(spmm, m) {
  // 2:4: dense [M, K] (+ keep mask) -> canonical values [M, K/2], meta uint8 [M, ceil(K/8)]. CPU, CUDA.
  m.def("sparse24_compress(Tensor dense, Tensor? mask) -> (Tensor values, Tensor meta)");
  // y = x @ W.T (+ bias), W in the canonical 2:4 layout. CPU; CUDA (fp16/bf16): the kernel the 2:4 rule picks
  // (sparse24_dispatch_rules.h) on the kernel layouts given (a layer's, see spmm.ops.sparse24_kernel_layouts: the
  // decode kernel's dvalues/dmeta, the Hopper GEMM's metadata sm90_e, the Ampere GEMM's sm80_a/sm80_e); with none
  // the call packs its kernel's layout for itself. The CPU computes from the canonical weight and ignores them (its fast
  // kernels by one rule: kernels/cpu/cpu_dispatch_rules.h).
  m.def("sparse24_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias=None, Tensor? dvalues=None, "
        "Tensor? dmeta=None, Tensor? sm90_e=None, Tensor? sm80_a=None, Tensor? sm80_e=None) -> Tensor");
  // Internal (CPU): the fp64 reference of sparse24_mm, the tests' oracle.
  m.def("_sparse24_mm_reference(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor");
  // Tiled-CSL: dense [M, K] (+ keep mask) -> values [nnz], locations int16 [nnz], tile_offsets int32 [tiles + 1]. CPU.
  m.def("tiled_csl_compress(Tensor dense, Tensor? mask, int tile_m, int tile_k) -> (Tensor values, Tensor locations, Tensor tile_offsets)");
  // y = x @ W.T (+ bias), W [out_features, K] in Tiled-CSL. CPU: from the stream, read by the fast kernels (one rule)
  // through the bitmap cpu_bitmap of tiled_csl_cpu_layout, which they derive per call when it is not given. CUDA:
  // from the first given of a kernel layout derived from the stream -- the delta layout
  // (spmm.formats.tiled_csl_layouts) or the word layout (_tiled_csl_words) -- else the stream; with a layout given
  // the stream is not read and may be empty.
  m.def("tiled_csl_mm(Tensor x, Tensor values, Tensor locations, Tensor tile_offsets, int out_features, int tile_m, "
        "int tile_k, Tensor? bias=None, Tensor? words=None, Tensor? word_offsets=None, Tensor? delta_values=None, "
        "Tensor? delta_codes=None, Tensor? delta_offsets=None, Tensor? cpu_bitmap=None) -> Tensor");
  // The CPU kernels' layout of a Tiled-CSL weight: int64 bitmap words of the stored elements (kernels/cpu/cpu_kernels.h). CPU.
  m.def("tiled_csl_cpu_layout(Tensor locations, Tensor tile_offsets, int out_features, int in_features, int tile_m, int tile_k) -> Tensor");
  // Internal (CPU): the fp64 reference of tiled_csl_mm, the tests' oracle.
  m.def("_tiled_csl_mm_reference(Tensor x, Tensor values, Tensor locations, Tensor tile_offsets, int out_features, int tile_m, int tile_k, Tensor? bias) -> Tensor");
  // Internal: the dense weight W [M, K] of a packed one, unchecked, for the matmul ops' backward (dL/dx = dL/dy @ W,
  // csrc/ops/matmul_autograd.cpp, which also carries the ops' Autograd kernels). Implemented in Python by the formats'
  // unpackers (spmm/formats/dense_ops.py), every device. Tiled-CSL: from the stream, or where it is empty from the
  // first layout given (delta, words).
  m.def("_sparse24_dense(Tensor values, Tensor meta) -> Tensor");
  m.def("_tiled_csl_dense(Tensor values, Tensor locations, Tensor tile_offsets, int out_features, SymInt in_features, "
        "int tile_m, int tile_k, Tensor? words, Tensor? word_offsets, Tensor? delta_values, Tensor? delta_codes, "
        "Tensor? delta_offsets) -> Tensor");
  m.def("_spense_dense(Tensor dense_weight, Tensor values, Tensor meta, Tensor row_index) -> Tensor");
  // Internal (CPU): the layout checks of the CPU matmuls on their own (what formats' validate() runs).
  m.def("_sparse24_check(Tensor meta, int in_features) -> ()");
  m.def("_tiled_csl_check(Tensor locations, Tensor tile_offsets, int out_features, int in_features, int tile_m, int tile_k) -> ()");
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
  // Internal (CUDA): the Spense decode kernel, one launch over the dense rows (none: plain 2:4) and the canonical 2:4
  // rows as they are saved, output rows placed by row_index (None: identity); meta_fragments optionally replaces the
  // canonical metadata by the 2:4 decode layout's copy (_sparse24_decode_pack's dmeta). loader "auto" | "tma" |
  // "cp_async", splits 0 = the kernel's rule. Not on a user path until measured.
  m.def("_spense_decode_mm(Tensor x, Tensor? dense_weight, Tensor values, Tensor meta, Tensor? row_index, "
        "Tensor? bias, Tensor? meta_fragments=None, str loader=\"auto\", int splits=0) -> Tensor");
  // Internal (CUDA): the Tiled-CSL word layout (one 32-bit word per pair, runs padded to 16 bytes), made from the
  // stream; tiled_csl_mm runs it.
  m.def("_tiled_csl_words(Tensor values, Tensor locations, Tensor tile_offsets, int tile_m, int tile_k) -> (Tensor words, Tensor word_offsets)");
  // Internal: matmul on the Tiled-CSL delta layout. CUDA: a delta kernel -- kernel "auto" (the rule), "cuda_cores" or
  // "tensor_cores"; tokens_per_pass 0 (the rule's) or 1, 2, 4, 8 for the CUDA-core kernel. CPU: that kernel emulated
  // lane by lane (its index math; the CUDA-core kernel's fp32 order too), the tests' reference.
  m.def("_tiled_csl_delta_mm(Tensor x, Tensor values, Tensor codes, Tensor offsets, int out_features, Tensor? bias=None, "
        "str kernel=\"auto\", int tokens_per_pass=0) -> Tensor");
  // Spense: dense row block + 2:4 row block, output rows placed by row_index (dense rows first). CPU; CUDA (fp16/bf16:
  // the 2:4 rows through sparse24_mm's dispatch on the 2:4 block's kernel layouts, the dense rows through cuBLAS).
  m.def("spense_mm(Tensor x, Tensor dense_weight, Tensor values, Tensor meta, Tensor row_index, Tensor? bias=None, "
        "Tensor? dvalues=None, Tensor? dmeta=None, Tensor? sm90_e=None, Tensor? sm80_a=None, Tensor? sm80_e=None) "
        "-> Tensor");
  // Internal (CPU): the fp64 reference of spense_mm, the tests' oracle.
  m.def("_spense_mm_reference(Tensor x, Tensor dense_weight, Tensor values, Tensor meta, Tensor row_index, Tensor? bias) -> Tensor");
}
