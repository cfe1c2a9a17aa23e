// The Python module spmm._C, on the stable Python ABI: it only carries the op library (loading it runs the
// TORCH_LIBRARY registrations), says how it was built, and exports the kernel-choice rules spmm.ops uses.
#include <Python.h>

#include "kernels/cpu/cpu_dispatch_rules.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/sparse24/sparse24_dispatch_rules.h"
#include "kernels/sparse24/sparse24_sm90_configs.h"
#include "kernels/spense/spense_tiles.h"

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

// sparse24_decode_max_tokens(out_features, in_features, hopper_gemm) -> int (sparse24_dispatch_rules.h).
static PyObject* decode_max_tokens(PyObject*, PyObject* args) {
  long long m = 0, k = 0;
  int hopper_gemm = 0;
  if (!PyArg_ParseTuple(args, "LLp", &m, &k, &hopper_gemm)) return nullptr;
  return PyLong_FromLongLong(spmm::kernels::sparse24_decode_max_tokens(m, k, hopper_gemm != 0));
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
      PyModule_AddIntConstant(module, "spense_row_tile", spmm::kernels::kSpenseRowTile) < 0) {
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
