/* shard.c — see shard.h: the local dims of a shard and the tensor-parallel math of one rank's
 * forward, backward and losses, over core/comm.h. */
#include "shard.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

/* A failure inside forward / backward (void functions): this rank's message, every rank stops
 * ("an error on one rank stops all ranks with that rank's message"). */
static void tp_die(const zb_tp *tp) { zb_comm_die(tp ? tp->comm : NULL, "tensor parallel"); }

void zb_tp_allreduce(const zb_tp *tp, float *x, size_t n) {
    if (tp->size == 1) return;
    if (zb_comm_sum_f32(tp->comm, ZB_GROUP_TP, x, n)) tp_die(tp);
}

int zb_tp_fused_sum_add_rmsnorm(const zb_tp *tp, const float *part, float *x, float *out, const float *w, int N, int C,
                                float eps, int residual) {
    int done = 0;
    if (tp->size > 1 && zb_comm_sum_add_rmsnorm(tp->comm, ZB_GROUP_TP, part, x, out, w, N, C, eps, residual, &done))
        tp_die(tp);
    return done;
}

void zb_tp_sum_add_rmsnorm(const zb_tp *tp, const zb_backend *be, float *part, float *x, float *out, const float *w,
                           int N, int C, float eps, int residual) {
    if (zb_tp_fused_sum_add_rmsnorm(tp, part, x, out, w, N, C, eps, residual)) return;
    zb_tp_allreduce(tp, part, (size_t)N * C);
    if (residual) be->add_rmsnorm(be, x, part, out, w, N, C, eps);
    else be->rmsnorm_forward(be, out, NULL, x, w, N, C, eps);
}

void zb_tp_gather_slices(const zb_tp *tp, const float *mine, float *all, size_t n) {
    if (tp->size > 1 && zb_comm_allgather(tp->comm, ZB_GROUP_TP, mine, n, all, ZB_CT_F32)) {
        zb_fail_prefix(ZB_EMPI, "gathering the logits");
        tp_die(tp);
    }
}

void zb_tp_greedy_picks(const zb_tp *tp, const zb_backend *be, int *next, const float *logits, int *pairs, int B,
                        int Vl) {
    int *all = pairs + 2 * B;
    be->argmax_pairs(be, pairs, logits, B, Vl, tp->vocab0);
    if (zb_comm_allgather(tp->comm, ZB_GROUP_TP, pairs, (size_t)2 * B, all, ZB_CT_I32)) {
        zb_fail_prefix(ZB_EMPI, "tensor parallel: gathering the greedy picks");
        tp_die(tp);
    }
    be->argmax_pick(be, next, all, B, tp->size);
}

/* ---- which dims split ------------------------------------------------------------------- */

static void layer_kinds(const zb_config *c, int *attn, int *mla, int *mamba) {
    *attn = *mla = *mamba = 0;
    for (int i = 0; i < c->n_layers; i++) {
        *attn |= c->kinds[i] == ZB_LAYER_ATTN;
        *mla |= c->kinds[i] == ZB_LAYER_MLA;
        *mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
    }
}

#define TP_CHECK(cond, ...) do { if (!(cond)) return zb_fail(ZB_EARG, __VA_ARGS__); } while (0)
#define TP_DIV(v, what) TP_CHECK((v) % n == 0, "tensor parallel: %s %d is not divisible by --tp %d", \
                                 what, (int)(v), n)

int zb_tp_check(const zb_config *c, int n) {
    TP_CHECK(n >= 1, "tensor parallel: --tp must be >= 1 (got %d)", n);
    if (n == 1) return ZB_OK;
    int attn, mla, mamba;
    layer_kinds(c, &attn, &mla, &mamba);
    TP_CHECK(c->vocab % n == 0, "tensor parallel: vocab_size %d is not divisible by --tp %d (the embedding and "
             "LM head are split by vocabulary rows; padding is not supported)", c->vocab, n);
    TP_DIV(c->ffn, "intermediate_size");
    if (attn) {
        TP_DIV(c->n_heads, "num_attention_heads");
        TP_CHECK(c->n_kv_heads % n == 0, "tensor parallel: num_key_value_heads %d is not divisible by --tp %d "
                 "(attention KV heads are split across ranks; replicating them is not supported)",
                 c->n_kv_heads, n);
    }
    if (mla) {
        TP_DIV(c->mla.n_heads, "mla.n_heads");
        TP_CHECK(c->mla.kv_heads % n == 0, "tensor parallel: mla.kv_heads %d is not divisible by --tp %d "
                 "(kv_b_proj is split by KV head)", c->mla.kv_heads, n);
    }
    if (mamba) {
        const zb_mamba2_dims *s = &c->mamba;
        TP_DIV(s->nheads, "mamba2.nheads");
        TP_DIV(s->x_groups, "mamba2.x_groups");
        TP_DIV(s->b_groups, "mamba2.b_groups");
        TP_DIV(s->c_groups, "mamba2.c_groups");
        int G = s->norm_group > 0 ? s->norm_group : s->d_inner;
        TP_CHECK((s->d_inner / n) % G == 0,
                 "tensor parallel: the Mamba2 gated-norm group (norm_group_size %d) would straddle ranks: "
                 "d_inner/tp = %d/%d = %d is not a multiple of it (a whole-d_inner norm cannot be split; "
                 "use norm_group_size = headdim)", G, s->d_inner, n, s->d_inner / n);
    }
    return ZB_OK;
}

void zb_tp_local_config(const zb_config *full, int n, zb_config *l) {
    *l = *full;
    if (n == 1) return;
    int attn, mla, mamba;
    layer_kinds(full, &attn, &mla, &mamba);
    l->vocab /= n;
    l->ffn /= n;
    if (attn) { l->n_heads /= n; l->n_kv_heads /= n; }
    if (mla) { l->mla.n_heads /= n; l->mla.kv_heads /= n; }
    if (mamba) {
        zb_mamba2_dims *s = &l->mamba;
        if (s->norm_group <= 0) s->norm_group = s->d_inner;
        s->d_inner /= n;
        s->nheads /= n;
        s->x_groups /= n;
        s->b_groups /= n;
        s->c_groups /= n;
    }
}

void zb_tp_free(zb_tp *tp) {
    if (!tp) return;
    free(tp->full_params);
    free(tp->slices);
    free(tp);
}

const zb_config *zb_model_full_config(const zb_model *m) { return m->tp ? &m->tp->full : &m->cfg; }

zb_comm *zb_model_comm(const zb_model *m) { return m->tp ? m->tp->comm : NULL; }

/* ---- gathering -------------------------------------------------------------------------- */

int zb_tp_gather_vocab(const zb_tp *tp, const float *local, float *tmp, float *full, int N, int Vl) {
    size_t nl = (size_t)N * Vl, V = (size_t)Vl * tp->size;
    const zb_backend *be = tp->dev;   /* device backends: local and tmp on the device, full on the host */
    if (tp->size == 1) {
        if (be) be->to_host(be, full, local, sizeof(float) * nl);
        else memcpy(full, local, sizeof(float) * nl);
        return ZB_OK;
    }
    float *own = NULL, *h = NULL;
    if (!tmp && !(tmp = own = be ? be->alloc(be, sizeof(float) * nl * tp->size, "logits gather")
                                 : zb_malloc(sizeof(float) * nl * tp->size, "logits gather"))) tp_die(tp);
    if (zb_comm_allgather(tp->comm, ZB_GROUP_TP, local, nl, tmp, ZB_CT_F32)) {
        zb_fail_prefix(ZB_EMPI, "gathering the logits");
        tp_die(tp);
    }
    const float *src = tmp;
    if (be) {
        if (!(h = zb_malloc(sizeof(float) * nl * tp->size, "logits gather"))) tp_die(tp);
        be->to_host(be, h, tmp, sizeof(float) * nl * tp->size);
        src = h;
    }
    for (int r = 0; r < tp->size; r++)
        for (int n = 0; n < N; n++)
            memcpy(full + (size_t)n * V + (size_t)r * Vl, src + (size_t)r * nl + (size_t)n * Vl, sizeof(float) * Vl);
    free(h);
    if (be) be->free(be, own);
    else free(own);
    return ZB_OK;
}

void zb_tp_logits_to_host(const zb_tp *tp, const zb_backend *be, const float *gathered, float *stage, float *full,
                          int N, int Vl) {
    size_t part = (size_t)N * Vl;
    float *h = tp->size == 1 || N == 1 ? full : stage;   /* one row or one rank: already [N][V] */
    be->to_host(be, h, gathered, sizeof(float) * part * (size_t)tp->size);
    for (int r = 0; h != full && r < tp->size; r++)
        for (int n = 0; n < N; n++)
            memcpy(full + ((size_t)n * tp->size + r) * Vl, h + (size_t)r * part + (size_t)n * Vl, sizeof(float) * Vl);
}

void zb_tp_local_ids(const zb_tp *tp, int Vl, const int *ids, int ld, int nb, int nc, int *out) {
    for (int i = 0; i < nb; i++)
        for (int k = 0; k < nc; k++) {
            int64_t v = (int64_t)ids[(size_t)i * ld + k] - tp->vocab0;
            out[(size_t)i * nc + k] = v >= 0 && v < Vl ? (int)v : -1;
        }
}

int zb_tp_all(const zb_tp *tp, int ok) {
    int v = ok;
    if (tp->size > 1 && zb_comm_allreduce(tp->comm, ZB_GROUP_TP, &v, 1, ZB_CT_I32, ZB_RED_MIN)) {
        zb_fail_prefix(ZB_EMPI, "tensor parallel: agreeing over the group");
        tp_die(tp);
    }
    return v;
}

int zb_tp_grad_sq_norm(const zb_model *m, double *out) {
    double split = 0, rep = 0;
    for (int i = 0; i < m->n_params; i++) {
        double s = m->be->sumsq(m->be, m->grad + m->params[i].offset, m->params[i].numel);
        if (m->tp && !m->tp->slices[i].replicated) split += s;
        else rep += s;
    }
    if (m->tp && m->tp->size > 1) ZB_TRY(zb_comm_sum_f64(m->tp->comm, ZB_GROUP_TP, &split, 1));
    *out = split + rep;
    return ZB_OK;
}

/* ---- vocabulary-parallel embedding and losses --------------------------------------------- */

/* Device backends: this rank's local row of each token (0 for other ranks' tokens, whose rows
 * the caller zeroes) copied to the device; the host copy in *host (rows in range: >= 0). */
static int *local_ids(const zb_model *m, const int *ids, int N, int **host) {
    const zb_backend *be = m->be;
    int64_t Vl = m->cfg.vocab;
    int *h = zb_malloc(sizeof(int) * 2 * (size_t)(N ? N : 1), "vocabulary-parallel ids");
    if (!h) tp_die(m->tp);
    be->to_host(be, h, ids, sizeof(int) * (size_t)N);
    for (int n = 0; n < N; n++) {
        int64_t v = (int64_t)h[n] - m->tp->vocab0;
        h[N + n] = v >= 0 && v < Vl ? (int)v : -1;
        h[n] = v >= 0 && v < Vl ? (int)v : 0;
    }
    int *d = be->alloc(be, sizeof(int) * (size_t)(N ? N : 1), "vocabulary-parallel ids");
    if (!d) { free(h); tp_die(m->tp); }
    be->to_device(be, d, h, sizeof(int) * (size_t)N);
    *host = h;
    return d;
}

/* zero the rows n of x [N, d] whose token is another rank's (h[N + n] < 0), run by run */
static void zero_other_rows(const zb_backend *be, float *x, const int *h, int N, int d) {
    for (int n = 0; n < N;) {
        if (h[N + n] >= 0) { n++; continue; }
        int e = n;
        while (e < N && h[N + e] < 0) e++;
        be->zero(be, x + (size_t)n * d, sizeof(float) * (size_t)(e - n) * d);
        n = e;
    }
}

void zb_tp_embedding_forward(const zb_model *m, float *out, const int *ids, int N) {
    const zb_tp *tp = m->tp;
    int d = m->cfg.d_model;
    int64_t Vl = m->cfg.vocab;
    if (tp->dev) {   /* the backend's lookup of the local rows, then other ranks' rows zeroed */
        const zb_backend *be = m->be;
        int *h, *dl = local_ids(m, ids, N, &h);
        be->embedding_forward(be, out, dl, m->w.embed_lin, N, d);
        zero_other_rows(be, out, h, N, d);
        be->free(be, dl);
        free(h);
        zb_tp_allreduce(tp, out, (size_t)N * d);
        return;
    }
    for (int n = 0; n < N; n++) {
        int64_t v = (int64_t)ids[n] - tp->vocab0;
        if (v >= 0 && v < Vl && m->w.embed_lin.bf16)   /* bf16 embedding (--weights bf16) */
            zb_bf16_to_f32_n(m->w.embed_lin.bf16 + v * d, out + (size_t)n * d, (size_t)d);
        else if (v >= 0 && v < Vl) memcpy(out + (size_t)n * d, m->w.embed + v * d, sizeof(float) * d);
        else memset(out + (size_t)n * d, 0, sizeof(float) * d);
    }
    zb_tp_allreduce(tp, out, (size_t)N * d);   /* exactly one rank contributes each row */
}

void zb_tp_embedding_backward(zb_model *m, float *dout, const int *ids, int N) {
    const zb_tp *tp = m->tp;
    int d = m->cfg.d_model;
    int64_t Vl = m->cfg.vocab;
    if (tp->dev) {   /* other ranks' rows zeroed: they add 0 to local row 0 */
        const zb_backend *be = m->be;
        int *h, *dl = local_ids(m, ids, N, &h);
        zero_other_rows(be, dout, h, N, d);
        be->embedding_backward(be, m->g.embed, dout, dl, N, d);
        be->free(be, dl);
        free(h);
        return;
    }
    for (int n = 0; n < N; n++) {
        int64_t v = (int64_t)ids[n] - tp->vocab0;
        if (v < 0 || v >= Vl) continue;
        float *g = m->g.embed + v * d;
        const float *s = dout + (size_t)n * d;
        for (int i = 0; i < d; i++) g[i] += s[i];
    }
}

/* The vocabulary-parallel cross-entropy (Megatron-LM's): each rank's rows hold its slice of the
 * vocabulary; the row maxima, then the sums of exponentials and the target logits, are combined
 * over the TP group; the backend's three passes (backend.h vp_*) run where the rows are, so
 * a device's logits stay on it. be: the backend holding logits / targets / dlogits. */
static double ce_passes(const zb_tp *tp, const zb_backend *be, float *dlogits, const float *logits, const int *targets,
                        int N, int Vl, float scale) {
    size_t nn = N ? (size_t)N : 1;
    float *mx = be->alloc(be, sizeof(float) * nn, "vocabulary-parallel loss");
    double *st = be->alloc(be, sizeof(double) * 2 * nn, "vocabulary-parallel loss");
    if (!mx || !st) tp_die(tp);
    be->vp_row_max(be, mx, logits, N, Vl);
    /* 1: the row max over the whole vocabulary */
    if (zb_comm_allreduce(tp->comm, ZB_GROUP_TP, mx, (size_t)N, ZB_CT_F32, ZB_RED_MAX)) tp_die(tp);
    be->vp_row_sums(be, st, logits, mx, targets, N, Vl, tp->vocab0);
    /* 2: sum of exponentials and the target logit */
    if (zb_comm_sum_f64(tp->comm, ZB_GROUP_TP, st, 2 * (size_t)N)) tp_die(tp);
    double total = be->vp_ce_grad(be, dlogits, logits, mx, st, targets, N, Vl, tp->vocab0, (int64_t)Vl * tp->size, scale);
    be->free(be, mx);
    be->free(be, st);
    return total;
}

static double kl_host(const zb_tp *tp, float *dstudent, const float *student, const float *teacher, const int *mask,
                      int N, int Vl, float tau, float scale) {
    size_t nn = N ? (size_t)N : 1;
    double *mx = zb_malloc(sizeof(double) * 2 * nn, "kl"), *z = zb_malloc(sizeof(double) * 2 * nn, "kl");
    double *kl = zb_malloc(sizeof(double) * nn, "kl");
    if (!mx || !z || !kl) tp_die(tp);
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * Vl, *t = teacher + (size_t)n * Vl;
        double ms = -INFINITY, mt = -INFINITY;
        for (int v = 0; v < Vl; v++) {
            if (s[v] / tau > ms) ms = s[v] / tau;
            if (t[v] / tau > mt) mt = t[v] / tau;
        }
        mx[2 * n] = ms;
        mx[2 * n + 1] = mt;
    }
    if (zb_comm_allreduce(tp->comm, ZB_GROUP_TP, mx, 2 * (size_t)N, ZB_CT_F64, ZB_RED_MAX)) tp_die(tp);
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * Vl, *t = teacher + (size_t)n * Vl;
        double zs = 0, zt = 0;
        for (int v = 0; v < Vl; v++) { zs += exp(s[v] / tau - mx[2 * n]); zt += exp(t[v] / tau - mx[2 * n + 1]); }
        z[2 * n] = zs;
        z[2 * n + 1] = zt;
    }
    if (zb_comm_sum_f64(tp->comm, ZB_GROUP_TP, z, 2 * (size_t)N)) tp_die(tp);
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * Vl, *t = teacher + (size_t)n * Vl;
        float *d = dstudent ? dstudent + (size_t)n * Vl : NULL;
        kl[n] = 0;
        if (mask && !mask[n]) {
            if (d) memset(d, 0, sizeof(float) * Vl);
            continue;
        }
        double lzs = mx[2 * n] + log(z[2 * n]), lzt = mx[2 * n + 1] + log(z[2 * n + 1]), k = 0;
        for (int v = 0; v < Vl; v++) {
            double lpt = t[v] / tau - lzt, lps = s[v] / tau - lzs, pt = exp(lpt);
            k += pt * (lpt - lps);
            if (d) d[v] = (float)(scale * (exp(lps) - pt) / tau);
        }
        kl[n] = k;
    }
    if (zb_comm_sum_f64(tp->comm, ZB_GROUP_TP, kl, (size_t)N)) tp_die(tp);
    double total = 0;
    for (int n = 0; n < N; n++) total += kl[n];
    free(mx);
    free(z);
    free(kl);
    return total;
}

/* Device backends, for the KL (and the CE with ZB_TP_LOSS=host): the rows come to the host, the
 * host's loss runs, the gradient goes back (N * Vl floats each way). */
static float *rows_to_host(const zb_tp *tp, const float *x, size_t n) {
    float *h = zb_malloc(sizeof(float) * (n ? n : 1), "vocabulary-parallel loss");
    if (!h) tp_die(tp);
    tp->dev->to_host(tp->dev, h, x, sizeof(float) * n);
    return h;
}

static int *ints_to_host(const zb_tp *tp, const int *x, size_t n) {
    if (!x) return NULL;
    int *h = zb_malloc(sizeof(int) * (n ? n : 1), "vocabulary-parallel loss");
    if (!h) tp_die(tp);
    tp->dev->to_host(tp->dev, h, x, sizeof(int) * n);
    return h;
}

/* ZB_TP_LOSS=host: a device's rows staged through the host as before the vp_* entries (to
 * compare; N * Vl floats each way) */
static int ce_staged(void) {
    const char *e = getenv("ZB_TP_LOSS");
    return e && !strcmp(e, "host");
}

double zb_tp_cross_entropy(const zb_tp *tp, float *dlogits, const float *logits, const int *targets, int N,
                           int Vl, float scale) {
    if (!tp->dev) return ce_passes(tp, zb_backend_cpu(), dlogits, logits, targets, N, Vl, scale);
    if (!ce_staged()) return ce_passes(tp, tp->dev, dlogits, logits, targets, N, Vl, scale);
    size_t n = (size_t)N * Vl;
    float *h = rows_to_host(tp, logits, n);
    int *t = ints_to_host(tp, targets, (size_t)N);
    double s = ce_passes(tp, zb_backend_cpu(), dlogits ? h : NULL, h, t, N, Vl, scale);
    if (dlogits) tp->dev->to_device(tp->dev, dlogits, h, sizeof(float) * n);
    free(h);
    free(t);
    return s;
}

double zb_tp_kl_div(const zb_tp *tp, float *dstudent, const float *student, const float *teacher, const int *mask,
                    int N, int Vl, float tau, float scale) {
    if (!tp->dev) return kl_host(tp, dstudent, student, teacher, mask, N, Vl, tau, scale);
    size_t n = (size_t)N * Vl;
    float *hs = rows_to_host(tp, student, n), *ht = rows_to_host(tp, teacher, n);
    int *hm = ints_to_host(tp, mask, (size_t)N);
    double s = kl_host(tp, dstudent ? hs : NULL, hs, ht, hm, N, Vl, tau, scale);
    if (dstudent) tp->dev->to_device(tp->dev, dstudent, hs, sizeof(float) * n);
    free(hs);
    free(ht);
    free(hm);
    return s;
}

/* ---- backward of a mixer: partial sums over local heads ------------------------------------ */

/* The MLA latent projections (q_a_proj, q_a_layernorm, kv_a_proj_with_mqa, kv_a_layernorm) are
 * replicated but feed this rank's heads only: their gradients are partial sums. */
static void partial_grads(zb_model *m, int l, int zero) {
    const zb_tp *tp = m->tp;
    for (int i = 0; i < m->n_params; i++) {
        if (m->params[i].layer != l || !tp->slices[i].partial_grad) continue;
        float *g = m->grad + m->params[i].offset;
        if (zero) m->be->zero(m->be, g, sizeof(float) * m->params[i].numel);
        else zb_tp_allreduce(tp, g, m->params[i].numel);
    }
}

void zb_tp_mixer_grad_begin(zb_model *m, int l, float *dx, size_t n) {
    if (m->tp->size == 1 || m->tp->rank == 0) return;
    m->be->zero(m->be, dx, sizeof(float) * n);   /* rank 0 keeps the previous value, the others add 0 */
    if (m->grad) partial_grads(m, l, 1);
}

void zb_tp_mixer_grad_end(zb_model *m, int l, float *dx, size_t n) {
    if (m->tp->size == 1) return;
    zb_tp_allreduce(m->tp, dx, n);   /* the input gradient of the column-parallel projections */
    if (m->grad) partial_grads(m, l, 0);
}
