/* smart.c — see smart.h. */
#include "smart.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

/* ---- placement -------------------------------------------------------------------------- */

int zb_smart_last(int L, int to_last) { return to_last ? L - 1 : L - 2; }

/* floor(g) of g = last / (K-1) and the number of ceil gaps; 0 if the rule allows nothing. */
static int gaps(int L, int K, int to_last, int *a, int *c) {
    int last = zb_smart_last(L, to_last);
    if (K < 2 || last < 1 || K - 1 > last) return 0;
    *a = last / (K - 1);
    *c = last - *a * (K - 1);
    return 1;
}

int zb_smart_rule_ok(const int *layers, int K, int L, int to_last) {
    int a, c;
    if (!gaps(L, K, to_last, &a, &c)) return 0;
    if (layers[0] != 0 || layers[K - 1] != zb_smart_last(L, to_last)) return 0;
    for (int k = 1; k < K; k++) {
        int gap = layers[k] - layers[k - 1];
        if (gap != a && gap != a + (c > 0)) return 0;   /* floor(g) or ceil(g) */
    }
    return 1;
}

double zb_smart_count(int L, int K, int to_last) {
    int a, c;
    if (!gaps(L, K, to_last, &a, &c)) return 0;
    double n = 1;   /* C(K-1, c) */
    for (int i = 1; i <= c; i++) n = n * (K - 1 - c + i) / i;
    return n;
}

int zb_smart_place(const double *score, int L, int K, int to_last, int *chosen, double *total) {
    int a, c;
    if (!gaps(L, K, to_last, &a, &c))
        return zb_fail(ZB_EARG, "SMART: %d MLA layers cannot hold layer 0 and layer %d of %d with gaps >= 1 "
                       "(needs 2 <= K <= %d)", K, zb_smart_last(L, to_last), L, zb_smart_last(L, to_last) + 1);
    int G = K - 1, C = c + 1;
    /* best[j][i]: highest sum of score over the positions after j gaps of which i are ceil
     * ones (position j*a + i); from[j][i] = 1 when the j-th gap was a ceil one. */
    double *best = malloc(sizeof(double) * (size_t)(G + 1) * C);
    unsigned char *from = malloc((size_t)(G + 1) * C);
    if (!best || !from) { free(best); free(from); return zb_fail(ZB_ENOMEM, "SMART placement: out of memory"); }
    for (int k = 0; k < (G + 1) * C; k++) best[k] = -INFINITY;
    best[0] = score[0];
    for (int j = 1; j <= G; j++)
        for (int i = 0; i <= c && i <= j; i++) {
            double fl = best[(j - 1) * C + i];                        /* gap j = floor(g) */
            double ce = i > 0 ? best[(j - 1) * C + i - 1] : -INFINITY; /* gap j = ceil(g) */
            if (j - 1 < i) fl = -INFINITY;   /* i ceil gaps among j - 1: impossible */
            int pick_ceil = ce >= fl && ce > -INFINITY;   /* ties: the later gap is the ceil one */
            double b = pick_ceil ? ce : fl;
            if (b == -INFINITY) continue;
            best[j * C + i] = b + score[j * a + i];
            from[j * C + i] = (unsigned char)pick_ceil;
        }
    if (total) *total = best[G * C + c];
    for (int j = G, i = c; j >= 0; j--) {   /* back through the choices */
        chosen[j] = j * a + i;
        if (j > 0) i -= from[j * C + i];
    }
    free(best); free(from);
    return ZB_OK;
}

void zb_smart_even(int L, int K, int *chosen) {
    for (int k = 0; k < K; k++) chosen[k] = K > 1 ? (int)lround((double)k * (L - 1) / (K - 1)) : 0;
}

/* ---- scores ----------------------------------------------------------------------------- */

static int all_kind(const zb_model *m, zb_layer_kind k, const char *what) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (m->cfg.kinds[l] != k)
            return zb_fail(ZB_EARG, "SMART: the %s model's layer %d is %s, not %s", what, l,
                           zb_layer_kind_name(m->cfg.kinds[l]), zb_layer_kind_name(k));
    return ZB_OK;
}

int zb_smart_init(zb_smart *s, const zb_model *teacher, const zb_model *mamba, const zb_model *mla,
                  int B, int T) {
    memset(s, 0, sizeof *s);
    const zb_model *ms[3] = {teacher, mamba, mla};
    const char *names[3] = {"teacher", "all-Mamba2", "all-MLA"};
    for (int i = 0; i < 3; i++) {
        const zb_config *c = &ms[i]->cfg, *t = &teacher->cfg;
        if (ms[i]->tp || ms[i]->pp_no_embed || ms[i]->pp_no_head)
            return zb_fail(ZB_EARG, "SMART: the %s model must be whole on each rank", names[i]);
        if (c->n_layers != t->n_layers || c->d_model != t->d_model || c->vocab != t->vocab)
            return zb_fail(ZB_ESHAPE, "SMART: the %s model (%d layers, d %d, vocab %d) does not match the teacher "
                           "(%d layers, d %d, vocab %d)", names[i], c->n_layers, c->d_model, c->vocab,
                           t->n_layers, t->d_model, t->vocab);
    }
    ZB_TRY(all_kind(teacher, ZB_LAYER_ATTN, "teacher"));
    ZB_TRY(all_kind(mamba, ZB_LAYER_MAMBA2, "all-Mamba2"));
    ZB_TRY(all_kind(mla, ZB_LAYER_MLA, "all-MLA"));
    if (mamba->be != teacher->be || mla->be != teacher->be)
        return zb_fail(ZB_EARG, "SMART: the three models must run on one backend");
    s->teacher = teacher;
    s->mamba = mamba;
    s->mla = mla;
    s->B = B;
    s->T = T;
    s->L = teacher->cfg.n_layers;
    size_t N = (size_t)B * T, d = teacher->cfg.d_model, V = teacher->cfg.vocab;
    const zb_backend *be = s->be = teacher->be;
    ZB_BE_ALLOC(be, s->tlog, N * V, "SMART logits");
    ZB_BE_ALLOC(be, s->logits, N * V, "SMART logits");
    ZB_BE_ALLOC(be, s->res, (size_t)(s->L + 1) * N * d, "SMART residuals");
    ZB_BE_ALLOC(be, s->x, N * d, "SMART buffers");
    ZB_BE_ALLOC(be, s->ln, N * d, "SMART buffers");
    ZB_BE_ALLOC(be, s->ids, N, "SMART buffers");
    ZB_TRY(zb_block_ws_alloc(&s->wt, teacher, B, T));
    ZB_TRY(zb_block_ws_alloc(&s->wm, mamba, B, T));
    ZB_TRY(zb_block_ws_alloc(&s->wa, mla, B, T));
    return ZB_OK;
}

void zb_smart_free(zb_smart *s) {
    if (s->be) {
        float *f[] = {s->tlog, s->logits, s->res, s->x, s->ln};
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) s->be->free(s->be, f[i]);
        s->be->free(s->be, s->ids);
    }
    zb_block_ws_free(&s->wt); zb_block_ws_free(&s->wm); zb_block_ws_free(&s->wa);
    memset(s, 0, sizeof *s);
}

/* logits [N, V] = head(final_norm(x)) of m */
static void head(const zb_model *m, const float *x, float *ln, float *logits, int N) {
    const zb_config *c = &m->cfg;
    m->be->rmsnorm_forward(m->be, ln, NULL, x, m->w.final_norm, N, c->d_model, c->rms_eps);
    m->be->matmul_forward(m->be, logits, ln, m->w.lm_head, NULL, N, c->d_model, c->vocab);
}

void zb_smart_batch(zb_smart *s, const int *ids, int rows, double *kl) {
    const zb_model *t = s->teacher, *M = s->mamba, *A = s->mla;
    int B = rows, N = B * s->T, L = s->L, d = t->cfg.d_model, V = t->cfg.vocab;
    size_t Nd = (size_t)N * d;
    const zb_backend *be = s->be;
    be->to_device(be, s->ids, ids, sizeof(int) * N);
    /* the teacher */
    be->embedding_forward(be, s->x, s->ids, t->w.embed_lin, N, d);
    for (int l = 0; l < L; l++) zb_block_apply(t, l, s->x, B, &s->wt);
    head(t, s->x, s->ln, s->tlog, N);
    /* M, keeping its residual at every layer */
    be->embedding_forward(be, s->res, s->ids, M->w.embed_lin, N, d);
    for (int l = 0; l < L; l++) {
        be->copy(be, s->res + (l + 1) * Nd, s->res + l * Nd, sizeof(float) * Nd);
        zb_block_apply(M, l, s->res + (l + 1) * Nd, B, &s->wm);
    }
    head(M, s->res + L * Nd, s->ln, s->logits, N);
    kl[L] += be->kl_div(be, NULL, s->logits, s->tlog, NULL, N, V, 1.0f, 0.0f);
    /* M with block l from A: A's block on M's residual at l, then M's blocks l+1.. */
    for (int l = 0; l < L; l++) {
        be->copy(be, s->x, s->res + l * Nd, sizeof(float) * Nd);
        zb_block_apply(A, l, s->x, B, &s->wa);
        for (int k = l + 1; k < L; k++) zb_block_apply(M, k, s->x, B, &s->wm);
        head(M, s->x, s->ln, s->logits, N);
        kl[l] += be->kl_div(be, NULL, s->logits, s->tlog, NULL, N, V, 1.0f, 0.0f);
    }
}
