/* fuzz_tokenizer.c — the tokenizer.json loader (core/tokenizer.c: zb_tokenizer_load), with an
 * optional tokenizer_config.json ("@@@ tokenizer_config.json" section, see fuzz_common.h).
 * A tokenizer that loads must encode text (a fixed sample, and the input's first bytes) into
 * ids that it decodes again, and answer every lookup within its id range. */
#include "fuzz_common.h"
#include "tokenizer.h"

static void use(const zb_tokenizer *t, const char *text, size_t n) {
    int32_t *ids = NULL;
    size_t nid = 0;
    int rc = zb_tokenizer_encode(t, text, n, &ids, &nid);
    if (rc) { fz_check_msg(rc, ""); return; }
    char *back = NULL;
    size_t blen = 0;
    rc = zb_tokenizer_decode(t, ids, nid, &back, &blen);
    FZ_ASSERT(!rc, "ids from encode do not decode: %s", zb_errmsg());
    free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json", NULL};
    fz_write_files(data, size, names);
    char p[512];
    fz_path(p, sizeof p, "tokenizer.json");
    zb_tokenizer *t = NULL;
    int rc = zb_tokenizer_load(&t, p);
    if (rc) { fz_check_msg(rc, fz_dir()); return 0; }
    int nv = zb_tokenizer_vocab_size(t);
    FZ_ASSERT(nv >= 0, "vocab size %d", nv);
    static const char sample[] = "Hello world! <|begin_of_text|>  x\n\n\t 123 caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xff\xfe <|eot_id|>";
    use(t, sample, sizeof sample - 1);
    use(t, (const char *)data, size < 256 ? size : 256);
    char buf[64];
    for (int32_t id = -1; id <= nv && id < 4096; id++) {
        const char *s = zb_tokenizer_token_str(t, id);
        int nb = zb_tokenizer_token_bytes(t, id, buf, sizeof buf);
        FZ_ASSERT((s != NULL) == (nb >= 0), "id %d: token_str and token_bytes disagree", id);
        if (s) FZ_ASSERT(zb_tokenizer_token_id(t, s) >= 0, "id %d: its string '%s' has no id", id, s);
        zb_tokenizer_is_special(t, id);
    }
    FZ_ASSERT(zb_tokenizer_bos_id(t) < nv, "bos id %d outside the vocabulary %d", zb_tokenizer_bos_id(t), nv);
    const int32_t *eos;
    int ne = zb_tokenizer_eos_ids(t, &eos);
    for (int i = 0; i < ne; i++) FZ_ASSERT(eos[i] >= 0 && eos[i] < nv, "eos id %d outside the vocabulary", eos[i]);
    zb_tokenizer_free(t);
    return 0;
}
