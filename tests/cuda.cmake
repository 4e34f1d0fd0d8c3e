# GPU tests (label "gpu"): built with -DZB_CUDA=ON; each exits 77 with "SKIP: <reason>" where no
# GPU is present, which ctest reports as skipped. cluster/gpu-check.sh runs them on a GPU node.
if(ZB_CUDA)
  function(zb_cuda_test name src)
    if(NOT TARGET ${name})
      add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/${src} ${CMAKE_CURRENT_SOURCE_DIR}/zb_test.c
                             ${CMAKE_CURRENT_SOURCE_DIR}/zb_cuda_test.c)
      target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
      target_link_libraries(${name} PRIVATE zebra_lib)
    endif()
    add_test(NAME ${name} COMMAND ${name} ${ARGN})
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OPENBLAS_NUM_THREADS=1")
  endfunction()
  # every kernel of core/cuda/cuda_ops.h against its CPU kernel (f32 and bf16 modes)
  zb_cuda_test(test_cuda_ops test_cuda_ops.c ${ZB_FIXTURES})
  # the MLA mixer (training and latent-cache generation) against core/mla.c
  zb_cuda_test(test_cuda_mla test_cuda_mla.c)
  # hybrid generation (batched prefill, non-consecutive sequences, decode) against the CPU backend
  zb_cuda_test(test_gen_cuda test_gen_cuda.c ${CMAKE_SOURCE_DIR}/configs/tiny-zebra.json)
  # the same for a Llama whose decode attention takes the one-kernel path (head dim 64, 4 heads a
  # group), which runs against the three kernels of before too
  zb_cuda_test(test_gen_cuda_gqa test_gen_cuda.c ${CMAKE_CURRENT_SOURCE_DIR}/gqa64-gen.json)
  # the backend seam's table on the GPU, and the whole teacher and all-MLA model against the HF
  # fixtures through the CUDA table (float32 products: the CPU tests' bounds)
  function(zb_cuda_model_test name exe)
    add_test(NAME ${name} COMMAND ${exe} ${ARGN})
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OPENBLAS_NUM_THREADS=1")
  endfunction()
  zb_cuda_model_test(test_backend_cuda test_backend cuda)
  zb_cuda_model_test(test_hf_llama_cuda test_hf_llama_backend ${ZB_FIXTURES}/hf-llama-tiny --backend cuda)
  zb_cuda_model_test(test_hf_mla_cuda test_hf_llama_backend ${ZB_FIXTURES}/hf-mla-tiny --backend cuda)
  # the driver end to end on the GPU: train (CPU <-> GPU checkpoints), eval, generate
  add_test(NAME cli_cuda COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli_cuda.sh $<TARGET_FILE:zebra> ${ZB_FIXTURES}
                                 ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli_cuda PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OPENBLAS_NUM_THREADS=1")
endif()
