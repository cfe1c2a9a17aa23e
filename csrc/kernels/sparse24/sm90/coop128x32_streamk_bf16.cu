// One sm_90a 2:4 GEMM instantiation: config coop128x32_streamk, bf16.
// One file per config x dtype, so nvcc builds them in parallel and a change recompiles only its own files.
#include "kernels/sparse24/sparse24_sm90_gemm_impl.cuh"

template struct spmm::kernels::detail::Sparse24Sm90Kernel<spmm::kernels::Sparse24Sm90Config::kCoop128x32StreamK,
                                                          spmm::kernels::DType::kBFloat16>;
