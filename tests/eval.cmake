# zebra eval: multiple-choice log-likelihoods against HF transformers' logits.
zb_test_exe(eval_check eval_check.c)
zb_cli_test(cli_eval cli_eval.sh $<TARGET_FILE:eval_check>)
