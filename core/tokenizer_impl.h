/* tokenizer_impl.h — private to the tokenizer module (tokenizer.c loads and decodes,
 * tokenizer_encode.c encodes): the loaded tokenizer's layout and the lookups both use. */
#ifndef ZB_TOKENIZER_IMPL_H
#define ZB_TOKENIZER_IMPL_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stdint.h>
#include <string.h>

#include "tokenizer.h"

/* Every string the tokenizer keeps lives in a few big blocks, freed at once. */
typedef struct blk { struct blk *next; size_t used, cap; char data[]; } blk;

/* Open addressing, linear probing; keys point into the arena. */
typedef struct { const char *key; uint32_t len; int32_t val; } sslot;
typedef struct { sslot *s; size_t mask, n; } smap;

static inline uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)p[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

static inline int32_t smap_get(const smap *m, const char *k, size_t n) {
    for (size_t i = hash_bytes(k, n) & m->mask;; i = (i + 1) & m->mask) {
        const sslot *s = &m->s[i];
        if (!s->key) return -1;
        if (s->len == n && memcmp(s->key, k, n) == 0) return s->val;
    }
}

typedef struct { uint64_t key; int32_t rank, id; } mslot;   /* key == EMPTY: free slot */
typedef struct { mslot *s; size_t mask; } mmap_;
#define MEMPTY UINT64_MAX

static inline size_t mhash(uint64_t k, size_t mask) {
    k *= 0x9E3779B97F4A7C15ull;
    return (size_t)(k ^ (k >> 32)) & mask;
}

static inline const mslot *mmap_get(const mmap_ *m, int32_t a, int32_t b) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = mhash(k, m->mask);; i = (i + 1) & m->mask) {
        if (m->s[i].key == k) return &m->s[i];
        if (m->s[i].key == MEMPTY) return NULL;
    }
}

typedef struct {
    const char *s; uint32_t len; int32_t id;
    unsigned char lstrip, rstrip, single_word, normalized;
} added_tok;

/* A byte trie over the added tokens, so that finding the longest one at a position costs
 * the length of the match, not the number of tokens. tok[c]: the added token (index) of
 * class c (normalized 0/1) ending here, -1 if none. */
typedef struct { int32_t child, sibling, tok[2]; unsigned char byte; } trie_node;

struct zb_tokenizer {
    char *path;                /* for error messages */
    int n_slots;               /* highest id + 1 */
    const char **str;          /* id -> vocab string (NULL: no such id) */
    const char **bytes;        /* id -> raw bytes */
    uint32_t *nbytes;
    unsigned char *special;    /* id -> is an added token */
    smap by_str, by_bytes;     /* vocab string -> id; raw bytes -> id (model vocab only) */
    mmap_ merges;
    int32_t byte_id[256];      /* id of each single byte, -1 if absent */
    int32_t unk_id;
    int ignore_merges;
    added_tok *added;
    int n_added;
    trie_node *trie;           /* the added tokens' bytes; node 0 is the root */
    int n_trie;
    pcre2_code *re;            /* the pre-tokenizer split; NULL: no split */
    pcre2_code *re_ws, *re_word;     /* \s and \w, for lstrip/rstrip/single_word */
    int jit;
    int32_t bos, eos[4];
    int n_eos;
    blk *arena;
};

/* Length of the well-formed UTF-8 char at s (n > 0 bytes left), 0 if malformed (overlong,
 * surrogate, > U+10FFFF, truncated). PCRE2 runs with NO_UTF_CHECK, so this must be strict. */
static inline size_t utf8_char(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

static inline int32_t trie_child(const trie_node *tr, int32_t node, unsigned char b) {
    for (int32_t c = tr[node].child; c >= 0; c = tr[c].sibling)
        if (tr[c].byte == b) return c;
    return -1;
}

#endif
