/* pp.c — see pp.h: the pipeline cost model and the partition of layers into stages. */
#include "pp.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

zb_pp_cost_cfg zb_pp_cost_defaults(int B, int T) {
    zb_pp_cost_cfg k = {5e10, 1e10, T, B * T};
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

double zb_pp_layer_cost(const zb_config *c, int l, const zb_pp_cost_cfg *k) {
    double f, p, a;
    mixer_model(c, l, k->T, &f, &p, &a);
    double d = c->d_model, F = c->ffn;
    f += 2 * 3 * d * F;
    p += 3 * d * F + 2 * d;
    a += 4 * d + 3 * F;
    double bytes = 3.0 * 4 * p / (k->tokens > 0 ? k->tokens : 1) + 2.0 * 4 * a;
    return 3 * f / k->flop_rate + bytes / k->mem_rate;
}

double zb_pp_embed_cost(const zb_config *c, const zb_pp_cost_cfg *k) {
    return 3.0 * 4 * c->d_model / k->mem_rate;
}

double zb_pp_head_cost(const zb_config *c, const zb_pp_cost_cfg *k) {
    double d = c->d_model, V = c->vocab;
    double f = 2 * d * V + 5 * V, bytes = 3.0 * 4 * d * V / (k->tokens > 0 ? k->tokens : 1) + 2.0 * 4 * V;
    return 3 * f / k->flop_rate + bytes / k->mem_rate;
}

int zb_pp_partition(const zb_config *c, int S, const zb_pp_cost_cfg *k, int *first, double *cost) {
    int L = c->n_layers;
    if (S < 1 || S > L)
        return zb_fail(ZB_EARG, "pipeline parallel: --pp %d needs 1 <= stages <= the %d layers", S, L);
    double *pre = zb_calloc((size_t)L + 1, sizeof(double), "pipeline partition");
    double *best = zb_calloc((size_t)(S + 1) * (L + 1), sizeof(double), "pipeline partition");
    int *cut = zb_calloc((size_t)(S + 1) * (L + 1), sizeof(int), "pipeline partition");
    if (!pre || !best || !cut) { free(pre); free(best); free(cut); return ZB_ENOMEM; }
    for (int l = 0; l < L; l++) pre[l + 1] = pre[l] + zb_pp_layer_cost(c, l, k);
    double emb = zb_pp_embed_cost(c, k), head = zb_pp_head_cost(c, k);
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
