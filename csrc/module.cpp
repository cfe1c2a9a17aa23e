// The Python module spmm._C, on the stable Python ABI: it only carries the op library (loading it runs the
// TORCH_LIBRARY registrations), says how it was built, and exports the kernel-choice rules spmm.ops uses.
#include <Python.h>

#include "kernels/sparse24/sparse24_dispatch_rules.h"
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

// sparse24_decode_max_tokens(out_features, in_features, hopper_gemm) -> int (sparse24_dispatch_rules.h).
static PyObject* decode_max_tokens(PyObject*, PyObject* args) {
  long long m = 0, k = 0;
  int hopper_gemm = 0;
  if (!PyArg_ParseTuple(args, "LLp", &m, &k, &hopper_gemm)) return nullptr;
  return PyLong_FromLongLong(spmm::kernels::sparse24_decode_max_tokens(m, k, hopper_gemm != 0));
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

static PyMethodDef spmm_methods[] = {
    {"sparse24_decode_max_tokens", decode_max_tokens, METH_VARARGS,
     "sparse24_decode_max_tokens(out_features, in_features, hopper_gemm): up to how many tokens the 2:4 decode kernel "
     "runs; above it a GEMM"},
    {"tiled_csl_layer_layout", tiled_csl_layer_layout, METH_VARARGS,
     "tiled_csl_layer_layout(tile_m, tile_k): the kernel layout a CUDA TiledCSLLinear derives: 'delta' (switch "
     "SPMM_TILED_CSL_DELTA=1), 'words' or '' (none: the stream kernel)"},
    {"tiled_csl_tile_count", tiled_csl_tile_count, METH_VARARGS,
     "tiled_csl_tile_count(m, k, tile_m, tile_k): tiles of a Tiled-CSL stream"},
    {"tiled_csl_word_rows", int_rule2<spmm::kernels::tiled_csl_word_rows>, METH_VARARGS,
     "tiled_csl_word_rows(nnz, tiles): rows of the word layout's `words`"},
    {"tiled_csl_delta_slice_width", int_rule2<spmm::kernels::tiled_csl_delta_slice_width>, METH_VARARGS,
     "tiled_csl_delta_slice_width(m, k): columns per K slice of the delta layout of an [m, k] weight"},
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
