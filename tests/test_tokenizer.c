/* test_tokenizer.c — the Llama 3 tokenizer against HF `tokenizers` reference ids.
 * argv[1] = the fixtures folder (holds llama3-tokenizer/). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"
#include "zb_common.h"
#include "zb_test.h"

static char path_tok[4096], path_ref[4096];

/* Every reference case: exact ids, and exact text back from those ids. */
static int check_ref(const zb_tokenizer *t) {
    char *txt;
    size_t n;
    ZB_TRY(zb_read_file(path_ref, &txt, &n));
    cJSON *root = cJSON_ParseWithLength(txt, n);
    free(txt);
    if (!root) return zb_fail(ZB_EFORMAT, "%s: not valid JSON", path_ref);
    const cJSON *c;
    int ncase = 0, nok = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *dec_ref = cJSON_GetObjectItem(c, "decoded")->valuestring;
        const cJSON *ref = cJSON_GetObjectItem(c, "ids");
        int nref = cJSON_GetArraySize(ref);
        int32_t *ids;
        size_t nid;
        int rc = zb_tokenizer_encode(t, text, strlen(text), &ids, &nid);
        int same = !rc && nid == (size_t)nref;
        for (int i = 0; same && i < nref; i++) same = ids[i] == cJSON_GetArrayItem(ref, i)->valueint;
        if (!same) {
            fprintf(stderr, "case %d %.40s...: got", ncase, text);
            for (size_t i = 0; !rc && i < nid; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n");
        }
        zb_check(same, "case %d encodes to the %d reference ids", ncase, nref);
        int32_t *rids = malloc((size_t)(nref ? nref : 1) * sizeof *rids);
        for (int i = 0; i < nref; i++) rids[i] = cJSON_GetArrayItem(ref, i)->valueint;
        char *out;
        size_t len;
        rc = zb_tokenizer_decode(t, rids, (size_t)nref, &out, &len);
        int dok = !rc && len == strlen(dec_ref) && !memcmp(out, dec_ref, len);
        zb_check(dok, "case %d decodes to the reference text", ncase);
        nok += same && dok;
        ncase++;
        if (!rc) free(out);
        free(rids);
        free(ids);
    }
    printf("reference cases: %d/%d exact\n", nok, ncase);
    zb_check(ncase >= 10, "reference file has cases (%d)", ncase);
    cJSON_Delete(root);
    return ZB_OK;
}

/* Append one random code point from a mix of scripts (ASCII-heavy), as UTF-8. */
static size_t rand_char(zb_rng *r, char *o) {
    static const uint32_t lo[] = {0x20, 0x09, 0xA0, 0x400, 0x3040, 0x4E00, 0xAC00, 0x1F300, 0x2000, 0x0600, 0x10000};
    static const uint32_t span[] = {95, 5, 0x160, 0x100, 0xC0, 0x5000, 0x2BA4, 0x300, 0x70, 0x100, 0xF0000};
    int k = (int)(zb_rng_u64(r) % 11);
    if (zb_rng_u64(r) % 3 == 0) k = 0;
    uint32_t c = lo[k] + (uint32_t)(zb_rng_u64(r) % span[k]);
    if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 63)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | ((c >> 6) & 63)); o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | ((c >> 12) & 63));
    o[2] = (char)(0x80 | ((c >> 6) & 63)); o[3] = (char)(0x80 | (c & 63));
    return 4;
}

static int roundtrip(const zb_tokenizer *t, const char *s, size_t n) {
    int32_t *ids;
    size_t nid;
    char *out;
    size_t len;
    if (zb_tokenizer_encode(t, s, n, &ids, &nid)) return 0;
    int ok = !zb_tokenizer_decode(t, ids, nid, &out, &len) && len == n && !memcmp(out, s, n);
    /* Streaming: token bytes concatenated give the same text. */
    size_t k = 0;
    char buf[256];
    for (size_t i = 0; ok && i < nid; i++) {
        int b = zb_tokenizer_token_bytes(t, ids[i], buf, sizeof buf);
        ok = b >= 0 && b <= (int)sizeof buf && k + (size_t)b <= n && !memcmp(s + k, buf, (size_t)b);
        k += (size_t)b;
    }
    ok = ok && k == n;
    if (ok) free(out);
    free(ids);
    return ok;
}

static void check_roundtrip(const zb_tokenizer *t) {
    zb_rng r;
    zb_rng_seed(&r, 1234);
    char s[4096];
    int bad = 0;
    for (int it = 0; it < 300; it++) {
        size_t n = 0, want = 1 + zb_rng_u64(&r) % 400;
        while (n < want) {
            if (zb_rng_u64(&r) % 50 == 0) {   /* now and then a special token, a newline run */
                const char *sp = zb_rng_u64(&r) % 2 ? "<|eot_id|>" : "\n\n \r\n";
                memcpy(s + n, sp, strlen(sp)); n += strlen(sp);
            } else {
                n += rand_char(&r, s + n);
            }
        }
        bad += !roundtrip(t, s, n);
    }
    zb_check(bad == 0, "random valid UTF-8 round-trips (%d of 300 failed)", bad);
    bad = 0;
    for (int it = 0; it < 100; it++) {   /* arbitrary bytes: carried through byte-wise */
        size_t n = 1 + zb_rng_u64(&r) % 200;
        for (size_t i = 0; i < n; i++) s[i] = (char)(zb_rng_u64(&r) & 0xFF);
        bad += !roundtrip(t, s, n);
    }
    zb_check(bad == 0, "random bytes (invalid UTF-8) round-trip (%d of 100 failed)", bad);
    /* Long runs stay cheap and exact. */
    static char big[100000];
    memset(big, ' ', sizeof big);
    big[sizeof big - 1] = 'x';
    double t0 = zb_now();
    zb_check(roundtrip(t, big, sizeof big), "100 kB run of spaces round-trips");
    printf("100 kB of spaces: %.3f s\n", zb_now() - t0);
}

static void check_speed(const zb_tokenizer *t) {
    static const char *words[] = {"the", "of", "and", "to", "in", "a", "is", "that", "for", "it",
        "as", "was", "with", "be", "by", "on", "not", "he", "I", "this", "are", "or", "his", "from",
        "at", "which", "but", "have", "an", "had", "they", "you", "were", "their", "one", "all",
        "tokenizer", "hybrid", "model", "attention", "state", "space", "Llama", "inference",
        "distillation", "throughput", "2024", "3.14", "don't", "we'll", "(see", "below)", "e.g.",
        "naïve", "café", "—", "approximately", "reconstruction", "parameters"};
    size_t nw = sizeof words / sizeof words[0], cap = 1 << 20, n = 0;
    char *s = malloc(cap + 64);
    zb_rng r;
    zb_rng_seed(&r, 7);
    while (n < cap) {
        const char *w = words[zb_rng_u64(&r) % nw];
        size_t l = strlen(w);
        memcpy(s + n, w, l); n += l;
        uint64_t p = zb_rng_u64(&r) % 20;
        s[n++] = p == 0 ? '.' : p == 1 ? ',' : ' ';
        if (p == 0) { s[n++] = zb_rng_u64(&r) % 4 ? ' ' : '\n'; }
    }
    int32_t *ids;
    size_t nid;
    double t0 = zb_now();
    int rc = zb_tokenizer_encode(t, s, n, &ids, &nid);
    double dt = zb_now() - t0;
    zb_check(rc == 0, "encode 1 MB");
    if (!rc) {
        printf("encode %.2f MB -> %zu ids in %.3f s (%.1f MB/s)\n", n / 1e6, nid, dt, n / 1e6 / dt);
        t0 = zb_now();
        char *out;
        size_t len;
        rc = zb_tokenizer_decode(t, ids, nid, &out, &len);
        printf("decode: %.3f s\n", zb_now() - t0);
        zb_check(!rc && len == n && !memcmp(out, s, n), "1 MB text round-trips");
        if (!rc) free(out);
        free(ids);
    }
    free(s);
}

static int load_text(const char *text, const char *fname, zb_tokenizer **t, char *path, size_t cap) {
    snprintf(path, cap, "/tmp/zb_tok_test_%d_%s", (int)getpid(), fname);
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
    int rc = zb_tokenizer_load(t, path);
    remove(path);
    return rc;
}

static void check_bad(const zb_tokenizer *good) {
    zb_tokenizer *t = NULL;
    int rc = zb_tokenizer_load(&t, "/nonexistent/tokenizer.json");
    zb_check(rc == ZB_EIO && t == NULL && strstr(zb_errmsg(), "/nonexistent/tokenizer.json"),
             "missing file -> ZB_EIO naming it (%s)", zb_errmsg());
    char p[256];
    rc = load_text("{\"model\": {\"vocab\": {\"a\": 0,", "trunc.json", &t, p, sizeof p);
    zb_check(rc == ZB_EFORMAT && !strchr(zb_errmsg(), '\n') && strstr(zb_errmsg(), "trunc.json"),
             "truncated JSON -> ZB_EFORMAT naming the file (%s)", zb_errmsg());
    rc = load_text("[1, 2]", "array.json", &t, p, sizeof p);
    zb_check(rc == ZB_EFORMAT, "JSON that is no tokenizer -> ZB_EFORMAT (%s)", zb_errmsg());
    rc = load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]},"
                   "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "merge.json", &t, p, sizeof p);
    zb_check(rc == ZB_EFORMAT && strstr(zb_errmsg(), "not in vocab"), "merge of unknown token -> ZB_EFORMAT (%s)", zb_errmsg());
    rc = load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                   "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}",
                   "regex.json", &t, p, sizeof p);
    zb_check(rc == ZB_EFORMAT && strstr(zb_errmsg(), "regex"), "bad regex -> ZB_EFORMAT (%s)", zb_errmsg());

    /* A tiny tokenizer in the newer ["a","b"] merges form, with added-token flags. */
    rc = load_text("{\"added_tokens\": [{\"id\": 5, \"content\": \"<m>\", \"lstrip\": true, \"rstrip\": false,"
                   " \"single_word\": false, \"normalized\": false, \"special\": true},"
                   " {\"id\": 6, \"content\": \"ab\", \"single_word\": true, \"normalized\": true, \"special\": false}],"
                   "\"model\": {\"type\": \"BPE\", \"ignore_merges\": false, \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"Ġ\": 3, \"x\": 4},"
                   " \"merges\": [[\"a\", \"b\"]]},"
                   "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}}",
                   "tiny.json", &t, p, sizeof p);
    zb_check(rc == 0, "tiny tokenizer with pair merges loads (%s)", rc ? zb_errmsg() : "ok");
    if (!rc) {
        int32_t *ids;
        size_t n;
        /* "x  <m>ab xab": lstrip eats the two spaces; "ab" alone is the added token, inside
         * "xab" it is not a single word so BPE merges it. */
        rc = zb_tokenizer_encode(t, "x  <m>ab xab", 12, &ids, &n);
        int want[] = {4, 5, 6, 3, 4, 2};
        int ok = !rc && n == 6;
        for (size_t i = 0; ok && i < n; i++) ok = ids[i] == want[i];
        zb_check(ok, "added-token lstrip / single_word / pair merges");
        if (!rc) free(ids);
        zb_tokenizer_free(t);
    }

    int32_t badid[] = {9906, 999999};
    char *out = NULL;
    size_t len;
    rc = zb_tokenizer_decode(good, badid, 2, &out, &len);
    zb_check(rc != 0 && out == NULL && strstr(zb_errmsg(), "999999"), "unknown id -> error (%s)", zb_errmsg());
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    const char *dir = argc > 1 ? argv[1] : "../shared/fixtures";
    snprintf(path_tok, sizeof path_tok, "%s/llama3-tokenizer/tokenizer.json", dir);
    snprintf(path_ref, sizeof path_ref, "%s/llama3-tokenizer/tokenizer_ref.json", dir);
    zb_tokenizer *t;
    double t0 = zb_now();
    ZB_TEST_OK(zb_tokenizer_load(&t, path_tok));
    printf("load: %.3f s\n", zb_now() - t0);

    zb_check(zb_tokenizer_vocab_size(t) == 128256, "vocab size %d", zb_tokenizer_vocab_size(t));
    zb_check(zb_tokenizer_token_id(t, "<|eot_id|>") == 128009, "<|eot_id|> is 128009");
    zb_check(zb_tokenizer_token_id(t, "Hello") == 9906, "Hello is 9906");
    zb_check(zb_tokenizer_token_id(t, "no such token here") == -1, "absent token -> -1");
    const char *s = zb_tokenizer_token_str(t, 1917);
    zb_check(s && !strcmp(s, "\xC4\xA0world"), "token_str(1917) = Ġworld");
    char buf[16];
    int nb = zb_tokenizer_token_bytes(t, 1917, buf, sizeof buf);
    zb_check(nb == 6 && !memcmp(buf, " world", 6), "token_bytes(1917) = ' world'");
    zb_check(zb_tokenizer_token_bytes(t, -3, buf, sizeof buf) == -1, "token_bytes(bad id) = -1");
    zb_check(zb_tokenizer_is_special(t, 128000) && !zb_tokenizer_is_special(t, 9906), "is_special");
    zb_check(zb_tokenizer_bos_id(t) == 128000, "bos = 128000");
    const int32_t *eos;
    int ne = zb_tokenizer_eos_ids(t, &eos);
    zb_check(ne >= 2 && eos[0] == 128001 && (eos[1] == 128009 || (ne > 2 && eos[2] == 128009)),
             "eos ids start with 128001 and hold 128009");

    ZB_TEST_OK(check_ref(t));
    check_roundtrip(t);
    check_speed(t);
    check_bad(t);
    zb_tokenizer_free(t);
    return zb_test_finish();
}
