/* sample.c — drawing the next token from a row of logits (model.h zb_sample): greedy, or
 * temperature with top-k / top-p; the top-2 logits of a generation step (zb_gen_top2). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "shard.h"   /* zb_model_full_config */
#include "zb_common.h"

typedef struct { float p; int i; } zb_pi;
static int cmp_desc(const void *a, const void *b) {
    const zb_pi *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->i - y->i;
}

int zb_sample(const float *logits, int V, const zb_sampler *sp, zb_rng *rng, float *scratch) {
    (void)scratch;
    if (sp->temperature <= 0.0f) {
        int best = 0;
        for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        return best;
    }
    /* temperature, then top-k, then top-p (the order HF's generate applies them) */
    zb_pi *a = malloc(sizeof(zb_pi) * V);
    if (!a) return 0;
    for (int v = 0; v < V; v++) { a[v].p = logits[v] / sp->temperature; a[v].i = v; }
    qsort(a, V, sizeof *a, cmp_desc);
    int keep = V;
    if (sp->top_k > 0 && sp->top_k < keep) keep = sp->top_k;
    double mx = a[0].p, sum = 0;
    for (int j = 0; j < keep; j++) { a[j].p = (float)exp(a[j].p - mx); sum += a[j].p; }
    for (int j = 0; j < keep; j++) a[j].p = (float)(a[j].p / sum);
    if (sp->top_p > 0.0f && sp->top_p < 1.0f) {
        double cum = 0;
        int j = 0;
        for (; j < keep; j++) { cum += a[j].p; if (cum >= sp->top_p) { j++; break; } }
        keep = j < 1 ? 1 : j;
        sum = 0;
        for (j = 0; j < keep; j++) sum += a[j].p;
        for (j = 0; j < keep; j++) a[j].p = (float)(a[j].p / sum);
    }
    double r = zb_rng_uniform(rng), cum = 0;
    int pick = a[keep - 1].i;
    for (int j = 0; j < keep; j++) { cum += a[j].p; if (r < cum) { pick = a[j].i; break; } }
    free(a);
    return pick;
}

int zb_gen_top2(const zb_model *m, zb_gen *s, int nb, int *id, float *val, float *mdiff) {
    const zb_backend *be = m->be;
    int V = zb_model_full_config(m)->vocab, d = m->cfg.d_model;
    if (s->greedy && s->picks_only) return zb_fail(ZB_EARG, "top-2 logits: this generation keeps only the greedy picks");
    zb_gen_logits_host(m, s, nb);
    for (int i = 0; i < nb; i++) {
        const float *r = s->logits + (size_t)i * V;
        int a = 0, b = -1;
        for (int v = 1; v < V; v++)
            if (r[v] > r[a]) { b = a; a = v; }
            else if (b < 0 || r[v] > r[b]) b = v;
        id[2 * i] = a; id[2 * i + 1] = b;
        val[2 * i] = r[a]; val[2 * i + 1] = b >= 0 ? r[b] : -INFINITY;
        mdiff[i] = -1;
    }
    if (m->tp || m->pp_no_head || V < 2) return ZB_OK;
    float *x = malloc(sizeof(float) * (size_t)d * (nb + 2));
    uint16_t *h = malloc(sizeof(uint16_t) * 2 * (size_t)d);
    if (!x || !h) { free(x); free(h); return zb_fail(ZB_ENOMEM, "top-2 logits"); }
    float *wa = x + (size_t)nb * d, *wb = wa + d;
    be->to_host(be, x, s->lnf, sizeof(float) * (size_t)nb * d);
    const zb_wt *W = &m->w.lm_head_lin;
    for (int i = 0; i < nb; i++) {
        for (int k = 0; k < 2; k++) {
            size_t row = (size_t)id[2 * i + k] * d;
            if (W->bf16) {
                be->to_host(be, h, W->bf16 + row, sizeof(uint16_t) * d);
                zb_bf16_to_f32_n(h, k ? wb : wa, (size_t)d);
            } else be->to_host(be, k ? wb : wa, W->f32 + row, sizeof(float) * d);
        }
        double ss = 0;
        for (int k = 0; k < d; k++) {
            double t = (double)x[(size_t)i * d + k] * ((double)wa[k] - wb[k]);
            ss += t * t;
        }
        mdiff[i] = (float)sqrt(ss);
    }
    free(x);
    free(h);
    return ZB_OK;
}
