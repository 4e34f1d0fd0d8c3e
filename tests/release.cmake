# The authors' released Zebra-Llama format (core/release.h, issue 14): fixtures/zebra-release-tiny,
# written and run by their code, loaded as it is: logits, hidden states and greedy tokens on 1
# rank, at --tp 2 and at --pp 2.
zb_test(test_release test_release.c ${ZB_FIXTURES}/zebra-release-tiny 1 1)
zb_mpi_test(test_release_tp 2 test_release.c ${ZB_FIXTURES}/zebra-release-tiny 2 1)
zb_mpi_test(test_release_pp 2 test_release.c ${ZB_FIXTURES}/zebra-release-tiny 1 2)
# The driver: the README's user guide on the release (info, chat generation, eval, sft from the
# release directory, export), its greedy tokens at --tp 2 / --pp 2, export / import round trips
# (bit for bit, bf16, HF sharding, HF Llama), refusals, and broken release directories.
zb_cli_test(cli_release cli_release.sh ${CMAKE_SOURCE_DIR} $<TARGET_FILE:zb_store_compare> ${ZB_MPIEXEC} good)
zb_cli_test(cli_release_bad cli_release.sh ${CMAKE_SOURCE_DIR} $<TARGET_FILE:zb_store_compare> ${ZB_MPIEXEC} bad)
set_tests_properties(cli_release_bad PROPERTIES LABELS badinput)
# YaRN MLA in training under TP and PP: the release checkpoint (loaded by slices, names mapped)
# at TP=2 and PP=2 against 1 rank: logits, loss, every gradient, generation, checkpoint round trips.
zb_mpi_test(test_tp_release 2 test_tp.c ${ZB_FIXTURES}/zebra-release-tiny 2)
zb_mpi_test(test_pp_model_release 2 test_pp_model.c ${ZB_FIXTURES}/zebra-release-tiny 1 2)
