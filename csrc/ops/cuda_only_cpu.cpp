// The CUDA-only ops called on CPU tensors: a NotImplementedError that names the op and the CPU op to use instead,
// rather than the dispatcher's "Could not run ... with arguments from the 'CPU' backend". One boxed kernel serves
// every op (it reads the op's name from the call), so each schema needs only its line in the table.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>

namespace spmm::ops {
namespace {

struct CpuAlternative {
  const char* op;       // the schema name without "spmm::"
  const char* instead;  // what runs on CPU
};

constexpr CpuAlternative kCudaOnly[] = {
    {"_sparse24_decode_pack", "nothing: CPU layers run spmm.ops.sparse24_mm on the canonical (values, meta)"},
    {"_sparse24_decode_mm", "spmm.ops.sparse24_mm(x, values, meta, bias) on the canonical layout"},
    {"_sparse24_sm90_pack", "nothing: CPU layers run spmm.ops.sparse24_mm on the canonical (values, meta)"},
    {"_sparse24_sm90_mm", "spmm.ops.sparse24_mm(x, values, meta, bias) on the canonical layout"},
    {"_sparse24_sm80_pack", "nothing: CPU layers run spmm.ops.sparse24_mm on the canonical (values, meta)"},
    {"_sparse24_sm80_mm", "spmm.ops.sparse24_mm(x, values, meta, bias) on the canonical layout"},
    {"_tiled_csl_words", "nothing: CPU layers run spmm.ops.tiled_csl_mm on the Tiled-CSL stream"},
    {"_spense_decode_mm", "spmm.ops.spense_mm(x, dense_weight, values, meta, row_index, bias)"},
};

void refuse_cpu_tensors(const c10::OperatorHandle& handle, torch::jit::Stack*) {
  const std::string& name = handle.schema().name();
  const char* instead = "the op without the leading underscore";
  for (const auto& entry : kCudaOnly)
    if (name == std::string("spmm::") + entry.op) instead = entry.instead;
  TORCH_CHECK_NOT_IMPLEMENTED(false, name, " runs on CUDA tensors only and was given CPU tensors; on CPU use ",
                              instead);
}

}  // namespace

TORCH_LIBRARY_IMPL(spmm, CPU, m) {
  for (const auto& entry : kCudaOnly)
    m.impl(entry.op, torch::CppFunction::makeFromBoxedFunction<&refuse_cpu_tensors>());
}

}  // namespace spmm::ops
