// Instantiates the sm_90a 2:4 sparse GEMM (all configs of sparse24_sm90_gemm_impl.cuh) and its compressor for fp16.
// One file per dtype, so the two compile in parallel and a change to one dtype's list recompiles only it.
#include "kernels/sparse24/sparse24_sm90_gemm_impl.cuh"

template struct spmm::kernels::detail::Sparse24Sm90Impl<spmm::kernels::DType::kFloat16>;
