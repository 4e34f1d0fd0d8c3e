/* model.c — forward/backward of a stack of attention / MLA / Mamba2 blocks, on the model's
 * backend (the parameter buffer, its loading and init: weights.c; cached generation: gen.c).
 * See model.h. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard.h"   /* TP hooks (m->tp != NULL), SPEC §9 */

/* ---- activations -------------------------------------------------------------------------- */

static zb_attn_shape attn_shape(const zb_config *c, int B, int T) {
    zb_attn_shape s = {B, T, c->n_heads, c->n_kv_heads, c->head_dim, c->head_dim,
                       c->n_heads * c->head_dim, c->n_kv_heads * c->head_dim,
                       c->n_kv_heads * c->head_dim, 1.0f / sqrtf((float)c->head_dim)};
    return s;
}

/* attention: q, k, v, att, then what the backend saves for its backward */
static size_t attn_act_floats(const zb_backend *be, const zb_config *c, int B, int T) {
    size_t N = (size_t)B * T, qd = (size_t)c->n_heads * c->head_dim, kd = (size_t)c->n_kv_heads * c->head_dim;
    zb_attn_shape s = attn_shape(c, B, T);
    return N * (2 * qd + 2 * kd) + be->attention_saved_floats(be, &s);
}
static size_t attn_scratch_floats(const zb_config *c, int B, int T) {
    size_t N = (size_t)B * T, qd = (size_t)c->n_heads * c->head_dim, kd = (size_t)c->n_kv_heads * c->head_dim;
    return N * (2 * qd + 2 * kd);
}

static size_t mixer_act_floats(const zb_backend *be, const zb_config *c, zb_layer_kind k, int B, int T) {
    switch (k) {
    case ZB_LAYER_ATTN: return attn_act_floats(be, c, B, T);
    case ZB_LAYER_MLA: return be->mla_act_floats(be, &c->mla, c->d_model, B, T);
    default: return be->mamba2_act_floats(be, &c->mamba, c->d_model, B, T);
    }
}
static size_t mixer_scratch_floats(const zb_backend *be, const zb_config *c, zb_layer_kind k, int B, int T) {
    switch (k) {
    case ZB_LAYER_ATTN: return attn_scratch_floats(c, B, T);
    case ZB_LAYER_MLA: return be->mla_scratch_floats(be, &c->mla, c->d_model, B, T);
    default: return be->mamba2_scratch_floats(be, &c->mamba, c->d_model, B, T);
    }
}

int zb_acts_alloc(zb_acts *a, const zb_model *m, int B, int T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    memset(a, 0, sizeof *a);
    /* the kernels count the B*T rows in an int and form rows x width products */
    if (B < 1 || T < 1 || (int64_t)B * T > (1 << 24))
        return zb_fail(ZB_EARG, "activations: %d rows x %d tokens: need 1 <= rows x tokens <= %d", B, T, 1 << 24);
    a->be = be;
    a->B = B;
    a->T = T;
    a->n_layers = c->n_layers;
    size_t N = (size_t)B * T, d = c->d_model, F = c->ffn, L = c->n_layers, V = c->vocab;
    size_t scratch = 0;
    ZB_ALLOC(a->mix_acts, L, "activations");
    for (size_t l = 0; l < L; l++) {
        size_t s = mixer_scratch_floats(be, c, c->kinds[l], B, T);
        if (s > scratch) scratch = s;
        ZB_BE_ALLOC(be, a->mix_acts[l], mixer_act_floats(be, c, c->kinds[l], B, T), "mixer activations");
    }
    ZB_BE_ALLOC(be, a->res, (L + 1) * N * d, "activations");
    ZB_BE_ALLOC(be, a->mid, L * N * d, "activations");
    ZB_BE_ALLOC(be, a->ln1, L * N * d, "activations");
    ZB_BE_ALLOC(be, a->ln2, L * N * d, "activations");
    ZB_BE_ALLOC(be, a->rstd1, L * N, "activations");
    ZB_BE_ALLOC(be, a->rstd2, L * N, "activations");
    ZB_BE_ALLOC(be, a->mix_out, N * d, "activations");
    ZB_BE_ALLOC(be, a->gate, L * N * F, "activations");
    ZB_BE_ALLOC(be, a->up, L * N * F, "activations");
    ZB_BE_ALLOC(be, a->hmlp, L * N * F, "activations");
    ZB_BE_ALLOC(be, a->lnf, N * d, "activations");
    ZB_BE_ALLOC(be, a->rstdf, N, "activations");
    ZB_BE_ALLOC(be, a->logits, m->pp_no_head ? 1 : N * V, "logits");   /* PP: no head, no logits */
    ZB_BE_ALLOC(be, a->dres, N * d, "gradients");
    ZB_BE_ALLOC(be, a->dtmp, N * d, "gradients");
    ZB_BE_ALLOC(be, a->dln, N * d, "gradients");
    ZB_BE_ALLOC(be, a->dgate, N * F, "gradients");
    ZB_BE_ALLOC(be, a->dup, N * F, "gradients");
    ZB_BE_ALLOC(be, a->dh, N * F, "gradients");
    ZB_BE_ALLOC(be, a->mix_scratch, scratch, "mixer scratch");
    ZB_BE_ALLOC(be, a->ids, N, "token ids");
    ZB_BE_ALLOC(be, a->targets_dev, N, "targets");
    ZB_ALLOC(a->targets, N, "targets");
    return ZB_OK;
}

void zb_acts_free(zb_acts *a) {
    const zb_backend *be = a->be;
    if (!be) { free(a->mix_acts); free(a->targets); memset(a, 0, sizeof *a); return; }
    if (a->mix_acts)
        for (int l = 0; l < a->n_layers; l++) be->free(be, a->mix_acts[l]);
    free(a->mix_acts);
    float *f[] = {a->res, a->mid, a->ln1, a->ln2, a->rstd1, a->rstd2, a->mix_out, a->gate, a->up, a->hmlp,
                  a->lnf, a->rstdf, a->logits, a->dres, a->dtmp, a->dln, a->dgate, a->dup, a->dh, a->mix_scratch};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) be->free(be, f[i]);
    be->free(be, a->ids);
    be->free(be, a->targets_dev);
    free(a->targets);
    memset(a, 0, sizeof *a);
}

/* ---- GQA attention mixer (SPEC §2) ---------------------------------------------------- */
/* acts: q (roped) | k (roped) | v | att | what the backend saves: [N,H*hd] [N,Hkv*hd] x2 [N,H*hd], or
 * rows [q | k | v] from one product (opts.qkv_fused; float32 weights one after the other, their
 * gradients bound alike: weights.c). k, v (and dk, dv) at q + *ko, q + *vo; strides in *s. */
static int attn_layout(const zb_model *m, const zb_block *w, int B, int T, zb_attn_shape *s, size_t *ko, size_t *vo) {
    const zb_config *c = &m->cfg;
    size_t N = (size_t)B * T, d = c->d_model, qd = (size_t)c->n_heads * c->head_dim, kd = (size_t)c->n_kv_heads * c->head_dim;
    int fused = m->be->opts.qkv_fused && w->wq && w->wk == w->wq + qd * d && w->wv == w->wk + kd * d;
    *s = attn_shape(c, B, T);
    if (fused) s->q_stride = s->k_stride = s->v_stride = (int)(qd + 2 * kd);
    *ko = fused ? qd : N * qd, *vo = *ko + (fused ? kd : N * kd);
    return fused;
}

static void attn_forward(const zb_model *m, const zb_block *w, const float *x, float *out,
                         float *acts, int B, int T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int N = B * T, d = c->d_model, qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
    zb_attn_shape s; size_t ko, vo;
    int fused = attn_layout(m, w, B, T, &s, &ko, &vo);
    float *q = acts, *k = q + ko, *v = q + vo, *att = acts + (size_t)N * (qd + 2 * kd), *saved = att + (size_t)N * qd;
    if (fused) be->matmul_forward(be, q, x, w->wq, NULL, N, d, s.q_stride);   /* rows [q | k | v] */
    /* the tagged views: a float32 matrix goes to matmul_forward (the same product), a bf16 one
     * (a frozen KD teacher held in bf16, zb_model_forward_infer) to the bf16 kernels */
    else be->linear_forward3(be, q, k, v, x, w->lin.wq, w->lin.wk, w->lin.wv, N, d, qd, kd, kd);
    be->rope(be, &m->rope, q, B, T, s.q_stride, c->n_heads, c->head_dim, 0, 0, 0, 0);
    be->rope(be, &m->rope, k, B, T, s.k_stride, c->n_kv_heads, c->head_dim, 0, 0, 0, 0);
    be->attention_forward(be, att, saved, q, k, v, &s);
    be->linear_forward(be, out, att, w->lin.wo, N, qd, d);
}

static void attn_backward(const zb_model *m, const zb_block *w, zb_block *g, const float *x,
                          const float *dout, float *dx, const float *acts, float *scratch,
                          int B, int T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int N = B * T, d = c->d_model, qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
    zb_attn_shape s; size_t ko, vo;
    int fused = attn_layout(m, w, B, T, &s, &ko, &vo);
    const float *q = acts, *k = q + ko, *v = q + vo, *att = acts + (size_t)N * (qd + 2 * kd), *saved = att + (size_t)N * qd;
    float *datt = scratch, *dq = datt + (size_t)N * qd, *dk = dq + ko, *dv = dq + vo;
    be->zero(be, datt, sizeof(float) * N * qd);
    be->matmul_backward(be, datt, g->wo, NULL, dout, att, w->wo, N, qd, d);
    be->attention_backward(be, dq, dk, dv, datt, att, saved, q, k, v, &s);
    /* back through the rotation (its transpose) to the projections */
    be->rope(be, &m->rope, dq, B, T, s.q_stride, c->n_heads, c->head_dim, 0, 0, 0, 1);
    be->rope(be, &m->rope, dk, B, T, s.k_stride, c->n_kv_heads, c->head_dim, 0, 0, 0, 1);
    if (fused) {   /* the three gradients stacked like the weights: one product */
        be->matmul_backward(be, dx, g->wq, NULL, dq, x, w->wq, N, d, s.q_stride);
        return;
    }
    be->matmul_backward(be, dx, g->wq, NULL, dq, x, w->wq, N, d, qd);
    be->matmul_backward(be, dx, g->wk, NULL, dk, x, w->wk, N, d, kd);
    be->matmul_backward(be, dx, g->wv, NULL, dv, x, w->wv, N, d, kd);
}

void zb_mixer_forward(const zb_model *m, int l, const float *x, float *out, float *acts,
                          int B, int T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    const zb_block *w = &m->w.blocks[l];
    switch (c->kinds[l]) {
    case ZB_LAYER_ATTN: attn_forward(m, w, x, out, acts, B, T); break;
    case ZB_LAYER_MLA:
        be->mla_forward(be, &c->mla, c->d_model, c->rms_eps, &w->mla, &m->rope_mla, x, out, acts, B, T);
        break;
    default:
        be->mamba2_forward(be, &c->mamba, c->d_model, c->rms_eps, &w->mamba, x, out, acts, B, T);
    }
    /* TP: the mixer's out projection is row-parallel -> sum the partial outputs (Megatron) */
    if (m->tp) zb_tp_allreduce(m->tp, out, (size_t)B * T * c->d_model);
}

void zb_mixer_backward(zb_model *m, int l, const float *x, const float *dout, float *dx,
                           float *acts, float *scratch, int B, int T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    const zb_block *w = &m->w.blocks[l];
    zb_block *g = &m->g.blocks[l];
    /* TP: dx (and the MLA latent-projection grads) are partial sums over local heads */
    if (m->tp) zb_tp_mixer_grad_begin(m, l, dx, (size_t)B * T * c->d_model);
    switch (c->kinds[l]) {
    case ZB_LAYER_ATTN: attn_backward(m, w, g, x, dout, dx, acts, scratch, B, T); break;
    case ZB_LAYER_MLA:
        be->mla_backward(be, &c->mla, c->d_model, c->rms_eps, &w->mla, &g->mla, &m->rope_mla, x, dout,
                         dx, acts, scratch, B, T);
        break;
    default:
        be->mamba2_backward(be, &c->mamba, c->d_model, c->rms_eps, &w->mamba, &g->mamba, x, dout, dx,
                            acts, scratch, B, T);
    }
    if (m->tp) zb_tp_mixer_grad_end(m, l, dx, (size_t)B * T * c->d_model);
}

/* ---- the stack ------------------------------------------------------------------------------ */

const char *const zb_tprof_names[ZB_TPROF_N] = {"embed", "attention fwd", "mla fwd", "mamba2 fwd", "block fwd",
                                                 "head fwd", "loss", "head bwd", "block bwd", "attention bwd",
                                                 "mla bwd", "mamba2 bwd", "embed bwd"};

/* training profile: the time since the last mark goes to part k (nothing unless a->profile) */
_Static_assert(ZB_MIXP_N <= (int)(sizeof ((zb_acts *)0)->prof_mix / sizeof(double)), "zb_acts.prof_mix holds ZB_MIXP_N");
static inline void tprof(const zb_model *m, zb_acts *a, int k) {
    if (!a->profile) return;
    m->be->sync(m->be);   /* a device backend runs asynchronously */
    double now = zb_now();
    if (k >= 0) a->prof[k] += now - a->prof_t;
    a->prof_t = now;
}

void zb_block_forward(const zb_model *m, zb_acts *a, int l) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    const zb_block *w = &m->w.blocks[l];
    int B = a->B, T = a->T, N = B * T, d = c->d_model, F = c->ffn;
    size_t Nd = (size_t)N * d, NF = (size_t)N * F;
    float *x = a->res + l * Nd, *mid = a->mid + l * Nd, *next = a->res + (l + 1) * Nd;
    float *ln1 = a->ln1 + l * Nd, *ln2 = a->ln2 + l * Nd;
    zb_model_params_needed(m, ZB_GRAD_BLOCK(l));
    be->rmsnorm_forward(be, ln1, a->rstd1 + (size_t)l * N, x, w->attn_norm, N, d, c->rms_eps);
    tprof(m, a, ZB_TPROF_BLOCK_F);
    if (a->profile) be->mixer_profile(be, a->prof_mix);
    zb_mixer_forward(m, l, ln1, a->mix_out, a->mix_acts[l], B, T);
    if (a->profile) be->mixer_profile(be, NULL);
    tprof(m, a, zb_tprof_mixer(c->kinds[l], 0));
    be->add(be, mid, x, a->mix_out, Nd);
    /* the MLP whole: a device backend keeps ln2, gate, up, h in its own format (backend.h) */
    be->mlp_forward(be, a->mix_out, ln2, a->rstd2 + (size_t)l * N, a->gate + l * NF, a->up + l * NF, a->hmlp + l * NF,
                    mid, w->mlp_norm, w->w_gate, w->w_up, w->w_down, N, d, F, c->rms_eps);
    if (m->tp) zb_tp_allreduce(m->tp, a->mix_out, Nd);   /* TP: down_proj is row-parallel */
    be->add(be, next, mid, a->mix_out, Nd);
    tprof(m, a, ZB_TPROF_BLOCK_F);
}

int zb_block_ws_alloc(zb_block_ws *w, const zb_model *m, int B, int T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    size_t N = (size_t)B * T, acts = 0;
    memset(w, 0, sizeof *w);
    w->be = be;
    w->B = B;
    w->T = T;
    for (int l = 0; l < c->n_layers; l++) {
        size_t s = mixer_act_floats(be, c, c->kinds[l], B, T);
        if (s > acts) acts = s;
    }
    ZB_BE_ALLOC(be, w->ln, N * c->d_model, "block buffers");
    ZB_BE_ALLOC(be, w->mo, N * c->d_model, "block buffers");
    ZB_BE_ALLOC(be, w->g, N * c->ffn, "block buffers");
    ZB_BE_ALLOC(be, w->u, N * c->ffn, "block buffers");
    ZB_BE_ALLOC(be, w->mix_acts, acts, "block buffers");
    return ZB_OK;
}

void zb_model_forward(const zb_model *m, zb_acts *a, const int *ids) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int N = a->B * a->T, d = c->d_model;
    size_t Nd = (size_t)N * d;
    tprof(m, a, -1);   /* the step's clock starts here */
    if (ids) be->to_device(be, a->ids, ids, sizeof(int) * N);
    zb_model_params_needed(m, ZB_GRAD_ALL);   /* ZeRO: the embedding's parameters gathered */
    if (m->pp_no_embed) { /* PP: a->res[0] holds the residual received from the previous stage */ }
    else if (m->tp) zb_tp_embedding_forward(m, a->res, a->ids, N);   /* TP: vocab-parallel + all-reduce */
    else be->embedding_forward(be, a->res, a->ids, m->w.embed_lin, N, d);
    tprof(m, a, ZB_TPROF_EMBED);
    for (int l = 0; l < c->n_layers; l++) zb_block_forward(m, a, l);
    if (m->pp_no_head) return;   /* PP: a->res[L] goes to the next stage */
    be->rmsnorm_forward(be, a->lnf, a->rstdf, a->res + c->n_layers * Nd, m->w.final_norm, N, d, c->rms_eps);
    be->matmul_forward(be, a->logits, a->lnf, m->w.lm_head, NULL, N, d, c->vocab);
    tprof(m, a, ZB_TPROF_HEAD_F);
}

double zb_model_lm_loss(const zb_model *m, zb_acts *a, const int *ids, int want_grad) {
    int B = a->B, T = a->T;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            a->targets[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : -1;
    return zb_model_ce_loss(m, a, a->targets, want_grad);
}

double zb_model_ce_loss(const zb_model *m, zb_acts *a, const int *targets, int want_grad) {
    const zb_backend *be = m->be;
    int B = a->B, T = a->T;
    if (targets != a->targets) memcpy(a->targets, targets, sizeof(int) * B * T);
    int nv = 0;
    /* count first so that the gradient carries 1/n_valid */
    for (int i = 0; i < B * T; i++) nv += a->targets[i] >= 0;
    be->to_device(be, a->targets_dev, a->targets, sizeof(int) * B * T);
    /* TP: logits hold this rank's vocabulary columns; the loss is reduced across the group */
    double sum = m->tp ? zb_tp_cross_entropy(m->tp, want_grad ? a->logits : NULL, a->logits, a->targets_dev,
                                             B * T, m->cfg.vocab, nv ? 1.0f / nv : 0.0f)
                       : be->cross_entropy(be, want_grad ? a->logits : NULL, a->logits, a->targets_dev, B * T,
                                           m->cfg.vocab, nv ? 1.0f / nv : 0.0f, NULL);
    return nv ? sum / nv : 0.0;
}

void zb_block_backward(zb_model *m, zb_acts *a, int l, const float *dmix) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    const zb_block *w = &m->w.blocks[l];
    zb_block *g = &m->g.blocks[l];
    int B = a->B, T = a->T, N = B * T, d = c->d_model, F = c->ffn;
    size_t Nd = (size_t)N * d, NF = (size_t)N * F;
    float *x = a->res + l * Nd, *mid = a->mid + l * Nd;
    float *ln1 = a->ln1 + l * Nd, *ln2 = a->ln2 + l * Nd;
    /* MLP: res[l+1] = mid + down(silu(gate ln2) * up ln2); dres is d/d res[l+1] */
    be->mlp_backward(be, a->dln, g->w_gate, g->w_up, g->w_down, a->dres, ln2, a->gate + l * NF, a->up + l * NF,
                     a->hmlp + l * NF, w->w_gate, w->w_up, w->w_down, a->dh, a->dgate, a->dup, N, d, F);
    if (m->tp) zb_tp_allreduce(m->tp, a->dln, Nd);   /* TP: gate/up are column-parallel */
    be->rmsnorm_backward(be, a->dres, g->mlp_norm, a->dln, mid, w->mlp_norm,
                         a->rstd2 + (size_t)l * N, N, d);   /* dres is now d/d mid */
    if (m->grad_hook) m->grad_hook(m->grad_hook_ctx, ZB_GRAD_MLP(l));   /* DP: the MLP's grads are final */
    if (dmix) be->add(be, a->dres, a->dres, dmix, Nd);   /* d/d mixer out = d/d mid + dmix */
    /* mixer: mid = x + mixer(ln1) */
    be->zero(be, a->dln, sizeof(float) * Nd);
    tprof(m, a, ZB_TPROF_BLOCK_B);
    if (a->profile) be->mixer_profile(be, a->prof_mix);
    zb_mixer_backward(m, l, ln1, a->dres, a->dln, a->mix_acts[l], a->mix_scratch, B, T);
    if (a->profile) be->mixer_profile(be, NULL);
    tprof(m, a, zb_tprof_mixer(c->kinds[l], 1));
    be->rmsnorm_backward(be, a->dres, g->attn_norm, a->dln, x, w->attn_norm,
                         a->rstd1 + (size_t)l * N, N, d);   /* dres is now d/d res[l] */
    tprof(m, a, ZB_TPROF_BLOCK_B);
}

void zb_model_backward(zb_model *m, zb_acts *a, const int *ids) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int N = a->B * a->T, d = c->d_model;
    size_t Nd = (size_t)N * d;
    tprof(m, a, ZB_TPROF_LOSS);   /* since the forward's end: the loss (and its logits gradient) */
    if (ids) be->to_device(be, a->ids, ids, sizeof(int) * N);
    /* head and final norm (PP: not the last stage: a->dres = d(res[L]) from the next stage) */
    if (!m->pp_no_head) {
    be->zero(be, a->dln, sizeof(float) * Nd);
    be->matmul_backward(be, a->dln, m->g.lm_head, NULL, a->logits, a->lnf, m->w.lm_head, N, d, c->vocab);
    if (m->tp) zb_tp_allreduce(m->tp, a->dln, Nd);   /* TP: the head is column-parallel (vocab) */
    be->zero(be, a->dres, sizeof(float) * Nd);
    be->rmsnorm_backward(be, a->dres, m->g.final_norm, a->dln, a->res + c->n_layers * Nd,
                         m->w.final_norm, a->rstdf, N, d);
    if (m->grad_hook) m->grad_hook(m->grad_hook_ctx, ZB_GRAD_HEAD(c->n_layers));   /* DP: the head and final norm */
    }
    tprof(m, a, ZB_TPROF_HEAD_B);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        zb_block_backward(m, a, l, NULL);
        if (m->grad_hook) m->grad_hook(m->grad_hook_ctx, ZB_GRAD_BLOCK(l));   /* DP: block l's grads are final */
    }
    if (m->pp_no_embed) { /* PP: a->dres = d(res[0]) goes to the previous stage */ }
    else if (m->tp) zb_tp_embedding_backward(m, a->dres, a->ids, N);   /* TP: this rank's rows only */
    else be->embedding_backward(be, m->emb_rows ? m->emb_rows : m->g.embed, a->dres, m->emb_rows ? m->emb_slot : a->ids, N, d);
    if (m->grad_hook) m->grad_hook(m->grad_hook_ctx, ZB_GRAD_ALL);   /* DP: embedding, final norm, head */
    tprof(m, a, ZB_TPROF_EMBED_B);
}
