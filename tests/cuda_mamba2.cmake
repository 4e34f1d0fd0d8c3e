# The CUDA Mamba2 mixer (core/cuda, -DZB_CUDA=ON) against the CPU mixer, a double reference of the
# SSD recurrence and the HF fixture. Exit 77 = skipped (no CUDA device).
if(ZB_CUDA)
  zb_test(test_cuda_mamba2 test_cuda_mamba2.c ${ZB_FIXTURES}/hf-mamba2-layer)
  target_link_libraries(test_cuda_mamba2 PRIVATE zebra_cuda)
  set_tests_properties(test_cuda_mamba2 PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu)
endif()
