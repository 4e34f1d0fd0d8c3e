# Generation for a batch of prompts: per-sequence positions in the caches, and the
# `zebra generate` command (prompt files, chat template, stop tokens, sampling streams, TP).
# zb_gen: prompts of different lengths batched == each alone (logits and greedy tokens), for
# the HF llama, the HF all-MLA model and a random attention-free hybrid (MLA + Mamba2).
zb_test(test_gen_batch test_gen_batch.c ${ZB_FIXTURES}/hf-llama-tiny ${ZB_FIXTURES}/hf-mla-tiny
        ${CMAKE_SOURCE_DIR}/configs/tiny-zebra.json ${CMAKE_CURRENT_SOURCE_DIR}/tp-hybrid.json)
# The CLI: batched == alone (greedy, sampled, --tp 2), HF greedy tokens, chat ids, bad input.
zb_cli_test(cli_generate cli_generate.sh ${ZB_MPIEXEC} ${CMAKE_SOURCE_DIR}/configs/tiny-zebra.json)
# zebra bench on the demo teacher / hybrid: table rows, ceilings, cache bytes == zebra info, SVG.
zb_cli_test(cli_bench cli_bench.sh ${CMAKE_SOURCE_DIR})
