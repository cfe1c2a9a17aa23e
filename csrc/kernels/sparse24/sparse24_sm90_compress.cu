// Instantiates CUTLASS's sm_90a structured-sparse compressor (sparse24_sm90_gemm_impl.cuh) for fp16 and bf16; the
// GEMM configs are instantiated one per file under sm90/.
#include "kernels/sparse24/sparse24_sm90_gemm_impl.cuh"

template struct spmm::kernels::detail::Sparse24Sm90Compressor<spmm::kernels::DType::kFloat16>;
template struct spmm::kernels::detail::Sparse24Sm90Compressor<spmm::kernels::DType::kBFloat16>;
