# MLA layer (SPEC.md §3): gradients, absorbed decode, hf-mla-tiny layer 0.
zb_test(test_mla test_mla.c ${ZB_FIXTURES})
