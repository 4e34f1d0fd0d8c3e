/* tokenizer.c — byte-level BPE as HF `tokenizers` runs it for Llama 3.
 *
 * Encode: (1) added tokens are cut out of the text literally (leftmost-longest, first those
 * with normalized=false, then normalized=true ones in the gaps; there is no normalizer);
 * (2) each remaining span is split by the file's regex (behaviour "Isolated": matches and
 * the gaps between them are pieces); (3) a piece whose bytes are a vocab token is emitted
 * directly (ignore_merges), else it starts as one symbol per byte and the lowest-ranked
 * adjacent pair is merged until none is left.
 *
 * The vocab is keyed twice: by its byte-level string ("Ġthe") for zb_tokenizer_token_id,
 * and by the raw bytes it stands for (" the") so that pieces need no byte->unicode step. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

#define MAX_IDS (1 << 24)   /* sanity bound on ids in the file, not a real limit */

/* ---------------------------------------------------------------- arena of strings */
/* Every string the tokenizer keeps lives in a few big blocks, freed at once. */
typedef struct blk { struct blk *next; size_t used, cap; char data[]; } blk;

static char *arena_put(blk **a, const char *s, size_t n) {
    if (!*a || (*a)->cap - (*a)->used < n + 1) {
        size_t cap = n + 1 > (1u << 20) ? n + 1 : (1u << 20);
        blk *b = zb_malloc(sizeof(blk) + cap, "tokenizer strings");
        if (!b) return NULL;
        b->next = *a; b->used = 0; b->cap = cap;
        *a = b;
    }
    char *p = (*a)->data + (*a)->used;
    memcpy(p, s, n);
    p[n] = 0;
    (*a)->used += n + 1;
    return p;
}

static void arena_free(blk *a) {
    while (a) { blk *n = a->next; free(a); a = n; }
}

/* ---------------------------------------------------------------- string -> id map */
/* Open addressing, linear probing; keys point into the arena. */
typedef struct { const char *key; uint32_t len; int32_t val; } sslot;
typedef struct { sslot *s; size_t mask, n; } smap;

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)p[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

static int smap_init(smap *m, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    m->s = zb_calloc(cap, sizeof(sslot), "tokenizer hash map");
    if (!m->s) return ZB_ENOMEM;
    m->mask = cap - 1; m->n = 0;
    return ZB_OK;
}

static int32_t smap_get(const smap *m, const char *k, size_t n) {
    for (size_t i = hash_bytes(k, n) & m->mask;; i = (i + 1) & m->mask) {
        const sslot *s = &m->s[i];
        if (!s->key) return -1;
        if (s->len == n && memcmp(s->key, k, n) == 0) return s->val;
    }
}

/* Insert or overwrite; the map is sized up front so it never fills (checked anyway). */
static int smap_put(smap *m, const char *k, size_t n, int32_t val) {
    for (size_t i = hash_bytes(k, n) & m->mask;; i = (i + 1) & m->mask) {
        sslot *s = &m->s[i];
        if (!s->key) {
            if (2 * (m->n + 1) > m->mask + 1) return zb_fail(ZB_EFORMAT, "tokenizer map overfull");
            s->key = k; s->len = (uint32_t)n; s->val = val; m->n++;
            return ZB_OK;
        }
        if (s->len == n && memcmp(s->key, k, n) == 0) { s->val = val; return ZB_OK; }
    }
}

/* ---------------------------------------------------------------- (id, id) -> merge map */
typedef struct { uint64_t key; int32_t rank, id; } mslot;   /* key == EMPTY: free slot */
typedef struct { mslot *s; size_t mask; } mmap_;
#define MEMPTY UINT64_MAX

static size_t mhash(uint64_t k, size_t mask) {
    k *= 0x9E3779B97F4A7C15ull;
    return (size_t)(k ^ (k >> 32)) & mask;
}

static int mmap_init(mmap_ *m, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    m->s = zb_malloc(cap * sizeof(mslot), "tokenizer merge map");
    if (!m->s) return ZB_ENOMEM;
    for (size_t i = 0; i < cap; i++) m->s[i].key = MEMPTY;
    m->mask = cap - 1;
    return ZB_OK;
}

static const mslot *mmap_get(const mmap_ *m, int32_t a, int32_t b) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = mhash(k, m->mask);; i = (i + 1) & m->mask) {
        if (m->s[i].key == k) return &m->s[i];
        if (m->s[i].key == MEMPTY) return NULL;
    }
}

/* A repeated pair takes the later rank, as HF's map collect does. */
static void mmap_put(mmap_ *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mhash(k, m->mask);
    while (m->s[i].key != MEMPTY && m->s[i].key != k) i = (i + 1) & m->mask;
    m->s[i].key = k; m->s[i].rank = rank; m->s[i].id = id;
}

/* ---------------------------------------------------------------- the tokenizer */
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

/* GPT-2's byte <-> printable unicode map: printable latin-1 bytes stand for themselves, the
 * other 68 bytes get code points 256.. in byte order. cp_byte[cp] = byte, -1 if unmapped. */
#define N_CP 324
static void byte_map(int cp_byte[N_CP]) {
    int n = 0;
    for (int i = 0; i < N_CP; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp_byte[keep ? b : 256 + n++] = b;
    }
}

/* Length of the well-formed UTF-8 char at s (n > 0 bytes left), 0 if malformed (overlong,
 * surrogate, > U+10FFFF, truncated). PCRE2 runs with NO_UTF_CHECK, so this must be strict. */
static size_t utf8_char(const unsigned char *s, size_t n, uint32_t *cp) {
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

/* Raw bytes of a byte-level vocab string into out (at most n bytes); -1 if some char is not
 * in the byte map (such a token can't come from text; HF's decoder then emits it as is). */
static int unmap_bytes(const int cp_byte[N_CP], const char *s, size_t n, char *out) {
    size_t i = 0;
    int k = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = utf8_char((const unsigned char *)s + i, n - i, &cp);
        int b = l && cp < N_CP ? cp_byte[cp] : -1;
        if (b < 0) return -1;
        out[k++] = (char)b;
        i += l;
    }
    return k;
}

void zb_tokenizer_free(zb_tokenizer *t) {
    if (!t) return;
    free(t->path);
    free(t->str); free(t->bytes); free(t->nbytes); free(t->special);
    free(t->by_str.s); free(t->by_bytes.s); free(t->merges.s);
    free(t->added); free(t->trie);
    pcre2_code_free(t->re); pcre2_code_free(t->re_ws); pcre2_code_free(t->re_word);
    arena_free(t->arena);
    free(t);
}

static int jbool(const cJSON *o, const char *key) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* A null / absent / false / 0 / "" option: the setting we don't need to implement. */
static int jnone(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsNumber(v) && v->valuedouble == 0) ||
           (cJSON_IsString(v) && !v->valuestring[0]);
}

static pcre2_code *compile_re(const char *pat, uint32_t extra, char *err, size_t errcap) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | extra, &ec, &eo, NULL);
    if (!re) {
        char msg[256];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(err, errcap, "%s at offset %zu", msg, (size_t)eo);
    }
    return re;
}

/* HF's regex engine takes \s as Unicode White_Space; PCRE2 (UCP) also counts U+180E, which
 * Unicode dropped from White_Space in 6.3. Spell \s out as the White_Space list (and \S
 * outside classes as its complement) so that both engines split alike. */
#define ZB_WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static char *spell_out_spaces(const char *pat) {
    size_t n = strlen(pat);
    char *o = zb_malloc((n + 1) * (sizeof ZB_WS + 4), "regex");
    if (!o) return NULL;
    size_t k = 0, i = 0;
    int in_class = 0;
    while (i < n) {
        char c = pat[i];
        if (c == '\\' && pat[i + 1] == 'Q') {   /* \Q...\E: literal, copy as is */
            const char *e = strstr(pat + i + 2, "\\E");
            size_t end = e ? (size_t)(e - pat) + 2 : n;
            memcpy(o + k, pat + i, end - i); k += end - i; i = end;
        } else if (c == '\\' && pat[i + 1] == 's') {
            k += (size_t)sprintf(o + k, in_class ? "%s" : "[%s]", ZB_WS); i += 2;
        } else if (c == '\\' && pat[i + 1] == 'S' && !in_class) {
            k += (size_t)sprintf(o + k, "[^%s]", ZB_WS); i += 2;
        } else if (c == '\\') {
            o[k++] = pat[i++];
            if (i < n) o[k++] = pat[i++];
        } else if (c == '[' && !in_class) {
            in_class = 1;
            o[k++] = pat[i++];
            if (pat[i] == '^') o[k++] = pat[i++];
            if (pat[i] == ']') o[k++] = pat[i++];   /* a leading ] is literal */
        } else if (c == '[' && pat[i + 1] == ':') {   /* [:alpha:] inside a class */
            const char *e = strstr(pat + i + 2, ":]");
            size_t end = e ? (size_t)(e - pat) + 2 : i + 1;
            memcpy(o + k, pat + i, end - i); k += end - i; i = end;
        } else {
            if (c == ']') in_class = 0;
            o[k++] = pat[i++];
        }
    }
    o[k] = 0;
    return o;
}

/* The pre-tokenizer: Split(regex, Isolated) followed by ByteLevel without its own regex
 * (as Llama 3 has it), or a lone such ByteLevel (no split). */
static int load_pretok(zb_tokenizer *t, const cJSON *pt, const char *path) {
    const cJSON *steps[4];
    int n = 0;
    const char *type = zb_json_str(pt, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers")) {
            if (n == 4) return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer: too many steps", path);
            steps[n++] = s;
        }
    } else {
        steps[n++] = pt;
    }
    int have_split = 0, have_bl = 0;
    for (int i = 0; i < n; i++) {
        const char *ty = zb_json_str(steps[i], "type");
        if (ty && !strcmp(ty, "Split") && !have_split && !have_bl) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(steps[i], "pattern");
            const char *rx = zb_json_str(p, "Regex");
            const char *beh = zb_json_str(steps[i], "behavior");
            if (!rx) return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer Split: only a Regex pattern is supported", path);
            if (!beh || strcmp(beh, "Isolated") || jbool(steps[i], "invert"))
                return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer Split: only behavior Isolated, invert false is supported", path);
            char err[300];
            char *fixed = spell_out_spaces(rx);
            if (!fixed) return ZB_ENOMEM;
            t->re = compile_re(fixed, 0, err, sizeof err);
            free(fixed);
            if (!t->re) return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer regex: %s", path, err);
            have_split = 1;
        } else if (ty && !strcmp(ty, "ByteLevel") && !have_bl) {
            if (jbool(steps[i], "add_prefix_space") || jbool(steps[i], "use_regex"))
                return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer ByteLevel: add_prefix_space/use_regex not supported", path);
            have_bl = 1;
        } else {
            return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer step '%s' not supported", path, ty ? ty : "?");
        }
    }
    if (!have_bl) return zb_fail(ZB_EFORMAT, "%s: pre_tokenizer has no ByteLevel step (not a byte-level BPE)", path);
    if (t->re) {
        /* JIT is much faster; use it only if it compiles and then matches (else the
         * matches pass PCRE2_NO_JIT). */
        t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
        if (t->jit) {
            pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
            if (!md) return zb_fail(ZB_ENOMEM, "out of memory (pcre2 match data)");
            int rc = pcre2_match(t->re, (PCRE2_SPTR) "Hello world", 11, 0, 0, md, NULL);
            pcre2_match_data_free(md);
            if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) t->jit = 0;
        }
    }
    return ZB_OK;
}

static int load_vocab_merges(zb_tokenizer *t, const cJSON *model, const char *path) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) return zb_fail(ZB_EFORMAT, "%s: model.vocab is not an object", path);
    if (!cJSON_IsArray(merges)) return zb_fail(ZB_EFORMAT, "%s: model.merges is not an array", path);
    int nv = cJSON_GetArraySize(vocab), nm = cJSON_GetArraySize(merges);
    ZB_TRY(smap_init(&t->by_str, (size_t)nv + (size_t)t->n_added));
    ZB_TRY(smap_init(&t->by_bytes, (size_t)nv));
    ZB_TRY(mmap_init(&t->merges, (size_t)nm));

    int cp_byte[N_CP];
    byte_map(cp_byte);
    const cJSON *v;
    char *raw = NULL;
    size_t rawcap = 0;
    int rc = ZB_OK;
    cJSON_ArrayForEach(v, vocab) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= t->n_slots ||
            v->valuedouble != (double)v->valueint)
            { free(raw); return zb_fail(ZB_EFORMAT, "%s: vocab entry '%s' has a bad id", path, v->string); }
        int id = v->valueint;
        if (t->str[id]) { free(raw); return zb_fail(ZB_EFORMAT, "%s: vocab id %d is given to two tokens", path, id); }
        size_t n = strlen(v->string);
        const char *s = arena_put(&t->arena, v->string, n);
        if (!s) { free(raw); return ZB_ENOMEM; }
        t->str[id] = s;
        if ((rc = smap_put(&t->by_str, s, n, id))) { free(raw); return rc; }
        if (n > rawcap) {
            free(raw);
            rawcap = 2 * n;
            raw = zb_malloc(rawcap, "tokenizer scratch");
            if (!raw) return ZB_ENOMEM;
        }
        int k = unmap_bytes(cp_byte, s, n, raw);
        if (k < 0) {   /* not a byte string: decodes to its own text, never produced by BPE */
            t->bytes[id] = s; t->nbytes[id] = (uint32_t)n;
            continue;
        }
        const char *b = arena_put(&t->arena, raw, (size_t)k);
        if (!b) { free(raw); return ZB_ENOMEM; }
        t->bytes[id] = b; t->nbytes[id] = (uint32_t)k;
        if ((rc = smap_put(&t->by_bytes, b, (size_t)k, id))) { free(raw); return rc; }
    }
    free(raw);

    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = smap_get(&t->by_bytes, &c, 1);
    }

    /* Merges: "a b" strings (older files) or ["a", "b"] pairs (newer ones). */
    int rank = 0;
    const cJSON *m;
    char buf[512];
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t na, nb;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return zb_fail(ZB_EFORMAT, "%s: merge %d '%s' is not two tokens", path, rank, m->valuestring);
            a = m->valuestring; na = (size_t)(sp - a);
            b = sp + 1; nb = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
            a = m->child->valuestring; na = strlen(a);
            b = m->child->next->valuestring; nb = strlen(b);
        } else {
            return zb_fail(ZB_EFORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", path, rank);
        }
        if (na + nb >= sizeof buf)
            return zb_fail(ZB_EFORMAT, "%s: merge %d too long", path, rank);
        memcpy(buf, a, na); memcpy(buf + na, b, nb);
        int ia = smap_get(&t->by_str, a, na), ib = smap_get(&t->by_str, b, nb);
        int ic = smap_get(&t->by_str, buf, na + nb);
        if (ia < 0 || ib < 0 || ic < 0)
            return zb_fail(ZB_EFORMAT, "%s: merge %d ('%.*s' '%.*s'): token not in vocab",
                           path, rank, (int)na, a, (int)nb, b);
        mmap_put(&t->merges, ia, ib, rank, ic);
        rank++;
    }
    return ZB_OK;
}

static int32_t trie_child(const trie_node *tr, int32_t node, unsigned char b) {
    for (int32_t c = tr[node].child; c >= 0; c = tr[c].sibling)
        if (tr[c].byte == b) return c;
    return -1;
}

/* Nodes are preallocated (1 + total bytes), so insertion can't fail. A repeated content of
 * the same class keeps its first token. */
static void trie_insert(zb_tokenizer *t, const added_tok *a, int idx) {
    int32_t node = 0;
    for (uint32_t i = 0; i < a->len; i++) {
        unsigned char b = (unsigned char)a->s[i];
        int32_t c = trie_child(t->trie, node, b);
        if (c < 0) {
            c = t->n_trie++;
            trie_node *nn = &t->trie[c];
            nn->child = -1; nn->tok[0] = nn->tok[1] = -1; nn->byte = b;
            nn->sibling = t->trie[node].child;
            t->trie[node].child = c;
        }
        node = c;
    }
    if (t->trie[node].tok[a->normalized] < 0) t->trie[node].tok[a->normalized] = idx;
}

/* bos/eos from tokenizer_config.json beside the tokenizer; the token may be a string or
 * an object {"content": ...}. */
static int config_token(const cJSON *cfg, const char *key, const zb_tokenizer *t, const char *dflt) {
    const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
    const char *s = cJSON_IsString(v) ? v->valuestring : cJSON_IsObject(v) ? zb_json_str(v, "content") : NULL;
    if (cfg && cJSON_IsNull(v)) return -1;
    return zb_tokenizer_token_id(t, s ? s : dflt);
}

static int load_config(zb_tokenizer *t, const char *path) {
    const char *slash = strrchr(path, '/');
    size_t dn = slash ? (size_t)(slash - path + 1) : 0;
    char *cpath = zb_malloc(dn + 32, "path");
    if (!cpath) return ZB_ENOMEM;
    memcpy(cpath, path, dn);
    strcpy(cpath + dn, "tokenizer_config.json");
    cJSON *cfg = NULL;
    FILE *f = fopen(cpath, "rb");
    if (f) {
        fclose(f);
        char *txt;
        size_t n;
        int rc = zb_read_file(cpath, &txt, &n);
        if (rc) { free(cpath); return rc; }
        cfg = cJSON_ParseWithLength(txt, n);
        free(txt);
        if (!cfg) { zb_fail(ZB_EFORMAT, "%s: not valid JSON", cpath); free(cpath); return ZB_EFORMAT; }
    }
    free(cpath);
    t->bos = config_token(cfg, "bos_token", t, "<|begin_of_text|>");
    int e = config_token(cfg, "eos_token", t, "<|end_of_text|>");
    cJSON_Delete(cfg);
    const char *more[] = {"<|eot_id|>", "<|eom_id|>"};
    t->n_eos = 0;
    if (e >= 0) t->eos[t->n_eos++] = e;
    for (int i = 0; i < 2; i++) {
        int id = zb_tokenizer_token_id(t, more[i]);
        if (id >= 0 && id != e) t->eos[t->n_eos++] = id;
    }
    return ZB_OK;
}

static int load_json(zb_tokenizer *t, const cJSON *root, const char *path) {
    if (!cJSON_IsObject(root)) return zb_fail(ZB_EFORMAT, "%s: top level is not an object", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return zb_fail(ZB_EFORMAT, "%s: no \"model\" object", path);
    const char *mt = zb_json_str(model, "type");
    if (mt && strcmp(mt, "BPE")) return zb_fail(ZB_EFORMAT, "%s: model type '%s' is not BPE", path, mt);
    if (!jnone(model, "dropout") || !jnone(model, "continuing_subword_prefix") ||
        !jnone(model, "end_of_word_suffix") || !jnone(model, "byte_fallback"))
        return zb_fail(ZB_EFORMAT, "%s: BPE dropout/continuing_subword_prefix/end_of_word_suffix/byte_fallback not supported", path);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) return zb_fail(ZB_EFORMAT, "%s: normalizers are not supported", path);
    t->ignore_merges = jbool(model, "ignore_merges");

    /* Id range first: the tables are indexed by id. */
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return zb_fail(ZB_EFORMAT, "%s: added_tokens is not an array", path);
    if (!cJSON_IsObject(vocab) || cJSON_GetArraySize(vocab) == 0)
        return zb_fail(ZB_EFORMAT, "%s: model.vocab is %s: a tokenizer needs tokens", path,
                       cJSON_IsObject(vocab) ? "empty" : "missing or not an object");
    int maxid = -1;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab)
        if (cJSON_IsNumber(v) && v->valuedouble < MAX_IDS && v->valueint > maxid) maxid = v->valueint;
    cJSON_ArrayForEach(v, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(v, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_IDS || !zb_json_str(v, "content"))
            return zb_fail(ZB_EFORMAT, "%s: added_tokens entry without a valid id/content", path);
        if (id->valueint > maxid) maxid = id->valueint;
        t->n_added++;
    }
    t->n_slots = maxid + 1;
    ZB_ALLOC(t->str, t->n_slots, "tokenizer id table");
    ZB_ALLOC(t->bytes, t->n_slots, "tokenizer id table");
    ZB_ALLOC(t->nbytes, t->n_slots, "tokenizer id table");
    ZB_ALLOC(t->special, t->n_slots, "tokenizer id table");
    ZB_TRY(load_vocab_merges(t, model, path));
    t->unk_id = -1;
    if (zb_json_str(model, "unk_token")) t->unk_id = smap_get(&t->by_str, zb_json_str(model, "unk_token"), strlen(zb_json_str(model, "unk_token")));

    /* Added tokens override the model's entry for their id and string. */
    ZB_ALLOC(t->added, t->n_added ? t->n_added : 1, "added tokens");
    size_t nbytes = 1;
    cJSON_ArrayForEach(v, added) nbytes += strlen(zb_json_str(v, "content"));
    ZB_ALLOC(t->trie, nbytes, "added-token trie");
    t->trie[0].child = t->trie[0].sibling = -1;
    t->trie[0].tok[0] = t->trie[0].tok[1] = -1;
    t->n_trie = 1;
    int k = 0;
    cJSON_ArrayForEach(v, added) {
        int id = cJSON_GetObjectItemCaseSensitive(v, "id")->valueint;
        const char *c = zb_json_str(v, "content");
        size_t n = strlen(c);
        const char *s = arena_put(&t->arena, c, n);
        if (!s) return ZB_ENOMEM;
        t->str[id] = s; t->bytes[id] = s; t->nbytes[id] = (uint32_t)n;
        t->special[id] = (unsigned char)jbool(v, "special");
        ZB_TRY(smap_put(&t->by_str, s, n, id));
        if (!n) continue;   /* HF ignores empty added tokens when matching */
        added_tok *a = &t->added[k++];
        a->s = s; a->len = (uint32_t)n; a->id = id;
        a->lstrip = (unsigned char)jbool(v, "lstrip");
        a->rstrip = (unsigned char)jbool(v, "rstrip");
        a->single_word = (unsigned char)jbool(v, "single_word");
        /* HF's default for a missing "normalized" is !special */
        const cJSON *nz = cJSON_GetObjectItemCaseSensitive(v, "normalized");
        a->normalized = (unsigned char)(nz ? cJSON_IsTrue(nz) : !jbool(v, "special"));
        trie_insert(t, a, k - 1);
    }
    t->n_added = k;
    int need_ws = 0;
    for (int i = 0; i < k; i++)
        need_ws |= t->added[i].lstrip || t->added[i].rstrip || t->added[i].single_word;
    if (need_ws) {
        char err[300];
        /* Rust regex's \s and \w, which HF tests these flags with */
        t->re_ws = compile_re("[" ZB_WS "]", 0, err, sizeof err);
        t->re_word = compile_re("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]", 0, err, sizeof err);
        if (!t->re_ws || !t->re_word) return zb_fail(ZB_EFORMAT, "%s: internal regex: %s", path, err);
    }

    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!cJSON_IsObject(pt)) return zb_fail(ZB_EFORMAT, "%s: no pre_tokenizer (not a byte-level BPE)", path);
    ZB_TRY(load_pretok(t, pt, path));
    return ZB_OK;
}

int zb_tokenizer_load(zb_tokenizer **out, const char *path) {
    *out = NULL;
    char *txt;
    size_t n;
    ZB_TRY(zb_read_file(path, &txt, &n));
    cJSON *root = cJSON_ParseWithLength(txt, n);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        long at = e && e >= txt && e <= txt + n ? (long)(e - txt) : -1;
        free(txt);
        return zb_fail(ZB_EFORMAT, "%s: not valid JSON (error near byte %ld)", path, at);
    }
    free(txt);
    zb_tokenizer *t = zb_calloc(1, sizeof *t, "tokenizer");
    if (!t) { cJSON_Delete(root); return ZB_ENOMEM; }
    t->path = strdup(path);
    int rc = t->path ? load_json(t, root, path) : zb_fail(ZB_ENOMEM, "out of memory");
    cJSON_Delete(root);
    if (!rc) rc = load_config(t, path);
    if (rc) { zb_tokenizer_free(t); return rc; }
    *out = t;
    return ZB_OK;
}

/* ---------------------------------------------------------------- encoding */
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

/* ---------------------------------------------------------------- decoding, lookups */
int zb_tokenizer_decode(const zb_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
    *text = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_slots || !t->str[ids[i]])
            return zb_fail(ZB_EARG, "%s: unknown token id %d (vocab size %d)", t->path, ids[i], t->n_slots);
        total += t->nbytes[ids[i]];
    }
    char *out = zb_malloc(total + 1, "decoded text");
    if (!out) return ZB_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(out + k, t->bytes[ids[i]], t->nbytes[ids[i]]);
        k += t->nbytes[ids[i]];
    }
    out[k] = 0;
    *text = out;
    if (len) *len = k;
    return ZB_OK;
}

int zb_tokenizer_vocab_size(const zb_tokenizer *t) { return t->n_slots; }

int zb_tokenizer_token_id(const zb_tokenizer *t, const char *s) {
    return s ? smap_get(&t->by_str, s, strlen(s)) : -1;
}

const char *zb_tokenizer_token_str(const zb_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_slots ? t->str[id] : NULL;
}

int zb_tokenizer_token_bytes(const zb_tokenizer *t, int32_t id, char *buf, size_t cap) {
    if (id < 0 || id >= t->n_slots || !t->str[id]) return -1;
    size_t n = t->nbytes[id];
    if (cap) memcpy(buf, t->bytes[id], n < cap ? n : cap);
    return (int)n;
}

int zb_tokenizer_is_special(const zb_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_slots && t->special[id];
}

int zb_tokenizer_bos_id(const zb_tokenizer *t) { return t->bos; }

int zb_tokenizer_eos_ids(const zb_tokenizer *t, const int32_t **ids) {
    *ids = t->eos;
    return t->n_eos;
}
