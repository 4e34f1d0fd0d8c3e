# Tensor parallelism (parallel/tp.h, SPEC §9): logits, loss, every gradient, KL,
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
# Pipeline parallel (parallel/pp.h): stage-local models, the residual and its gradient sent
# between stages, the tied embedding's gradient summed between first and last stage; loss and
# every gradient == 1 rank. PP=2, TP=2 x PP=2, and PP=4 / PP=2 x DP=2 on the HF llama (tied).
zb_mpi_test(test_pp_model 2 test_pp_model.c ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json 1 2)
zb_mpi_test(test_pp_model 4 test_pp_model.c ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json 2 2)
zb_mpi_test(test_pp_model_llama 2 test_pp_model.c ${ZB_FIXTURES}/hf-llama-tiny 1 2)
zb_mpi_test(test_pp_model_llama 4 test_pp_model.c ${ZB_FIXTURES}/hf-llama-tiny 2 2)
# Checkpoints of training (parallel/model_io.h): weights and AdamW moments by one slice writer,
# the moments ZeRO-1-sharded (each DP rank its range, ranges ending inside 2-D and 3-D rows) or
# not, at DP=3 and TP=2 x DP=2; loaded at 1 rank and on the grid, bitwise.
zb_mpi_test(test_ckpt_io 3 test_ckpt_io.c ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json 1)
zb_mpi_test(test_ckpt_io 4 test_ckpt_io.c ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json 2)
