# `zebra plan`: the dry run of a parallel job's grid (launch/cmd_plan.c)
zb_cli_test(cli_plan cli_plan.sh ${CMAKE_SOURCE_DIR})
