# The authors' released Zebra-Llama format (core/release.h, issue 14): fixtures/zebra-release-tiny,
# written and run by their code, loaded as it is: logits, hidden states and greedy tokens on 1
# rank, at --tp 2 and at --pp 2.
zb_test(test_release test_release.c ${ZB_FIXTURES}/zebra-release-tiny 1 1)
zb_mpi_test(test_release_tp 2 test_release.c ${ZB_FIXTURES}/zebra-release-tiny 2 1)
zb_mpi_test(test_release_pp 2 test_release.c ${ZB_FIXTURES}/zebra-release-tiny 1 2)
