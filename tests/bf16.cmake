# bf16 weight storage for inference: the kernels vs sgemm, hf-llama-tiny held in bf16
# against HF's f32 logits and greedy tokens, a random hybrid bf16 vs f32, training refused.
zb_test(test_bf16 test_bf16.c ${ZB_FIXTURES}/hf-llama-tiny ${CMAKE_SOURCE_DIR}/configs/tiny-zebra.json)
# The CLI: --weights bf16 greedy == HF, --tp 2 == 1 rank, streamed init independent of ranks.
zb_cli_test(cli_bf16 cli_bf16.sh ${ZB_MPIEXEC} ${CMAKE_SOURCE_DIR}/configs/tiny-zebra.json
            $<TARGET_FILE:zb_store_compare>)
