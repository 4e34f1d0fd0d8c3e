/* test_optim — AdamW (core/optim.c) against a double-precision hand computation of
 * torch.optim.AdamW for three steps (decay, no_decay, frozen, lr multiplier, clipping), the
 * warmup + cosine schedule at known points, the global-norm clip factor, parameter patterns,
 * and gradient accumulation (2 micro-batches of B rows with grad scale 1/2 == one batch of 2B). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"
#include "train.h"
#include "zb_test.h"

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    static const char *cfg_json =
        "{\"model_type\":\"llama\",\"hidden_size\":16,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
        "\"num_key_value_heads\":1,\"head_dim\":8,\"intermediate_size\":24,\"vocab_size\":32,"
        "\"tie_word_embeddings\":false,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
        "\"max_position_embeddings\":64,\"bos_token_id\":1,\"eos_token_id\":2}";
    zb_config c;
    ZB_TEST_OK(zb_config_parse(cfg_json, "test", &c));
    zb_model m;
    ZB_TEST_OK(zb_model_init(&m, &c));
    zb_model_init_random(&m, 3, 0.2f);
    ZB_TEST_OK(zb_model_alloc_grad(&m));
    zb_optim_cfg oc = zb_optim_defaults();
    oc.lr = 1e-2f; oc.weight_decay = 0.1f; oc.beta1 = 0.9f; oc.beta2 = 0.99f; oc.eps = 1e-6f; oc.clip = 0.5f;
    zb_adamw o;
    ZB_TEST_OK(zb_adamw_init(&o, &m, &oc));
    /* patterns */
    int n1 = zb_adamw_set_group(&o, &m, "mlp.down_proj", 2.0f, -1, -1);
    int n2 = zb_adamw_set_group(&o, &m, "model.layers.1.*", -1, -1, 0);
    zb_check(n1 == 2 && n2 == 9, "patterns: substring matched %d (2), glob matched %d (9)", n1, n2);
    const zb_param *pn = zb_model_param(&m, "model.norm.weight");
    int i_norm = (int)(pn - m.params);
    zb_check(o.wd[i_norm] == 0 && o.wd[0] == 0.1f, "no decay on norms (%g), decay on the embedding (%g)",
             o.wd[i_norm], o.wd[0]);

    /* hand AdamW in double on a copy */
    size_t n = m.n_floats;
    double *p = malloc(sizeof(double) * n), *mm = calloc(n, sizeof(double)), *vv = calloc(n, sizeof(double));
    /* the float32 step's bound per value (zb_test.h), summed over the steps: p (1 - lr wd) two
     * roundings of |p|; the update lr / bc1 m / (sqrt(v) / sqrt(bc2) + eps) with m, v (3
     * roundings each, carried over the steps: 3 per past step), the clip factor (its float
     * cast), bc1, sqrt(bc2), sqrt, +, /, *: gamma(12 + 6 step) of |update| */
    double *bnd = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) p[i] = m.data[i];
    zb_rng rng;
    zb_rng_seed(&rng, 7);
    int clipped = 0;
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < n; i++) m.grad[i] = 0.05f * zb_rng_normal(&rng);
        double gn2 = 0;
        for (int k = 0; k < m.n_params; k++) {
            if (!o.trainable[k]) continue;
            for (size_t j = 0; j < m.params[k].numel; j++) {
                double g = m.grad[m.params[k].offset + j];
                gn2 += g * g;
            }
        }
        double gn = zb_grad_norm(&o, &m);
        /* both sum the squares in double: two orders within 2 gamma_n(2^-53) of the sum */
        zb_check(fabs(gn - sqrt(gn2)) <= 2 * n * 0x1p-53 * sqrt(gn2), "grad norm %.9g vs %.9g", gn, sqrt(gn2));
        double cs = sqrt(gn2) > 0.5 ? 0.5 / (sqrt(gn2) + 1e-6) : 1.0;
        clipped += cs < 1;
        float lr = 1e-2f;
        zb_adamw_step(&o, &m, lr, zb_clip_scale(&oc, gn));
        double t = step + 1, bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.99, t);
        for (int k = 0; k < m.n_params; k++) {
            if (!o.trainable[k]) continue;
            double lri = lr * o.lr_mult[k], wd = o.wd[k];
            for (size_t j = 0; j < m.params[k].numel; j++) {
                size_t q = m.params[k].offset + j;
                double g = m.grad[q] * cs;
                mm[q] = 0.9 * mm[q] + 0.1 * g;
                vv[q] = 0.99 * vv[q] + 0.01 * g * g;
                double upd = lri / bc1 * mm[q] / (sqrt(vv[q]) / sqrt(bc2) + 1e-6);
                bnd[q] += zb_gamma32(2) * fabs(p[q]) + zb_gamma32(12 + 6 * step) * fabs(upd);
                p[q] = p[q] * (1 - lri * wd) - upd;
            }
        }
    }
    double worst = 0, frozen = 0;
    float *init = malloc(sizeof(float) * n);
    zb_model m0;
    ZB_TEST_OK(zb_model_init(&m0, &c));
    zb_model_init_random(&m0, 3, 0.2f);
    for (int k = 0; k < m.n_params; k++)
        for (size_t j = 0; j < m.params[k].numel; j++) {
            size_t q = m.params[k].offset + j;
            if (!o.trainable[k]) { frozen += fabs((double)m.data[q] - m0.data[q]); continue; }
            double e = fabs(m.data[q] - p[q]) / bnd[q];
            if (!(e <= worst)) worst = e;
        }
    zb_check(worst <= 1 && clipped > 0, "AdamW 3 steps vs hand torch-AdamW (double): worst %.2g of the float32 "
             "bound, %d clipped steps", worst, clipped);
    zb_check(frozen == 0, "frozen parameters unchanged (moved %g)", frozen);

    /* schedule */
    zb_optim_cfg sc = {1.0f, 0.1f, 10, 110, 0.9f, 0.95f, 1e-8f, 0, 0};
    float l0 = zb_lr_at(&sc, 0), l9 = zb_lr_at(&sc, 9), l10 = zb_lr_at(&sc, 10), l60 = zb_lr_at(&sc, 60),
          l110 = zb_lr_at(&sc, 110);
    /* warmup lr (step+1)/warmup: 2 float roundings; the cosine in double, cast: 1 (gamma(3) covers both) */
#define NEAR(a, x) (fabs((double)(a) - (x)) <= zb_gamma32(3) * fabs(x))
    zb_check(NEAR(l0, 0.1) && NEAR(l9, 1.0) && NEAR(l10, 1.0) && NEAR(l60, 0.55) && NEAR(l110, 0.1),
             "schedule: warmup %g %g, peak %g, mid-cosine %g (0.55), end %g (0.1)", l0, l9, l10, l60, l110);
    zb_check(zb_clip_scale(&sc, 5.0) == 1.0f && NEAR(zb_clip_scale(&oc, 2.0), 0.5 / (2.0 + 1e-6)),
             "clip factor: off -> 1, 0.5/2 -> %g", zb_clip_scale(&oc, 2.0));

    /* gradient accumulation: 2 x B rows with scale 1/2 == 2B rows at once (all targets valid) */
    {
        enum { Bm = 2, Tm = 6 };
        int ids[2 * Bm * Tm], tg[2 * Bm * Tm];
        for (int i = 0; i < 2 * Bm * Tm; i++) { ids[i] = (int)(zb_rng_u64(&rng) % 32); tg[i] = (int)(zb_rng_u64(&rng) % 32); }
        zb_loss_cfg lc = {1, 0, 1, 0.1f, ZB_ILD_RELEASE, 0};
        zb_trainer a, b;
        ZB_TEST_OK(zb_trainer_init(&a, ZB_STAGE_PRETRAIN, &lc, &m, NULL, Bm, Tm));
        zb_model_zero_grad(&m);
        ZB_TEST_OK(zb_trainer_step(&a, ids, tg, 1, 0.5f, NULL));
        ZB_TEST_OK(zb_trainer_step(&a, ids + Bm * Tm, tg + Bm * Tm, 1, 0.5f, NULL));
        float *g1 = malloc(sizeof(float) * n);
        memcpy(g1, m.grad, sizeof(float) * n);
        zb_trainer_free(&a);
        ZB_TEST_OK(zb_trainer_init(&b, ZB_STAGE_PRETRAIN, &lc, &m, NULL, 2 * Bm, Tm));
        float *gm = calloc(n, sizeof(float));   /* (uses m's gradient buffer: before the step) */
        ZB_TEST_OK(zb_mag_ce_grad(&m, ids, tg, 2 * Bm, Tm, gm));
        zb_model_zero_grad(&m);
        ZB_TEST_OK(zb_trainer_step(&b, ids, tg, 1, 1.0f, NULL));
        /* two float32 evaluations of one gradient: each tensor within its bound (zb_test.h),
         * magnitudes from one backward per loss term */
        double pb = zb_model_path_bwd(&c, Tm, 2 * Bm * Tm), w = 0;
        int bad = 0;
        for (int k = 0; k < m.n_params; k++) {
            double r;
            int sens;
            size_t o = m.params[k].offset;
            bad += !zb_tensor_within(g1 + o, m.grad + o, gm + o, m.params[k].numel, pb, &r, &sens) || !sens;
            if (r > w) w = r;
        }
        zb_check(bad == 0, "grad accumulation 2 x B == 2B: every tensor within its float32 bound (worst %.2g)", w);
        free(gm);
        free(g1);
        zb_trainer_free(&b);
    }
    free(p); free(mm); free(vv); free(bnd); free(init);
    zb_model_free(&m0);
    zb_adamw_free(&o);
    zb_model_free(&m);
    return zb_test_finish();
}
