# I/O module: safetensors, config, native HDF5 checkpoint, `zebra import`.
zb_test(test_safetensors test_safetensors.c ${ZB_FIXTURES})
zb_test(test_config test_config.c ${ZB_FIXTURES})
zb_test(test_store_import test_store_import.c ${ZB_FIXTURES})
zb_test_exe(zb_store_compare store_compare.c)
zb_cli_test(cli_import cli_import.sh $<TARGET_FILE:zb_store_compare>)
zb_mpi_test(test_store_import 2 test_store_import.c ${ZB_FIXTURES})
# All of them feed broken files on purpose: tests/run-tests reruns them under ASan.
set_tests_properties(test_safetensors test_config test_store_import test_store_import_np2 cli_import
                     PROPERTIES LABELS badinput)
