/* test_bf16 — bf16 weight storage for inference (core/cpu/linear.h, model.h zb_wdtype):
 *  1. the bf16 kernels (each one this CPU has: scalar, AVX2, AVX-512F) against f32 sgemm on
 *     the same bf16-representable weights, f32 inputs: decode / batched decode (N 1..16),
 *     short prefill (direct kernel, N <= 64) and tiled-sgemm (N > 64) shapes, ragged sizes;
 *     every output within the f32 summation bound gamma_C * sum|w x| of the exact (double)
 *     dot product, and within twice that of sgemm (only the order of f32 additions differs);
 *  2. hf-llama-tiny held in bf16 (its weights ARE bf16; HF's reference ran in f32 on them):
 *     the generation path's logits at every position (decode, 2 sequences) and after a prefill
 *     match HF's logits within the float32 bound of two summation orders (zb_test.h: forward
 *     path x |lnf| |W_head|) and the greedy tokens are HF's (up to a tie within rounding);
 *  3. a random hybrid (tiny-zebra: MLA + Mamba2): bf16 vs the f32 model with the same weights
 *     rounded to bf16 agree within that float32 bound (same arithmetic up to summation order),
 *     and bf16 vs the unrounded f32 model within the bound of the weight rounding: each matrix
 *     weight moves by at most 2^-9 relatively, the same Hoeffding sum with 2^-9 for u;
 *  4. training refuses a bf16 model with a clear error.
 * Args: HF_LLAMA_DIR TINY_ZEBRA_JSON */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linear.h"
#include "model.h"
#include "safetensors.h"
#include "zb_test.h"

/* ZB_TEST_OK for the void helpers below: record the failure and leave the helper */
#define ZB_TEST_OK_V(expr) do { int rc_ = (expr); if (rc_) { \
    zb_check(0, "%s -> %d: %s", #expr, rc_, zb_errmsg()); return; } } while (0)

static void kernel_tests(void) {
    zb_rng r;
    zb_rng_seed(&r, 3);
    /* N: 1..16 (decode and batched decode: every remainder of the 4-input micro-kernel), 33 and
     * 64 (short prefill, direct kernel), 65 and 80 (tiled sgemm); OC: remainders of the 4-row
     * micro-kernel and of the 16-row thread blocks */
    const int Ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 33, 64, 65, 80}, Cs[] = {1, 7, 64, 200, 1000},
              OCs[] = {1, 6, 33, 300};
    const int nshapes = (int)(sizeof Ns / sizeof Ns[0] * 5 * (sizeof OCs / sizeof OCs[0]));
    const zb_bf16_impl impls[] = {ZB_BF16_SCALAR, ZB_BF16_AVX2, ZB_BF16_AVX512};
    for (int ii = 0; ii < 3; ii++) {
        zb_bf16_impl im = impls[ii];
        if (!zb_bf16_impl_available(im)) { printf("kernel %d not on this CPU: skipped\n", (int)im); continue; }
        double worst = 0, worst_b = 0, worst_s = 0;
        for (size_t a = 0; a < sizeof Ns / sizeof Ns[0]; a++)
            for (size_t b = 0; b < sizeof Cs / sizeof Cs[0]; b++)
                for (size_t c = 0; c < sizeof OCs / sizeof OCs[0]; c++) {
                    int N = Ns[a], C = Cs[b], OC = OCs[c];
                    uint16_t *W16 = malloc(sizeof(uint16_t) * OC * C);
                    float *W = malloc(sizeof(float) * OC * C), *x = malloc(sizeof(float) * N * C);
                    float *ref = malloc(sizeof(float) * N * OC), *got = malloc(sizeof(float) * N * OC);
                    for (int i = 0; i < OC * C; i++) { W16[i] = zb_f32_to_bf16(zb_rng_normal(&r)); W[i] = zb_bf16_to_f32(W16[i]); }
                    for (int i = 0; i < N * C; i++) x[i] = zb_rng_normal(&r) * (1.0f + (i % 5));   /* full f32 mantissas */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, x, C, W, C, 0.0f, ref, OC);
                    zb_linear_bf16(got, x, W16, N, C, OC, im);
                    double e = zb_max_abs_diff(got, ref, (size_t)N * OC), mx = 0;
                    for (int i = 0; i < N * OC; i++) mx = fmax(mx, fabs(ref[i]));
                    if (mx > 0 && e / mx > worst) worst = e / mx;
                    /* each output against the exact dot product (double; the products of a
                     * bf16 weight and an f32 input are exact in double): any order of C f32
                     * FMAs/additions is within gamma_C * sum|w x|, gamma_C = C u / (1 - C u),
                     * u = 2^-24 (Higham, Accuracy and Stability, 3.1) */
                    double gam = C * 0x1p-24 / (1 - C * 0x1p-24);
                    for (int n = 0; n < N; n++)
                        for (int o = 0; o < OC; o++) {
                            double ex = 0, ab = 0;
                            for (int i = 0; i < C; i++) {
                                double p = (double)W[(size_t)o * C + i] * x[(size_t)n * C + i];
                                ex += p; ab += fabs(p);
                            }
                            double g = got[(size_t)n * OC + o], bnd = gam * ab + 1e-300;
                            if (fabs(g - ex) / bnd > worst_b) worst_b = fabs(g - ex) / bnd;
                            /* sgemm is within the same bound of ex: the two within twice it */
                            double rs = fabs(g - ref[(size_t)n * OC + o]) / (2 * bnd);
                            if (rs > worst_s) worst_s = rs;
                        }
                    free(W16); free(W); free(x); free(ref); free(got);
                }
        const char *nm = im == ZB_BF16_SCALAR ? "scalar" : im == ZB_BF16_AVX2 ? "avx2" : "avx512";
        printf("bf16 kernel %s vs f32 sgemm: max|d|/max|ref| = %.3g over %d shapes\n", nm, worst, nshapes);
        zb_check(worst_s <= 1.0, "bf16 kernel %s vs f32 sgemm: max |d| / (2 gamma_C sum|w x|) = %.3g over %d shapes (<= 1)", nm, worst_s, nshapes);
        zb_check(worst_b <= 1.0, "bf16 kernel %s vs exact dot: max |err| / (gamma_C sum|w x|) = %.3g over %d shapes (<= 1)", nm, worst_b, nshapes);
    }
    /* zb_linear_forward dispatches on the tag: f32 == sgemm exactly */
    float W[6] = {1, 2, 3, 4, 5, 6}, x[3] = {1, -1, 2}, o[2];
    zb_linear_forward(o, x, zb_wt_of_f32(W), 1, 3, 2);
    zb_check(o[0] == 5.0f && o[1] == 11.0f, "zb_linear_forward f32: %g %g (5 11)", o[0], o[1]);
}

static float *get_f32(const zb_safetensors *st, const char *name, size_t *n) {
    const zb_st_tensor *t = zb_st_get(st, name);
    if (!t) return NULL;
    float *x = malloc(sizeof(float) * t->numel);
    if (zb_dtype_convert_f32(t->dtype, t->data, (int64_t)t->numel, x)) { free(x); return NULL; }
    if (n) *n = t->numel;
    return x;
}

static void hf_llama(const char *dir) {
    zb_model m;
    int rc = zb_model_load_ex(&m, dir, ZB_WEIGHTS_BF16);
    if (!zb_check(rc == ZB_OK, "load %s as bf16%s%s", dir, rc ? ": " : "", rc ? zb_errmsg() : "")) return;
    int nmat = 0, ok = 1;
    for (int i = 0; i < m.n_params; i++) {
        nmat += m.params[i].bf16;
        ok &= m.params[i].bf16 == (m.params[i].ndim == 2);
    }
    zb_check(ok && nmat > 0 && m.n_bf16 > 10 * m.n_floats, "every 2-D parameter in bf16 (%d; %zu bf16, %zu f32 values)",
             nmat, m.n_bf16, m.n_floats);
    zb_check(m.w.blocks[0].wq == NULL && m.w.blocks[0].lin.wq.bf16 && m.w.blocks[0].attn_norm,
             "matrix views are bf16-tagged, norms stay f32");
    char path[4096];
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    zb_safetensors *ref = NULL;
    ZB_TEST_OK_V(zb_st_open(&ref, path));
    const zb_st_tensor *ti = zb_st_get(ref, "input_ids");
    int B = (int)ti->shape[0], T = (int)ti->shape[1], V = m.cfg.vocab;
    int *ids = malloc(sizeof(int) * B * T);
    zb_st_to_i32(ti, ids);
    size_t n = 0;
    float *rl = get_f32(ref, "logits", &n);
    if (!zb_check(rl && n == (size_t)B * T * V, "HF logits present")) return;
    /* the LM head in f32 (the weights are bf16 values): the logits' magnitudes |lnf| |W| */
    zb_model mf;
    ZB_TEST_OK_V(zb_model_load(&mf, dir));
    int d = m.cfg.d_model;
    double sf = zb_bound_scale(zb_model_path_fwd(&m.cfg, T));
    /* decode: both sequences fed together one token per step (N = B rows: the gemv kernel) */
    zb_gen g;
    ZB_TEST_OK_V(zb_gen_init(&g, &m, B, T));
    float *got = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n), *mag = malloc(sizeof(float) * n);
    for (int t = 0; t < T; t++) {
        int step[8];
        for (int b = 0; b < B; b++) step[b] = ids[b * T + t];
        ZB_TEST_OK_V(zb_gen_step(&m, &g, step, 1));
        for (int b = 0; b < B; b++) {
            memcpy(got + ((size_t)b * T + t) * V, g.logits + (size_t)b * V, sizeof(float) * V);
            memcpy(want + ((size_t)b * T + t) * V, rl + ((size_t)b * T + t) * V, sizeof(float) * V);
            zb_mag_matmul(mag + ((size_t)b * T + t) * V, g.lnf + (size_t)b * d, mf.w.lm_head, 1, V, d);
        }
    }
    zb_check_elem_bound("bf16 decode logits (every position, 2 sequences) vs HF f32", got, want, mag, n, sf);
    /* prefill: whole prompts at once (N = T rows: the tiled sgemm path) */
    zb_gen_reset(&g);
    ZB_TEST_OK_V(zb_gen_step(&m, &g, ids, T));
    for (int b = 0; b < B; b++)
        memcpy(want + (size_t)b * V, rl + ((size_t)b * T + T - 1) * V, sizeof(float) * V);
    zb_mag_matmul(mag, g.lnf, mf.w.lm_head, B, V, d);
    zb_check_elem_bound("bf16 prefill last logits vs HF f32", g.logits, want, mag, (size_t)B * V, sf);
    zb_gen_free(&g);
    /* greedy continuation */
    const zb_st_tensor *tp = zb_st_get(ref, "greedy_prompt"), *tg = zb_st_get(ref, "greedy_tokens");
    int np = (int)tp->numel, ng = (int)tg->numel;
    int *p = malloc(sizeof(int) * np), *gt = malloc(sizeof(int) * ng);
    zb_st_to_i32(tp, p);
    zb_st_to_i32(tg, gt);
    int k, same = zb_greedy_check(&m, mf.w.lm_head, p, np, gt, ng, &k);
    zb_check(same, "bf16 greedy tokens identical to HF (%d of %d matched%s)", k, ng, same == 2 ? ", then a tie" : "");
    /* training refuses it */
    rc = zb_model_alloc_grad(&m);
    zb_check(rc == ZB_EARG && strstr(zb_errmsg(), "bf16"), "training a bf16 model is refused: %s", zb_errmsg());
    free(p); free(gt); free(got); free(want); free(mag); free(rl); free(ids);
    zb_st_close(ref);
    zb_model_free(&mf);
    zb_model_free(&m);
}

/* logits of a short greedy run: prefill 9 tokens then 6 decode steps, 2 sequences; lnf (may be
 * NULL) the final-normed rows of each step [steps, 2, d] */
static int run_gen(const zb_model *m, float *logits, float *lnf, int steps) {
    zb_gen g;
    ZB_TRY(zb_gen_init(&g, m, 2, 9 + steps));
    int V = m->cfg.vocab, ids[18];
    for (int i = 0; i < 18; i++) ids[i] = (i * 37 + 5) % V;
    ZB_TRY(zb_gen_step(m, &g, ids, 9));
    for (int s = 0; s < steps; s++) {
        memcpy(logits + (size_t)s * 2 * V, g.logits, sizeof(float) * 2 * V);
        if (lnf) memcpy(lnf + (size_t)s * 2 * m->cfg.d_model, g.lnf, sizeof(float) * 2 * m->cfg.d_model);
        int nx[2] = {(s * 11 + 3) % V, (s * 13 + 7) % V};   /* fixed inputs: the same path for all models */
        ZB_TRY(zb_gen_step(m, &g, nx, 1));
    }
    zb_gen_free(&g);
    return ZB_OK;
}

static void hybrid(const char *cfg_path) {
    zb_config c;
    if (!zb_check(zb_config_load(cfg_path, &c) == ZB_OK, "config %s", cfg_path)) return;
    zb_model f, fr, h;
    ZB_TEST_OK_V(zb_model_init(&f, &c));
    ZB_TEST_OK_V(zb_model_init(&fr, &c));
    ZB_TEST_OK_V(zb_model_init_ex(&h, &c, ZB_WEIGHTS_BF16));
    zb_model_init_random(&f, 11, 0.08f);
    zb_model_init_random(&fr, 11, 0.08f);
    zb_model_init_random(&h, 11, 0.08f);
    for (int i = 0; i < fr.n_params; i++)   /* fr: f's matrices rounded to bf16, as h holds them */
        if (fr.params[i].ndim == 2)
            for (size_t j = 0; j < fr.params[i].numel; j++) {
                float *x = fr.data + fr.params[i].offset + j;
                *x = zb_bf16_to_f32(zb_f32_to_bf16(*x));
            }
    int steps = 6, V = c.vocab;
    size_t n = (size_t)steps * 2 * V;
    float *lf = malloc(sizeof(float) * n), *lr = malloc(sizeof(float) * n), *lh = malloc(sizeof(float) * n);
    int d = c.d_model;
    float *ln = malloc(sizeof(float) * (size_t)steps * 2 * d), *mag = malloc(sizeof(float) * n);
    ZB_TEST_OK_V(run_gen(&f, lf, NULL, steps));
    ZB_TEST_OK_V(run_gen(&fr, lr, ln, steps));
    ZB_TEST_OK_V(run_gen(&h, lh, NULL, steps));
    zb_mag_matmul(mag, ln, fr.w.lm_head, steps * 2, V, d);
    double path = zb_model_path_fwd(&c, 9 + steps);
    zb_check_elem_bound("hybrid bf16 vs f32 on the same (bf16-rounded) weights", lh, lr, mag, n, zb_bound_scale(path));
    /* weight rounding: 2^-9 in place of u (and the float32 part on top); a loose bound, the
     * check above is the tight one. That one is not vacuous: the rounding of the weights is
     * seen, some logit moves by more than its float32 bound. */
    zb_check_elem_bound("hybrid bf16 vs f32 unrounded weights (bf16 rounding)", lh, lf, mag, n,
                        zb_bound_scale(path) * (1 + 0x1p-9 / ZB_U32));
    double seen = 0;
    for (size_t i = 0; i < n; i++) seen = fmax(seen, fabs((double)lh[i] - lf[i]) / (zb_bound_scale(path) * mag[i]));
    zb_check(seen > 1, "bf16 weights round: some logit moves by %.3g times its float32 bound", seen);
    free(lf); free(lr); free(lh); free(ln); free(mag);
    zb_model_free(&f); zb_model_free(&fr); zb_model_free(&h);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    kernel_tests();
    if (argc >= 2) hf_llama(argv[1]);
    if (argc >= 3) hybrid(argv[2]);
    return zb_test_finish();
}
