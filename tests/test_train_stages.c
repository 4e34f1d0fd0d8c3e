/* test_train_stages — the loss of every training stage (core/train.c, SPEC §6) against an
 * independent double-precision computation from the models' logits / mixer outputs, and
 * the KD, ILD (both modes: the release's block + mixer norms, and the mixer MSE) and DPO
 * gradients against central finite differences of the stage loss.
 * Models: configs/tiny-llama.json (teacher) and configs/tiny-zebra.json (student, random).
 * args: CONFIG_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mamba2.h"
#include "mla.h"
#include "model.h"
#include "ops.h"
#include "train.h"
#include "zb_test.h"

enum { B = 2, T = 12 };

/* log-softmax of row (double) */
/* The input of mixer l's output projection inside its saved activations (the CPU backend's
 * layouts) and that projection's width and weights. */
static const float *mixer_out_proj_input(const zb_model *m, int l, float *acts, int B, int T, int *width,
                                        const float **w_out) {
    const zb_config *c = &m->cfg;
    const zb_block *w = &m->w.blocks[l];
    size_t N = (size_t)B * T;
    switch (c->kinds[l]) {
    case ZB_LAYER_ATTN:   /* acts: q k v att probs (attn_forward) */
        *width = c->n_heads * c->head_dim;
        *w_out = w->wo;
        return acts + N * (c->n_heads * c->head_dim + 2 * c->n_kv_heads * c->head_dim);
    case ZB_LAYER_MLA:
        *width = c->mla.n_heads * c->mla.v_head_dim;
        *w_out = w->mla.o_proj;
        return zb_mla_acts_att(&c->mla, acts, B, T);
    default:
        *width = c->mamba.d_inner;
        *w_out = w->mamba.out_proj;
        return zb_mamba2_acts_o(&c->mamba, acts, B, T);
    }
}

static void log_softmax(const float *row, int V, double tau, double *out) {
    double mx = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) if (row[v] / tau > mx) mx = row[v] / tau;
    for (int v = 0; v < V; v++) s += exp(row[v] / tau - mx);
    for (int v = 0; v < V; v++) out[v] = row[v] / tau - mx - log(s);
}

/* logits of m on ids [rows*T] into a fresh copy */
static float *logits_of(const zb_model *m, const int *ids, int rows) {
    zb_acts a;
    if (zb_acts_alloc(&a, m, rows, T)) return NULL;
    zb_model_forward(m, &a, ids);
    size_t n = (size_t)rows * T * m->cfg.vocab;
    float *l = malloc(sizeof(float) * n);
    memcpy(l, a.logits, sizeof(float) * n);
    zb_acts_free(&a);
    return l;
}

/* Float32 bounds (zb_test.h): the stage's loss and the hand computation read logits (mixer
 * outputs) of two float32 evaluations of one model; e[n] bounds row n's logits: the forward's
 * path x the largest magnitude |lnf| |W_head| of the row. */
static void row_bounds(const zb_model *m, const int *ids, int rows, double *e) {
    zb_acts a;
    if (zb_acts_alloc(&a, m, rows, T)) return;
    zb_model_forward(m, &a, ids);
    int V = m->cfg.vocab, d = m->cfg.d_model;
    float *mag = malloc(sizeof(float) * V);
    double sf = zb_bound_scale(zb_model_path_fwd(&m->cfg, T));
    for (int n = 0; n < rows * T; n++) {
        zb_mag_matmul(mag, a.lnf + (size_t)n * d, m->w.lm_head, 1, V, d);
        e[n] = sf * zb_max_abs(mag, V);
    }
    free(mag);
    zb_acts_free(&a);
}

/* a CE term log-sum-exp(z) - z[y] moves by at most 2 e_n; the mean over the valid rows */
static double ce_bound(const double *e, const int *tg, int N) {
    double s = 0;
    int n = 0;
    for (int i = 0; i < N; i++) if (tg[i] >= 0) { s += 2 * e[i]; n++; }
    return n ? s / n : 0;
}

static double ref_ce(const float *lg, const int *tg, int N, int V) {
    double *ls = malloc(sizeof(double) * V), s = 0;
    int n = 0;
    for (int i = 0; i < N; i++) {
        if (tg[i] < 0) continue;
        log_softmax(lg + (size_t)i * V, V, 1.0, ls);
        s -= ls[tg[i]];
        n++;
    }
    free(ls);
    return s / n;
}

static double ref_kl(const float *ls_, const float *lt_, const int *tg, int N, int V, double tau) {
    double *ls = malloc(sizeof(double) * V), *lt = malloc(sizeof(double) * V), s = 0;
    int n = 0;
    for (int i = 0; i < N; i++) {
        if (tg[i] < 0) continue;
        log_softmax(ls_ + (size_t)i * V, V, tau, ls);
        log_softmax(lt_ + (size_t)i * V, V, tau, lt);
        for (int v = 0; v < V; v++) s += exp(lt[v]) * (lt[v] - ls[v]);
        n++;
    }
    free(ls); free(lt);
    return s / n;
}

static double stage_loss(zb_trainer *tr, const int *ids, const int *tg) {
    zb_loss_parts p;
    if (zb_trainer_step(tr, ids, tg, 0, 1.0f, &p)) return NAN;
    return p.loss;
}

/* Central differences of the stage loss at a few entries of each trainable tensor with a
 * large enough gradient; compare with the analytic gradient. Bound (zb_test.h): D_h's
 * truncation 2 |D_2h - D_h| / 3 (Richardson), the loss's float32 error ef (<= the stage's bound
 * `lbound` against the hand value) over the steps, and the analytic gradient's own float32
 * error (the backward's path x the tensor's largest gradient). */
static void fd_check(const char *what, zb_trainer *tr, const int *ids, const int *tg,
                     const unsigned char *trainable, double lbound) {
    zb_model *m = tr->student;
    zb_model_zero_grad(m);
    zb_loss_parts p;
    if (zb_trainer_step(tr, ids, tg, 1, 1.0f, &p)) { zb_check(0, "%s: step", what); return; }
    float *g = malloc(sizeof(float) * m->n_floats);
    memcpy(g, m->grad, sizeof(float) * m->n_floats);
    int checked = 0, bad = 0, frozen_bad = 0;
    double worst = 0;
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *pp = &m->params[i];
        if (!trainable[i]) {   /* frozen parameters get no gradient in ILD */
            for (size_t j = 0; j < pp->numel; j++) frozen_bad += tr->stage == ZB_STAGE_ILD && g[pp->offset + j] != 0;
            continue;
        }
        /* the 2 largest-gradient entries of the tensor */
        size_t best[2] = {0, 0};
        for (size_t j = 0; j < pp->numel; j++) {
            float a = fabsf(g[pp->offset + j]);
            if (a > fabsf(g[pp->offset + best[0]])) { best[1] = best[0]; best[0] = j; }
            else if (j != best[0] && a > fabsf(g[pp->offset + best[1]])) best[1] = j;
        }
        for (int k = 0; k < 2; k++) {
            size_t j = pp->offset + best[k];
            if (fabsf(g[j]) < 1e-4f) continue;
            float x0 = m->data[j], h = 2e-2f * fmaxf(1.0f, fabsf(x0));   /* rounding (1/h) dominates truncation (h^2) */
            double fdv[2], st[2];
            for (int r = 0; r < 2; r++) {
                float hh = (r + 1) * h;
                m->data[j] = x0 + hh; double lp = stage_loss(tr, ids, tg);
                m->data[j] = x0 - hh; double lm = stage_loss(tr, ids, tg);
                m->data[j] = x0;
                st[r] = (double)(x0 + hh) - (double)(x0 - hh);
                fdv[r] = (lp - lm) / st[r];
            }
            double fd = fdv[0], gmax = zb_max_abs(g + pp->offset, pp->numel);
            double tol = 2 * fabs(fdv[1] - fdv[0]) / 3 + 2 * lbound / st[0] + 2 * lbound / st[1] / 3 +
                         zb_bound_scale(zb_model_path_bwd(&m->cfg, T, B * T)) * gmax;
            double err = fabs(fd - g[j]) / tol;
            if (getenv("ZB_FD_DEBUG")) printf("  %s %s: an %.4g fd %.4g trunc %.2g round %.2g an %.2g\n", what, pp->name, g[j], fd, 2 * fabs(fdv[1] - fdv[0]) / 3, 2 * lbound / st[0], tol - 2 * fabs(fdv[1] - fdv[0]) / 3 - 2 * lbound / st[0]);
            if (err > worst) worst = err;
            if (err > 1) {
                bad++;
                fprintf(stderr, "  %s: %s[%zu]: analytic %.6g fd %.6g\n", what, pp->name, best[k], g[j], fd);
            }
            checked++;
        }
    }
    zb_check(checked > 4 && bad == 0 && frozen_bad == 0,
             "%s gradient vs central differences: %d entries, worst %.2g of the bound, "
             "%d nonzero frozen grads", what, checked, worst, frozen_bad);
    free(g);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    const char *dir = argc > 1 ? argv[1] : "configs";
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/tiny-llama.json", dir);
    snprintf(p2, sizeof p2, "%s/tiny-zebra.json", dir);
    zb_config ct, cs;
    ZB_TEST_OK(zb_config_load(p1, &ct));
    ZB_TEST_OK(zb_config_load(p2, &cs));
    zb_model t, s;
    ZB_TEST_OK(zb_model_init(&t, &ct));
    ZB_TEST_OK(zb_model_init(&s, &cs));
    zb_model_init_random(&t, 11, 0.1f);
    zb_model_init_random(&s, 12, 0.1f);
    const int V = ct.vocab;
    zb_rng rng;
    zb_rng_seed(&rng, 5);
    int ids[2 * B * T], tg[2 * B * T];
    for (int i = 0; i < 2 * B * T; i++) { ids[i] = (int)(zb_rng_u64(&rng) % V); tg[i] = (int)(zb_rng_u64(&rng) % V); }
    tg[3] = -1; tg[T + 5] = -1;   /* a few masked targets */
    zb_loss_cfg lc = {1.0f, 0.0f, 1.0f, 0.5f, ZB_ILD_RELEASE, 0};

    /* ---- pretrain / sft: CE ---- */
    {
        zb_trainer tr;
        ZB_TEST_OK(zb_trainer_init(&tr, ZB_STAGE_SFT, &lc, &t, NULL, B, T));
        double got = stage_loss(&tr, ids, tg);
        float *lg = logits_of(&t, ids, B);
        double ref = ref_ce(lg, tg, B * T, V), e[B * T];
        row_bounds(&t, ids, B, e);
        double lb = ce_bound(e, tg, B * T);
        zb_check(fabs(got - ref) <= lb, "sft/pretrain CE %.8f vs hand %.8f (|d| %.2g, bound %.2g)", got, ref,
                 fabs(got - ref), lb);
        free(lg);
        zb_trainer_free(&tr);
    }
    /* ---- kd: KL(teacher || student) at tau 2 + 0.3 CE; the KL per row (batchmean, the
     * release's reduction) and per token ---- */
    for (int per_token = 0; per_token < 2; per_token++) {
        zb_loss_cfg k = {0.7f, 0.3f, 2.0f, 0, ZB_ILD_RELEASE, per_token};
        zb_trainer tr;
        ZB_TEST_OK(zb_trainer_init(&tr, ZB_STAGE_KD, &k, &s, &t, B, T));
        zb_loss_parts p;
        ZB_TEST_OK(zb_trainer_step(&tr, ids, tg, 0, 1.0f, &p));
        float *ls = logits_of(&s, ids, B), *lt = logits_of(&t, ids, B);
        int nt = 0;
        for (int i = 0; i < B * T; i++) nt += tg[i] >= 0;
        double kl = ref_kl(ls, lt, tg, B * T, V, 2.0), ce = ref_ce(ls, tg, B * T, V);
        if (!per_token) kl = kl * nt / B;   /* sum over the tokens / rows */
        double ref = 0.7 * kl + 0.3 * ce;
        /* KL(pt || ps) at tau moves by at most (2 / tau) e_s for student logits off by e_s, and by
         * (1 / tau)(2 + max_v |log pt - log ps|) e_t for teacher logits off by e_t (d KL / d t_v =
         * pt_v (log pt_v - log ps_v - KL) / tau) */
        double es[B * T], et[B * T], klb = 0;
        int nv = 0;
        row_bounds(&s, ids, B, es);
        row_bounds(&t, ids, B, et);
        double *a1 = malloc(sizeof(double) * V), *a2 = malloc(sizeof(double) * V);
        for (int i = 0; i < B * T; i++) {
            if (tg[i] < 0) continue;
            log_softmax(ls + (size_t)i * V, V, 2.0, a1);
            log_softmax(lt + (size_t)i * V, V, 2.0, a2);
            double mx = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, fabs(a2[v] - a1[v]));
            klb += (2 / 2.0) * es[i] + (2 + mx) / 2.0 * et[i];
            nv++;
        }
        klb = per_token ? klb / nv : klb / B;   /* the KL's own reduction: per token, or the sum / rows */
        free(a1); free(a2);
        double kb = 0.7 * klb + 0.3 * ce_bound(es, tg, B * T);
        zb_check(fabs(p.loss - ref) <= kb && fabs(p.kl - kl) <= klb,
                 "kd (%s) loss %.8f (kl %.8f) vs hand %.8f (kl %.8f) (bounds %.2g, %.2g)",
                 per_token ? "per token" : "batchmean", p.loss, p.kl, ref, kl, kb, klb);
        free(ls); free(lt);
        unsigned char *tm = malloc(s.n_params);
        zb_trainer_default_trainable(&tr, tm);
        fd_check(per_token ? "kd (per token)" : "kd (batchmean)", &tr, ids, tg, tm, kb);
        free(tm);
        zb_trainer_free(&tr);
    }
    /* ---- the KD teacher's inference forward (zb_model_forward_infer, one layer's buffers): the
     * training forward's final hidden state and logits bit for bit (the same float32 kernels on
     * the same shapes); the KD step with the teacher's logits made 5 rows at a time (B*T = 24:
     * a ragged last block) against the training forward's full logits (ZB_KD_TEACHER=train);
     * a teacher held in bf16 against the float32 model of its rounded weights ---- */
    {
        const int N = B * T, d = ct.d_model;
        const size_t nd = (size_t)N * d, nv = (size_t)N * V;
        zb_acts a;
        ZB_TEST_OK(zb_acts_alloc(&a, &t, B, T));
        zb_model_forward(&t, &a, ids);
        zb_infer f;
        ZB_TEST_OK(zb_infer_alloc(&f, &t, B, T));
        zb_model_forward_infer(&t, &f, ids);
        float *lg = malloc(sizeof(float) * nv), *mag = malloc(sizeof(float) * V);
        zb_model_head_rows(&t, lg, f.hidden, N);
        zb_check(!memcmp(f.hidden, a.lnf, sizeof(float) * nd) && !memcmp(lg, a.logits, sizeof(float) * nv),
                 "kd teacher: the inference forward's final hidden state and logits are the training forward's "
                 "(bits; max |d| %.3g, %.3g)", zb_max_abs_diff(f.hidden, a.lnf, nd), zb_max_abs_diff(lg, a.logits, nv));
        /* 5 rows per product: each logit is one dot product of d terms, any order (zb_test.h) */
        for (int r0 = 0; r0 < N; r0 += 5)
            zb_model_head_rows(&t, lg + (size_t)r0 * V, f.hidden + (size_t)r0 * d, N - r0 < 5 ? N - r0 : 5);
        int bad = 0;
        for (int n = 0; n < N; n++) {
            zb_mag_matmul(mag, f.hidden + (size_t)n * d, t.w.lm_head, 1, V, d);
            for (int v = 0; v < V; v++)
                bad += fabs((double)lg[(size_t)n * V + v] - a.logits[(size_t)n * V + v]) > 2 * zb_gamma32(d) * mag[v];
        }
        zb_check(bad == 0, "kd teacher: logits 5 rows at a time within 2 gamma(d) sum|terms| of the full product "
                 "(%d off)", bad);
        zb_infer_free(&f);
        zb_acts_free(&a);

        /* KD with the teacher's logits by blocks of 5 rows vs the training forward's */
        zb_loss_cfg k = {0.7f, 0.3f, 2.0f, 0, ZB_ILD_RELEASE, 0};
        zb_trainer tn, to;
        ZB_TEST_OK(zb_trainer_init(&tn, ZB_STAGE_KD, &k, &s, &t, B, T));
        setenv("ZB_KD_TEACHER", "train", 1);
        int rc = zb_trainer_init(&to, ZB_STAGE_KD, &k, &s, &t, B, T);
        unsetenv("ZB_KD_TEACHER");
        ZB_TEST_OK(rc);
        zb_check(tn.kd_infer == 1 && to.kd_infer == 0 && !to.tlogits, "kd: the inference forward by default, "
                 "ZB_KD_TEACHER=train the training forward");
        tn.kd_rows = 5;
        float *g0 = malloc(sizeof(float) * s.n_floats);
        zb_loss_parts pn, po;
        zb_model_zero_grad(&s);
        ZB_TEST_OK(zb_trainer_step(&to, ids, tg, 1, 1.0f, &po));
        memcpy(g0, s.grad, sizeof(float) * s.n_floats);
        zb_model_zero_grad(&s);
        ZB_TEST_OK(zb_trainer_step(&tn, ids, tg, 1, 1.0f, &pn));
        /* the teacher's logits differ by the head's reordering at most (above): a KL term moves by
         * (2 + max|log pt - log ps|) / tau times that; the gradients by the backward's path */
        float *ls = logits_of(&s, ids, B), *lt = logits_of(&t, ids, B);
        double *a1 = malloc(sizeof(double) * V), *a2 = malloc(sizeof(double) * V), kf[B * T], lb = 0;
        for (int n = 0; n < N; n++) {
            log_softmax(ls + (size_t)n * V, V, 2.0, a1);
            log_softmax(lt + (size_t)n * V, V, 2.0, a2);
            double mx = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, fabs(a2[v] - a1[v]));
            kf[n] = tg[n] < 0 ? 0 : 0.7 * (2 + mx) / 2.0 / B;   /* kl_weight, tau 2, batchmean */
            zb_mag_matmul(mag, tn.tf.hidden + (size_t)n * d, t.w.lm_head, 1, V, d);
            lb += kf[n] * 2 * zb_gamma32(d) * zb_max_abs(mag, V);
        }
        free(ls); free(lt); free(a1); free(a2);
        zb_check(fabs(pn.loss - po.loss) <= lb && fabs(pn.kl - po.kl) <= lb,
                 "kd: loss with teacher logits by blocks of rows %.10f vs the full logits %.10f (|d| %.2g, bound %.2g)",
                 pn.loss, po.loss, fabs(pn.loss - po.loss), lb);
        double gsc = zb_bound_scale(zb_model_path_bwd(&cs, T, N));
        int gbad = 0;
        for (int i = 0; i < s.n_params; i++) {
            const zb_param *pp = &s.params[i];
            double gmax = zb_max_abs(g0 + pp->offset, pp->numel);
            if (zb_max_abs_diff(s.grad + pp->offset, g0 + pp->offset, pp->numel) > 2 * gsc * gmax) {
                gbad++;
                fprintf(stderr, "  kd blocks of rows: %s gradient off by %.3g (max %.3g)\n", pp->name,
                        zb_max_abs_diff(s.grad + pp->offset, g0 + pp->offset, pp->numel), gmax);
            }
        }
        zb_check(gbad == 0, "kd: gradients with teacher logits by blocks of rows within the backward's bound of the "
                 "full logits' (%d tensors off)", gbad);
        zb_trainer_free(&tn);
        zb_trainer_free(&to);

        /* a bf16 teacher: the float32 model of the same seed has the same weights before rounding */
        zb_model tb, tr32;
        ZB_TEST_OK(zb_model_init_ex(&tb, &ct, ZB_WEIGHTS_BF16));
        ZB_TEST_OK(zb_model_init(&tr32, &ct));
        zb_model_init_random(&tb, 11, 0.1f);
        zb_model_init_random(&tr32, 11, 0.1f);
        for (int i = 0; i < tr32.n_params; i++)
            if (tb.params[i].bf16)
                for (size_t j = 0; j < tr32.params[i].numel; j++) {
                    float *x = tr32.data + tr32.params[i].offset + j;
                    *x = zb_bf16_to_f32(zb_f32_to_bf16(*x));
                }
        int same = 1;
        for (int i = 0; i < tr32.n_params; i++)
            for (size_t j = 0; tb.params[i].bf16 && j < tb.params[i].numel; j++)
                same &= zb_bf16_to_f32(tb.data16[tb.params[i].offset + j]) == tr32.data[tr32.params[i].offset + j];
        zb_check(same, "kd: the bf16 teacher's matrices are the rounded float32 ones");
        ZB_TEST_OK(zb_acts_alloc(&a, &tr32, B, T));
        zb_model_forward(&tr32, &a, ids);
        ZB_TEST_OK(zb_infer_alloc(&f, &tb, B, T));
        zb_model_forward_infer(&tb, &f, ids);
        zb_model_head_rows(&tb, lg, f.hidden, N);
        double eb[B * T];
        row_bounds(&tr32, ids, B, eb);
        bad = 0;
        double worst = 0;
        for (int n = 0; n < N; n++)
            for (int v = 0; v < V; v++) {
                double e = fabs((double)lg[(size_t)n * V + v] - a.logits[(size_t)n * V + v]);
                if (e / eb[n] > worst) worst = e / eb[n];
                bad += e > eb[n];
            }
        zb_check(bad == 0, "kd: a bf16 teacher's inference logits within the float32 forward's bound of the rounded "
                 "float32 model's (worst %.2g of the bound)", worst);
        zb_infer_free(&f);
        zb_acts_free(&a);
        /* the trainer takes it (inference forward) and refuses it for the training forward */
        ZB_TEST_OK(zb_trainer_init(&tn, ZB_STAGE_KD, &k, &s, &tb, B, T));
        ZB_TEST_OK(zb_trainer_step(&tn, ids, tg, 0, 1.0f, &pn));
        zb_trainer_free(&tn);
        ZB_TEST_OK(zb_trainer_init(&to, ZB_STAGE_KD, &k, &s, &tr32, B, T));
        ZB_TEST_OK(zb_trainer_step(&to, ids, tg, 0, 1.0f, &po));
        zb_trainer_free(&to);
        /* the same student; the teachers' logits within eb[n] of each other (above), the CE part equal */
        double lbb = 0;
        for (int n = 0; n < N; n++) lbb += kf[n] * eb[n];
        zb_check(fabs(pn.loss - po.loss) <= lbb, "kd: loss with the bf16 teacher %.10f vs its rounded float32 model "
                 "%.10f (|d| %.2g, bound %.2g)", pn.loss, po.loss, fabs(pn.loss - po.loss), lbb);
        setenv("ZB_KD_TEACHER", "train", 1);
        rc = zb_trainer_init(&to, ZB_STAGE_KD, &k, &s, &tb, B, T);
        unsetenv("ZB_KD_TEACHER");
        zb_check(rc != 0, "kd: a bf16 teacher with ZB_KD_TEACHER=train is refused: %s", rc ? zb_errmsg() : "accepted");
        zb_trainer_free(&to);
        zb_model_free(&tb);
        zb_model_free(&tr32);
        free(lg); free(mag); free(g0);
    }
    /* ---- ild (release): every new block on the teacher's hidden state; per layer the mean over
     * tokens of ||block out - teacher's||_2 + ||mixer out - teacher's attention out||_2, summed ---- */
    {
        zb_trainer tr;
        ZB_TEST_OK(zb_trainer_init(&tr, ZB_STAGE_ILD, &lc, &s, &t, B, T));
        zb_loss_parts p;
        ZB_TEST_OK(zb_trainer_step(&tr, ids, tg, 0, 1.0f, &p));
        /* independent: the teacher's forward, then each student block by the inference path
         * (zb_block_apply) on the teacher's res[l], norms in double */
        zb_acts a;
        zb_block_ws ws;
        ZB_TEST_OK(zb_acts_alloc(&a, &t, B, T));
        ZB_TEST_OK(zb_block_ws_alloc(&ws, &s, B, T));
        zb_model_forward(&t, &a, ids);
        int N = B * T, d = ct.d_model, n = 0;
        size_t Nd = (size_t)N * d;
        float *x = malloc(sizeof(float) * Nd), *ln = malloc(sizeof(float) * Nd), *mo = malloc(sizeof(float) * Nd);
        double rb = 0, rm = 0;
        for (int l = 0; l < cs.n_layers; l++) {
            if (cs.kinds[l] == ct.kinds[l]) continue;
            const float *res = a.res + l * Nd, *mid = a.mid + l * Nd, *out = a.res + (l + 1) * Nd;
            memcpy(x, res, sizeof(float) * Nd);
            zb_block_apply(&s, l, x, B, &ws);
            zb_rmsnorm_forward(ln, NULL, res, s.w.blocks[l].attn_norm, N, d, cs.rms_eps);
            zb_mixer_forward(&s, l, ln, mo, ws.mix_acts, B, T);
            for (int r = 0; r < N; r++) {
                double eb = 0, em = 0;
                for (int i = 0; i < d; i++) {
                    size_t k = (size_t)r * d + i;
                    double e1 = (double)x[k] - out[k], e2 = (double)mo[k] - ((double)mid[k] - res[k]);
                    eb += e1 * e1;
                    em += e2 * e2;
                }
                rb += sqrt(eb) / N;
                rm += sqrt(em) / N;
            }
            n++;
        }
        /* The block outputs are the same floats (same kernels, same order): equal up to the
         * double sums. The trainer measures each mixer output as (mid - input) in float, the hand
         * as the mixer's own output (student) and in double (teacher): per entry two roundings
         * (mid = in + out, then mid - in) of at most eps/2 |mid| each, for the student and the
         * teacher, so per token |difference of the norms| <= ||rounding|| <= 2 sqrt(d) eps
         * max|mid|; summed over the n layers; x4 for the student's mid exceeding the teacher's. */
        double mx = 0;
        for (size_t i = 0; i < (size_t)cs.n_layers * Nd; i++) mx = fmax(mx, fabs(a.mid[i]));
        double tol = 4 * 2.0 * n * sqrt((double)d) * ZB_U32 * mx;
        /* the block norms: the same floats summed in double in another order (N d n terms);
         * the total: one double addition */
        zb_check(n == 4 && fabs(p.ild_block - rb) <= 2 * N * d * n * 0x1p-53 * rb && fabs(p.ild_mixer - rm) <= tol &&
                 fabs(p.loss - (p.ild_block + p.ild_mixer)) <= 0x1p-52 * p.loss,
                 "ild (release) loss %.8f = block %.8f (hand %.8f) + mixer %.8f (hand %.8f, tol %.2g) over %d layers",
                 p.loss, p.ild_block, rb, p.ild_mixer, rm, tol, n);
        free(x); free(ln); free(mo);
        zb_block_ws_free(&ws);
        zb_acts_free(&a);
        unsigned char *tm = malloc(s.n_params);
        zb_trainer_default_trainable(&tr, tm);
        int n_tr = 0, mlp = 0, glob = 0;
        for (int i = 0; i < s.n_params; i++) {
            n_tr += tm[i];
            mlp += tm[i] && strstr(s.params[i].name, ".mlp.") != NULL;
            glob += tm[i] && s.params[i].layer < 0;
        }
        zb_check(n_tr > 0 && mlp > 0 && glob == 0, "ild trains the distilled blocks whole (%d tensors, %d MLP), "
                 "no embedding / final norm / head", n_tr, mlp);
        /* the loss's float32 error for the central differences: per layer and token the norm of
         * the block's (and the mixer's) output error, each value within the block's path x the
         * residual stream's largest value (zb_test.h), sqrt(d) of them */
        double ops_b = zb_ops_norms_mlp(d, cs.ffn, 1) + fmax(zb_ops_mla(&cs.mla, d, T, 1), zb_ops_mamba2(&cs.mamba, d, T, 1));
        double lrel = 2 * n * sqrt((double)d) * zb_bound_scale(sqrt(ops_b)) * mx + tol;
        fd_check("ild (release)", &tr, ids, tg, tm, lrel);
        free(tm);
        zb_trainer_free(&tr);
    }
    /* ---- ild (mixer_mse): student mixers on the teacher's normed inputs, MSE to the teacher's
     * mixer outputs ---- */
    {
        zb_loss_cfg km = lc;
        km.ild_mode = ZB_ILD_MIXER_MSE;
        zb_trainer tr;
        ZB_TEST_OK(zb_trainer_init(&tr, ZB_STAGE_ILD, &km, &s, &t, B, T));
        double got = stage_loss(&tr, ids, tg);
        /* independent: teacher forward, then per layer its own mixer forward as the target */
        zb_acts a, sa;
        ZB_TEST_OK(zb_acts_alloc(&a, &t, B, T));
        ZB_TEST_OK(zb_acts_alloc(&sa, &s, B, T));
        zb_model_forward(&t, &a, ids);
        size_t Nd = (size_t)B * T * ct.d_model;
        float *y = malloc(sizeof(float) * Nd), *yt = malloc(sizeof(float) * Nd);
        float *my = malloc(sizeof(float) * Nd), *myt = malloc(sizeof(float) * Nd);
        double ref = 0, ib = 0;
        int n = 0;
        for (int l = 0; l < cs.n_layers; l++) {
            if (cs.kinds[l] == ct.kinds[l]) continue;
            zb_mixer_forward(&t, l, a.ln1 + l * Nd, yt, a.mix_acts[l], B, T);
            zb_mixer_forward(&s, l, a.ln1 + l * Nd, y, sa.mix_acts[l], B, T);
            /* each output within the mixer's float32 bound (its path, |a| |W_o|): the MSE term
             * (y - yt)^2 moves by at most 2 |y - yt| (e_y + e_yt) */
            int wy, wt;
            const float *wo_s, *wo_t;
            const float *ay = mixer_out_proj_input(&s, l, sa.mix_acts[l], B, T, &wy, &wo_s);
            const float *at = mixer_out_proj_input(&t, l, a.mix_acts[l], B, T, &wt, &wo_t);
            zb_mag_matmul(my, ay, wo_s, B * T, ct.d_model, wy);
            zb_mag_matmul(myt, at, wo_t, B * T, ct.d_model, wt);
            double ops_s = cs.kinds[l] == ZB_LAYER_MLA ? zb_ops_mla(&cs.mla, cs.d_model, T, 1)
                                                       : zb_ops_mamba2(&cs.mamba, cs.d_model, T, 1);
            double ss = zb_bound_scale(sqrt(ops_s)),
                   st = zb_bound_scale(sqrt(zb_ops_attn(ct.d_model, ct.n_heads, ct.head_dim, T, 1)));
            double e = 0, eb = 0;
            for (size_t i = 0; i < Nd; i++) {
                e += ((double)y[i] - yt[i]) * ((double)y[i] - yt[i]);
                eb += 2 * fabs((double)y[i] - yt[i]) * (ss * my[i] + st * myt[i]);
            }
            ref += e / Nd;
            ib += eb / Nd;
            n++;
        }
        ref /= n;
        ib /= n;
        zb_check(n == 4 && fabs(got - ref) <= ib, "ild (mixer_mse) loss %.8f vs hand %.8f over %d layers (|d| %.2g, bound %.2g)", got,
                 ref, n, fabs(got - ref), ib);
        free(y); free(yt); free(my); free(myt);
        zb_acts_free(&a); zb_acts_free(&sa);
        unsigned char *tm = malloc(s.n_params);
        zb_trainer_default_trainable(&tr, tm);
        int n_tr = 0;
        for (int i = 0; i < s.n_params; i++) n_tr += tm[i];
        zb_check(n_tr > 0 && !tm[0], "ild (mixer_mse) trains only the new mixers (%d of %d tensors)", n_tr, s.n_params);
        fd_check("ild (mixer_mse)", &tr, ids, tg, tm, ib);
        free(tm);
        zb_trainer_free(&tr);
    }
    /* ---- dpo: rows [0,B) chosen, [B,2B) rejected; reference = a copy of the initial policy,
     * policy perturbed so that the loss is not log 2 ---- */
    {
        zb_model ref;
        ZB_TEST_OK(zb_model_init(&ref, &ct));
        memcpy(ref.data, t.data, sizeof(float) * t.n_floats);
        zb_model pol;
        ZB_TEST_OK(zb_model_init(&pol, &ct));
        memcpy(pol.data, t.data, sizeof(float) * t.n_floats);
        zb_rng r2;
        zb_rng_seed(&r2, 9);
        for (size_t i = 0; i < pol.n_floats; i++) pol.data[i] += 0.02f * zb_rng_normal(&r2);
        int dtg[2 * B * T];
        for (int i = 0; i < 2 * B * T; i++) dtg[i] = (i % T) >= 5 ? tg[i] : -1;   /* continuation only */
        zb_loss_cfg k = {0, 0, 1, 0.5f, ZB_ILD_RELEASE, 0};
        zb_trainer tr;
        ZB_TEST_OK(zb_trainer_init(&tr, ZB_STAGE_DPO, &k, &pol, &ref, B, T));
        double got = stage_loss(&tr, ids, dtg);
        float *lp = logits_of(&pol, ids, 2 * B), *lr = logits_of(&ref, ids, 2 * B);
        double *ls = malloc(sizeof(double) * V), lpr[2 * B], lrr[2 * B], hand = 0;
        for (int r = 0; r < 2 * B; r++) {
            lpr[r] = lrr[r] = 0;
            for (int t_ = 0; t_ < T; t_++) {
                int i = r * T + t_;
                if (dtg[i] < 0) continue;
                log_softmax(lp + (size_t)i * V, V, 1, ls); lpr[r] += ls[dtg[i]];
                log_softmax(lr + (size_t)i * V, V, 1, ls); lrr[r] += ls[dtg[i]];
            }
        }
        /* a log-prob moves by at most 2 e per token (as a CE term); z = beta (sums of 4 of them per
         * pair) and -log sigmoid(z) has slope <= 1 */
        double ep[2 * B * T], er[2 * B * T], db = 0, zb[B];
        row_bounds(&pol, ids, 2 * B, ep);
        row_bounds(&ref, ids, 2 * B, er);
        for (int b = 0; b < B; b++) {
            double z = 0.5 * ((lpr[b] - lrr[b]) - (lpr[B + b] - lrr[B + b]));
            hand += -log(1.0 / (1.0 + exp(-z)));
            zb[b] = 0;
            for (int t_ = 0; t_ < T; t_++)
                for (int r = b; r < 2 * B; r += B)
                    if (dtg[r * T + t_] >= 0) zb[b] += 0.5 * 2 * (ep[r * T + t_] + er[r * T + t_]);
            db += zb[b] / B;
        }
        hand /= B;
        zb_check(fabs(got - hand) <= db && fabs(hand - log(2.0)) > 1e-3, "dpo loss %.8f vs hand %.8f (|d| %.2g, bound %.2g)",
                 got, hand, fabs(got - hand), db);
        /* at policy == reference the loss is log 2: z = 0 up to the two evaluations of the same
         * logits (the bound above, with the policy's logits those of the reference) */
        memcpy(pol.data, t.data, sizeof(float) * t.n_floats);
        double l0 = stage_loss(&tr, ids, dtg);
        zb_check(fabs(l0 - log(2.0)) <= db, "dpo loss at policy == reference %.8f = log 2", l0);
        for (size_t i = 0; i < pol.n_floats; i++) pol.data[i] += 0.02f * zb_rng_normal(&r2);
        unsigned char *tm = malloc(pol.n_params);
        zb_trainer_default_trainable(&tr, tm);
        fd_check("dpo", &tr, ids, dtg, tm, db);
        free(tm); free(ls); free(lp); free(lr);
        zb_trainer_free(&tr);
        zb_model_free(&ref);
        zb_model_free(&pol);
    }
    zb_model_free(&t);
    zb_model_free(&s);
    return zb_test_finish();
}
