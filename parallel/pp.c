/* pp.c — see pp.h: the pipeline cost model and the partition of layers into stages. */
#include "pp.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "tp.h"
#include "dp.h"
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
        double t0 = MPI_Wtime();
        zb_model_forward(m, a, ids);
        double t1 = MPI_Wtime();
        memcpy(m->pp_no_head ? a->dres : a->logits, seed_top, sizeof(float) * n_top);
        double t2 = MPI_Wtime();
        zb_model_backward(m, a, ids);
        double t3 = MPI_Wtime();
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

int zb_pp_seq_len = 2048;

/* the explicit partition of zb_pp_set_partition (fixed_stages 0: none) */
static int fixed_stages, fixed_layers, fixed_first[ZB_MAX_LAYERS + 1];

int zb_pp_set_partition(const int *first, int stages, int n_layers) {
    fixed_stages = 0;
    if (!first) return ZB_OK;
    if (stages < 1 || stages > n_layers || n_layers > ZB_MAX_LAYERS || first[0] != 0 || first[stages] != n_layers)
        return zb_fail(ZB_EARG, "pipeline parallel: invalid partition of %d layers into %d stages", n_layers, stages);
    for (int s = 0; s < stages; s++)
        if (first[s + 1] <= first[s]) return zb_fail(ZB_EARG, "pipeline parallel: stage %d has no layer", s);
    memcpy(fixed_first, first, sizeof(int) * (size_t)(stages + 1));
    fixed_stages = stages;
    fixed_layers = n_layers;
    return ZB_OK;
}

int zb_pp_stage_layers(const zb_config *c, int stages, int stage, int *l0, int *l1) {
    if (stages < 1 || stages > c->n_layers)
        return zb_fail(ZB_EARG, "pipeline parallel: --pp %d stages for a model of %d layers (every stage "
                       "needs at least one layer)", stages, c->n_layers);
    if (stage < 0 || stage >= stages) return zb_fail(ZB_EARG, "pipeline parallel: stage %d of %d", stage, stages);
    if (fixed_stages == stages && fixed_layers == c->n_layers) {
        *l0 = fixed_first[stage];
        *l1 = fixed_first[stage + 1];
        return ZB_OK;
    }
    int *first = zb_calloc((size_t)stages + 1, sizeof(int), "pipeline partition");
    if (!first) return ZB_ENOMEM;
    zb_pp_cost_cfg k = zb_pp_cost_defaults(1, zb_pp_seq_len > 0 ? zb_pp_seq_len : 2048);
    int rc = zb_pp_partition(c, stages, &k, first, NULL);
    if (!rc) { *l0 = first[stage]; *l1 = first[stage + 1]; }
    free(first);
    return rc;
}

int zb_pp_is_first(const zb_model *m) { return !m->pp_no_embed; }
int zb_pp_is_last(const zb_model *m) { return !m->pp_no_head; }

/* MPI counts are int: residuals [B*T, d] beyond 2^31 floats are refused (a micro-batch of
 * 2^31 floats is 8 GB: far beyond what a stage holds). */
static int pp_count(size_t n, int *out) {
    if (n > (size_t)1 << 30) return zb_fail(ZB_EARG, "pipeline parallel: a message of %zu floats is too large", n);
    *out = (int)n;
    return ZB_OK;
}

enum { ZB_PP_TAG_ACT = 71, ZB_PP_TAG_GRAD = 72, ZB_PP_TAG_TIED = 73 };

int zb_pp_wait(MPI_Request *req) {
    if (*req == MPI_REQUEST_NULL) return ZB_OK;
    double t0 = MPI_Wtime();
    ZB_MPI(MPI_Wait(req, MPI_STATUS_IGNORE));
    zb_comm_seconds += MPI_Wtime() - t0;
    return ZB_OK;
}

int zb_pp_forward(const zb_model *m, zb_acts *a, const int *ids, MPI_Request *req) {
    const zb_tp *tp = m->tp;
    size_t Nd = (size_t)a->B * a->T * m->cfg.d_model;
    int cnt = 0;
    *req = MPI_REQUEST_NULL;
    ZB_TRY(pp_count(Nd, &cnt));
    if (tp && tp->pp_size > 1 && tp->pp_rank > 0) {
        double t0 = MPI_Wtime();
        ZB_MPI(MPI_Recv(a->res, cnt, MPI_FLOAT, tp->pp_rank - 1, ZB_PP_TAG_ACT, tp->pp, MPI_STATUS_IGNORE));
        zb_comm_seconds += MPI_Wtime() - t0;
    }
    zb_model_forward(m, a, ids);
    if (tp && tp->pp_size > 1 && tp->pp_rank < tp->pp_size - 1)
        ZB_MPI(MPI_Isend(a->res + (size_t)m->cfg.n_layers * Nd, cnt, MPI_FLOAT, tp->pp_rank + 1, ZB_PP_TAG_ACT,
                         tp->pp, req));
    return ZB_OK;
}

int zb_pp_backward(zb_model *m, zb_acts *a, const int *ids, MPI_Request *req) {
    const zb_tp *tp = m->tp;
    size_t Nd = (size_t)a->B * a->T * m->cfg.d_model;
    int cnt = 0;
    *req = MPI_REQUEST_NULL;
    ZB_TRY(pp_count(Nd, &cnt));
    if (tp && tp->pp_size > 1 && tp->pp_rank < tp->pp_size - 1) {
        double t0 = MPI_Wtime();
        ZB_MPI(MPI_Recv(a->dres, cnt, MPI_FLOAT, tp->pp_rank + 1, ZB_PP_TAG_GRAD, tp->pp, MPI_STATUS_IGNORE));
        zb_comm_seconds += MPI_Wtime() - t0;
    }
    zb_model_backward(m, a, ids);
    if (tp && tp->pp_size > 1 && tp->pp_rank > 0)
        ZB_MPI(MPI_Isend(a->dres, cnt, MPI_FLOAT, tp->pp_rank - 1, ZB_PP_TAG_GRAD, tp->pp, req));
    return ZB_OK;
}

int zb_pp_tied_grad_sum(zb_model *m) {
    const zb_tp *tp = m->tp;
    if (!tp || tp->pp_size < 2 || !m->cfg.tie_embeddings || !m->grad) return ZB_OK;
    int first = tp->pp_rank == 0, last = tp->pp_rank == tp->pp_size - 1;
    if (!first && !last) return ZB_OK;
    const zb_param *p = zb_model_param(m, "model.embed_tokens.weight");
    if (!p) return zb_fail(ZB_EFORMAT, "pipeline parallel: stage %d holds no embedding", tp->pp_rank);
    float *g = m->grad + p->offset;
    float *buf = zb_malloc(sizeof(float) * p->numel, "tied embedding gradient");
    if (!buf) return ZB_ENOMEM;
    int peer = first ? tp->pp_size - 1 : 0, rc = ZB_OK;
    double t0 = MPI_Wtime();
    for (size_t off = 0; off < p->numel && !rc; off += (size_t)1 << 30) {
        size_t n = p->numel - off < ((size_t)1 << 30) ? p->numel - off : (size_t)1 << 30;
        if (MPI_Sendrecv(g + off, (int)n, MPI_FLOAT, peer, ZB_PP_TAG_TIED, buf + off, (int)n, MPI_FLOAT, peer,
                         ZB_PP_TAG_TIED, tp->pp, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            rc = zb_fail(ZB_EMPI, "pipeline parallel: MPI_Sendrecv of the tied embedding gradient failed");
    }
    zb_comm_seconds += MPI_Wtime() - t0;
    if (!rc) for (size_t i = 0; i < p->numel; i++) g[i] += buf[i];
    free(buf);
    return rc;
}

/* ---- 1F1B ------------------------------------------------------------------------------- */

/* One forward of micro-batch k (+ the loss on the last stage) / one backward, in slot k % K;
 * fr / br: the slot's pending activation / gradient sends. */
static int pp_fwd(zb_model *m, zb_acts *acts, int K, MPI_Request *fr, MPI_Request *br, int k, const int *ids,
                  size_t stride, const zb_pp_hooks *h) {
    int q = k % K;
    ZB_TRY(zb_pp_wait(&fr[q]));   /* the slot's previous micro-batch is done with its buffers */
    ZB_TRY(zb_pp_wait(&br[q]));
    if (h->pre_forward) ZB_TRY(h->pre_forward(h->ctx, k));
    ZB_TRY(zb_pp_forward(m, &acts[q], ids + (size_t)k * stride, &fr[q]));
    return zb_pp_is_last(m) ? h->loss(h->ctx, &acts[q], k) : ZB_OK;
}

static int pp_bwd(zb_model *m, zb_acts *acts, int K, MPI_Request *fr, MPI_Request *br, int k, const int *ids,
                  size_t stride, const zb_pp_hooks *h) {
    int q = k % K;
    ZB_TRY(zb_pp_wait(&fr[q]));
    if (h->pre_backward) ZB_TRY(h->pre_backward(h->ctx, k));
    return zb_pp_backward(m, &acts[q], ids + (size_t)k * stride, &br[q]);
}

int zb_pp_1f1b(zb_model *m, zb_acts *acts, int K, int M, const int *ids, size_t ids_stride, int want_grad,
               const zb_pp_hooks *h) {
    int P = m->tp ? m->tp->pp_size : 1, s = m->tp ? m->tp->pp_rank : 0;
    int need = P < M ? P : M, rc = ZB_OK;
    if (K < need) return zb_fail(ZB_EARG, "pipeline parallel: %d activation sets for %d in flight", K, need);
    MPI_Request *fr = zb_malloc(sizeof(MPI_Request) * 2 * (size_t)K, "pipeline requests");
    if (!fr) return ZB_ENOMEM;
    MPI_Request *br = fr + K;
    for (int i = 0; i < 2 * K; i++) fr[i] = MPI_REQUEST_NULL;
#define FWD(k) pp_fwd(m, acts, K, fr, br, (k), ids, ids_stride, h)
#define BWD(k) pp_bwd(m, acts, K, fr, br, (k), ids, ids_stride, h)
    if (!want_grad) {
        for (int k = 0; k < M && !rc; k++) rc = FWD(k);
    } else {
        int warm = P - s - 1 < M ? P - s - 1 : M;
        for (int k = 0; k < warm && !rc; k++) rc = FWD(k);              /* warm-up */
        for (int j = 0; j < M - warm && !rc; j++) {                      /* steady state: 1F1B */
            rc = FWD(warm + j);
            if (!rc) rc = BWD(j);
        }
        for (int j = M - warm; j < M && !rc; j++) rc = BWD(j);          /* cool-down */
    }
#undef FWD
#undef BWD
    for (int i = 0; i < 2 * K; i++) {
        int r2 = zb_pp_wait(&fr[i]);
        if (!rc) rc = r2;
    }
    free(fr);
    return rc;
}
