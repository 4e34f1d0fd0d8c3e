/* eval_check — outside truth for `zebra eval --tasks`:
 *   eval_check write FIXTURE_DIR tasks.jsonl     pre-tokenised multiple-choice tasks cut from
 *        the fixture's input_ids: context = ids[b][:c], choice 0 = the true next 8 ids (gold),
 *        choice 1 = the other row's ids there, choice 2 = choice 0 reversed;
 *   eval_check check FIXTURE_DIR tasks.jsonl report.json
 *        the reported log-likelihood of every gold choice equals the one computed from HF
 *        transformers' logits (ref.safetensors), within the float32 bound of two evaluations of
 *        those logits (zb_test.h: each log-prob moves by at most twice its row's logit bound,
 *        the forward's path x the row's largest |lnf| |W_head|, from our own forward on the
 *        fixture's ids); and acc equals the share of examples whose reported argmax is the gold
 *        one. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "safetensors.h"
#include "zb_common.h"
#include "zb_test.h"

#define L 8
static const int ctxs[2] = {5, 12};

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 4) { fprintf(stderr, "usage: eval_check write|check DIR tasks.jsonl [report.json]\n"); return 2; }
    char p[4096];
    snprintf(p, sizeof p, "%s/ref.safetensors", argv[2]);
    zb_safetensors *st = NULL;
    ZB_TEST_OK(zb_st_open(&st, p));
    const zb_st_tensor *ti = zb_st_get(st, "input_ids"), *tl = zb_st_get(st, "logits");
    int B = (int)ti->shape[0], T = (int)ti->shape[1], V = (int)tl->shape[2];
    int *ids = malloc(sizeof(int) * B * T);
    float *lg = malloc(sizeof(float) * (size_t)B * T * V);
    ZB_TEST_OK(zb_st_to_i32(ti, ids));
    ZB_TEST_OK(zb_st_to_f32(tl, lg));
    if (!strcmp(argv[1], "write")) {
        FILE *f = fopen(argv[3], "w");
        for (int b = 0; b < B; b++)
            for (int ci = 0; ci < 2; ci++) {
                int c = ctxs[ci], *r = ids + b * T, *o = ids + (1 - b) * T;
                fprintf(f, "{\"context_ids\": [");
                for (int t = 0; t < c; t++) fprintf(f, "%s%d", t ? ", " : "", r[t]);
                fprintf(f, "], \"choices_ids\": [[");
                for (int t = 0; t < L; t++) fprintf(f, "%s%d", t ? ", " : "", r[c + t]);
                fprintf(f, "], [");
                for (int t = 0; t < L; t++) fprintf(f, "%s%d", t ? ", " : "", o[c + t]);
                fprintf(f, "], [");
                for (int t = 0; t < L; t++) fprintf(f, "%s%d", t ? ", " : "", r[c + L - 1 - t]);
                fprintf(f, "]], \"gold\": 0}\n");
            }
        fclose(f);
    } else {
        /* row bounds of the logits: our forward on the fixture's ids (the tasks' contexts and
         * choices are prefixes of these rows: the same positions, the same logits) */
        zb_model m;
        zb_acts a;
        ZB_TEST_OK(zb_model_load(&m, argv[2]));
        ZB_TEST_OK(zb_acts_alloc(&a, &m, B, T));
        zb_model_forward(&m, &a, ids);
        double *e = malloc(sizeof(double) * B * T), sf = zb_bound_scale(zb_model_path_fwd(&m.cfg, T));
        float *mag = malloc(sizeof(float) * V);
        for (int n = 0; n < B * T; n++) {
            zb_mag_matmul(mag, a.lnf + (size_t)n * m.cfg.d_model, m.w.lm_head, 1, V, m.cfg.d_model);
            e[n] = sf * zb_max_abs(mag, V);
        }
        free(mag);
        zb_acts_free(&a);
        zb_model_free(&m);
        char *txt = NULL;
        ZB_TEST_OK(zb_read_file(argv[4], &txt, NULL));
        cJSON *rep = cJSON_Parse(txt), *tasks = cJSON_GetObjectItem(rep, "tasks");
        cJSON *lls = cJSON_GetObjectItem(tasks, "loglikelihoods");
        zb_check(cJSON_GetArraySize(lls) == 2 * B, "report has %d examples", cJSON_GetArraySize(lls));
        int k = 0, hits = 0;
        for (int b = 0; b < B; b++)
            for (int ci = 0; ci < 2; ci++, k++) {
                int c = ctxs[ci];
                double ref = 0, bound = 0;
                for (int t = c; t < c + L; t++) {   /* log p(ids[t] | ids[<t]) from HF's logits */
                    bound += 2 * e[b * T + t - 1];
                    const float *row = lg + ((size_t)b * T + t - 1) * V;
                    double mx = row[0], z = 0;
                    for (int v = 1; v < V; v++) if (row[v] > mx) mx = row[v];
                    for (int v = 0; v < V; v++) z += exp(row[v] - mx);
                    ref += row[ids[b * T + t]] - mx - log(z);
                }
                cJSON *e = cJSON_GetArrayItem(lls, k);
                double got = cJSON_GetArrayItem(e, 0)->valuedouble;
                zb_check(fabs(got - ref) <= bound, "example %d: gold log-likelihood %.6f vs HF %.6f (|d| %.2g, bound %.2g)", k,
                         got, ref, fabs(got - ref), bound);
                int best = 0;
                for (int j = 1; j < cJSON_GetArraySize(e); j++)
                    if (cJSON_GetArrayItem(e, j)->valuedouble > cJSON_GetArrayItem(e, best)->valuedouble) best = j;
                hits += best == 0;
            }
        double acc = cJSON_GetObjectItem(tasks, "acc")->valuedouble;
        /* one double division, printed by cJSON with enough digits to read back the same double */
        zb_check(fabs(acc - (double)hits / k) <= 0x1p-52 * fabs(acc), "acc %.4f = share of argmax == gold (%d/%d)", acc, hits, k);
        cJSON_Delete(rep);
        free(txt);
        free(e);
    }
    free(ids); free(lg);
    zb_st_close(st);
    return zb_test_finish();
}
