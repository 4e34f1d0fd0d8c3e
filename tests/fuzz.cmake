# The fuzz harnesses (tests/fuzz) outside libFuzzer: replay.c feeds each one the hand-written
# seeds, the seeds made from the fixtures (test fuzz_seeds) and every input that once crashed
# its parser (tests/fuzz/regress/<format>/), so that the fixes stay fixed in every build; label
# badinput: tests/run-tests replays them under ASan + UBSan too (UB stops the run there).
include(${CMAKE_CURRENT_SOURCE_DIR}/fuzz/formats.cmake)
add_executable(zb_make_seeds ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/make_seeds.c)
target_link_libraries(zb_make_seeds PRIVATE zebra_lib)
add_test(NAME fuzz_seeds COMMAND zb_make_seeds ${ZB_FIXTURES} ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/fuzz-seeds)
set_tests_properties(fuzz_seeds PROPERTIES FIXTURES_SETUP fuzz_seeds LABELS badinput
  ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
foreach(f ${ZB_FUZZ_FORMATS})
  add_executable(replay_${f} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_${f}.c ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/replay.c)
  target_link_libraries(replay_${f} PRIVATE zebra_lib)
  target_compile_definitions(replay_${f} PRIVATE ZB_FUZZ_FIXTURES="${ZB_FIXTURES}")
  set(dirs ${CMAKE_BINARY_DIR}/fuzz-seeds/${f})
  foreach(d seeds regress)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/${d}/${f})
      list(APPEND dirs ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/${d}/${f})
    endif()
  endforeach()
  add_test(NAME fuzz_regress_${f} COMMAND replay_${f} ${dirs})
  set_tests_properties(fuzz_regress_${f} PROPERTIES FIXTURES_REQUIRED fuzz_seeds LABELS badinput
    ENVIRONMENT "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
endforeach()
