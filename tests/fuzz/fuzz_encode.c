/* fuzz_encode.c — the tokenizer's encoder and decoder (core/tokenizer.c) on arbitrary bytes,
 * with the real Llama 3 tokenizer (../shared/fixtures/llama3-tokenizer, or $ZB_FIXTURES):
 * every byte has a token there, so decode(encode(text)) must give the text back exactly.
 * The same bytes read as int32 ids must decode or fail with a message, never crash. */
#include "fuzz_common.h"
#include "tokenizer.h"

#ifndef ZB_FUZZ_FIXTURES
#define ZB_FUZZ_FIXTURES "../shared/fixtures"
#endif

static zb_tokenizer *tok(void) {
    static zb_tokenizer *t;
    if (!t) {
        const char *fx = getenv("ZB_FIXTURES");
        char p[4096];
        snprintf(p, sizeof p, "%s/llama3-tokenizer/tokenizer.json", fx && *fx ? fx : ZB_FUZZ_FIXTURES);
        if (zb_tokenizer_load(&t, p)) { fprintf(stderr, "fuzz_encode: %s\n", zb_errmsg()); abort(); }
    }
    return t;
}

/* The 9 MB tokenizer loads before the first input (seconds under ASan), not inside the
 * per-input timeout, where a long run took it for a hang. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    tok();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const zb_tokenizer *t = tok();
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = zb_tokenizer_encode(t, (const char *)data, size, &ids, &n);
    FZ_ASSERT(!rc, "encode failed: %s", zb_errmsg());
    FZ_ASSERT(n <= size, "%zu ids for %zu bytes", n, size);
    char *back = NULL;
    size_t blen = 0;
    rc = zb_tokenizer_decode(t, ids, n, &back, &blen);
    FZ_ASSERT(!rc, "decode of encoded ids failed: %s", zb_errmsg());
    FZ_ASSERT(blen == size && !memcmp(back, data, size), "decode(encode(x)) != x (%zu bytes back for %zu)", blen, size);
    free(back);
    free(ids);
    /* the bytes as ids */
    size_t k = size / 4;
    int32_t *raw = malloc(4 * (k ? k : 1));
    if (!raw) return 0;
    memcpy(raw, data, 4 * k);
    rc = zb_tokenizer_decode(t, raw, k, &back, &blen);
    if (rc) fz_check_msg(rc, "tokenizer.json");
    else free(back);
    free(raw);
    return 0;
}
