# The compute-backend seam (core/backend.h): the table, its plain-loop entries against the host,
# and the HF comparisons of the teacher and the all-MLA model run through zb_backend_get("cpu")
# with the OpenMP decode kernels on.
zb_test(test_backend test_backend.c cpu)
zb_test(test_hf_llama_backend test_hf_model.c ${ZB_FIXTURES}/hf-llama-tiny --backend cpu)
zb_test(test_hf_mla_backend test_hf_model.c ${ZB_FIXTURES}/hf-mla-tiny --backend cpu)
