# GPU communication (parallel/comm_nccl.h), label "gpu": two ranks, one GPU each; skipped (77)
# with fewer GPUs. cluster/gpu2-check.sh runs it on the 2-GPU machine.
if(ZB_CUDA)
  add_executable(test_nccl ${CMAKE_CURRENT_SOURCE_DIR}/test_nccl.c ${CMAKE_CURRENT_SOURCE_DIR}/zb_test.c)
  target_include_directories(test_nccl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(test_nccl PRIVATE zebra_lib)
  add_test(NAME test_nccl_np2 COMMAND ${ZB_MPIEXEC} --allow-run-as-root -n 2 $<TARGET_FILE:test_nccl>)
  set_tests_properties(test_nccl_np2 PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu PROCESSORS 2
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OPENBLAS_NUM_THREADS=1;NCCL_NVLS_ENABLE=0")
endif()
