# Llama 3 tokenizer: reference ids from HF tokenizers, round trips, speed, bad files.
zb_test(test_tokenizer test_tokenizer.c ${ZB_FIXTURES})
zb_cli_test(cli_tokenize cli_tokenize.sh)
