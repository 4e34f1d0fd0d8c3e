/* train.c — see train.h. */
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard.h"

static const char *const stage_names[] = {"pretrain", "ild", "kd", "sft", "dpo"};

int zb_stage_parse(const char *s) {
    for (int i = 0; i < 5; i++) if (!strcmp(s, stage_names[i])) return i;
    return -1;
}
const char *zb_stage_name(zb_stage s) { return (unsigned)s < 5 ? stage_names[s] : "?"; }

/* ZB_KD_TEACHER=train: the KD teacher runs the training forward (float32 weights), as before */
static int kd_teacher_train_forced(void) {
    const char *kt = getenv("ZB_KD_TEACHER");
    return kt && !strcmp(kt, "train");
}

int zb_trainer_init(zb_trainer *tr, zb_stage stage, const zb_loss_cfg *cfg, zb_model *student,
                    const zb_model *teacher, int B, int T) {
    memset(tr, 0, sizeof *tr);
    tr->stage = stage;
    tr->cfg = *cfg;
    tr->student = student;
    tr->teacher = teacher;
    tr->B = B;
    tr->T = T;
    tr->rows = stage == ZB_STAGE_DPO ? 2 * B : B;
    const zb_config *c = &student->cfg;
    size_t N = (size_t)tr->rows * T;
    int need_teacher = stage == ZB_STAGE_KD || stage == ZB_STAGE_ILD || stage == ZB_STAGE_DPO;
    if (need_teacher && !teacher)
        return zb_fail(ZB_EARG, "stage %s needs a teacher / reference model", zb_stage_name(stage));
    if (need_teacher) {
        const zb_config *tc = &teacher->cfg;
        if (tc->vocab != c->vocab)
            return zb_fail(ZB_ESHAPE, "teacher vocabulary %d != student vocabulary %d", tc->vocab, c->vocab);
        const zb_config *tf = zb_model_full_config(teacher), *sf = zb_model_full_config(student);
        if (stage == ZB_STAGE_ILD && (tc->d_model != c->d_model || tf->n_layers != sf->n_layers))
            return zb_fail(ZB_ESHAPE, "ILD needs the teacher's layer count and width (teacher %d x %d, "
                           "student %d x %d)", tf->n_layers, tc->d_model, sf->n_layers, c->d_model);
        if (stage == ZB_STAGE_ILD && student->tp && student->tp->pp_size > 1 &&
            (!teacher->tp || teacher->tp->pp_l0 != student->tp->pp_l0 || teacher->tp->pp_l1 != student->tp->pp_l1))
            return zb_fail(ZB_EARG, "ILD with --pp: the teacher's stage holds other layers than the student's "
                           "(build both with one cut)");
    }
    if (need_teacher && teacher->be != student->be && !(teacher->be->host_memory && student->be->host_memory))
        return zb_fail(ZB_EARG, "the teacher runs on backend %s, the student on %s: one backend for both",
                       teacher->be->name, student->be->name);
    ZB_TRY(zb_model_alloc_grad(student));
    ZB_TRY(zb_acts_alloc(&tr->a, student, tr->rows, T));
    const zb_backend *be = student->be;
    tr->kd_infer = stage == ZB_STAGE_KD && !teacher->tp && !student->tp && !kd_teacher_train_forced();
    if (need_teacher && !tr->kd_infer && teacher->wdtype != ZB_WEIGHTS_F32)
        return zb_fail(ZB_EARG, "a teacher held in %s runs only the KD inference forward (one rank, "
                       "ZB_KD_TEACHER not 'train')", zb_wdtype_name(teacher->wdtype));
    if (tr->kd_infer) {
        /* teacher logits by blocks of ~1 GiB of rows (enough rows for the head's product to run
         * at the matrix rate) */
        size_t rows = ((size_t)1 << 28) / (size_t)c->vocab;
        tr->kd_rows = rows < 1 ? 1 : rows > N ? (int)N : (int)rows;
        ZB_TRY(zb_infer_alloc(&tr->tf, teacher, tr->rows, T));
        ZB_BE_ALLOC(be, tr->tlogits, (size_t)tr->kd_rows * c->vocab, "kd teacher logits");
    } else if (need_teacher) ZB_TRY(zb_acts_alloc(&tr->ta, teacher, tr->rows, T));
    ZB_ALLOC(tr->mask, N, "trainer mask");
    ZB_BE_ALLOC(be, tr->mask_dev, N, "trainer mask");
    ZB_ALLOC(tr->ild_layer, c->n_layers, "trainer layers");
    if (stage == ZB_STAGE_KD && cfg->ce_weight != 0.0f) ZB_BE_ALLOC(be, tr->tmp, N * c->vocab, "kd CE gradient");
    if (stage == ZB_STAGE_ILD) {
        ZB_BE_ALLOC(be, tr->tmp, N * c->d_model, "ild mixer output");
        for (int l = 0; l < c->n_layers; l++) {
            tr->ild_layer[l] = c->kinds[l] != teacher->cfg.kinds[l];
            tr->n_ild += tr->ild_layer[l];
        }
        if (student->tp && student->tp->pp_size > 1)   /* the loss is the mean over ALL stages' layers */
            ZB_TRY(zb_comm_allreduce(student->tp->comm, ZB_GROUP_PP, &tr->n_ild, 1, ZB_CT_I32, ZB_RED_SUM));
        if (tr->n_ild == 0)
            return zb_fail(ZB_EARG, "ILD: the student has no layer whose mixer differs from the teacher's");
    }
    if (stage == ZB_STAGE_DPO) ZB_ALLOC(tr->lp, 2 * tr->rows, "dpo log-probabilities");
    return ZB_OK;
}

void zb_trainer_free(zb_trainer *tr) {
    zb_acts_free(&tr->a);
    if (tr->ta.logits) zb_acts_free(&tr->ta);
    zb_infer_free(&tr->tf);
    if (tr->student) {
        tr->student->be->free(tr->student->be, tr->tlogits);
        tr->student->be->free(tr->student->be, tr->tmp);
        tr->student->be->free(tr->student->be, tr->mask_dev);
    }
    free(tr->mask); free(tr->lp); free(tr->ild_layer);
    memset(tr, 0, sizeof *tr);
}

zb_wdtype zb_kd_teacher_wdtype(const zb_config *tc, const zb_backend *be, int tp_pp) {
    if (be->host_memory || !be->opts.gpu_bf16 || tp_pp || kd_teacher_train_forced()) return ZB_WEIGHTS_F32;
    for (int l = 0; l < tc->n_layers; l++)
        if (tc->kinds[l] != ZB_LAYER_ATTN) return ZB_WEIGHTS_F32;
    return ZB_WEIGHTS_BF16;
}

/* "model.layers.<l>.self_attn." or "model.layers.<l>.mamba." */
static int is_mixer_param(const zb_param *p) {
    return p->layer >= 0 && (strstr(p->name, ".self_attn.") || strstr(p->name, ".mamba."));
}

void zb_trainer_default_trainable(const zb_trainer *tr, unsigned char *out) {
    const zb_model *m = tr->student;
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        if (tr->stage != ZB_STAGE_ILD) out[i] = 1;
        else out[i] = p->layer >= 0 && tr->ild_layer[p->layer] &&
                      (tr->cfg.ild_mode == ZB_ILD_RELEASE || is_mixer_param(p));
    }
}

/* ---- the stages ------------------------------------------------------------------------- */

/* TP (shard.h): under tensor parallelism the logits are [N, V/tp] on each rank and the
 * losses are reduced over the vocabulary without gathering them (Megatron's vocab-parallel
 * cross-entropy); token ids and targets stay global, so validity is checked against the FULL
 * vocabulary. Both functions are collective over the TP group when m is a shard. */
static int full_vocab(const zb_model *m) { return zb_model_full_config(m)->vocab; }
/* tg and mask: device copies (backend.h: every index array is the backend's memory). */
static double ce_sum(const zb_model *m, float *d, const float *logits, const int *tg, int N, float scale) {
    if (m->tp) return zb_tp_cross_entropy(m->tp, d, logits, tg, N, m->cfg.vocab, scale);
    return m->be->cross_entropy(m->be, d, logits, tg, N, m->cfg.vocab, scale, NULL);
}
/* ce_sum with the gradient in place where the head's backward is its only reader (backend.h
 * cross_entropy_head: the CUDA backend's bf16 mode keeps it in bf16 only) */
static double ce_sum_head(const zb_model *m, float *logits, const int *tg, int N, float scale) {
    if (m->tp) return zb_tp_cross_entropy(m->tp, logits, logits, tg, N, m->cfg.vocab, scale);
    return m->be->cross_entropy_head(m->be, logits, tg, N, m->cfg.vocab, scale);
}
static double kl_sum(const zb_model *m, float *d, const float *s, const float *t, const int *mask, int N,
                     float tau, float scale) {
    if (m->tp) return zb_tp_kl_div(m->tp, d, s, t, mask, N, m->cfg.vocab, tau, scale);
    return m->be->kl_div(m->be, d, s, t, mask, N, m->cfg.vocab, tau, scale);
}
/* The micro-batch's targets [rows*T] (host) copied to a->targets_dev; returns that copy. */
static const int *targets_dev(const zb_trainer *tr, zb_acts *a, const int *targets) {
    const zb_backend *be = tr->student->be;
    be->to_device(be, a->targets_dev, targets, sizeof(int) * (size_t)tr->rows * tr->T);
    return a->targets_dev;
}

/* A stage's loss from the logits of the student's forward (a->logits) and, for kd / dpo, the
 * teacher's (tr->ta.logits); when want_grad, a->logits becomes d(loss)/d(logits). */
typedef void (*stage_loss_fn)(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float gs,
                             zb_loss_parts *o);

/* pretrain / sft loss of one micro-batch from the student's logits a->logits: the mean CE over
 * the valid targets; when want_grad, a->logits becomes d(loss)/d(logits). */
static void ce_loss_x(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float gs, zb_loss_parts *o,
                      int head_next) {
    const zb_model *m = tr->student;
    int N = tr->rows * tr->T, nv = 0;
    for (int i = 0; i < N; i++) nv += targets[i] >= 0 && targets[i] < full_vocab(m);
    /* head_next: a->logits is next read by zb_model_backward's head product (stage_ce; not under
     * PP, where other micro-batches' forwards come between) */
    const int *tg = targets_dev(tr, a, targets);
    float sc = nv ? gs / nv : 0.0f;
    double sum = want_grad && head_next ? ce_sum_head(m, a->logits, tg, N, sc)
                                        : ce_sum(m, want_grad ? a->logits : NULL, a->logits, tg, N, sc);
    o->ce = o->loss = nv ? sum / nv : 0.0;
    o->tokens = nv;
}
static void ce_loss(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float gs, zb_loss_parts *o) {
    ce_loss_x(tr, a, targets, want_grad, gs, o, 0);
}

static void stage_ce(zb_trainer *tr, const int *ids, const int *targets, int want_grad,
                     float gs, zb_loss_parts *o) {
    zb_model_forward(tr->student, &tr->a, ids);
    ce_loss_x(tr, &tr->a, targets, want_grad, gs, o, 1);
    if (want_grad) zb_model_backward(tr->student, &tr->a, ids);
}

/* KD loss of one micro-batch from the student's logits a->logits and the teacher's tr->ta.logits;
 * when want_grad, a->logits becomes d(loss)/d(logits) (for zb_model_backward). */
static void kd_loss(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float gs, zb_loss_parts *o) {
    zb_model *m = tr->student;
    int N = tr->rows * tr->T, V = m->cfg.vocab, nm = 0, Vf = full_vocab(m);
    const zb_backend *be = m->be;
    for (int i = 0; i < N; i++) { tr->mask[i] = targets[i] >= 0 && targets[i] < Vf; nm += tr->mask[i]; }
    be->to_device(be, tr->mask_dev, tr->mask, sizeof(int) * N);
    const zb_loss_cfg *c = &tr->cfg;
    double ce = 0;
    if (tr->tmp) {   /* CE first: the KL gradient overwrites the student logits */
        be->copy(be, tr->tmp, a->logits, sizeof(float) * (size_t)N * V);
        ce = ce_sum(m, want_grad ? tr->tmp : NULL, tr->tmp, targets_dev(tr, a, targets), N,
                    nm ? gs * c->ce_weight / nm : 0.0f);
        ce = nm ? ce / nm : 0.0;
    }
    /* batchmean (the release): the KL summed over the tokens / the rows; or per token */
    double kden = c->kl_token_mean ? nm : (nm ? tr->rows : 0);
    float ks = kden > 0 ? (float)(gs * c->kl_weight / kden) : 0.0f;
    double kl = 0;
    if (tr->kd_infer) {   /* the teacher's logits a block of rows at a time from its hidden state */
        for (int r0 = 0; r0 < N; r0 += tr->kd_rows) {
            int n = N - r0 < tr->kd_rows ? N - r0 : tr->kd_rows;
            size_t o = (size_t)r0 * V;
            zb_model_head_rows(tr->teacher, tr->tlogits, tr->tf.hidden + (size_t)r0 * tr->teacher->cfg.d_model, n);
            kl += kl_sum(m, want_grad ? a->logits + o : NULL, a->logits + o, tr->tlogits, tr->mask_dev + r0, n,
                         c->temperature, ks);
        }
    } else
        kl = kl_sum(m, want_grad ? a->logits : NULL, a->logits, tr->ta.logits, tr->mask_dev, N, c->temperature, ks);
    kl = kden > 0 ? kl / kden : 0.0;
    o->kl = kl;
    o->ce = ce;
    o->loss = c->kl_weight * kl + c->ce_weight * ce;
    o->tokens = nm;
    if (want_grad && tr->tmp) be->add(be, a->logits, a->logits, tr->tmp, (size_t)N * V);
}

/* ILD, mixer_mse mode: this model's distilled layers, from the teacher activations tr->ta
 * (forward done): the SUM over those layers of each layer's MSE / n_ild (n_ild: over the whole
 * model, all pipeline stages), the gradient times gs accumulated into the student's mixers. */
static double ild_mixer_mse(zb_trainer *tr, int want_grad, float gs) {
    zb_model *m = tr->student;
    const zb_config *c = &m->cfg;
    int B = tr->rows, T = tr->T, N = B * T, d = c->d_model;
    size_t Nd = (size_t)N * d;
    double total = 0;
    float *y = tr->a.mix_out, *target = tr->tmp;
    for (int l = 0; l < c->n_layers; l++) {
        if (!tr->ild_layer[l]) continue;
        const float *x = tr->ta.ln1 + l * Nd;    /* the teacher's normed input of layer l */
        const float *res = tr->ta.res + l * Nd, *mid = tr->ta.mid + l * Nd;
        m->be->sub(m->be, target, mid, res, Nd);   /* teacher mixer output */
        zb_model_params_needed(m, ZB_GRAD_BLOCK(l));
        zb_mixer_forward(m, l, x, y, tr->a.mix_acts[l], B, T);
        double mse = m->be->mse(m->be, want_grad ? tr->a.dtmp : NULL, y, target, Nd, gs / tr->n_ild);
        total += mse;
        if (want_grad) {
            m->be->zero(m->be, tr->a.dln, sizeof(float) * Nd);
            zb_mixer_backward(m, l, x, tr->a.dtmp, tr->a.dln, tr->a.mix_acts[l], tr->a.mix_scratch, B, T);
        }
    }
    return total / tr->n_ild;
}

/* ILD as the release (SPEC §6): every distilled block l of this model is fed the teacher's
 * hidden state at its input (res[l]) and its loss is mean_n ||block out - teacher's||_2 +
 * mean_n ||mixer out - teacher's attention out||_2 (unsquared, mean over the tokens); the loss is
 * the SUM over the layers. Blocks are independent (each starts from the teacher's state), so
 * each is forward-backwarded alone, from the top, and the DP hook is told as the full backward
 * would (its buckets start while the lower layers run). tr->parts: the two terms summed. */
static double ild_release(zb_trainer *tr, int want_grad, float gs, double *blk, double *mix) {
    zb_model *m = tr->student;
    const zb_backend *be = m->be;
    zb_acts *a = &tr->a;
    const zb_config *c = &m->cfg;
    int N = tr->rows * tr->T, d = c->d_model;
    size_t Nd = (size_t)N * d;
    double total = 0;
    *blk = *mix = 0;
    for (int l = c->n_layers - 1; l >= 0; l--) {
        if (!tr->ild_layer[l]) continue;
        const float *tres = tr->ta.res + l * Nd, *tmid = tr->ta.mid + l * Nd, *tout = tr->ta.res + (l + 1) * Nd;
        be->copy(be, a->res + l * Nd, tres, sizeof(float) * Nd);
        zb_block_forward(m, a, l);
        /* mixer outputs: mid - input, of the student and of the teacher */
        const float *smid = a->mid + l * Nd;
        float *ms = a->mix_out, *mt = tr->tmp;
        be->sub(be, ms, smid, tres, Nd);
        be->sub(be, mt, tmid, tres, Nd);
        double lm = be->mean_row_dist(be, want_grad ? a->dtmp : NULL, ms, mt, N, d, gs);
        double lb = be->mean_row_dist(be, want_grad ? a->dres : NULL, a->res + (l + 1) * Nd, tout, N, d, gs);
        *blk += lb;
        *mix += lm;
        total += lb + lm;
        if (want_grad) {
            zb_block_backward(m, a, l, a->dtmp);
            if (m->grad_hook) m->grad_hook(m->grad_hook_ctx, ZB_GRAD_BLOCK(l));
        }
    }
    if (want_grad && m->grad_hook) m->grad_hook(m->grad_hook_ctx, ZB_GRAD_ALL);
    return total;
}

double zb_trainer_ild_loss(zb_trainer *tr, int want_grad, float gs, zb_loss_parts *o) {
    if (tr->cfg.ild_mode == ZB_ILD_MIXER_MSE) {
        double l = ild_mixer_mse(tr, want_grad, gs);
        o->mse += l;
        return l;
    }
    double blk = 0, mix = 0, l = ild_release(tr, want_grad, gs, &blk, &mix);
    o->ild_block += blk;
    o->ild_mixer += mix;
    return l;
}

static void stage_ild(zb_trainer *tr, const int *ids, int want_grad, float gs, zb_loss_parts *o) {
    zb_model_forward(tr->teacher, &tr->ta, ids);   /* once per batch: every layer's input/output */
    o->loss = zb_trainer_ild_loss(tr, want_grad, gs, o);
    o->tokens = tr->rows * tr->T;
}

/* Sum of the target log-probabilities of each row of logits [rows, T, V]. */
static void row_logprobs(const zb_model *m, const float *logits, const int *targets, int rows, int T, int V,
                         double *lp) {
    for (int r = 0; r < rows; r++)
        lp[r] = -ce_sum(m, NULL, logits + (size_t)r * T * V, targets + (size_t)r * T, T, 0.0f);
}

/* DPO loss of one micro-batch of pairs from the policy's logits a->logits and the reference's
 * tr->ta.logits; when want_grad, a->logits becomes d(loss)/d(logits). */
static void dpo_loss(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float gs, zb_loss_parts *o) {
    zb_model *m = tr->student;
    int B = tr->B, T = tr->T, V = m->cfg.vocab;
    double *lp = tr->lp, *lr = tr->lp + tr->rows, beta = tr->cfg.beta;
    const int *tg = targets_dev(tr, a, targets);
    row_logprobs(tr->teacher, tr->ta.logits, tg, tr->rows, T, V, lr);
    row_logprobs(m, a->logits, tg, tr->rows, T, V, lp);
    double loss = 0, acc = 0, margin = 0, ntok = 0;
    for (int i = 0; i < tr->rows * T; i++) ntok += targets[i] >= 0 && targets[i] < full_vocab(m);
    for (int b = 0; b < B; b++) {
        double h = (lp[b] - lr[b]) - (lp[B + b] - lr[B + b]);
        double z = beta * h;
        /* -log sigmoid(z) = softplus(-z), stable */
        loss += z > 0 ? log1p(exp(-z)) : -z + log1p(exp(z));
        acc += z > 0;
        margin += h;
        if (want_grad) {
            /* dL/dlp_c = -beta sigmoid(-z); d lp / d logits = -(softmax - onehot) */
            double s = beta / (1.0 + exp(z)) / B * gs;
            float *lc = a->logits + (size_t)b * T * V, *lrj = a->logits + (size_t)(B + b) * T * V;
            ce_sum(m, lc, lc, tg + (size_t)b * T, T, (float)s);
            ce_sum(m, lrj, lrj, tg + (size_t)(B + b) * T, T, (float)-s);
        }
    }
    o->loss = loss / B;
    o->reward_acc = acc / B;
    o->margin = margin / B;
    o->tokens = ntok;
}

/* kd, dpo: the teacher (reference) forward, the student forward, the loss from both logits,
 * the student backward. */
static void stage_pair(zb_trainer *tr, const int *ids, const int *targets, int want_grad, float gs,
                       zb_loss_parts *o, stage_loss_fn loss) {
    if (tr->kd_infer) zb_model_forward_infer(tr->teacher, &tr->tf, ids);
    else zb_model_forward(tr->teacher, &tr->ta, ids);
    zb_model_forward(tr->student, &tr->a, ids);
    loss(tr, &tr->a, targets, want_grad, gs, o);
    if (want_grad) zb_model_backward(tr->student, &tr->a, ids);
}

int zb_trainer_step(zb_trainer *tr, const int *ids, const int *targets, int want_grad,
                    float grad_scale, zb_loss_parts *out) {
    zb_loss_parts o;
    memset(&o, 0, sizeof o);
    switch (tr->stage) {
    case ZB_STAGE_PRETRAIN:
    case ZB_STAGE_SFT: stage_ce(tr, ids, targets, want_grad, grad_scale, &o); break;
    case ZB_STAGE_KD: stage_pair(tr, ids, targets, want_grad, grad_scale, &o, kd_loss); break;
    case ZB_STAGE_ILD: stage_ild(tr, ids, want_grad, grad_scale, &o); break;
    case ZB_STAGE_DPO: stage_pair(tr, ids, targets, want_grad, grad_scale, &o, dpo_loss); break;
    default: return zb_fail(ZB_EARG, "unknown stage %d", (int)tr->stage);
    }
    if (out) *out = o;
    return ZB_OK;
}

void zb_trainer_loss(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float grad_scale,
                     zb_loss_parts *out) {
    memset(out, 0, sizeof *out);
    stage_loss_fn loss = tr->stage == ZB_STAGE_KD ? kd_loss : tr->stage == ZB_STAGE_DPO ? dpo_loss : ce_loss;
    loss(tr, a, targets, want_grad, grad_scale, out);
}

/* ---- loss parts --------------------------------------------------------------------------- */

enum { NPARTS = 9 };

static void parts_pack(const zb_loss_parts *p, double *v) {
    v[0] = p->loss; v[1] = p->ce; v[2] = p->kl; v[3] = p->mse;
    v[4] = p->reward_acc; v[5] = p->margin; v[6] = p->tokens;
    v[7] = p->ild_block; v[8] = p->ild_mixer;
}

static void parts_unpack(const double *v, zb_loss_parts *p) {
    p->loss = v[0]; p->ce = v[1]; p->kl = v[2]; p->mse = v[3];
    p->reward_acc = v[4]; p->margin = v[5]; p->tokens = v[6];
    p->ild_block = v[7]; p->ild_mixer = v[8];
}

void zb_loss_parts_add(zb_loss_parts *acc, const zb_loss_parts *p) {
    double a[NPARTS], b[NPARTS];
    parts_pack(acc, a);
    parts_pack(p, b);
    for (int i = 0; i < NPARTS; i++) a[i] += b[i];
    parts_unpack(a, acc);
}

void zb_loss_parts_div(zb_loss_parts *p, double d) {
    double a[NPARTS];
    parts_pack(p, a);
    for (int i = 0; i < NPARTS; i++) a[i] /= d;
    parts_unpack(a, p);
}

int zb_loss_parts_sum(zb_comm *c, zb_group g, zb_loss_parts *p) {
    double a[NPARTS];
    parts_pack(p, a);
    ZB_TRY(zb_comm_sum_f64(c, g, a, NPARTS));
    parts_unpack(a, p);
    return ZB_OK;
}

int zb_loss_parts_bcast(zb_comm *c, zb_group g, zb_loss_parts *p, int root) {
    double a[NPARTS];
    parts_pack(p, a);
    ZB_TRY(zb_comm_bcast(c, g, a, NPARTS, ZB_CT_F64, root));
    parts_unpack(a, p);
    return ZB_OK;
}
