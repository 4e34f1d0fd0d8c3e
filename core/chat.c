/* chat.c — see chat.h: the Llama-3 chat template as text and as ids. */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

/* Python's str.isspace over a UTF-8 code point: \t..\r, \x1c..\x1f, space, U+0085, U+00A0,
 * U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. */
static int is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* The code point starting at s[0..n) and its length (an invalid byte: itself, length 1). */
static uint32_t cp_at(const unsigned char *s, size_t n, size_t *len) {
    int k = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (k == 0 || (size_t)k > n) { *len = 1; return 0xfffd0000u | s[0]; }
    uint32_t c = k == 1 ? s[0] : s[0] & (0x7f >> k);
    for (int i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) { *len = 1; return 0xfffd0000u | s[0]; }
        c = c << 6 | (s[i] & 0x3f);
    }
    *len = (size_t)k;
    return c;
}

void zb_chat_trim(const char **s, size_t *n) {
    const unsigned char *p = (const unsigned char *)*s;
    size_t len;
    while (*n && is_space_cp(cp_at(p, *n, &len))) { p += len; *n -= len; }
    while (*n) {   /* the last code point: back over continuation bytes */
        size_t k = *n - 1;
        while (k > 0 && *n - k < 4 && (p[k] & 0xc0) == 0x80) k--;
        if (!is_space_cp(cp_at(p + k, *n - k, &len)) || k + len != *n) break;
        *n = k;
    }
    *s = (const char *)p;
}

/* ---- text ------------------------------------------------------------------------------------ */

typedef struct { char *s; size_t n, cap; } sbuf;

static int put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *p = realloc(b->s, c);
        if (!p) return zb_fail(ZB_ENOMEM, "out of memory rendering a chat");
        b->s = p;
        b->cap = c;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return ZB_OK;
}

static int put_header(sbuf *b, const char *role) {
    ZB_TRY(put(b, "<|start_header_id|>", 19));
    ZB_TRY(put(b, role, strlen(role)));
    return put(b, "<|end_header_id|>\n\n", 19);
}

int zb_chat_render(const zb_tokenizer *t, const zb_chat_msg *m, int n, int reply_header, char **text) {
    sbuf b = {0};
    int bos = t ? zb_tokenizer_bos_id(t) : -1;
    const char *bs = bos >= 0 ? zb_tokenizer_token_str(t, bos) : "<|begin_of_text|>";
    int rc = put(&b, bs, strlen(bs));
    for (int i = 0; i < n && !rc; i++) {
        const char *c = m[i].content;
        size_t len = strlen(c);
        zb_chat_trim(&c, &len);
        rc = put_header(&b, m[i].role);
        if (!rc) rc = put(&b, c, len);
        if (!rc) rc = put(&b, "<|eot_id|>", 10);
    }
    if (!rc && reply_header) rc = put_header(&b, "assistant");
    if (rc) { free(b.s); return rc; }
    *text = b.s;
    return ZB_OK;
}

/* ---- ids ------------------------------------------------------------------------------------- */

static int push(zb_chat_ids *o, int32_t id, int mask) {
    if (o->n == o->cap) {
        size_t c = o->cap ? 2 * o->cap : 256;
        int32_t *a = realloc(o->ids, c * sizeof *a);
        if (a) o->ids = a;
        uint8_t *m = a ? realloc(o->mask, c) : NULL;
        if (!m) return zb_fail(ZB_ENOMEM, "out of memory encoding a chat");
        o->mask = m;
        o->cap = c;
    }
    o->ids[o->n] = id;
    o->mask[o->n++] = (uint8_t)mask;
    return ZB_OK;
}

static int push_text(const zb_tokenizer *t, const char *s, size_t n, int mask, zb_chat_ids *o) {
    if (!n) return ZB_OK;
    int32_t *ids = NULL;
    size_t k = 0;
    int rc = zb_tokenizer_encode(t, s, n, &ids, &k);
    for (size_t i = 0; !rc && i < k; i++) rc = push(o, ids[i], mask);
    free(ids);
    return rc;
}

static int special(const zb_tokenizer *t, const char *name, int32_t *id) {
    *id = zb_tokenizer_token_id(t, name);
    if (*id < 0)
        return zb_fail(ZB_EFORMAT, "the tokenizer has no %s token (needed by the Llama-3 chat template)", name);
    return ZB_OK;
}

static int push_header(const zb_tokenizer *t, const char *role, zb_chat_ids *o) {
    int32_t sh, eh;
    ZB_TRY(special(t, "<|start_header_id|>", &sh));
    ZB_TRY(special(t, "<|end_header_id|>", &eh));
    ZB_TRY(push(o, sh, 0));
    ZB_TRY(push_text(t, role, strlen(role), 0, o));
    ZB_TRY(push(o, eh, 0));
    return push_text(t, "\n\n", 2, 0, o);
}

int zb_chat_encode_content(const zb_tokenizer *t, const char *content, int mask, zb_chat_ids *o) {
    int32_t eot;
    ZB_TRY(special(t, "<|eot_id|>", &eot));
    size_t len = strlen(content);
    zb_chat_trim(&content, &len);
    ZB_TRY(push_text(t, content, len, mask, o));
    return push(o, eot, mask);
}

int zb_chat_encode(const zb_tokenizer *t, const zb_chat_msg *m, int n, int reply_header, zb_chat_ids *o) {
    int32_t bos = zb_tokenizer_bos_id(t);
    if (bos < 0) return zb_fail(ZB_EFORMAT, "the tokenizer has no BOS token (needed by the Llama-3 chat template)");
    ZB_TRY(push(o, bos, 0));
    for (int i = 0; i < n; i++) {
        ZB_TRY(push_header(t, m[i].role, o));
        ZB_TRY(zb_chat_encode_content(t, m[i].content, !strcmp(m[i].role, "assistant"), o));
    }
    return reply_header ? push_header(t, "assistant", o) : ZB_OK;
}

void zb_chat_ids_free(zb_chat_ids *c) {
    free(c->ids);
    free(c->mask);
    memset(c, 0, sizeof *c);
}
