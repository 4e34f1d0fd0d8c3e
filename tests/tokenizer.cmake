# Llama 3 tokenizer: reference ids from HF tokenizers, round trips, speed, bad files.
zb_test(test_tokenizer test_tokenizer.c ${ZB_FIXTURES})
zb_cli_test(cli_tokenize cli_tokenize.sh)
# The Llama-3 chat template (core/chat.h) against HF apply_chat_template: text and ids.
zb_test(test_chat test_chat.c ${ZB_FIXTURES})
