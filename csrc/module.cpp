// The Python module spmm._C, on the stable Python ABI: it only carries the op library (loading it runs the
// TORCH_LIBRARY registrations), says how it was built, and exports the kernel-choice rules and the kernel layouts'
// sizes spmm.ops uses.
#include <Python.h>

#include <cstdint>
#include <string_view>

#include "kernels/cpu/cpu_dispatch_rules.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/sparse24/sparse24_dispatch_rules.h"
#include "kernels/sparse24/sparse24_kernel_layouts.h"
#include "kernels/sparse24/sparse24_sm90_configs.h"
#include "kernels/spense/spense_tiles.h"
#include "kernels/tiled_csl/tiled_csl_delta_layout.h"
#include "kernels/tiled_csl/tiled_csl_rules.h"

// The Hopper GEMM's config names, index = config number (a tuple of str).
static PyObject* sm90_config_names() {
  PyObject* names = PyTuple_New(spmm::kernels::kSparse24Sm90NumConfigs);
  if (names == nullptr) return nullptr;
  for (int i = 0; i < spmm::kernels::kSparse24Sm90NumConfigs; ++i) {
    PyObject* name = PyUnicode_FromString(spmm::kernels::kSparse24Sm90ConfigNames[i]);
    if (name == nullptr) {
      Py_DECREF(names);
      return nullptr;
    }
    PyTuple_SetItem(names, i, name);  // steals the reference
  }
  return names;
}

namespace {

using spmm::kernels::Sparse24Kernel;

// Kernel names as spmm.ops spells them; kDecode as a prefill GEMM means "none" (None in Python).
const char* kernel_name(Sparse24Kernel kernel) {
  switch (kernel) {
    case Sparse24Kernel::kSm90Gemm: return "sm90";
    case Sparse24Kernel::kSm80Gemm: return "sm80";
    default: return "decode";
  }
}

PyObject* gemm_or_none(Sparse24Kernel gemm) {
  if (gemm == Sparse24Kernel::kDecode) Py_RETURN_NONE;
  return PyUnicode_FromString(kernel_name(gemm));
}

// "sm90" / "sm80" / None -> the kernel; false (with a Python ValueError set) for anything else.
bool parse_gemm(PyObject* name, Sparse24Kernel* gemm) {
  if (name == Py_None) {
    *gemm = Sparse24Kernel::kDecode;
    return true;
  }
  const bool is_str = PyUnicode_Check(name);
  if (is_str && PyUnicode_CompareWithASCIIString(name, "sm90") == 0) {
    *gemm = Sparse24Kernel::kSm90Gemm;
    return true;
  }
  if (is_str && PyUnicode_CompareWithASCIIString(name, "sm80") == 0) {
    *gemm = Sparse24Kernel::kSm80Gemm;
    return true;
  }
  PyErr_SetString(PyExc_ValueError, "gemm must be \"sm90\", \"sm80\" or None");
  return false;
}

}  // namespace

// sparse24_decode_max_tokens(out_features, in_features, hopper_gemm) -> int (sparse24_dispatch_rules.h).
static PyObject* decode_max_tokens(PyObject*, PyObject* args) {
  long long m = 0, k = 0;
  int hopper_gemm = 0;
  if (!PyArg_ParseTuple(args, "LLp", &m, &k, &hopper_gemm)) return nullptr;
  return PyLong_FromLongLong(spmm::kernels::sparse24_decode_max_tokens(m, k, hopper_gemm != 0));
}

// sparse24_prefill_gemm(out_features, in_features, compute_capability[, sm90_built, sm80_built]) -> "sm90" | "sm80" |
// None; the built flags default to this build's kernel families (tests pass others to check the rule on any build).
static PyObject* prefill_gemm(PyObject*, PyObject* args) {
  long long m = 0, k = 0;
  int capability = 0;
  int sm90_built = spmm::kernels::kSparse24Sm90Built, sm80_built = spmm::kernels::kSparse24Sm80Built;
  if (!PyArg_ParseTuple(args, "LLi|pp", &m, &k, &capability, &sm90_built, &sm80_built)) return nullptr;
  return gemm_or_none(spmm::kernels::sparse24_prefill_gemm(m, k, capability, sm90_built != 0, sm80_built != 0));
}

// sparse24_pick_kernel(out_features, in_features, tokens, has_decode, gemm) -> "decode" | "sm90" | "sm80".
static PyObject* pick_kernel(PyObject*, PyObject* args) {
  long long m = 0, k = 0, n = 0;
  int has_decode = 0;
  PyObject* gemm_name = nullptr;
  if (!PyArg_ParseTuple(args, "LLLpO", &m, &k, &n, &has_decode, &gemm_name)) return nullptr;
  Sparse24Kernel gemm = Sparse24Kernel::kDecode;
  if (!parse_gemm(gemm_name, &gemm)) return nullptr;
  return PyUnicode_FromString(kernel_name(spmm::kernels::sparse24_pick_kernel(m, k, n, has_decode != 0, gemm)));
}

// Tiled-CSL (tiled_csl_rules.h): f(a, b) -> int of two int64 arguments.
template <int64_t (*kRule)(int64_t, int64_t)>
static PyObject* int_rule2(PyObject*, PyObject* args) {
  long long a = 0, b = 0;
  if (!PyArg_ParseTuple(args, "LL", &a, &b)) return nullptr;
  return PyLong_FromLongLong(kRule(a, b));
}

static PyObject* tiled_csl_tile_count(PyObject*, PyObject* args) {
  long long m = 0, k = 0, tile_m = 0, tile_k = 0;
  if (!PyArg_ParseTuple(args, "LLLL", &m, &k, &tile_m, &tile_k)) return nullptr;
  return PyLong_FromLongLong(spmm::kernels::tiled_csl_tile_count(m, k, tile_m, tile_k));
}

static PyObject* tiled_csl_layer_layout(PyObject*, PyObject* args) {
  long long tile_m = 0, tile_k = 0;
  if (!PyArg_ParseTuple(args, "LL", &tile_m, &tile_k)) return nullptr;
  return PyUnicode_FromString(spmm::kernels::tiled_csl_layout_name(spmm::kernels::tiled_csl_layer_layout(tile_m, tile_k)));
}

// sparse24_pack_shapes(kernel, out_features, in_features) -> the shapes of the tensors the kernel's pack op returns
// for a weight [out_features, in_features] (sparse24_kernel_layouts.h): "decode" -> (dvalues, dmeta), "sm90" -> (e,),
// "sm80" -> (a, e); each shape a tuple of ints.
static PyObject* pack_shapes(PyObject*, PyObject* args) {
  const char* kernel = nullptr;
  long long m = 0, k = 0;
  if (!PyArg_ParseTuple(args, "sLL", &kernel, &m, &k)) return nullptr;
  if (m < 0 || k < 0 || m > INT32_MAX || k > INT32_MAX) {  // (bounds first: the sizes below then cannot overflow)
    PyErr_SetString(PyExc_ValueError, "out_features and in_features must lie in [0, 2^31)");
    return nullptr;
  }
  const std::string_view name(kernel);
  if (name == "decode") {
    const auto s = spmm::kernels::sparse24_decode_shape(m, k);
    return Py_BuildValue("((LL)(LL))", static_cast<long long>(s.row_tiles()), static_cast<long long>(s.values_cols()),
                         static_cast<long long>(s.row_tiles()), static_cast<long long>(s.meta_cols()));
  }
  if (name == "sm90") return Py_BuildValue("((L))", static_cast<long long>(spmm::kernels::sparse24_sm90_e_bytes(m, k)));
  if (name == "sm80") {
    return Py_BuildValue("((LL)(L))", static_cast<long long>(spmm::kernels::sparse24_sm80_padded_rows(m)),
                         static_cast<long long>(spmm::kernels::sparse24_sm80_padded_cols(k) / 2),
                         static_cast<long long>(spmm::kernels::sparse24_sm80_meta_elements(m, k)));
  }
  PyErr_SetString(PyExc_ValueError, "kernel must be \"decode\", \"sm90\" or \"sm80\"");
  return nullptr;
}

// cpu_isa() -> str: the instruction set the CPU kernels run now (cpu_isa.h).
static PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(spmm::kernels::cpu::isa_name(spmm::kernels::cpu::active_isa()));
}

// cpu_isa_detected() -> str: the best instruction set this CPU and build run.
static PyObject* cpu_isa_detected(PyObject*, PyObject*) {
  return PyUnicode_FromString(spmm::kernels::cpu::isa_name(spmm::kernels::cpu::detected_isa()));
}

// set_cpu_isa(name): force "avx512", "avx2", "portable" or "auto"; ValueError for a name this CPU cannot run.
static PyObject* set_cpu_isa(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  if (!spmm::kernels::cpu::set_forced_isa(name)) {
    PyErr_Format(PyExc_ValueError, "set_cpu_isa: %s is not one of avx512, avx2, portable, auto that this CPU runs "
                 "(it runs up to %s)", name, spmm::kernels::cpu::isa_name(spmm::kernels::cpu::detected_isa()));
    return nullptr;
  }
  Py_RETURN_NONE;
}

// set_cpu_path(name): "register", "gemm", "tokens" or "auto"; ValueError for another name (cpu_isa.h).
static PyObject* set_cpu_path(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  if (!spmm::kernels::cpu::set_forced_path(name)) {
    PyErr_Format(PyExc_ValueError, "set_cpu_path: %s is not one of register, gemm, tokens, auto", name);
    return nullptr;
  }
  Py_RETURN_NONE;
}

// cpu_register_max_tokens(format, dtype_code, density) -> int (cpu_dispatch_rules.h).
static PyObject* cpu_register_max_tokens(PyObject*, PyObject* args) {
  int format = 0, dtype_code = 0;
  double density = 0.0;
  if (!PyArg_ParseTuple(args, "iid", &format, &dtype_code, &density)) return nullptr;
  return PyLong_FromLongLong(spmm::kernels::cpu::register_max_tokens(
      static_cast<spmm::kernels::cpu::CpuFormat>(format), dtype_code, density));
}

// cpu_bitmap_words(out_features, in_features, tile_m, tile_k) -> int: the length of tiled_csl_cpu_layout's bitmap.
static PyObject* cpu_bitmap_words(PyObject*, PyObject* args) {
  long long m = 0, k = 0, tile_m = 0, tile_k = 0;
  if (!PyArg_ParseTuple(args, "LLLL", &m, &k, &tile_m, &tile_k)) return nullptr;
  namespace kc = spmm::kernels::cpu;
  return PyLong_FromLongLong(kc::ceil_div(m, tile_m) * kc::ceil_div(k, tile_k) * tile_m * kc::bitmap_words_per_row(tile_k));
}

static PyMethodDef spmm_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "cpu_isa(): the instruction set the CPU kernels run now"},
    {"cpu_isa_detected", cpu_isa_detected, METH_NOARGS, "cpu_isa_detected(): the best one this CPU and build run"},
    {"set_cpu_isa", set_cpu_isa, METH_VARARGS,
     "set_cpu_isa(name): run the CPU kernels for avx512, avx2, portable, or auto (the detected one)"},
    {"set_cpu_path", set_cpu_path, METH_VARARGS,
     "set_cpu_path(name): for tuning and tests, force the CPU ops' register kernels, GEMM path or (Tiled-CSL) token kernel, "
     "or auto (the rule)"},
    {"cpu_bitmap_words", cpu_bitmap_words, METH_VARARGS,
     "cpu_bitmap_words(out_features, in_features, tile_m, tile_k): int64 words of tiled_csl_cpu_layout's bitmap"},
    {"cpu_register_max_tokens", cpu_register_max_tokens, METH_VARARGS,
     "cpu_register_max_tokens(format, dtype_code, density): up to how many tokens the CPU register kernels run "
     "(format 0 2:4, 1 Tiled-CSL, 2 Spense; dtype_code 0 fp32, 1 bf16, 2 fp16); above it torch's GEMM on expanded "
     "weight blocks"},
    {"sparse24_decode_max_tokens", decode_max_tokens, METH_VARARGS,
     "sparse24_decode_max_tokens(out_features, in_features, hopper_gemm): up to how many tokens the 2:4 decode kernel "
     "runs; above it a GEMM"},
    {"sparse24_prefill_gemm", prefill_gemm, METH_VARARGS,
     "sparse24_prefill_gemm(out_features, in_features, compute_capability[, sm90_built, sm80_built]): the 2:4 prefill "
     "GEMM this build (or one with the given kernel families) runs for the weight on a device of that capability "
     "(major * 10 + minor): 'sm90', 'sm80' or None"},
    {"sparse24_pick_kernel", pick_kernel, METH_VARARGS,
     "sparse24_pick_kernel(out_features, in_features, tokens, has_decode, gemm): the 2:4 kernel a call of `tokens` "
     "rows takes, given the layouts at hand: 'decode', 'sm90' or 'sm80'"},
    {"tiled_csl_layer_layout", tiled_csl_layer_layout, METH_VARARGS,
     "tiled_csl_layer_layout(tile_m, tile_k): the kernel layout a CUDA TiledCSLLinear derives: 'delta' (switch "
     "SPMM_TILED_CSL_DELTA=1), 'words' or '' (none: the stream kernel)"},
    {"tiled_csl_tile_count", tiled_csl_tile_count, METH_VARARGS,
     "tiled_csl_tile_count(m, k, tile_m, tile_k): tiles of a Tiled-CSL stream"},
    {"tiled_csl_word_rows", int_rule2<spmm::kernels::tiled_csl_word_rows>, METH_VARARGS,
     "tiled_csl_word_rows(nnz, tiles): rows of the word layout's `words`"},
    {"tiled_csl_delta_slice_width", int_rule2<spmm::kernels::tiled_csl_delta_slice_width>, METH_VARARGS,
     "tiled_csl_delta_slice_width(m, k): columns per K slice of the delta layout of an [m, k] weight"},
    {"sparse24_pack_shapes", pack_shapes, METH_VARARGS,
     "sparse24_pack_shapes(kernel, out_features, in_features): the shapes of the tensors the kernel's pack op "
     "(_sparse24_<kernel>_pack) returns for the weight: 'decode' -> (dvalues, dmeta), 'sm90' -> (e,), 'sm80' -> (a, e)"},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef spmm_module = {PyModuleDef_HEAD_INIT, "_C", "spmm native ops (registered as torch.ops.spmm)",
                                         -1, spmm_methods, nullptr, nullptr, nullptr, nullptr};

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&spmm_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "cuda_built", SPMM_WITH_CUDA) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", SPMM_CUDA_ARCHS) < 0 ||
      PyModule_AddIntConstant(module, "sm90_row_multiple", spmm::kernels::kSm90RowMultiple) < 0 ||
      PyModule_AddIntConstant(module, "sm90_col_multiple", spmm::kernels::kSm90ColMultiple) < 0 ||
      PyModule_AddIntConstant(module, "spense_row_tile", spmm::kernels::kSpenseRowTile) < 0 ||
      PyModule_AddIntConstant(module, "tiled_csl_delta_chunk", spmm::kernels::delta::kChunk) < 0 ||
      PyModule_AddIntConstant(module, "tiled_csl_delta_group_rows", spmm::kernels::delta::kGroupRows) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  PyObject* names = sm90_config_names();
  if (names == nullptr || PyModule_AddObject(module, "sm90_configs", names) < 0) {  // steals `names` on success
    Py_XDECREF(names);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
