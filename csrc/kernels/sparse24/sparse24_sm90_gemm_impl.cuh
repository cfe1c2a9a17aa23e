// The CUTLASS 3.x sm_90a 2:4 sparse GEMM behind sparse24_sm90_gemm.h, shared by the instantiation files (one per
// config x dtype under sm90/, and sparse24_sm90_pack_kernel.cu for the metadata layout). Built like CUTLASS example 62
// (Hopper sparse GEMM): the sparse collective builder (wgmma.sp, TMA, warp-specialized) for the mainloop, and a TMA
// epilogue with the per-row-bias fusion instead of the example's plain one. The weight is not run through CUTLASS's
// compressor: for K-major A with K % 16 == 0 its compressed A is exactly our canonical values (row-major [M, K/2]),
// and its metadata E holds the canonical 4-bit codes, reordered (sparse24_sm90_pack_kernel.cu).
//
//   D[M, N] = A[M, K] * B[K, N] + bias[M] (broadcast along N)  ==  y^T = W x^T + bias
//   A = W: sparse, RowMajor (K-major): canonical values [M, K/2] + metadata E in CUTLASS's reordered layout
//   B = x^T: ColumnMajor, i.e. x row-major [N, K], leading dimension x_ld
//   D = y^T: ColumnMajor, i.e. y row-major [N, M], leading dimension y_ld; no source C (beta = 0)
//
// The compressed layout (Sm90GemmSparseConfig) depends on the element type and on min(tile K, 128) only; every config
// here has tile K = 128, so one metadata layout serves them all (checked by a static_assert below).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/bfloat16.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/half.h>

#include "kernels/sparse24/sparse24_sm90_gemm.h"

#if !defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)
#error "the sm90 2:4 GEMM needs CUDA >= 12.2 (CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)"
#endif

namespace spmm::kernels::sm90_sparse24 {

using namespace cute;

template <DType>
struct ElementOf;
template <>
struct ElementOf<DType::kFloat16> { using type = cutlass::half_t; };
template <>
struct ElementOf<DType::kBFloat16> { using type = cutlass::bfloat16_t; };

using ProblemShape = Shape<int, int, int, int>;  // (M, N, K, L), L = 1

// One GEMM instantiation: element type, CTA tile, cluster, mainloop and epilogue schedules, tile scheduler.
template <class Element, class TileShape_, class ClusterShape_, class KernelSchedule, class EpilogueSchedule,
          class TileScheduler = cutlass::gemm::PersistentScheduler>
struct GemmConfig {
  using ElementA = Element;                         // W (sparse: canonical values + metadata E)
  using LayoutTagA = cutlass::layout::RowMajor;     // K-major
  static constexpr int AlignmentA = 128 / cutlass::sizeof_bits<ElementA>::value;  // 16 bytes
  using ElementB = Element;                         // x^T
  using LayoutTagB = cutlass::layout::ColumnMajor;  // K-major: x row-major [N, K]
  static constexpr int AlignmentB = 128 / cutlass::sizeof_bits<ElementB>::value;  // 16 bytes
  using ElementC = void;                            // no source operand
  using ElementD = Element;                         // y^T
  using LayoutTagD = cutlass::layout::ColumnMajor;  // y row-major [N, M]
  static constexpr int AlignmentD = 128 / cutlass::sizeof_bits<ElementD>::value;  // 16 bytes (TMA store)
  using ElementBias = Element;                      // bias [M], one value per row of D
  using ElementAccumulator = float;
  using ElementCompute = float;                     // acc + bias in fp32, then one rounding to ElementD
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;

  // D = alpha * acc + beta * C + bias[m], run with alpha = 1 and beta = 0 (C is void).
  using FusionOp = cutlass::epilogue::fusion::LinCombPerRowBias<ElementD, ElementCompute, ElementBias, ElementD,
                                                                ElementCompute>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementCompute,
      ElementC, LayoutTagD, AlignmentD,
      ElementD, LayoutTagD, AlignmentD,
      EpilogueSchedule, FusionOp>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
      ElementA, LayoutTagA, AlignmentA,
      ElementB, LayoutTagB, AlignmentB,
      ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using TileSchedulerTag = TileScheduler;
  using GemmKernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
  using SparseConfig = typename CollectiveMainloop::SparseConfig;  // the compressed layout of A and E
  using ElementE = typename CollectiveMainloop::ElementE;          // metadata storage type (uint8_t)
};

// --- The configs (Sparse24Sm90Config). All have tile K = 128: one compressed layout; 128 K-elements of A are 64
// stored values = 128 bytes per row, exactly one 128-byte swizzle row of the TMA/wgmma shared-memory layout.
// ConfigOf maps each enum value to its CUTLASS types; a config's instantiation file names it.
template <Sparse24Sm90Config, class Element>
struct ConfigOf;

// Plain data-parallel 128x128 tiles (CUTLASS example 62's tile): the smallest square tile gives the most CTAs; no
// cluster, so an N of one tile (N <= 128) wastes no CTA. Two consumer warpgroups split the 128 rows (64 each).
template <class E>
struct ConfigOf<Sparse24Sm90Config::kCoop128x128, E>
    : GemmConfig<E, Shape<_128, _128, _128>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative> {};

// Large problems: 256 weight rows x 128 tokens per CTA (each consumer warpgroup 128x128) halves the x traffic per
// FLOP; the 2x1 cluster multicasts each x tile to the two CTAs of a cluster (neighbours along M). 3 stages.
template <class E>
struct ConfigOf<Sparse24Sm90Config::kCoop256x128Cluster2x1, E>
    : GemmConfig<E, Shape<_256, _128, _128>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative> {};

// Fewer output tiles than SMs (e.g. M = 4096, N <= 256): the 128x128 cooperative kernel with CUTLASS's stream-K
// scheduler, which splits the K loop of the few tiles over the idle SMs and reduces the partial sums in the workspace
// before the epilogue (deterministic order; it falls back to plain tiles when splitting would not pay).
template <class E>
struct ConfigOf<Sparse24Sm90Config::kCoop128x128StreamK, E>
    : GemmConfig<E, Shape<_128, _128, _128>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler> {};

// Decode-sized N (33-64 tokens): the weight is the whole of the traffic, so the tile covers only the tokens there
// are (64), which leaves shared memory for 6 stages of weight in flight, and stream-K spreads the K loop of the few
// row tiles over every SM (a 4096-row layer has 32 tiles for 132 SMs).
template <class E>
struct ConfigOf<Sparse24Sm90Config::kCoop128x64StreamK, E>
    : GemmConfig<E, Shape<_128, _64, _128>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler> {};

// The same for 9-32 tokens: a 32-token tile, 8 stages.
template <class E>
struct ConfigOf<Sparse24Sm90Config::kCoop128x32StreamK, E>
    : GemmConfig<E, Shape<_128, _32, _128>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                 cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler> {};

// The layout every config reads (and sparse24_sm90_pack_kernel.cu writes): that of the 128x128 fp16 config. fp16 and
// bf16 are both 16-bit, so their metadata layouts are one (checked where it is written).
template <class Element>
using SharedSparseConfig = typename ConfigOf<Sparse24Sm90Config::kCoop128x128, Element>::SparseConfig;

template <class Config>
typename Config::Gemm::Arguments make_arguments(const Sparse24Sm90GemmParams& p, int device, int sm_count) {
  using Element = typename Config::ElementA;
  using SparseConfig = typename Config::SparseConfig;
  const ProblemShape shape{static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k), 1};
  const typename Config::GemmKernel::StrideB stride_b = make_stride(p.x_ld, Int<1>{}, int64_t(0));  // (N, K, L)
  const typename Config::GemmKernel::StrideD stride_d = make_stride(Int<1>{}, p.y_ld, int64_t(0));  // (M, N, L)

  typename Config::Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      shape,
      {static_cast<const Element*>(p.a), SparseConfig::fill_layoutA(shape),
       static_cast<const Element*>(p.x), stride_b,
       static_cast<const typename Config::ElementE*>(p.e), SparseConfig::fill_layoutE(shape)},
      {{}, nullptr, stride_d, static_cast<Element*>(p.y), stride_d}};
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.beta = 0.0f;
  fusion.bias_ptr = static_cast<const Element*>(p.bias);  // nullptr: the broadcast reads zeros
  args.hw_info.device_id = device;
  args.hw_info.sm_count = sm_count;
  if (p.swizzle > 0) args.scheduler.max_swizzle_size = p.swizzle;
  if constexpr (std::is_same_v<typename Config::TileSchedulerTag, cutlass::gemm::StreamKScheduler>) {
    if (p.splits > 1) args.scheduler.splits = p.splits;
  }
  return args;
}

template <class Config>
cudaError_t run_gemm(const Sparse24Sm90GemmParams& p, int device, int sm_count, cudaStream_t stream) {
  using Gemm = typename Config::Gemm;
  const typename Gemm::Arguments args = make_arguments<Config>(p, device, sm_count);
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  const size_t needed = Gemm::get_workspace_size(args);
  if (needed > 0 && (p.workspace == nullptr || p.workspace_bytes < needed)) return cudaErrorInvalidValue;
  Gemm gemm;
  // initialize(): TMA descriptors + the kernel's dynamic shared-memory attribute; run(): the (cluster) launch.
  if (gemm.initialize(args, p.workspace, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidConfiguration;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

}  // namespace spmm::kernels::sm90_sparse24

namespace spmm::kernels::detail {

template <Sparse24Sm90Config kConfig, DType kDType>
cudaError_t Sparse24Sm90Kernel<kConfig, kDType>::workspace_bytes(const Sparse24Sm90GemmParams& p, int device,
                                                                 int sm_count, size_t* bytes) {
  using namespace sm90_sparse24;
  using Config = ConfigOf<kConfig, typename ElementOf<kDType>::type>;
  static_assert(std::is_same_v<typename Config::SparseConfig, SharedSparseConfig<typename ElementOf<kDType>::type>>,
                "every config must read the one metadata layout sparse24_sm90_pack_meta writes");
  Sparse24Sm90GemmParams shape = p;  // only sizes and knobs matter; strides as for contiguous operands
  shape.x_ld = p.k;
  shape.y_ld = p.m;
  *bytes = Config::Gemm::get_workspace_size(make_arguments<Config>(shape, device, sm_count));
  return cudaSuccess;
}

template <Sparse24Sm90Config kConfig, DType kDType>
cudaError_t Sparse24Sm90Kernel<kConfig, kDType>::gemm(const Sparse24Sm90GemmParams& p, int device, int sm_count,
                                                      cudaStream_t stream) {
  return sm90_sparse24::run_gemm<sm90_sparse24::ConfigOf<kConfig, typename sm90_sparse24::ElementOf<kDType>::type>>(
      p, device, sm_count, stream);
}

}  // namespace spmm::kernels::detail
