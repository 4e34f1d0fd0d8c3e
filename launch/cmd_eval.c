/* zebra eval — what a trained model is worth:
 *   zebra eval --model M --data SHARDS [--split val] [--seq 256] [--batch 4] [--max-batches N]
 *       perplexity of the model on a shard set (exp of the mean next-token cross-entropy);
 *   zebra eval --model M --tasks F.jsonl [--tokenizer tokenizer.json] [--batch 8]
 *       multiple choice in the LM-evaluation-harness way: each line {"context", "choices",
 *       "gold"}; the score of a choice is the log-likelihood of its tokens given the context
 *       (the continuation's tokens are those of encode(context + choice) past encode(context));
 *       acc = argmax of the log-likelihood, acc_norm = argmax of it divided by the choice's
 *       length in bytes. Without --tokenizer, ids are the UTF-8 bytes (byte-level models).
 *       Pre-tokenised tasks: {"context_ids": [...], "choices_ids": [[...], ...], "gold"}
 *       (acc_norm then divides by the choice's token count).
 *   [--json out.json] writes the report; [--device cuda [--precision bf16|f32]] runs the model on
 *   the GPU (the CPU by default). */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "data.h"
#include "model.h"
#include "tokenizer.h"

/* ---- perplexity ---- */

static int eval_ppl(zb_model *m, const char *data, const char *split, int T, int B, long max_batches,
                    double *ppl, double *tokens) {
    zb_loader *ld = NULL;
    ZB_TRY(zb_loader_open(&ld, data, split, B, T, 0, 1));
    zb_loader_limit_vocab(ld, m->cfg.vocab, "the model's vocabulary");
    zb_acts a;
    int rc = zb_acts_alloc(&a, m, B, T);
    int *ids = malloc(sizeof(int) * B * T), *tg = malloc(sizeof(int) * B * T);
    if (!rc && (!ids || !tg)) rc = zb_fail(ZB_ENOMEM, "out of memory (eval)");
    long nb = (long)(zb_loader_rows(ld) / (uint64_t)B);
    if (nb < 1) nb = 1;
    if (max_batches > 0 && nb > max_batches) nb = max_batches;
    double sum = 0, n = 0;
    for (long i = 0; i < nb && !rc; i++) {
        rc = zb_loader_next(ld, ids, tg);
        if (rc) break;
        zb_model_forward(m, &a, ids);
        int nv = 0;
        m->be->to_device(m->be, a.targets_dev, tg, sizeof(int) * B * T);
        sum += m->be->cross_entropy(m->be, NULL, a.logits, a.targets_dev, B * T, m->cfg.vocab, 0.0f, &nv);
        n += nv;
    }
    if (!rc) { *ppl = n > 0 ? exp(sum / n) : 0; *tokens = n; }
    free(ids); free(tg);
    zb_acts_free(&a);
    zb_loader_close(ld);
    return rc;
}

/* ---- multiple choice ---- */

typedef struct { int *ids; int n; } toks;

static int encode(const zb_tokenizer *tok, const char *s, toks *out) {
    if (!tok) {   /* byte-level */
        size_t n = strlen(s);
        out->ids = malloc(sizeof(int) * (n + 1));
        if (!out->ids) return zb_fail(ZB_ENOMEM, "out of memory (encode)");
        for (size_t i = 0; i < n; i++) out->ids[i] = (unsigned char)s[i];
        out->n = (int)n;
        return ZB_OK;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    ZB_TRY(zb_tokenizer_encode(tok, s, strlen(s), &ids, &n));
    out->ids = malloc(sizeof(int) * (n + 1));
    if (!out->ids) { free(ids); return zb_fail(ZB_ENOMEM, "out of memory (encode)"); }
    for (size_t i = 0; i < n; i++) out->ids[i] = ids[i];
    out->n = (int)n;
    free(ids);
    return ZB_OK;
}

/* Log-likelihoods of nseq sequences seq[i] (ids) whose scored part starts at start[i];
 * run in batches of B rows padded to the longest. */
static int score(zb_model *m, toks *seq, const int *start, int nseq, int B, double *ll) {
    int T = 1;
    for (int i = 0; i < nseq; i++) if (seq[i].n > T) T = seq[i].n;
    zb_acts a;
    ZB_TRY(zb_acts_alloc(&a, m, B, T));
    int *ids = calloc((size_t)B * T, sizeof(int)), rc = ZB_OK, V = m->cfg.vocab;
    if (!ids) rc = zb_fail(ZB_ENOMEM, "out of memory (eval)");
    /* a GPU's logits are read back to the host (all rows: the scored parts are most of them) */
    float *host = NULL;
    if (!rc && !m->be->host_memory && !(host = zb_malloc(sizeof(float) * (size_t)B * T * V, "eval logits")))
        rc = ZB_ENOMEM;
    for (int i0 = 0; i0 < nseq && !rc; i0 += B) {
        int nb = nseq - i0 < B ? nseq - i0 : B;
        memset(ids, 0, sizeof(int) * B * T);
        for (int b = 0; b < nb; b++) memcpy(ids + (size_t)b * T, seq[i0 + b].ids, sizeof(int) * seq[i0 + b].n);
        zb_model_forward(m, &a, ids);   /* causal: padding after a sequence cannot change it */
        const float *logits = a.logits;
        if (host) {
            m->be->to_host(m->be, host, a.logits, sizeof(float) * (size_t)B * T * V);
            logits = host;
        }
        for (int b = 0; b < nb; b++) {
            double s = 0;
            const toks *q = &seq[i0 + b];
            for (int t = start[i0 + b]; t < q->n; t++) {
                const float *row = logits + ((size_t)b * T + t - 1) * V;
                float mx = row[0];
                for (int v = 1; v < V; v++) if (row[v] > mx) mx = row[v];
                double z = 0;
                for (int v = 0; v < V; v++) z += exp((double)row[v] - mx);
                s += row[q->ids[t]] - mx - log(z);
            }
            ll[i0 + b] = s;
        }
    }
    free(ids);
    free(host);
    zb_acts_free(&a);
    return rc;
}

/* Reads an int array (JSON) into t. */
static int json_ids(const cJSON *a, toks *t, const char *path, int lineno) {
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
    if (n < 0) return zb_fail(ZB_EFORMAT, "%s:%d: expected an array of token ids", path, lineno);
    t->ids = malloc(sizeof(int) * (n + 1));
    if (!t->ids) return zb_fail(ZB_ENOMEM, "out of memory (eval)");
    t->n = n;
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        long x;
        if (!zb_json_value_int(v, INT_MIN, INT_MAX, &x))
            return zb_fail(ZB_EFORMAT, "%s:%d: token id %d is not an integer", path, lineno, i);
        t->ids[i] = (int)x;
    }
    return ZB_OK;
}

/* One example -> nc scored sequences: seq[k] = context + choice k, scored from start[k];
 * len[k] = the choice's length for acc_norm (bytes for text, tokens for ids). Two forms:
 * {"context": str, "choices": [str...], "gold": i} (tokenised, BOS prepended when the
 * tokenizer has one) or {"context_ids": [...], "choices_ids": [[...]...], "gold": i}. */
static int parse_example(const cJSON *j, const zb_tokenizer *tok, const char *path, int lineno,
                         toks **seq_out, int **start_out, double **len_out, int *nc_out, int *gold) {
    const cJSON *ctx = cJSON_GetObjectItem(j, "context"), *ch = cJSON_GetObjectItem(j, "choices");
    const cJSON *cids = cJSON_GetObjectItem(j, "context_ids"), *chids = cJSON_GetObjectItem(j, "choices_ids");
    const cJSON *g = cJSON_GetObjectItem(j, "gold");
    int ids_form = cids != NULL;
    const cJSON *list = ids_form ? chids : ch;
    int nc = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    long gi = -1;
    if ((ids_form ? !cJSON_IsArray(cids) : !cJSON_IsString(ctx)) || nc < 2 || !zb_json_value_int(g, 0, nc - 1, &gi))
        return zb_fail(ZB_EFORMAT, "%s:%d: expected {\"context\": str, \"choices\": [>= 2 str], \"gold\": index} "
                       "or {\"context_ids\": [...], \"choices_ids\": [[...], ...], \"gold\": index}", path, lineno);
    toks *seq = calloc(nc, sizeof(toks)), c0 = {0};
    int *start = calloc(nc, sizeof(int));
    double *len = calloc(nc, sizeof(double));
    *seq_out = seq; *start_out = start; *len_out = len; *nc_out = nc; *gold = (int)gi;
    if (!seq || !start || !len) return zb_fail(ZB_ENOMEM, "out of memory (eval)");
    int rc = ids_form ? json_ids(cids, &c0, path, lineno) : encode(tok, ctx->valuestring, &c0);
    int bos = (!ids_form && tok) ? zb_tokenizer_bos_id(tok) : -1, off = bos >= 0;
    for (int k = 0; k < nc && !rc; k++) {
        const cJSON *c = cJSON_GetArrayItem(list, k);
        toks w = {0};
        if (ids_form) {
            toks ci = {0};
            rc = json_ids(c, &ci, path, lineno);
            if (!rc) {
                w.ids = malloc(sizeof(int) * (c0.n + ci.n + 1));
                if (!w.ids) rc = zb_fail(ZB_ENOMEM, "out of memory (eval)");
                else {
                    memcpy(w.ids, c0.ids, sizeof(int) * c0.n);
                    memcpy(w.ids + c0.n, ci.ids, sizeof(int) * ci.n);
                    w.n = c0.n + ci.n;
                    len[k] = ci.n;
                }
            }
            free(ci.ids);
        } else {
            if (!cJSON_IsString(c)) { rc = zb_fail(ZB_EFORMAT, "%s:%d: choice %d is not a string", path, lineno, k); break; }
            size_t lc = strlen(ctx->valuestring), lk = strlen(c->valuestring);
            char *whole = malloc(lc + lk + 1);
            if (!whole) { rc = zb_fail(ZB_ENOMEM, "out of memory (eval)"); break; }
            memcpy(whole, ctx->valuestring, lc);
            memcpy(whole + lc, c->valuestring, lk + 1);
            rc = encode(tok, whole, &w);   /* continuation = tokens past encode(context) */
            free(whole);
            len[k] = (double)lk;
        }
        if (rc) { free(w.ids); break; }
        seq[k].ids = malloc(sizeof(int) * (w.n + 1));
        if (!seq[k].ids) { free(w.ids); rc = zb_fail(ZB_ENOMEM, "out of memory (eval)"); break; }
        if (off) seq[k].ids[0] = bos;
        memcpy(seq[k].ids + off, w.ids, sizeof(int) * w.n);
        seq[k].n = w.n + off;
        start[k] = c0.n + off;
        if (start[k] < 1) start[k] = 1;
        free(w.ids);
        if (start[k] >= seq[k].n) rc = zb_fail(ZB_EFORMAT, "%s:%d: choice %d adds no token", path, lineno, k);
    }
    free(c0.ids);
    return rc;
}

static int eval_mc(zb_model *m, const char *path, const zb_tokenizer *tok, int B, int *n_out,
                   double *acc, double *acc_norm, cJSON *lls) {
    ZB_TRY(zb_path_is_file(path, 0));
    FILE *f = fopen(path, "r");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot open", path);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, n = 0, rc = ZB_OK;
    double hit = 0, hitn = 0;
    while (!rc && getline(&line, &cap, f) > 0) {
        lineno++;
        if (line[strspn(line, " \t\r\n")] == 0) continue;
        cJSON *j = cJSON_Parse(line);
        if (!j) { rc = zb_fail(ZB_EFORMAT, "%s:%d: malformed JSON", path, lineno); break; }
        toks *seq = NULL;
        int *start = NULL, nc = 0, gold = 0;
        double *len = NULL, *ll = NULL;
        rc = parse_example(j, tok, path, lineno, &seq, &start, &len, &nc, &gold);
        for (int k = 0; k < nc && !rc; k++)
            for (int t = 0; t < seq[k].n && !rc; t++)
                if (seq[k].ids[t] < 0 || seq[k].ids[t] >= m->cfg.vocab)
                    rc = zb_fail(ZB_EARG, "%s:%d: token %d outside the model's vocabulary", path, lineno, seq[k].ids[t]);
        if (!rc && !(ll = calloc(nc, sizeof(double)))) rc = zb_fail(ZB_ENOMEM, "out of memory (eval)");
        if (!rc) rc = score(m, seq, start, nc, B, ll);
        if (!rc) {
            int best = 0, bestn = 0;
            for (int k = 1; k < nc; k++) {
                if (ll[k] > ll[best]) best = k;
                if (ll[k] / (len[k] > 0 ? len[k] : 1) > ll[bestn] / (len[bestn] > 0 ? len[bestn] : 1)) bestn = k;
            }
            hit += best == gold;
            hitn += bestn == gold;
            n++;
            if (lls) cJSON_AddItemToArray(lls, cJSON_CreateDoubleArray(ll, nc));
        }
        for (int k = 0; seq && k < nc; k++) free(seq[k].ids);
        free(seq); free(start); free(len); free(ll);
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    if (!rc && n == 0) rc = zb_fail(ZB_EFORMAT, "%s: no examples", path);
    if (!rc) { *n_out = n; *acc = hit / n; *acc_norm = hitn / n; }
    return rc;
}

int zb_cmd_eval(int argc, char **argv) {
    static const char *const vals[] = {"--model", "--data", "--split", "--seq", "--batch",
                                       "--max-batches", "--tasks", "--tokenizer", "--json", ZB_DEVICE_ARGS, NULL};
    static const char *const flags[] = {NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *mp = zb_arg_str(argc, argv, "--model", NULL);
    const char *data = zb_arg_str(argc, argv, "--data", NULL);
    const char *tasks = zb_arg_str(argc, argv, "--tasks", NULL);
    const char *tp = zb_arg_str(argc, argv, "--tokenizer", NULL);
    const char *jp = zb_arg_str(argc, argv, "--json", NULL);
    int B, T;
    long max_batches;
    ZB_TRY(zb_arg_int(argc, argv, "--batch", 4, 1, 1 << 16, &B));
    ZB_TRY(zb_arg_int(argc, argv, "--seq", 256, 1, 1 << 24, &T));
    ZB_TRY(zb_arg_long(argc, argv, "--max-batches", 0, 0, LONG_MAX, &max_batches));
    if (!mp || (!data && !tasks)) return zb_fail(ZB_EARG, "eval: needs --model M and --data SHARDS and/or --tasks F.jsonl");
    if (B < 1 || T < 2) return zb_fail(ZB_EARG, "eval: --batch >= 1 and --seq >= 2");
    zb_backend be;   /* --device: the model's backend (the CPU's by default) */
    ZB_TRY(zb_backend_from_args(argc, argv, "eval", ZB_WEIGHTS_F32, &be));
    zb_model m;
    ZB_TRY(zb_model_load(&m, mp));
    zb_tokenizer *tok = NULL;
    int rc = be.host_memory ? ZB_OK : zb_model_set_backend(&m, &be);
    if (!rc && tp) rc = zb_tokenizer_load(&tok, tp);
    cJSON *rep = cJSON_CreateObject();
    cJSON_AddStringToObject(rep, "model", mp);
    if (!rc && data) {
        double ppl = 0, ntok = 0;
        rc = eval_ppl(&m, data, zb_arg_str(argc, argv, "--split", "val"), T, B,
                      max_batches, &ppl, &ntok);
        if (!rc) {
            printf("perplexity %.4f over %.0f tokens (%s)\n", ppl, ntok, data);
            cJSON_AddNumberToObject(rep, "perplexity", ppl);
            cJSON_AddNumberToObject(rep, "ppl_tokens", ntok);
        }
    }
    if (!rc && tasks) {
        int n = 0;
        double acc = 0, accn = 0;
        cJSON *lls = cJSON_CreateArray();
        if (!rc) rc = eval_mc(&m, tasks, tok, B, &n, &acc, &accn, lls);
        if (rc) cJSON_Delete(lls);
        if (!rc) {
            printf("%s: n=%d acc=%.4f acc_norm=%.4f\n", tasks, n, acc, accn);
            cJSON *t = cJSON_AddObjectToObject(rep, "tasks");
            cJSON_AddItemToObject(t, "loglikelihoods", lls);
            cJSON_AddNumberToObject(t, "n", n);
            cJSON_AddNumberToObject(t, "acc", acc);
            cJSON_AddNumberToObject(t, "acc_norm", accn);
        }
    }
    if (!rc && jp) {
        char *s = cJSON_Print(rep);
        FILE *f = fopen(jp, "w");
        if (!f) rc = zb_fail(ZB_EIO, "%s: cannot write", jp);
        else { fputs(s, f); fputc('\n', f); fclose(f); }
        free(s);
    }
    cJSON_Delete(rep);
    zb_tokenizer_free(tok);
    zb_model_free(&m);
    return rc;
}
