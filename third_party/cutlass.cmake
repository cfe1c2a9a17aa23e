# Finds the CUTLASS headers (header-only; no CUTLASS source lives in this repo) and defines the interface
# target `spmm_cutlass`. Looked for, in order:
#   1. CUTLASS_DIR (CMake or environment variable): a CUTLASS checkout or install (its include/ folder is used).
#   2. The `nvidia-cutlass` PyPI package installed in the build's Python (headers under
#      cutlass_library/source/include), located without importing it.
#   3. An `nvidia_cutlass-*.whl` file given by SPMM_CUTLASS_WHEEL, or lying in <repo>/.whl/: unpacked into the
#      build folder (the device machine has no network; the wheel travels with the tree).
# Sets SPMM_CUTLASS_FOUND, SPMM_CUTLASS_INCLUDE_DIR and SPMM_CUTLASS_VERSION.

set(SPMM_CUTLASS_FOUND OFF)
set(_cutlass_inc "")
set(_cutlass_from "")

if(NOT CUTLASS_DIR AND DEFINED ENV{CUTLASS_DIR})
  set(CUTLASS_DIR "$ENV{CUTLASS_DIR}")
endif()
if(CUTLASS_DIR)
  foreach(_cand "${CUTLASS_DIR}/include" "${CUTLASS_DIR}")
    if(EXISTS "${_cand}/cutlass/cutlass.h")
      set(_cutlass_inc "${_cand}")
      set(_cutlass_from "CUTLASS_DIR")
      break()
    endif()
  endforeach()
endif()

if(NOT _cutlass_inc)
  find_package(Python COMPONENTS Interpreter QUIET)
  if(Python_Interpreter_FOUND)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(list(s.submodule_search_locations)[0], 'source', 'include') if s else '')"
      OUTPUT_VARIABLE _cand OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_cand AND EXISTS "${_cand}/cutlass/cutlass.h")
      set(_cutlass_inc "${_cand}")
      set(_cutlass_from "the installed nvidia-cutlass package")
    endif()
  endif()
endif()

if(NOT _cutlass_inc)
  set(_wheel "${SPMM_CUTLASS_WHEEL}")
  if(NOT _wheel)
    file(GLOB _wheels "${CMAKE_CURRENT_SOURCE_DIR}/.whl/nvidia_cutlass-*.whl")
    if(_wheels)
      list(SORT _wheels)
      list(GET _wheels -1 _wheel)
    endif()
  endif()
  if(_wheel)
    set(_dest "${CMAKE_BINARY_DIR}/_deps/cutlass")
    if(NOT EXISTS "${_dest}/cutlass_library/source/include/cutlass/cutlass.h")
      file(ARCHIVE_EXTRACT INPUT "${_wheel}" DESTINATION "${_dest}" PATTERNS "cutlass_library/source/include/*")
    endif()
    set(_cutlass_inc "${_dest}/cutlass_library/source/include")
    set(_cutlass_from "${_wheel}")
  endif()
endif()

if(_cutlass_inc)
  file(STRINGS "${_cutlass_inc}/cutlass/version.h" _ver REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*MAJOR ([0-9]+).*MINOR ([0-9]+).*PATCH ([0-9]+).*" "\\1.\\2.\\3" SPMM_CUTLASS_VERSION "${_ver}")
  set(SPMM_CUTLASS_FOUND ON)
  set(SPMM_CUTLASS_INCLUDE_DIR "${_cutlass_inc}")
  add_library(spmm_cutlass INTERFACE)
  target_include_directories(spmm_cutlass SYSTEM INTERFACE "${_cutlass_inc}")
  message(STATUS "spmm: CUTLASS ${SPMM_CUTLASS_VERSION} headers from ${_cutlass_from}: ${_cutlass_inc}")
else()
  message(FATAL_ERROR "spmm: CUDA kernels need the CUTLASS headers. Install them with `pip install --no-deps "
                      "nvidia-cutlass`, or set CUTLASS_DIR, or put an nvidia_cutlass-*.whl file in .whl/.")
endif()
