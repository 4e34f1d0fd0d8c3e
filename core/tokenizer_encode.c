/* tokenizer_encode.c — text to ids, as HF `tokenizers` encodes for Llama 3 (the steps are in
 * tokenizer.c's header comment): added tokens cut out, the regex split, BPE merges by rank. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "zb_common.h"

typedef struct { int32_t id, prev, next; } sym;
typedef struct { int32_t rank, pos, a, b; } cand;   /* a merge candidate at symbol pos */

/* Per-call scratch, so that a loaded tokenizer stays read-only. */
typedef struct {
    int32_t *ids; size_t n, cap;
    sym *sy; size_t sycap;
    cand *hp; size_t hn, hcap;
    pcre2_match_data *md;
    uint32_t mopts;
} enc;

static int push_id(enc *e, int32_t id) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 256;
        int32_t *p = realloc(e->ids, cap * sizeof *p);
        if (!p) return zb_fail(ZB_ENOMEM, "out of memory (token ids)");
        e->ids = p; e->cap = cap;
    }
    e->ids[e->n++] = id;
    return ZB_OK;
}

static int cand_less(const cand *x, const cand *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static int heap_push(enc *e, cand c) {
    if (e->hn == e->hcap) {
        size_t cap = e->hcap ? 2 * e->hcap : 64;
        cand *p = realloc(e->hp, cap * sizeof *p);
        if (!p) return zb_fail(ZB_ENOMEM, "out of memory (bpe heap)");
        e->hp = p; e->hcap = cap;
    }
    size_t i = e->hn++;
    while (i > 0 && cand_less(&c, &e->hp[(i - 1) / 2])) { e->hp[i] = e->hp[(i - 1) / 2]; i = (i - 1) / 2; }
    e->hp[i] = c;
    return ZB_OK;
}

static cand heap_pop(enc *e) {
    cand top = e->hp[0], last = e->hp[--e->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= e->hn) break;
        if (c + 1 < e->hn && cand_less(&e->hp[c + 1], &e->hp[c])) c++;
        if (!cand_less(&e->hp[c], &last)) break;
        e->hp[i] = e->hp[c]; i = c;
    }
    if (e->hn) e->hp[i] = last;
    return top;
}

static int push_pair(const zb_tokenizer *t, enc *e, int32_t pos) {
    int32_t nx = e->sy[pos].next;
    if (nx < 0) return ZB_OK;
    const mslot *m = mmap_get(&t->merges, e->sy[pos].id, e->sy[nx].id);
    if (!m) return ZB_OK;
    cand c = {m->rank, pos, e->sy[pos].id, e->sy[nx].id};
    return heap_push(e, c);
}

/* One pre-token. BPE with a heap of candidate merges (lowest rank, then leftmost, as HF):
 * n log n, so that even a megabyte-long run of spaces stays cheap. */
static int encode_piece(const zb_tokenizer *t, enc *e, const char *p, size_t n) {
    if (n == 0) return ZB_OK;
    if (n > INT32_MAX) return zb_fail(ZB_EARG, "tokenize: a single %zu-byte word is too long", n);
    if (t->ignore_merges || n == 1) {
        int32_t id = smap_get(&t->by_bytes, p, n);
        if (id >= 0) return push_id(e, id);
    }
    if (n > e->sycap) {
        sym *s = realloc(e->sy, n * sizeof *s);
        if (!s) return zb_fail(ZB_ENOMEM, "out of memory (bpe symbols)");
        e->sy = s; e->sycap = n;
    }
    /* One symbol per byte; a byte missing from the vocab becomes unk or is dropped (HF). */
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(unsigned char)p[i]];
        if (id < 0) id = t->unk_id;
        if (id < 0) continue;
        e->sy[ns].id = id; e->sy[ns].prev = ns - 1; e->sy[ns].next = ns + 1;
        ns++;
    }
    if (!ns) return ZB_OK;
    e->sy[ns - 1].next = -1;
    e->hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) ZB_TRY(push_pair(t, e, i));
    while (e->hn) {
        cand c = heap_pop(e);
        sym *s = &e->sy[c.pos];
        if (s->id != c.a || s->next < 0 || e->sy[s->next].id != c.b) continue;   /* stale */
        int32_t nx = s->next;
        s->id = mmap_get(&t->merges, c.a, c.b)->id;
        s->next = e->sy[nx].next;
        if (s->next >= 0) e->sy[s->next].prev = c.pos;
        e->sy[nx].id = -1;
        if (s->prev >= 0) ZB_TRY(push_pair(t, e, s->prev));
        ZB_TRY(push_pair(t, e, c.pos));
    }
    for (int32_t i = 0; i >= 0; i = e->sy[i].next) ZB_TRY(push_id(e, e->sy[i].id));
    return ZB_OK;
}

static size_t utf8_len(const char *s, size_t i, size_t n) {
    size_t j = i + 1;
    while (j < n && ((unsigned char)s[j] & 0xC0) == 0x80) j++;
    return j - i;
}

/* Split valid UTF-8 s[0..n) by the regex; matches and the gaps between them are pieces. */
static int split_valid(const zb_tokenizer *t, enc *e, const char *s, size_t n) {
    size_t gap = 0, pos = 0;
    while (pos < n) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, pos, e->mopts | PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            if (!(e->mopts & PCRE2_NO_JIT)) { e->mopts |= PCRE2_NO_JIT; continue; }   /* e.g. JIT stack: retry interpreted */
            char msg[256];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
            return zb_fail(ZB_EFORMAT, "%s: pre-tokenizer regex failed: %s", t->path, msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { pos = ms + utf8_len(s, ms, n); continue; }   /* empty match: no cut */
        if (ms > gap) ZB_TRY(encode_piece(t, e, s + gap, ms - gap));
        ZB_TRY(encode_piece(t, e, s + ms, me - ms));
        gap = pos = me;
    }
    if (gap < n) ZB_TRY(encode_piece(t, e, s + gap, n - gap));
    return ZB_OK;
}

/* HF only sees valid UTF-8; we also take raw bytes: each run of malformed bytes is a piece
 * of its own, the valid runs between are split by the regex. Checking once here lets PCRE2
 * skip its own check, which would rescan the rest of the text on every match. */
static int encode_split(const zb_tokenizer *t, enc *e, const char *s, size_t n) {
    if (!t->re) return encode_piece(t, e, s, n);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        uint32_t cp;
        while (j < n) {
            if (u[j] < 0x80) { j++; continue; }   /* ASCII fast path */
            size_t l = utf8_char(u + j, n - j, &cp);
            if (!l) break;
            j += l;
        }
        if (j > i) ZB_TRY(split_valid(t, e, s + i, j - i));
        size_t k = j;
        while (k < n && !utf8_char(u + k, n - k, &cp)) k++;
        if (k > j) ZB_TRY(encode_piece(t, e, s + j, k - j));
        i = k;
    }
    return ZB_OK;
}

/* Is s[i..end) one well-formed char matching re (\s or \w)? */
static int char_is(const pcre2_code *re, enc *e, const char *s, size_t i, size_t end) {
    uint32_t cp;
    if (utf8_char((const unsigned char *)s + i, end - i, &cp) != end - i) return 0;
    return pcre2_match(re, (PCRE2_SPTR)s + i, end - i, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, e->md, NULL) > 0;
}

/* Start of the char before offset i (i > 0). */
static size_t prev_char(const char *s, size_t i) {
    do i--; while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    return i;
}

/* Cut the added tokens of one class (normalized == cls) out of s[0..n), recursing into
 * the gaps with the next class, then the regex split. As HF: leftmost-longest matches,
 * scanning on after the end of each match, even one rejected by single_word. */
static int encode_added(const zb_tokenizer *t, enc *e, const char *s, size_t n, int cls) {
    if (cls > 1 || !t->n_added) return encode_split(t, e, s, n);
    size_t done = 0, i = 0;
    while (i < n) {
        const added_tok *a = NULL;
        int32_t node = 0;
        for (size_t j = i; j < n && (node = trie_child(t->trie, node, (unsigned char)s[j])) >= 0; j++)
            if (t->trie[node].tok[cls] >= 0) a = &t->added[t->trie[node].tok[cls]];   /* longest so far */
        if (!a) { i++; continue; }
        size_t start = i, stop = i + a->len;
        i = stop;
        if (a->single_word && ((start > 0 && char_is(t->re_word, e, s, prev_char(s, start), start)) ||
                               (stop < n && char_is(t->re_word, e, s, stop, stop + utf8_len(s, stop, n)))))
            continue;
        if (a->lstrip)
            while (start > done && char_is(t->re_ws, e, s, prev_char(s, start), start)) start = prev_char(s, start);
        if (a->rstrip)
            while (stop < n && char_is(t->re_ws, e, s, stop, stop + utf8_len(s, stop, n))) stop += utf8_len(s, stop, n);
        if (start > done) ZB_TRY(encode_added(t, e, s + done, start - done, cls + 1));
        ZB_TRY(push_id(e, a->id));
        done = i = stop;
    }
    if (done < n) ZB_TRY(encode_added(t, e, s + done, n - done, cls + 1));
    return ZB_OK;
}

int zb_tokenizer_encode(const zb_tokenizer *t, const char *text, size_t len,
                        int32_t **ids, size_t *n_ids) {
    *ids = NULL; *n_ids = 0;
    enc e = {0};
    e.mopts = t->jit ? 0 : PCRE2_NO_JIT;
    /* Match data sized for the split regex (2 pairs cover the \s / \w probes too). */
    e.md = t->re ? pcre2_match_data_create_from_pattern(t->re, NULL) : pcre2_match_data_create(2, NULL);
    if (!e.md) return zb_fail(ZB_ENOMEM, "out of memory (pcre2 match data)");
    int rc = encode_added(t, &e, text, len, 0);
    pcre2_match_data_free(e.md);
    free(e.sy); free(e.hp);
    if (rc) { free(e.ids); return rc; }
    *ids = e.ids; *n_ids = e.n;
    return ZB_OK;
}
