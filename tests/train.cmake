# Training: optimizer, stage losses and gradients, the train command end to end.
zb_test(test_train_optim test_optim.c)
zb_test(test_train_stages test_train_stages.c ${CMAKE_SOURCE_DIR}/configs)
zb_cli_test(cli_train cli_train.sh ${CMAKE_SOURCE_DIR})
