# Data pipeline: `zebra data` shards, the loader (packing, DP split, resume), chat masks,
# preference pairs, and clean failures on bad input.
zb_test(test_data test_data.c ${ZB_FIXTURES})
zb_mpi_test(test_data_dp 2 test_data_dp.c ${ZB_FIXTURES})
zb_cli_test(cli_data cli_data.sh)
