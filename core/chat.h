/* chat.h — the Llama-3 chat template, once (tokenizer_config.json's chat_template of Llama 3):
 *
 *   {bos_token}   then for each message
 *   <|start_header_id|>{role}<|end_header_id|>\n\n{content | trim}<|eot_id|>
 *   then <|start_header_id|>assistant<|end_header_id|>\n\n
 *
 * The template ends with the assistant header whatever HF's add_generation_prompt says (it
 * does not read it): that is the rendering of a prompt (reply_header = 1). A training document
 * is the conversation itself, nothing awaits a reply: reply_header = 0 leaves the header out.
 * trim is Jinja's (Python's str.strip: Unicode white space at both ends). Encoding tokenizes
 * each piece between the special tokens, which the Llama-3 pre-tokenizer never lets a token
 * cross: the ids equal those of the whole rendered text (tests/test_chat.c against HF's
 * apply_chat_template, ../shared/fixtures/llama3-tokenizer/chat_ref.json). */
#ifndef ZB_CHAT_H
#define ZB_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct {
    const char *role, *content;
} zb_chat_msg;

/* Token ids with a loss mask beside them (1: an assistant message's content and its <|eot_id|>,
 * what SFT learns). Grown by zb_chat_encode; free with zb_chat_ids_free. */
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
} zb_chat_ids;

/* The rendered text (malloc'd, NUL-terminated); bos_token is the tokenizer's (t may be NULL:
 * "<|begin_of_text|>"). */
int zb_chat_render(const zb_tokenizer *t, const zb_chat_msg *m, int n, int reply_header, char **text);
/* The ids of the same, appended to *out. ZB_EFORMAT naming the token when the tokenizer lacks
 * one of the template's special tokens. */
int zb_chat_encode(const zb_tokenizer *t, const zb_chat_msg *m, int n, int reply_header, zb_chat_ids *out);
/* One content as the template puts it (trimmed, encoded) then <|eot_id|>, appended with mask. */
int zb_chat_encode_content(const zb_tokenizer *t, const char *content, int mask, zb_chat_ids *out);
void zb_chat_ids_free(zb_chat_ids *c);
/* The template's trim of s[0..*n) (moves *s, shortens *n). */
void zb_chat_trim(const char **s, size_t *n);

#endif
