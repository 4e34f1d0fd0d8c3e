# Training across ranks (SPEC §9): `zebra train --tp N` and data parallelism with
# bucketed overlapped reduction and ZeRO-1, on 2 and 4 ranks; per-step losses against 1 rank.
zb_cli_test(cli_train_parallel_np2 cli_train_parallel.sh ${CMAKE_SOURCE_DIR} ${ZB_MPIEXEC} 2)
zb_cli_test(cli_train_parallel_np4 cli_train_parallel.sh ${CMAKE_SOURCE_DIR} ${ZB_MPIEXEC} 4)
set_tests_properties(cli_train_parallel_np2 PROPERTIES PROCESSORS 2)
set_tests_properties(cli_train_parallel_np4 PROPERTIES PROCESSORS 4)
# Pipeline parallel: the layer cost model and the optimal contiguous partition (parallel/pp.h).
zb_test(test_pp test_pp.c ${CMAKE_SOURCE_DIR}/configs ${CMAKE_CURRENT_SOURCE_DIR})
zb_test_exe(zb_path zb_path.c)
# Hostile inputs and faults (issue 13): out-of-vocabulary ids, disk full on 1 and 2 ranks,
# corrupt and NaN checkpoints, strict numbers, bad tokenizers / plans / configs / paths, one
# rank's error and a killed rank under mpiexec.
zb_cli_test(cli_faults cli_faults.sh ${CMAKE_SOURCE_DIR} ${ZB_MPIEXEC})
set_tests_properties(cli_faults PROPERTIES PROCESSORS 2)
