# The teacher and the all-MLA model against HF transformers (../shared/fixtures).
zb_test(test_hf_llama test_hf_model.c ${ZB_FIXTURES}/hf-llama-tiny)
zb_test(test_hf_mla test_hf_model.c ${ZB_FIXTURES}/hf-mla-tiny)
# `zebra dump --grads` writes the same numbers.
zb_cli_test(cli_dump cli_dump.sh)
