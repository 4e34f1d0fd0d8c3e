/* cmd_tokenize.c — `zebra tokenize --tokenizer FILE [--text T | stdin] [--decode]`.
 * Encode: prints the ids (no BOS) space-separated on one line. --decode: reads ids
 * (separated by spaces, commas or newlines) from --text or stdin and prints the text. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tokenizer.h"
#include "zb_common.h"

static int read_stdin(char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = zb_malloc(cap, "stdin");
    if (!buf) return ZB_ENOMEM;
    for (;;) {
        if (n == cap) {
            char *p = realloc(buf, cap * 2);
            if (!p) { free(buf); return zb_fail(ZB_ENOMEM, "out of memory reading stdin"); }
            buf = p; cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) break;
    }
    if (ferror(stdin)) { free(buf); return zb_fail(ZB_EIO, "stdin: read error"); }
    *out = buf; *len = n;
    return ZB_OK;
}

static int parse_ids(const char *s, size_t len, int32_t **ids, size_t *n) {
    size_t cap = 64, k = 0;
    int32_t *v = zb_malloc(cap * sizeof *v, "ids");
    if (!v) return ZB_ENOMEM;
    size_t i = 0;
    while (i < len) {
        char c = s[i];
        if (c == ' ' || c == ',' || c == '\n' || c == '\r' || c == '\t') { i++; continue; }
        char num[32];
        size_t j = 0, i0 = i;
        while (i < len && !strchr(" ,\n\r\t", s[i])) { if (j < sizeof num - 1) num[j++] = s[i]; i++; }
        num[j] = 0;
        long x;
        /* the whole word: a longer one than the buffer is not a token id either */
        if (i - i0 >= sizeof num || zb_parse_long(num, "tokenize: a token id", 0, INT32_MAX, &x)) {
            free(v);
            return zb_fail(ZB_EARG, "tokenize: '%s%s' is not a token id", num, i - i0 >= sizeof num ? "..." : "");
        }
        if (k == cap) {
            int32_t *p = realloc(v, 2 * cap * sizeof *v);
            if (!p) { free(v); return zb_fail(ZB_ENOMEM, "out of memory (ids)"); }
            v = p; cap *= 2;
        }
        v[k++] = (int32_t)x;
    }
    *ids = v; *n = k;
    return ZB_OK;
}

int zb_cmd_tokenize(int argc, char **argv) {
    static const char *const vals[] = {"--tokenizer", "--text", NULL};
    static const char *const flags[] = {"--decode", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *path = zb_arg_str(argc, argv, "--tokenizer", NULL);
    if (!path) return zb_fail(ZB_EARG, "tokenize: --tokenizer FILE is required");
    const char *text = zb_arg_str(argc, argv, "--text", NULL);
    int decode = zb_arg_flag(argc, argv, "--decode");

    zb_tokenizer *tok;
    ZB_TRY(zb_tokenizer_load(&tok, path));
    char *in = NULL;
    size_t n = 0;
    int rc = ZB_OK;
    if (text) n = strlen(text);
    else rc = read_stdin(&in, &n);
    const char *src = text ? text : in;

    int32_t *ids = NULL;
    size_t nid = 0;
    if (!rc && decode) {
        char *out = NULL;
        size_t len = 0;
        rc = parse_ids(src, n, &ids, &nid);
        if (!rc) rc = zb_tokenizer_decode(tok, ids, nid, &out, &len);
        if (!rc) fwrite(out, 1, len, stdout);
        free(out);
    } else if (!rc) {
        rc = zb_tokenizer_encode(tok, src, n, &ids, &nid);
        for (size_t i = 0; !rc && i < nid; i++) printf(i ? " %d" : "%d", ids[i]);
        if (!rc) putchar('\n');
    }
    if (!rc && fflush(stdout) != 0) rc = zb_fail(ZB_EIO, "stdout: write error");
    free(ids);
    free(in);
    zb_tokenizer_free(tok);
    return rc;
}
