# Tensor parallelism (parallel/tp.h, SPEC §9, issue 6): logits, loss, every gradient, KL,
# greedy generation and the checkpoint round trip across layouts against the 1-rank model.
# A hybrid (attention + MLA + Mamba2, dims divisible by 4) at TP=2 and TP=4; the HF llama
# fixture at TP=2 (and TP=2 x DP=2 on 4 ranks; TP=4 must be refused: 2 KV heads); the HF
# all-MLA fixture at TP=2 and TP=4.
zb_mpi_test(test_tp 2 test_tp.c ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json 2)
zb_mpi_test(test_tp 4 test_tp.c ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json 4)
zb_mpi_test(test_tp_llama 2 test_tp.c ${ZB_FIXTURES}/hf-llama-tiny 2)
zb_mpi_test(test_tp_llama 4 test_tp.c ${ZB_FIXTURES}/hf-llama-tiny 2)
zb_mpi_test(test_tp_mla 2 test_tp.c ${ZB_FIXTURES}/hf-mla-tiny 2)
zb_mpi_test(test_tp_mla 4 test_tp.c ${ZB_FIXTURES}/hf-mla-tiny 4)
# The driver: `mpiexec -n N zebra generate --tp N` == 1 rank, `zebra dump --tp 2 --grads` == HF.
zb_cli_test(cli_tp cli_tp.sh ${ZB_MPIEXEC} ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json)
