# The pipelined greedy decode of `zebra generate` (ZB_GEN_ASYNC): the tokens of the step-by-step
# loop, token for token (one prompt, slots refilled, a stop token in the middle, a full context,
# --tp 2). The CPU run forces it on (ZB_GEN_ASYNC=1); the GPU run (label gpu) is the default.
zb_cli_test(cli_gen_async cli_gen_async.sh ${ZB_MPIEXEC} ${CMAKE_SOURCE_DIR} cpu)
if(ZB_CUDA)
  add_test(NAME cli_gen_async_cuda COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli_gen_async.sh $<TARGET_FILE:zebra>
                                           ${ZB_FIXTURES} ${ZB_MPIEXEC} ${CMAKE_SOURCE_DIR} cuda)
  set_tests_properties(cli_gen_async_cuda PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OPENBLAS_NUM_THREADS=1")
endif()
