/* tokenizer.h — byte-level BPE tokenizer read from a HF `tokenizer.json` (Llama 3).
 *
 * Encoding follows HF `tokenizers` for the configuration Llama 3 ships: added/special tokens
 * are matched literally first, the rest is split by the file's pre-tokenizer regex (PCRE2),
 * mapped to bytes and merged by BPE rank. No BOS is added: the caller prepends
 * zb_tokenizer_bos_id() when it wants one. A loaded tokenizer is read-only, so one may be
 * shared by threads. */
#ifndef ZB_TOKENIZER_H
#define ZB_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct zb_tokenizer zb_tokenizer;

/* Load tokenizer.json; also reads tokenizer_config.json from the same folder when present
 * (for bos/eos). Errors (ZB_EIO, ZB_EFORMAT) name the file. */
int zb_tokenizer_load(zb_tokenizer **out, const char *tokenizer_json_path);
void zb_tokenizer_free(zb_tokenizer *t);

/* text[0..len) -> malloc'd ids (*ids is NULL when *n_ids == 0). Any bytes are accepted;
 * invalid UTF-8 is carried through byte-wise. */
int zb_tokenizer_encode(const zb_tokenizer *t, const char *text, size_t len,
                        int32_t **ids, size_t *n_ids);
/* ids -> malloc'd NUL-terminated bytes (special tokens give their content). An unknown id
 * is an error. Bytes are returned raw (HF would replace invalid UTF-8 with U+FFFD). */
int zb_tokenizer_decode(const zb_tokenizer *t, const int32_t *ids, size_t n,
                        char **text, size_t *len);

/* Number of id slots: highest id + 1 (128256 for Llama 3). */
int zb_tokenizer_vocab_size(const zb_tokenizer *t);
/* Id of a token given as its vocab string (byte-level form, e.g. "Ġthe") or an added
 * token's content (e.g. "<|eot_id|>"); -1 if absent. */
int zb_tokenizer_token_id(const zb_tokenizer *t, const char *token_str);
/* The vocab string of an id (byte-level form / added content); NULL if unknown. */
const char *zb_tokenizer_token_str(const zb_tokenizer *t, int32_t id);
/* The raw bytes one token stands for, for streaming output (a UTF-8 character may span
 * tokens, so print bytes as they come). Copies min(len, cap) bytes into buf (no NUL) and
 * returns len, or -1 if the id is unknown. */
int zb_tokenizer_token_bytes(const zb_tokenizer *t, int32_t id, char *buf, size_t cap);
/* Whether id is a special token (an added token flagged "special": <|eot_id|> ...),
 * e.g. for hiding them in output. */
int zb_tokenizer_is_special(const zb_tokenizer *t, int32_t id);

/* bos from tokenizer_config.json (else "<|begin_of_text|>"), -1 if none. */
int zb_tokenizer_bos_id(const zb_tokenizer *t);
/* Stop ids for generation: the config's eos_token (else "<|end_of_text|>") plus
 * "<|eot_id|>" and "<|eom_id|>" when the vocab has them (Llama 3 instruct ends turns with
 * these). Returns the count; *ids points into the tokenizer. */
int zb_tokenizer_eos_ids(const zb_tokenizer *t, const int32_t **ids);

#endif
