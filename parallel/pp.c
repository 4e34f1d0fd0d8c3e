/* pp.c — see pp.h: the pipeline cost model and the partition of layers into stages. */
#include "pp.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "shard.h"
#include "zb_common.h"

zb_pp_cost_cfg zb_pp_cost_defaults(int B, int T) {
    zb_pp_cost_cfg k = {5e10, 1e10, T, B * T, NULL};
    return k;
}

/* forward FLOPs per token of the mixer, and its parameter count / saved activations per token */
static void mixer_model(const zb_config *c, int l, int T, double *flops, double *params, double *acts) {
    double d = c->d_model;
    if (c->kinds[l] == ZB_LAYER_ATTN) {
        double H = c->n_heads, Hk = c->n_kv_heads, hd = c->head_dim;
        *params = d * (H + 2 * Hk) * hd + H * hd * d;
        *flops = 2 * *params + 2.0 * T * H * hd;
        *acts = (2 * H + 2 * Hk) * hd;
    } else if (c->kinds[l] == ZB_LAYER_MLA) {
        const zb_mla_dims *m = &c->mla;
        double H = m->n_heads, qk = m->qk_nope + m->qk_rope, rq = m->q_lora_rank, rkv = m->kv_lora_rank;
        double q = rq > 0 ? d * rq + rq * H * qk : d * H * qk;
        *params = q + d * (rkv + m->qk_rope) + rkv * m->kv_heads * (m->qk_nope + m->v_head_dim) + H * m->v_head_dim * d;
        *flops = 2 * *params + 2.0 * (T / 2.0) * H * (qk + m->v_head_dim);
        *acts = rq + rkv + m->qk_rope + H * (2 * qk + 2 * m->v_head_dim);
    } else {
        const zb_mamba2_dims *s = &c->mamba;
        double xw = (double)s->x_groups * s->headdim, bw = (double)s->b_groups * s->d_state,
               cw = (double)s->c_groups * s->d_state, di = s->d_inner, nh = s->nheads;
        double Q = s->chunk < T ? s->chunk : T, in = 2 * di + xw + bw + cw + nh;
        *params = d * in + s->conv_k * (xw + bw + cw) + di * d + 3 * nh + di;
        *flops = 2 * d * in + 2.0 * s->conv_k * (xw + bw + cw) + 2 * Q * nh * (s->d_state + s->headdim) +
                 4 * nh * s->headdim * s->d_state + 2 * di * d;
        *acts = 2 * in + di;
    }
}

double zb_pp_layer_flops(const zb_config *c, int l, int T) {
    double f, p, a;
    mixer_model(c, l, T, &f, &p, &a);
    return f + 2.0 * 3 * c->d_model * c->ffn;
}

/* the whole layer (mixer + norms + MLP): forward flops, parameters, saved activations per token */
static void layer_model(const zb_config *c, int l, int T, double *f, double *p, double *a) {
    mixer_model(c, l, T, f, p, a);
    double d = c->d_model, F = c->ffn;
    *f += 2 * 3 * d * F;
    *p += 3 * d * F + 2 * d;
    *a += 4 * d + 3 * F;
}

double zb_pp_layer_cost(const zb_config *c, int l, const zb_pp_cost_cfg *k) {
    double f, p, a, tok = k->tokens > 0 ? k->tokens : 1;
    layer_model(c, l, k->T, &f, &p, &a);
    double t = 3 * f / k->flop_rate + (3.0 * 4 * p / tok + 2.0 * 4 * a) / k->mem_rate;
    if (k->teacher && l < k->teacher->n_layers) {
        /* the teacher's forward of layer l: its flops once, its parameters read once, its
         * activations written once (it has no backward) */
        layer_model(k->teacher, l, k->T, &f, &p, &a);
        t += f / k->flop_rate + (4 * p / tok + 4 * a) / k->mem_rate;
    }
    return t;
}

double zb_pp_embed_cost(const zb_config *c, const zb_pp_cost_cfg *k) {
    return 3.0 * 4 * c->d_model / k->mem_rate;
}

double zb_pp_head_cost(const zb_config *c, const zb_pp_cost_cfg *k) {
    double d = c->d_model, V = c->vocab;
    double f = 2 * d * V + 5 * V, bytes = 3.0 * 4 * d * V / (k->tokens > 0 ? k->tokens : 1) + 2.0 * 4 * V;
    double t = 3 * f / k->flop_rate + bytes / k->mem_rate;
    if (k->teacher)   /* the teacher's head forward (its logits feed the KD / DPO loss) */
        t += 2.0 * k->teacher->d_model * V / k->flop_rate +
             (4.0 * k->teacher->d_model * V / (k->tokens > 0 ? k->tokens : 1) + 4.0 * V) / k->mem_rate;
    return t;
}

int zb_pp_partition(const zb_config *c, int S, const zb_pp_cost_cfg *k, int *first, double *cost) {
    int L = c->n_layers;
    double *lc = zb_calloc((size_t)L, sizeof(double), "pipeline partition");
    if (!lc) return ZB_ENOMEM;
    for (int l = 0; l < L; l++) lc[l] = zb_pp_layer_cost(c, l, k);
    int rc = zb_pp_partition_costs(lc, L, zb_pp_embed_cost(c, k), zb_pp_head_cost(c, k), S, first, cost);
    free(lc);
    return rc;
}

int zb_pp_partition_costs(const double *layer_cost, int L, double emb, double head, int S, int *first,
                          double *cost) {
    if (S < 1 || S > L)
        return zb_fail(ZB_EARG, "pipeline parallel: --pp %d needs 1 <= stages <= the %d layers", S, L);
    double *pre = zb_calloc((size_t)L + 1, sizeof(double), "pipeline partition");
    double *best = zb_calloc((size_t)(S + 1) * (L + 1), sizeof(double), "pipeline partition");
    int *cut = zb_calloc((size_t)(S + 1) * (L + 1), sizeof(int), "pipeline partition");
    if (!pre || !best || !cut) { free(pre); free(best); free(cut); return ZB_ENOMEM; }
    for (int l = 0; l < L; l++) pre[l + 1] = pre[l] + layer_cost[l];
    /* best[s][j]: the least max-stage cost of layers [0, j) in s stages (stage s-1 ends at j) */
#define B_(s, j) best[(size_t)(s) * (L + 1) + (j)]
#define C_(s, j) cut[(size_t)(s) * (L + 1) + (j)]
    for (int s = 0; s <= S; s++)
        for (int j = 0; j <= L; j++) B_(s, j) = DBL_MAX;
    B_(0, 0) = 0;
    for (int s = 1; s <= S; s++)
        for (int j = s; j <= L - (S - s); j++)
            for (int i = s - 1; i < j; i++) {
                if (B_(s - 1, i) == DBL_MAX) continue;
                double st = pre[j] - pre[i] + (s == 1 ? emb : 0) + (s == S ? head : 0);
                double v = B_(s - 1, i) > st ? B_(s - 1, i) : st;
                if (v < B_(s, j)) { B_(s, j) = v; C_(s, j) = i; }
            }
    first[S] = L;
    for (int s = S, j = L; s >= 1; s--) {
        first[s - 1] = C_(s, j);
        j = C_(s, j);
    }
    if (cost)
        for (int s = 0; s < S; s++)
            cost[s] = pre[first[s + 1]] - pre[first[s]] + (s == 0 ? emb : 0) + (s == S - 1 ? head : 0);
#undef B_
#undef C_
    free(pre); free(best); free(cut);
    return ZB_OK;
}

/* ---- measured costs ------------------------------------------------------------------------ */

/* Seconds of the forward and the backward of model m (one stage: input residual in a->res[0],
 * output gradient in a->dres or dlogits in a->logits, all set once), the best of `reps`. */
static void time_stage(zb_model *m, zb_acts *a, const int *ids, const float *seed_top, size_t n_top, int reps,
                       double *tf, double *tb) {
    *tf = *tb = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = zb_now();
        zb_model_forward(m, a, ids);
        double t1 = zb_now();
        memcpy(m->pp_no_head ? a->dres : a->logits, seed_top, sizeof(float) * n_top);
        double t2 = zb_now();
        zb_model_backward(m, a, ids);
        double t3 = zb_now();
        if (t1 - t0 < *tf) *tf = t1 - t0;
        if (t3 - t2 < *tb) *tb = t3 - t2;
    }
}

/* A one-layer stage of config c with layer kind `kind` (a middle stage, or a last one with the
 * head when with_head), random weights and input, timed. */
static int measure_one(const zb_config *c, zb_layer_kind kind, int with_head, int B, int T, const int *ids,
                       const float *top, zb_rng *r, double *tf, double *tb) {
    zb_config one = *c;
    one.n_layers = 1;
    one.kinds[0] = kind;
    zb_model m;
    zb_acts a;
    memset(&a, 0, sizeof a);
    ZB_TRY(zb_model_init_stage(&m, &one, ZB_WEIGHTS_F32, 0, 1, !with_head));
    zb_model_init_synthetic(&m, 1, 0.02f);   /* the time does not depend on the values */
    int rc = zb_model_alloc_grad(&m);
    if (!rc) rc = zb_acts_alloc(&a, &m, B, T);
    if (!rc) {
        size_t Nd = (size_t)B * T * c->d_model;
        for (size_t i = 0; i < Nd; i++) a.res[i] = zb_rng_uniform(r) - 0.5f;
        time_stage(&m, &a, ids, top, with_head ? (size_t)B * T * c->vocab : Nd, 3, tf, tb);
    }
    if (a.res) zb_acts_free(&a);
    zb_model_free(&m);
    return rc;
}

int zb_pp_measure(const zb_config *c, int B, int T, zb_pp_measured *out) {
    memset(out, 0, sizeof *out);
    size_t N = (size_t)B * T, Nd = N * c->d_model, NV = N * c->vocab, nt = NV > Nd ? NV : Nd;
    int *ids = zb_calloc(N, sizeof(int), "pipeline measurement");
    float *top = zb_malloc(sizeof(float) * nt, "pipeline measurement");
    if (!ids || !top) { free(ids); free(top); return ZB_ENOMEM; }
    zb_rng r;
    zb_rng_seed(&r, 7);
    for (size_t i = 0; i < nt; i++) top[i] = (zb_rng_uniform(&r) - 0.5f) * 1e-3f;   /* d(output) */
    int rc = ZB_OK, have[3] = {0, 0, 0};
    double f[3] = {0, 0, 0}, b[3] = {0, 0, 0};   /* per layer kind */
    for (int l = 0; l < c->n_layers && !rc; l++) {
        int k = (int)c->kinds[l];
        if (!have[k]) {
            rc = measure_one(c, c->kinds[l], 0, B, T, ids, top, &r, &f[k], &b[k]);
            have[k] = 1;
        }
        out->layer_fwd[l] = f[k];
        out->layer_bwd[l] = b[k];
    }
    if (!rc) {   /* the head: the last layer's kind + head, minus that layer alone */
        int k = (int)c->kinds[c->n_layers - 1];
        double hf, hb;
        rc = measure_one(c, c->kinds[c->n_layers - 1], 1, B, T, ids, top, &r, &hf, &hb);
        out->head_fwd = hf > f[k] ? hf - f[k] : 0;
        out->head_bwd = hb > b[k] ? hb - b[k] : 0;
    }
    free(ids);
    free(top);
    return rc;
}

/* ---- stages ------------------------------------------------------------------------------ */

int zb_pp_stage_layers(const zb_config *c, int stages, int stage, const int *cut, int *l0, int *l1) {
    if (stages < 1 || stages > c->n_layers)
        return zb_fail(ZB_EARG, "pipeline parallel: --pp %d stages for a model of %d layers (every stage "
                       "needs at least one layer)", stages, c->n_layers);
    if (stage < 0 || stage >= stages) return zb_fail(ZB_EARG, "pipeline parallel: stage %d of %d", stage, stages);
    if (cut) {
        if (cut[0] != 0 || cut[stages] != c->n_layers)
            return zb_fail(ZB_EARG, "pipeline parallel: a cut of layers [%d, %d) for a model of %d layers", cut[0],
                           cut[stages], c->n_layers);
        for (int s = 0; s < stages; s++)
            if (cut[s + 1] <= cut[s]) return zb_fail(ZB_EARG, "pipeline parallel: stage %d has no layer", s);
        *l0 = cut[stage];
        *l1 = cut[stage + 1];
        return ZB_OK;
    }
    int *first = zb_calloc((size_t)stages + 1, sizeof(int), "pipeline partition");
    if (!first) return ZB_ENOMEM;
    zb_pp_cost_cfg k = zb_pp_cost_defaults(1, ZB_PP_DEFAULT_T);
    int rc = zb_pp_partition(c, stages, &k, first, NULL);
    if (!rc) { *l0 = first[stage]; *l1 = first[stage + 1]; }
    free(first);
    return rc;
}

int zb_pp_choose_cut(const zb_config *sc, const zb_config *tc, int stages, int tp, int measured, int rows, int T,
                     zb_comm *c, int *cut, double *costs) {
    ZB_TRY(zb_tp_check(sc, tp));   /* before the local dims are used */
    if (tc) ZB_TRY(zb_tp_check(tc, tp));
    int L = sc->n_layers, rc = ZB_OK;
    if (stages > L) return zb_fail(ZB_EARG, "pipeline parallel: --pp %d stages for a model of %d layers (every stage "
                                   "needs at least one layer)", stages, L);
    if (!measured) {
        zb_pp_cost_cfg k = zb_pp_cost_defaults(1, T);
        k.teacher = tc;
        return zb_pp_partition(sc, stages, &k, cut, NULL);
    }
    double lc[ZB_MAX_LAYERS + 1] = {0};
    if (zb_comm_rank(c, ZB_GROUP_WORLD) == 0) {   /* rank 0 times the layers of its (TP-local) dims */
        zb_config ls, lt;
        zb_pp_measured ms, mt;
        zb_tp_local_config(sc, tp, &ls);
        rc = zb_pp_measure(&ls, rows, T, &ms);
        if (!rc && tc) {
            zb_tp_local_config(tc, tp, &lt);
            rc = zb_pp_measure(&lt, rows, T, &mt);
        }
        for (int l = 0; l < L && !rc; l++) lc[l] = ms.layer_fwd[l] + ms.layer_bwd[l] + (tc ? mt.layer_fwd[l] : 0);
        if (!rc) lc[L] = ms.head_fwd + ms.head_bwd + (tc ? mt.head_fwd : 0);
        if (!rc) rc = zb_pp_partition_costs(lc, L, 0, lc[L], stages, cut, NULL);
    }
    /* rank 0's status, cut and costs to every rank (an error there stops all ranks here) */
    double buf[2 * ZB_MAX_LAYERS + 4];
    buf[0] = rc;
    for (int s = 0; s <= stages; s++) buf[1 + s] = cut[s];
    memcpy(buf + stages + 2, lc, sizeof(double) * (size_t)(L + 1));
    ZB_TRY(zb_comm_bcast(c, ZB_GROUP_WORLD, buf, (size_t)(stages + L + 3), ZB_CT_F64, 0));
    if (buf[0] != 0) return rc ? rc : zb_fail(ZB_EARG, "pipeline parallel: rank 0 could not time the layers");
    for (int s = 0; s <= stages; s++) cut[s] = (int)buf[1 + s];
    if (costs) memcpy(costs, buf + stages + 2, sizeof(double) * (size_t)(L + 1));
    return ZB_OK;
}
