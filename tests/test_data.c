/* test_data.c — `zebra data` shards and the loader: decoding the shards gives back the
 * documents, the loader's rows are the packed stream (wrap, determinism, tell/seek), the chat
 * mask covers exactly the assistant tokens, preference pairs round trip, hashes catch damage.
 * argv[1] = the fixtures folder (holds llama3-tokenizer/). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "data.h"
#include "tokenizer.h"
#include "zb_common.h"
#include "zb_test.h"

static char tok_path[4096], root[256];
static zb_tokenizer *tok;

static void put_file(const char *name, const char *text, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", root, name);
    FILE *f = fopen(p, "wb");
    if (f) { fwrite(text, 1, n, f); fclose(f); }
}

/* zebra data with extra args (NULL-terminated). */
static int run_data(const char *out, ...) {
    char *argv[32];
    int argc = 0;
    static char o[512];
    snprintf(o, sizeof o, "%s/%s", root, out);
    argv[argc++] = "data"; argv[argc++] = "--tokenizer"; argv[argc++] = tok_path;
    argv[argc++] = "-o"; argv[argc++] = o;
    va_list ap;
    va_start(ap, out);
    for (char *a; (a = va_arg(ap, char *)) && argc < 31;) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return zb_cmd_data(argc, argv);
}

static char *dir_of(const char *name) {
    static char d[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(d[k], sizeof d[k], "%s/%s", root, name);
    return d[k];
}

/* Deterministic prose with punctuation, numbers, newlines and some non-ASCII. */
static char *gen_text(unsigned seed, size_t n) {
    static const char *const w[] = {"the", "zebra", "runs", "across", "a", "wide", "plain,", "and",
                                    "café", "naïve", "日本語", "1234", "(note)", "it's", "— dash", "end.\n",
                                    "\n\n", "tab\there", "  spaces", "Émile"};
    char *s = malloc(n + 64);
    size_t k = 0;
    unsigned x = seed * 2654435761u + 1;
    while (k < n) {
        x = x * 1103515245u + 12345u;
        const char *t = w[(x >> 16) % (sizeof w / sizeof w[0])];
        k += (size_t)sprintf(s + k, "%s%s", k ? " " : "", t);
    }
    s[k] = 0;
    return s;
}

static char *decode_range(const uint32_t *ids, uint64_t a, uint64_t b) {
    int32_t *v = malloc(sizeof(int32_t) * (b - a + 1));
    for (uint64_t i = a; i < b; i++) v[i - a] = (int32_t)ids[i];
    char *txt = NULL;
    size_t len = 0;
    if (zb_tokenizer_decode(tok, v, (size_t)(b - a), &txt, &len)) txt = NULL;
    free(v);
    return txt;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* All documents of a set (train then val), decoded, BOS/EOS checked and stripped. */
static int read_docs(const char *dir, char ***docs, size_t *n) {
    *docs = NULL; *n = 0;
    for (int sp = 0; sp < 2; sp++) {
        zb_shard *s;
        ZB_TRY(zb_shard_open(&s, dir, sp ? "val" : "train"));
        uint64_t nt;
        const uint32_t *ids = zb_shard_tokens(s, &nt);
        uint64_t nd = zb_shard_docs(s);
        *docs = realloc(*docs, sizeof(char *) * (*n + nd + 1));
        for (uint64_t i = 0; i < nd; i++) {
            uint64_t a, b;
            ZB_TRY(zb_shard_doc(s, i, &a, &b));
            int ok = b - a >= 2 && ids[a] == 128000 && ids[b - 1] == 128001;
            zb_check(ok, "%s doc %llu is BOS ... EOS", dir, (unsigned long long)i);
            (*docs)[(*n)++] = ok ? decode_range(ids, a + 1, b - 1) : strdup("");
        }
        zb_shard_close(s);
    }
    return ZB_OK;
}

static void free_docs(char **d, size_t n) {
    for (size_t i = 0; i < n; i++) free(d[i]);
    free(d);
}

static int test_round_trip(void) {
    /* Files in a nested directory (read in sorted order) plus one big file that is cut into
     * documents at blank lines. */
    char sub[512];
    snprintf(sub, sizeof sub, "%s/corpus/b", root);
    mkdir(dir_of("corpus"), 0755);
    mkdir(sub, 0755);
    size_t total = 0;
    char *all = malloc(1 << 20);
    all[0] = 0;
    const char *names[] = {"corpus/a.txt", "corpus/b/c.txt", "corpus/b/d.txt", "corpus/e.txt"};
    size_t sizes[] = {300, 100000, 50, 2000};
    for (int i = 0; i < 4; i++) {
        char *t = gen_text((unsigned)i + 1, sizes[i]);
        put_file(names[i], t, strlen(t));
        strcat(all + total, t);
        total += strlen(t);
        free(t);
    }
    put_file("corpus/.hidden", "never read", 10);
    put_file("corpus/blob.txt", "\x01\x00binary", 8);   /* NUL bytes: skipped */
    /* 1) in order, no val: the decoded documents concatenate to the files in sorted order */
    ZB_TRY(run_data("s1", "--input", dir_of("corpus"), "--no-shuffle", "--val-fraction", "0", NULL));
    char **d1; size_t n1;
    ZB_TRY(read_docs(dir_of("s1"), &d1, &n1));
    size_t len = 0;
    for (size_t i = 0; i < n1; i++) len += strlen(d1[i]);
    char *cat = calloc(1, len + 1);
    for (size_t i = 0; i < n1; i++) strcat(cat, d1[i]);
    zb_check(n1 >= 6, "big file cut into documents: %zu docs from 4 files", n1);
    zb_check(len == total && !strcmp(cat, all), "decoded shards == input files (%zu bytes)", len);
    free(cat);
    ZB_TRY(zb_shards_verify(dir_of("s1")));
    /* 2) shuffled with a val split: the same documents, split between train and val */
    ZB_TRY(run_data("s2", "--input", dir_of("corpus"), "--val-fraction", "0.3", "--seed", "7", NULL));
    char **d2; size_t n2;
    ZB_TRY(read_docs(dir_of("s2"), &d2, &n2));
    qsort(d1, n1, sizeof *d1, cmp_str);
    qsort(d2, n2, sizeof *d2, cmp_str);
    int same = n1 == n2;
    for (size_t i = 0; same && i < n1; i++) same = !strcmp(d1[i], d2[i]);
    zb_check(same, "shuffled + split set holds the same documents");
    zb_shard *v;
    ZB_TRY(zb_shard_open(&v, dir_of("s2"), "val"));
    zb_check(zb_shard_docs(v) > 0 && zb_shard_docs(v) < n2, "val split has %llu of %zu docs",
             (unsigned long long)zb_shard_docs(v), n2);
    zb_shard_close(v);
    /* 3) the same command again gives byte-identical shards; a JSONL input gives the docs */
    ZB_TRY(run_data("s3", "--input", dir_of("corpus"), "--val-fraction", "0.3", "--seed", "7", NULL));
    const char *fl[] = {"train.bin", "val.bin", "train.idx", "val.idx"};
    for (int i = 0; i < 4; i++) {
        char p1[600], p2[600], *a, *b;
        size_t na, nb;
        snprintf(p1, sizeof p1, "%s/%s", dir_of("s2"), fl[i]);
        snprintf(p2, sizeof p2, "%s/%s", dir_of("s3"), fl[i]);
        ZB_TRY(zb_read_file(p1, &a, &na));
        ZB_TRY(zb_read_file(p2, &b, &nb));
        zb_check(na == nb && !memcmp(a, b, na), "rerun: %s identical", fl[i]);
        free(a); free(b);
    }
    const char *jl = "{\"text\": \"First line.\\nSecond.\"}\n\n{\"text\": \"Zwei \\u00e9\", \"id\": 3}\r\n";
    put_file("docs.jsonl", jl, strlen(jl));
    ZB_TRY(run_data("s4", "--input", dir_of("docs.jsonl"), "--no-shuffle", "--val-fraction", "0", NULL));
    char **d4; size_t n4;
    ZB_TRY(read_docs(dir_of("s4"), &d4, &n4));
    zb_check(n4 == 2 && !strcmp(d4[0], "First line.\nSecond.") && !strcmp(d4[1], "Zwei \xc3\xa9"),
             "jsonl documents round trip");
    free_docs(d4, n4);
    free_docs(d1, n1);
    free_docs(d2, n2);
    free(all);
    /* damage is caught: a changed byte by the hash, a truncated file at open */
    char p[600];
    snprintf(p, sizeof p, "%s/train.bin", dir_of("s3"));
    FILE *f = fopen(p, "r+b");
    fseek(f, 5, SEEK_SET); fputc(0x7f, f); fclose(f);
    zb_check(zb_shards_verify(dir_of("s3")) != ZB_OK, "verify catches a changed byte: %s", zb_errmsg());
    if (truncate(p, 8) != 0) zb_check(0, "truncate %s", p);
    zb_shard *s;
    zb_check(zb_shard_open(&s, dir_of("s3"), "train") != ZB_OK, "open catches truncation: %s", zb_errmsg());
    return ZB_OK;
}

/* Loader rows are the stream cut at multiples of T, wrap at the end, and resume exactly. */
static int test_loader(void) {
    const char *dir = dir_of("s2");
    const int B = 3, T = 64;
    zb_shard *s;
    ZB_TRY(zb_shard_open(&s, dir, "train"));
    uint64_t nt;
    const uint32_t *tok_all = zb_shard_tokens(s, &nt);
    zb_loader *a, *b;
    ZB_TRY(zb_loader_open(&a, dir, "train", B, T, 0, 1));
    ZB_TRY(zb_loader_open(&b, dir, "train", B, T, 0, 1));
    uint64_t rows = zb_loader_rows(a);
    zb_check(rows == (nt - 1) / T && zb_loader_tokens(a) == nt, "rows %llu = (tokens-1)/T", (unsigned long long)rows);
    int *x = malloc(sizeof(int) * B * T), *y = malloc(sizeof(int) * B * T);
    int *x2 = malloc(sizeof(int) * B * T), *y2 = malloc(sizeof(int) * B * T);
    long nb = (long)(2 * rows / B + 3);   /* past two epochs */
    int ok_rows = 1, ok_det = 1;
    zb_loader_pos mid = {0, 0};
    long at_mid = nb / 3;
    int *xm = malloc(sizeof(int) * B * T * 8), *ym = malloc(sizeof(int) * B * T * 8);
    for (long i = 0; i < nb; i++) {
        if (i == at_mid) mid = zb_loader_tell(a);
        ZB_TRY(zb_loader_next(a, x, y));
        ZB_TRY(zb_loader_next(b, x2, y2));
        ok_det &= !memcmp(x, x2, sizeof(int) * B * T) && !memcmp(y, y2, sizeof(int) * B * T);
        for (int r = 0; r < B; r++) {
            uint64_t g = ((uint64_t)i * B + r) % rows;
            for (int t = 0; t < T; t++)
                ok_rows &= x[r * T + t] == (int)tok_all[g * T + t] && y[r * T + t] == (int)tok_all[g * T + t + 1];
        }
        if (i >= at_mid && i < at_mid + 8) {
            memcpy(xm + (i - at_mid) * B * T, x, sizeof(int) * B * T);
            memcpy(ym + (i - at_mid) * B * T, y, sizeof(int) * B * T);
        }
    }
    zb_check(ok_rows, "rows are the packed stream (targets = next tokens), wrapping");
    zb_check(ok_det, "two loaders give the same batches");
    zb_loader_pos p = zb_loader_tell(a);
    zb_check(p.epoch == (uint64_t)nb * B / rows && p.row == (uint64_t)nb * B % rows,
             "tell after %ld batches: epoch %llu row %llu", nb, (unsigned long long)p.epoch, (unsigned long long)p.row);
    zb_check(mid.row == (uint64_t)at_mid * B % rows, "tell mid-epoch");
    /* a fresh loader seeks to the saved position and continues identically */
    zb_loader *c;
    ZB_TRY(zb_loader_open(&c, dir, "train", B, T, 0, 1));
    ZB_TRY(zb_loader_seek(c, mid));
    int ok_seek = 1;
    for (int i = 0; i < 8; i++) {
        ZB_TRY(zb_loader_next(c, x, y));
        ok_seek &= !memcmp(x, xm + i * B * T, sizeof(int) * B * T) && !memcmp(y, ym + i * B * T, sizeof(int) * B * T);
    }
    zb_check(ok_seek, "seek(tell()) resumes exactly");
    zb_loader_pos bad = {rows, 0};
    zb_check(zb_loader_seek(c, bad) != ZB_OK, "seek past the end is refused");
    zb_loader *big;
    zb_check(zb_loader_open(&big, dir, "val", 1, (int)nt * 10, 0, 1) != ZB_OK, "T beyond the split: error: %s", zb_errmsg());
    zb_loader_close(a); zb_loader_close(b); zb_loader_close(c);
    zb_shard_close(s);
    free(x); free(y); free(x2); free(y2); free(xm); free(ym);
    return ZB_OK;
}

/* Hand-built Llama-3 template: mask on assistant content + eot only. */
static int push_text(int32_t *v, uint8_t *m, size_t *n, const char *s, int mask) {
    int32_t *ids; size_t k;
    ZB_TRY(zb_tokenizer_encode(tok, s, strlen(s), &ids, &k));
    for (size_t i = 0; i < k; i++) { v[*n] = ids[i]; m[(*n)++] = (uint8_t)mask; }
    free(ids);
    return ZB_OK;
}
static void push_id(int32_t *v, uint8_t *m, size_t *n, const char *s, int mask) {
    v[*n] = zb_tokenizer_token_id(tok, s); m[(*n)++] = (uint8_t)mask;
}
static int push_msg(int32_t *v, uint8_t *m, size_t *n, const char *role, const char *content, int mask) {
    push_id(v, m, n, "<|start_header_id|>", 0);
    ZB_TRY(push_text(v, m, n, role, 0));
    push_id(v, m, n, "<|end_header_id|>", 0);
    ZB_TRY(push_text(v, m, n, "\n\n", 0));
    ZB_TRY(push_text(v, m, n, content, mask));
    push_id(v, m, n, "<|eot_id|>", mask);
    return ZB_OK;
}

static int test_chat(void) {
    const char *jl =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"You are terse.\"},"
        " {\"role\": \"user\", \"content\": \"What is 2+2?\"},"
        " {\"role\": \"assistant\", \"content\": \"  4.\\n\"},"
        " {\"role\": \"user\", \"content\": \"And 3+3?\"},"
        " {\"role\": \"assistant\", \"content\": \"Six, of course.\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello there!\"}]}\n";
    put_file("chat.jsonl", jl, strlen(jl));
    ZB_TRY(run_data("chat", "--input", dir_of("chat.jsonl"), "--format", "chat", "--no-shuffle", "--val-fraction", "0", NULL));
    int32_t v[256]; uint8_t m[256]; size_t n = 0;
    push_id(v, m, &n, "<|begin_of_text|>", 0);
    ZB_TRY(push_msg(v, m, &n, "system", "You are terse.", 0));
    ZB_TRY(push_msg(v, m, &n, "user", "What is 2+2?", 0));
    ZB_TRY(push_msg(v, m, &n, "assistant", "4.", 1));   /* the template trims contents */
    ZB_TRY(push_msg(v, m, &n, "user", "And 3+3?", 0));
    ZB_TRY(push_msg(v, m, &n, "assistant", "Six, of course.", 1));
    push_id(v, m, &n, "<|end_of_text|>", 0);
    push_id(v, m, &n, "<|begin_of_text|>", 0);
    ZB_TRY(push_msg(v, m, &n, "user", "Hi", 0));
    ZB_TRY(push_msg(v, m, &n, "assistant", "Hello there!", 1));
    push_id(v, m, &n, "<|end_of_text|>", 0);
    zb_shard *s;
    ZB_TRY(zb_shard_open(&s, dir_of("chat"), "train"));
    uint64_t nt;
    const uint32_t *ids = zb_shard_tokens(s, &nt);
    const uint8_t *mask = zb_shard_mask(s);
    int same = nt == n && mask;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == (uint32_t)v[i] && mask[i] == m[i];
    zb_check(same, "chat ids + mask == hand-built template (%llu vs %zu tokens)", (unsigned long long)nt, n);
    char *txt = decode_range(ids, 0, nt);
    zb_check(txt && strstr(txt, "<|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>") != NULL,
             "chat decodes to the Llama-3 template");
    /* encoding the whole rendered conversation at once (as HF apply_chat_template does)
     * gives the same ids as the piecewise rendering */
    uint64_t a0, b0;
    ZB_TRY(zb_shard_doc(s, 0, &a0, &b0));
    char *conv = decode_range(ids, a0, b0 - 1);   /* without the EOS separator */
    int32_t *whole; size_t nw;
    ZB_TRY(zb_tokenizer_encode(tok, conv, strlen(conv), &whole, &nw));
    int eq = nw == b0 - 1 - a0;
    for (size_t i = 0; eq && i < nw; i++) eq = (uint32_t)whole[i] == ids[a0 + i];
    zb_check(eq, "piecewise template ids == ids of the whole rendered string");
    free(whole); free(conv);
    free(txt);
    /* the loader turns mask 0 into target -1 */
    zb_loader *l;
    const int T = (int)nt - 1;
    ZB_TRY(zb_loader_open(&l, dir_of("chat"), "train", 1, T, 0, 1));
    int *x = malloc(sizeof(int) * T), *y = malloc(sizeof(int) * T);
    ZB_TRY(zb_loader_next(l, x, y));
    int ok = 1;
    for (int t = 0; t < T; t++) ok &= y[t] == (m[t + 1] ? v[t + 1] : -1) && x[t] == v[t];
    zb_check(ok, "loader targets are -1 exactly where the mask is 0");
    free(x); free(y);
    zb_loader_close(l);
    zb_shard_close(s);
    return ZB_OK;
}

static int test_pref(void) {
    const char *jl =
        "{\"prompt\": \"Name a colour.\", \"chosen\": \"Blue.\", \"rejected\": \"No.\"}\n"
        "{\"prompt\": [{\"role\": \"system\", \"content\": \"Be kind.\"}, {\"role\": \"user\", \"content\": \"Hi\"}],"
        " \"chosen\": [{\"role\": \"assistant\", \"content\": \"Hello!\"}], \"rejected\": \"Go away\"}\n";
    put_file("pref.jsonl", jl, strlen(jl));
    ZB_TRY(run_data("pref", "--input", dir_of("pref.jsonl"), "--format", "pref", "--val-fraction", "0", NULL));
    zb_prefs *p;
    ZB_TRY(zb_pref_open(&p, dir_of("pref"), "train"));
    zb_check(zb_pref_count(p) == 2, "2 pairs");
    const char *want[2][3] = {
        {"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", "Blue.<|eot_id|>", "No.<|eot_id|>"},
        {"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
         "Hello!<|eot_id|>", "Go away<|eot_id|>"}};
    for (uint64_t i = 0; i < 2 && i < zb_pref_count(p); i++) {
        zb_pref_pair q;
        ZB_TRY(zb_pref_get(p, i, &q));
        const uint32_t *seg[3] = {q.prompt, q.chosen, q.rejected};
        size_t ns[3] = {q.n_prompt, q.n_chosen, q.n_rejected};
        for (int k = 0; k < 3; k++) {
            char *t = decode_range(seg[k], 0, ns[k]);
            zb_check(t && !strcmp(t, want[i][k]), "pair %llu part %d: '%s'", (unsigned long long)i, k, t ? t : "(null)");
            free(t);
        }
    }
    zb_pref_pair q;
    zb_check(zb_pref_get(p, 2, &q) != ZB_OK, "pair index out of range is an error");
    zb_pref_close(p);
    zb_loader *l;
    zb_check(zb_loader_open(&l, dir_of("pref"), "train", 1, 4, 0, 1) != ZB_OK, "loader refuses a pref set: %s", zb_errmsg());
    zb_check(zb_pref_open(&p, dir_of("chat"), "train") != ZB_OK, "pref reader refuses a chat set");
    return ZB_OK;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 2) { fprintf(stderr, "usage: test_data FIXTURES\n"); return 2; }
    snprintf(tok_path, sizeof tok_path, "%s/llama3-tokenizer/tokenizer.json", argv[1]);
    snprintf(root, sizeof root, "/tmp/zb_test_data_XXXXXX");
    if (!mkdtemp(root)) { perror("mkdtemp"); return 1; }
    ZB_TEST_OK(zb_tokenizer_load(&tok, tok_path));
    ZB_TEST_OK(test_round_trip());
    ZB_TEST_OK(test_loader());
    ZB_TEST_OK(test_chat());
    ZB_TEST_OK(test_pref());
    zb_tokenizer_free(tok);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);   /* our own mkdtemp directory */
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    return zb_test_finish();
}
