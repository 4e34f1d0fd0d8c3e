/* sample.c — drawing the next token from a row of logits (model.h zb_sample): greedy, or
 * temperature with top-k / top-p. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

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
