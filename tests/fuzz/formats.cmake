# The formats with a fuzz harness tests/fuzz/fuzz_<format>.c (included by tests/fuzz.cmake and
# tests/fuzz/CMakeLists.txt).
set(ZB_FUZZ_FORMATS safetensors config tokenizer encode plan hdf5 shards)
# run.json's reader (core/runcfg.c) joins once it is in the tree
if(EXISTS ${CMAKE_SOURCE_DIR}/core/runcfg.h)
  list(APPEND ZB_FUZZ_FORMATS runcfg)
endif()
