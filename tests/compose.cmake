# Composing a hybrid from a Llama target (SPEC.md §5-§7): SVD-initialised MLA, Mamba2 mapping,
# the hf-llama-tiny fixture composed; `zebra compose` / `zebra smart` on the command line;
# `zebra info` of the paper's configs gives the paper's KV-cache ratios.
zb_test(test_compose test_compose.c ${ZB_FIXTURES} ${CMAKE_CURRENT_SOURCE_DIR})
zb_cli_test(cli_compose cli_compose.sh ${CMAKE_SOURCE_DIR} $<TARGET_FILE:zb_store_compare>)
zb_cli_test(cli_info_paper cli_info_paper.sh ${CMAKE_SOURCE_DIR})
