# Mamba2 (SSD) mixer: the HF fixture (output + every gradient) and the properties (chunk
# invariance, decode/prefill == forward, finite-difference gradients, SPEC §5 mapping).
zb_test(test_mamba2 test_mamba2.c ${ZB_FIXTURES}/hf-mamba2-layer)
zb_test(test_mamba2_props test_mamba2_props.c)
