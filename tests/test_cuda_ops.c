/* test_cuda_ops.c — every kernel of core/cuda/cuda_ops.h against the CPU kernel of ops.h /
 * linear.h / optim.h on random inputs with ragged sizes, in the float32 mode and (for the
 * products) the bf16 mode. Each bound is derived per element from the arithmetic: the length
 * of the reduction times the unit roundoff (ZB_U32 = 2^-24; bf16 operands add 2^-8 per
 * product) times the magnitude of the summed terms, computed on the host. Skipped (exit 77)
 * without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda_train.h"
#include "zb_cuda_test.h"

#define U ZB_U32

static double op_rel(void) { return zb_cuda_precision() == ZB_PREC_BF16 ? 2 * ZB_U16 : 0.0; }

static float *fabs_copy(const float *x, size_t n) {
    float *a = zb_falloc(n);
    for (size_t i = 0; i < n; i++) a[i] = fabsf(x[i]);
    return a;
}

static const char *mode_name(void) {
    if (zb_cuda_precision() == ZB_PREC_F32) return "f32";
    return zb_cuda_bf16_gemm_impl() == ZB_BF16_GEMM_FAST ? "bf16-fast" : "bf16-convert";
}

static int g_fa2_shape = 0;   /* the flash2 forward's CTA shape set for the test (0: default) */

static const char *attn_path(const zb_attn_shape *s, const void *q, const void *k, const void *v) {
    static char buf[96];
    static const char *const shapes[4] = {"default", "4 warps x 16 rows", "8 warps x 16 rows", "4 warps x 32 rows"};
    if (zb_cuda_precision() != ZB_PREC_BF16 || !zb_cuda_flash_supported(s, q, k, v)) return "blocked";
    if (zb_cuda_flash_version() == 1) return "flash1";
    static const char *const bshapes[4] = {"default", "4 warps, 2 CTAs/SM", "4 warps, 3 CTAs/SM (hd 64)", "8 warps"};
    snprintf(buf, sizeof buf, "flash2 (forward %s, backward %s)", shapes[g_fa2_shape], bshapes[g_fa2_shape]);
    return buf;
}

/* ---- matmul forward / backward, linear with bf16 weights ------------------------------ */
static void test_matmul(zb_rng *rng, int N, int C, int OC, int with_bias, int backward) {
    char what[160];
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    float *x = zb_falloc(nx), *W = zb_falloc(nw), *b = zb_falloc(OC), *out = zb_falloc(no), *got = zb_falloc(no);
    zb_fill_uniform(x, nx, 1.0f, rng);
    zb_fill_uniform(W, nw, 0.5f, rng);
    zb_fill_uniform(b, OC, 0.5f, rng);
    zb_matmul_forward(out, x, W, with_bias ? b : NULL, N, C, OC);
    /* magnitude of the summed terms: |x| |W|^T + |b| */
    float *ax = fabs_copy(x, nx), *aw = fabs_copy(W, nw), *ab = fabs_copy(b, OC), *mag = zb_falloc(no);
    zb_matmul_forward(mag, ax, aw, with_bias ? ab : NULL, N, C, OC);
    double *md = zb_dalloc(no);
    for (size_t i = 0; i < no; i++) md[i] = mag[i];
    float *dx = zb_dev_f(x, nx), *dW = zb_dev_f(W, nw), *db = zb_dev_f(b, OC), *dout = zb_dev_f(NULL, no);
    zb_cuda_matmul_forward(dout, dx, dW, with_bias ? db : NULL, N, C, OC);
    zb_host_f(got, dout, no);
    /* each side: (C + 2) roundings of the sum (with the bias); bf16 operands: 2^-8 per product */
    double rel = 2 * (C + 2) * U + op_rel();
    snprintf(what, sizeof what, "matmul_forward %s N=%d C=%d OC=%d%s", mode_name(), N, C, OC, with_bias ? " +bias" : "");
    zb_check_mag(what, got, out, md, rel, 1e-30, no);

    if (backward) {
        float *go = zb_falloc(no), *gi0 = zb_falloc(nx), *gw0 = zb_falloc(nw), *gb0 = zb_falloc(OC);
        zb_fill_uniform(go, no, 1.0f, rng);
        zb_fill_uniform(gi0, nx, 1.0f, rng);
        zb_fill_uniform(gw0, nw, 1.0f, rng);
        zb_fill_uniform(gb0, OC, 1.0f, rng);
        float *gi = zb_falloc(nx), *gw = zb_falloc(nw), *gb = zb_falloc(OC);
        memcpy(gi, gi0, nx * 4); memcpy(gw, gw0, nw * 4); memcpy(gb, gb0, OC * 4);
        zb_matmul_backward(gi, gw, gb, go, x, W, N, C, OC);
        float *mi = fabs_copy(gi0, nx), *mw = fabs_copy(gw0, nw), *mb = fabs_copy(gb0, OC), *ago = fabs_copy(go, no);
        zb_matmul_backward(mi, mw, mb, ago, ax, aw, N, C, OC);
        float *d_go = zb_dev_f(go, no), *d_gi = zb_dev_f(gi0, nx), *d_gw = zb_dev_f(gw0, nw), *d_gb = zb_dev_f(gb0, OC);
        zb_cuda_matmul_backward(d_gi, d_gw, d_gb, d_go, dx, dW, N, C, OC);
        float *hi = zb_falloc(nx), *hw = zb_falloc(nw), *hb = zb_falloc(OC);
        zb_host_f(hi, d_gi, nx); zb_host_f(hw, d_gw, nw); zb_host_f(hb, d_gb, OC);
        double *m1 = zb_dalloc(nx), *m2 = zb_dalloc(nw), *m3 = zb_dalloc(OC);
        for (size_t i = 0; i < nx; i++) m1[i] = mi[i];
        for (size_t i = 0; i < nw; i++) m2[i] = mw[i];
        for (int i = 0; i < OC; i++) m3[i] = mb[i];
        snprintf(what, sizeof what, "matmul_backward dinp %s", mode_name());
        zb_check_mag(what, hi, gi, m1, 2 * (OC + 2) * U + op_rel(), 1e-30, nx);
        snprintf(what, sizeof what, "matmul_backward dW %s", mode_name());
        zb_check_mag(what, hw, gw, m2, 2 * (N + 2) * U + op_rel(), 1e-30, nw);
        snprintf(what, sizeof what, "matmul_backward dbias %s", mode_name());
        zb_check_mag(what, hb, gb, m3, 2 * (N + 2) * U, 1e-30, OC);   /* a plain column sum */
        free(go); free(gi0); free(gw0); free(gb0); free(gi); free(gw); free(gb);
        free(mi); free(mw); free(mb); free(ago); free(hi); free(hw); free(hb); free(m1); free(m2); free(m3);
        zb_cuda_free(d_go); zb_cuda_free(d_gi); zb_cuda_free(d_gw); zb_cuda_free(d_gb);
    }
    free(x); free(W); free(b); free(out); free(got); free(ax); free(aw); free(ab); free(mag); free(md);
    zb_cuda_free(dx); zb_cuda_free(dW); zb_cuda_free(db); zb_cuda_free(dout);
}

/* bf16 weights (generation): the CPU widens them exactly and keeps x in float32; the GPU also
 * rounds x to bf16 (2^-9 per product) */
static void test_linear_bf16(zb_rng *rng, int N, int C, int OC) {
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    float *x = zb_falloc(nx), *W = zb_falloc(nw), *Wr = zb_falloc(nw), *out = zb_falloc(no), *got = zb_falloc(no);
    uint16_t *W16 = malloc(nw * 2);
    zb_fill_uniform(x, nx, 1.0f, rng);
    zb_fill_uniform(W, nw, 0.5f, rng);
    zb_f32_to_bf16_n(W, W16, nw);
    zb_bf16_to_f32_n(W16, Wr, nw);
    zb_linear_forward(out, x, zb_wt_of_bf16(W16), N, C, OC);
    float *ax = fabs_copy(x, nx), *aw = fabs_copy(Wr, nw), *mag = zb_falloc(no);
    zb_matmul_forward(mag, ax, aw, NULL, N, C, OC);
    double *md = zb_dalloc(no);
    for (size_t i = 0; i < no; i++) md[i] = mag[i];
    float *dx = zb_dev_f(x, nx), *dout = zb_dev_f(NULL, no);
    uint16_t *dW16 = zb_dev_bytes(W16, nw * 2);
    zb_cuda_linear_forward(dout, dx, zb_wt_of_bf16(dW16), N, C, OC);
    zb_host_f(got, dout, no);
    char what[96];
    int lt = zb_cuda_gemm_tune_choice(N, C, OC, NULL, NULL);
    snprintf(what, sizeof what, "linear_forward bf16 weights N=%d C=%d OC=%d (%s)", N, C, OC,
             zb_cuda_gemv_ok(dx, dW16, N, C) ? "gemv" : lt == 1 ? "cuBLASLt, timed per shape" : "cublasGemmEx");
    zb_check_mag(what, got, out, md, ZB_U16 + 2 * (C + 2) * U, 1e-30, no);
    /* the conversions: bf16 -> f32 exact, f32 -> bf16 round to nearest even like the CPU */
    float *back = zb_falloc(nw), *dback = zb_dev_f(NULL, nw);
    zb_cuda_bf16_to_f32(dback, dW16, nw);
    zb_host_f(back, dback, nw);
    zb_check_mag("bf16_to_f32 (exact)", back, Wr, NULL, 0, 0, nw);
    float *dWf = zb_dev_f(W, nw);
    uint16_t *r16 = malloc(nw * 2);
    zb_cuda_f32_to_bf16(dW16, dWf, nw);
    zb_cuda_download(r16, dW16, nw * 2);
    size_t bad = 0;
    for (size_t i = 0; i < nw; i++) bad += r16[i] != W16[i];
    zb_check(bad == 0, "f32_to_bf16: %zu of %zu differ from zb_f32_to_bf16_n", bad, nw);
    free(x); free(W); free(Wr); free(out); free(got); free(W16); free(ax); free(aw); free(mag); free(md);
    free(back); free(r16);
    zb_cuda_free(dx); zb_cuda_free(dout); zb_cuda_free(dW16); zb_cuda_free(dback); zb_cuda_free(dWf);
}

/* the decode fusions (backend.h linear_forward3, swiglu_linear_forward) against the CPU's
 * separate products: q | k | v in one launch, and silu(x Wg^T) * (x Wu^T); h's bound carries
 * the products' bounds through silu (|silu'| <= 1.1) and the product with u */
static void test_gemv_fused(zb_rng *rng, int N, int C, int OC0, int OC1, int F) {
    int OC[3] = {OC0, OC1, OC1};
    size_t nx = (size_t)N * C;
    float *x = zb_falloc(nx), *dx = NULL;
    zb_fill_uniform(x, nx, 1.0f, rng);
    dx = zb_dev_f(x, nx);
    float *ax = fabs_copy(x, nx);
    double rel = ZB_U16 + 2 * (C + 2) * U;
    char what[128];
    /* three matrices, one launch */
    uint16_t *W16[3], *dW16[3];
    float *ref[3], *mag[3], *dout[3];
    for (int s = 0; s < 3; s++) {
        size_t nw = (size_t)OC[s] * C;
        float *W = zb_falloc(nw), *Wr = zb_falloc(nw);
        W16[s] = malloc(nw * 2);
        zb_fill_uniform(W, nw, 0.5f, rng);
        zb_f32_to_bf16_n(W, W16[s], nw);
        zb_bf16_to_f32_n(W16[s], Wr, nw);
        ref[s] = zb_falloc((size_t)N * OC[s]);
        mag[s] = zb_falloc((size_t)N * OC[s]);
        zb_linear_forward(ref[s], x, zb_wt_of_bf16(W16[s]), N, C, OC[s]);
        float *aw = fabs_copy(Wr, nw);
        zb_matmul_forward(mag[s], ax, aw, NULL, N, C, OC[s]);
        dW16[s] = zb_dev_bytes(W16[s], nw * 2);
        dout[s] = zb_dev_f(NULL, (size_t)N * OC[s]);
        free(W); free(Wr); free(aw);
    }
    zb_cuda_linear_forward3(dout[0], dout[1], dout[2], dx, zb_wt_of_bf16(dW16[0]), zb_wt_of_bf16(dW16[1]),
                            zb_wt_of_bf16(dW16[2]), N, C, OC[0], OC[1], OC[2]);
    for (int s = 0; s < 3; s++) {
        size_t no = (size_t)N * OC[s];
        float *got = zb_falloc(no);
        double *md = zb_dalloc(no);
        for (size_t i = 0; i < no; i++) md[i] = mag[s][i];
        zb_host_f(got, dout[s], no);
        snprintf(what, sizeof what, "linear_forward3 matrix %d N=%d C=%d OC=%d (%s)", s, N, C, OC[s],
                 zb_cuda_gemv_ok(dx, dW16[s], N, C) ? "one gemv" : "separate");
        zb_check_mag(what, got, ref[s], md, rel, 1e-30, no);
        free(got); free(md);
    }
    for (int s = 0; s < 3; s++) {
        free(W16[s]); free(ref[s]); free(mag[s]);
        zb_cuda_free(dW16[s]); zb_cuda_free(dout[s]);
    }
    /* gate and up, SwiGLU in the same launch */
    size_t nw = (size_t)F * C, no = (size_t)N * F;
    float *Wg = zb_falloc(nw), *Wu = zb_falloc(nw), *g = zb_falloc(no), *u = zb_falloc(no), *h = zb_falloc(no);
    float *mg = zb_falloc(no), *mu = zb_falloc(no), *got = zb_falloc(no);
    uint16_t *g16 = malloc(nw * 2), *u16 = malloc(nw * 2);
    zb_fill_uniform(Wg, nw, 0.5f, rng);
    zb_fill_uniform(Wu, nw, 0.5f, rng);
    zb_f32_to_bf16_n(Wg, g16, nw); zb_bf16_to_f32_n(g16, Wg, nw);
    zb_f32_to_bf16_n(Wu, u16, nw); zb_bf16_to_f32_n(u16, Wu, nw);
    zb_linear_forward(g, x, zb_wt_of_bf16(g16), N, C, F);
    zb_linear_forward(u, x, zb_wt_of_bf16(u16), N, C, F);
    zb_swiglu_forward(h, g, u, no);
    float *awg = fabs_copy(Wg, nw), *awu = fabs_copy(Wu, nw);
    zb_matmul_forward(mg, ax, awg, NULL, N, C, F);
    zb_matmul_forward(mu, ax, awu, NULL, N, C, F);
    double *bd = zb_dalloc(no);
    for (size_t i = 0; i < no; i++) {
        double eg = rel * mg[i], eu = rel * mu[i], sg = g[i] / (1.0 + exp(-(double)g[i]));
        bd[i] = 1.1 * eg * (fabs(u[i]) + eu) + fabs(sg) * eu + 8 * U * fabs(h[i]) + 1e-30;
    }
    uint16_t *dg16 = zb_dev_bytes(g16, nw * 2), *du16 = zb_dev_bytes(u16, nw * 2);
    float *dh = zb_dev_f(NULL, no), *du = zb_dev_f(NULL, no);
    zb_cuda_swiglu_linear_forward(dh, du, dx, zb_wt_of_bf16(dg16), zb_wt_of_bf16(du16), N, C, F);
    zb_host_f(got, dh, no);
    snprintf(what, sizeof what, "swiglu_linear_forward N=%d C=%d F=%d (%s)", N, C, F,
             zb_cuda_gemv_ok(dx, dg16, N, C) ? "one gemv" : "separate");
    zb_check_bounds(what, got, h, bd, no);
    free(x); free(ax); free(Wg); free(Wu); free(g); free(u); free(h); free(mg); free(mu); free(got); free(g16);
    free(u16); free(awg); free(awu); free(bd);
    zb_cuda_free(dx); zb_cuda_free(dg16); zb_cuda_free(du16); zb_cuda_free(dh); zb_cuda_free(du);
}

/* The decode GEMVs and norms launched with programmatic dependent launch (cuda_pdl.cuh: each may start
 * while the kernel before it ends, prefetches weights, then waits for its input) against the same
 * chain launched plainly (ZB_DEC_PDL=0): a decode layer's dependent chain (norm, q|k|v, o, gate|up +
 * SwiGLU, down, residual + norm) repeated over 12 layers. The same kernels with the same inputs, so
 * the results must be equal bit for bit: a difference would be a read before the wait (a race). */
static void test_pdl_chain(zb_rng *rng, int N) {
    int d = 512, kd = 128, F = 1024, L = 12;
    zb_cuda_gemv_norm_set(1);   /* the recorded chain's o / down GEMVs with the norm (off by default since S7R2) */
    char what[160];
    size_t nw = (size_t)(d + 2 * kd) * d + (size_t)d * d + 2 * (size_t)F * d + (size_t)d * F;
    float *hw = zb_falloc(nw), *hx = zb_falloc((size_t)N * d), *nwt = zb_falloc(d);
    uint16_t *w16 = malloc(nw * 2);
    zb_fill_uniform(hw, nw, 0.05f, rng);
    zb_fill_uniform(hx, (size_t)N * d, 1.0f, rng);
    for (int i = 0; i < d; i++) nwt[i] = 1.0f + 0.1f * (2.0f * zb_rng_uniform(rng) - 1.0f);
    zb_f32_to_bf16_n(hw, w16, nw);
    uint16_t *dw = zb_dev_bytes(w16, nw * 2);
    const uint16_t *wq = dw, *wk = wq + (size_t)d * d, *wv = wk + (size_t)kd * d, *wo = wv + (size_t)kd * d;
    const uint16_t *wg = wo + (size_t)d * d, *wu = wg + (size_t)F * d, *wd = wu + (size_t)F * d;
    float *dnw = zb_dev_f(nwt, d), *got[4];
    /* 3: PDL, the chain recorded as a graph (a decode step's recording: the GEMVs' first weight
     * loads and the norms' weights before the PDL wait, zb_cuda_gemv_preload; o and down with the
     * residual step and the norm by their last block, zb_cuda_linear_add_rmsnorm), launched, then
     * replayed from the same inputs */
    for (int pdl = 3; pdl >= 0; pdl--) {   /* 2: PDL with 8 loads in flight per lane at one row */
        zb_cuda_dec_pdl_set(pdl != 0);
        zb_cuda_gemv_set_unroll(pdl == 2 ? 8 : 0);
        float *x = zb_dev_f(hx, (size_t)N * d), *ln = zb_dev_f(NULL, (size_t)N * d), *q = zb_dev_f(NULL, (size_t)N * d);
        float *k = zb_dev_f(NULL, (size_t)N * kd), *v = zb_dev_f(NULL, (size_t)N * kd), *o = zb_dev_f(NULL, (size_t)N * d);
        float *h = zb_dev_f(NULL, (size_t)N * F), *u = zb_dev_f(NULL, (size_t)N * F);
        void *graph = NULL;
        int rec = 0;
        if (pdl == 3) {
            zb_cuda_gemv_set_preload(1);   /* ZB_GEMV_PRELOAD=1 */
            rec = zb_cuda_graph_begin(&graph, 1);
            zb_check(rec, "decode chain N=%d: recording begins", N);
            zb_check(!rec || zb_cuda_gemv_preload(), "decode chain N=%d: weights loaded before the PDL wait while "
                     "recording", N);
        }
        zb_cuda_rmsnorm_forward(ln, NULL, x, dnw, N, d, 1e-5f);
        for (int l = 0; l < L; l++) {
            zb_cuda_linear_forward3(q, k, v, ln, zb_wt_of_bf16(wq), zb_wt_of_bf16(wk), zb_wt_of_bf16(wv), N, d, d, kd, kd);
            if (rec) {   /* the projections with the residual step and the norm (zb_cuda_linear_add_rmsnorm) */
                zb_cuda_linear_add_rmsnorm(o, q, zb_wt_of_bf16(wo), N, d, d, x, ln, dnw, 1e-5f);
                zb_cuda_swiglu_linear_forward(h, u, ln, zb_wt_of_bf16(wg), zb_wt_of_bf16(wu), N, d, F);
                zb_cuda_linear_add_rmsnorm(o, h, zb_wt_of_bf16(wd), N, F, d, x, ln, dnw, 1e-5f);
                continue;
            }
            zb_cuda_linear_forward(o, q, zb_wt_of_bf16(wo), N, d, d);
            zb_cuda_add_rmsnorm(x, o, ln, dnw, N, d, 1e-5f);
            zb_cuda_swiglu_linear_forward(h, u, ln, zb_wt_of_bf16(wg), zb_wt_of_bf16(wu), N, d, F);
            zb_cuda_linear_forward(o, h, zb_wt_of_bf16(wd), N, F, d);
            zb_cuda_add_rmsnorm(x, o, ln, dnw, N, d, 1e-5f);
        }
        if (rec) {
            zb_check(zb_cuda_graph_end(graph, 1), "decode chain N=%d: recorded and launched", N);
            zb_check(!zb_cuda_gemv_preload(), "decode chain N=%d: no early weight loads after the recording", N);
        }
        got[pdl] = zb_falloc((size_t)N * d);
        zb_host_f(got[pdl], ln, (size_t)N * d);
        if (rec) {   /* replayed from the same inputs: the same bits */
            float *again = zb_falloc((size_t)N * d);
            zb_cuda_upload(x, hx, sizeof(float) * N * d);
            zb_check(zb_cuda_graph_replay(graph, 1), "decode chain N=%d: replayed", N);
            zb_host_f(again, ln, (size_t)N * d);
            snprintf(what, sizeof what, "decode chain of %d layers N=%d: recorded, its replay vs its first launch (bit "
                     "for bit)", L, N);
            zb_check_mag(what, again, got[pdl], NULL, 0, 0, (size_t)N * d);
            free(again);
        }
        zb_cuda_graph_free(graph);
        zb_cuda_free(x); zb_cuda_free(ln); zb_cuda_free(q); zb_cuda_free(k); zb_cuda_free(v); zb_cuda_free(o);
        zb_cuda_free(h); zb_cuda_free(u);
    }
    zb_cuda_dec_pdl_set(-1);
    zb_cuda_gemv_set_unroll(0);
    zb_cuda_gemv_set_preload(-1);
    snprintf(what, sizeof what, "decode chain of %d layers N=%d: PDL launches vs plain (bit for bit)", L, N);
    zb_check_mag(what, got[1], got[0], NULL, 0, 0, (size_t)N * d);
    snprintf(what, sizeof what, "decode chain of %d layers N=%d: PDL, 8 loads in flight vs plain (bit for bit: the "
             "same order of the sums)", L, N);
    zb_check_mag(what, got[2], got[0], NULL, 0, 0, (size_t)N * d);
    snprintf(what, sizeof what, "decode chain of %d layers N=%d: recorded (weights loaded before the PDL wait, o / "
             "down + residual + norm in one launch) vs plain (bit for bit)", L, N);
    zb_check_mag(what, got[3], got[0], NULL, 0, 0, (size_t)N * d);
    free(hw); free(hx); free(nwt); free(w16); free(got[0]); free(got[1]); free(got[2]); free(got[3]);
    zb_cuda_free(dw); zb_cuda_free(dnw);
    zb_cuda_gemv_norm_set(-1);
}

/* The GEMV with the residual step and the next norm made by its last block
 * (zb_cuda_gemv_bf16_add_rmsnorm) against the GEMV then add_rmsnorm: the same kernels' arithmetic,
 * so out, x and ln the same bits; called `reps` times in a row (the block ticket reset by each
 * call), with and without PDL, and as a recorded graph replayed twice. */
static void test_gemv_norm(zb_rng *rng, int N, int C, int OC) {
    zb_cuda_gemv_norm_set(1);   /* the fused path (off by default since S7R2) */
    float *hw = zb_falloc((size_t)OC * C), *hx = zb_falloc((size_t)N * C), *hr = zb_falloc((size_t)N * OC);
    float *nwt = zb_falloc(OC);
    uint16_t *w16 = malloc((size_t)OC * C * 2);
    zb_fill_uniform(hw, (size_t)OC * C, 0.05f, rng);
    zb_fill_uniform(hx, (size_t)N * C, 1.0f, rng);
    zb_fill_uniform(hr, (size_t)N * OC, 1.0f, rng);
    for (int i = 0; i < OC; i++) nwt[i] = 1.0f + 0.1f * (2.0f * zb_rng_uniform(rng) - 1.0f);
    zb_f32_to_bf16_n(hw, w16, (size_t)OC * C);
    uint16_t *dW = zb_dev_bytes(w16, (size_t)OC * C * 2);
    float *dx = zb_dev_f(hx, (size_t)N * C), *dnw = zb_dev_f(nwt, OC);
    size_t no = (size_t)N * OC;
    float *want[3], *got[3];
    for (int k = 0; k < 3; k++) { want[k] = zb_falloc(no); got[k] = zb_falloc(no); }
    const int reps = 3;
    /* the reference: reps rounds of the GEMV then add_rmsnorm on the residual */
    float *r = zb_dev_f(hr, no), *o = zb_dev_f(NULL, no), *ln = zb_dev_f(NULL, no);
    for (int i = 0; i < reps; i++) {
        zb_cuda_gemv_bf16(o, dx, dW, N, C, OC);
        zb_cuda_add_rmsnorm(r, o, ln, dnw, N, OC, 1e-5f);
    }
    zb_host_f(want[0], o, no); zb_host_f(want[1], r, no); zb_host_f(want[2], ln, no);
    char what[160];
    for (int v = 0; v < 3; v++) {   /* 0: PDL, 1: no PDL, 2: recorded with PDL, replayed twice */
        zb_cuda_dec_pdl_set(v != 1);
        zb_cuda_upload(r, hr, no * sizeof(float));
        void *graph = NULL;
        int rec = v == 2 && zb_cuda_graph_begin(&graph, 7);
        int ok = 1;
        for (int i = 0; i < (rec ? 1 : reps); i++)
            ok &= zb_cuda_gemv_bf16_add_rmsnorm(o, dx, dW, N, C, OC, r, ln, dnw, 1e-5f);
        if (rec) {
            ok &= zb_cuda_graph_end(graph, 1);
            for (int i = 1; i < reps; i++) ok &= zb_cuda_graph_replay(graph, 7);
        }
        zb_cuda_graph_free(graph);
        zb_host_f(got[0], o, no); zb_host_f(got[1], r, no); zb_host_f(got[2], ln, no);
        const char *vn = v == 0 ? "PDL" : v == 1 ? "no PDL" : "recorded, replayed";
        zb_check(ok, "gemv + add_rmsnorm N=%d C=%d OC=%d (%s): one launch each%s", N, C, OC, vn,
                 v == 2 && !rec ? " (the graph not recorded)" : "");
        snprintf(what, sizeof what, "gemv + add_rmsnorm N=%d C=%d OC=%d (%s) x%d: out vs gemv (bit for bit)", N, C, OC,
                 vn, reps);
        zb_check_mag(what, got[0], want[0], NULL, 0, 0, no);
        snprintf(what, sizeof what, "gemv + add_rmsnorm N=%d C=%d OC=%d (%s) x%d: residual vs add_rmsnorm (bit for bit)",
                 N, C, OC, vn, reps);
        zb_check_mag(what, got[1], want[1], NULL, 0, 0, no);
        snprintf(what, sizeof what, "gemv + add_rmsnorm N=%d C=%d OC=%d (%s) x%d: norm vs add_rmsnorm (bit for bit)", N,
                 C, OC, vn, reps);
        zb_check_mag(what, got[2], want[2], NULL, 0, 0, no);
    }
    zb_cuda_dec_pdl_set(-1);
    zb_cuda_gemv_norm_set(-1);
    for (int k = 0; k < 3; k++) { free(want[k]); free(got[k]); }
    free(hw); free(hx); free(hr); free(nwt); free(w16);
    zb_cuda_free(dW); zb_cuda_free(dx); zb_cuda_free(dnw); zb_cuda_free(r); zb_cuda_free(o); zb_cuda_free(ln);
}

/* generation's residual step fused with the next norm: x += a (exact), out = RMSNorm(x) */
static void test_add_rmsnorm(zb_rng *rng, int N, int C) {
    size_t n = (size_t)N * C;
    float *x = zb_falloc(n), *a = zb_falloc(n), *w = zb_falloc(C), *out = zb_falloc(n), *got = zb_falloc(n);
    float *gx = zb_falloc(n);
    zb_fill_uniform(x, n, 2.0f, rng);
    zb_fill_uniform(a, n, 1.0f, rng);
    zb_fill_uniform(w, C, 1.5f, rng);
    float *dx = zb_dev_f(x, n), *da = zb_dev_f(a, n), *dw = zb_dev_f(w, C), *dout = zb_dev_f(NULL, n);
    for (size_t i = 0; i < n; i++) x[i] += a[i];
    zb_rmsnorm_forward(out, NULL, x, w, N, C, 1e-5f);
    zb_cuda_add_rmsnorm(dx, da, dout, dw, N, C, 1e-5f);
    zb_host_f(gx, dx, n);
    zb_host_f(got, dout, n);
    char what[96];
    snprintf(what, sizeof what, "add_rmsnorm residual N=%d C=%d (exact)", N, C);
    zb_check_mag(what, gx, x, NULL, 0, 0, n);
    snprintf(what, sizeof what, "add_rmsnorm norm N=%d C=%d", N, C);
    zb_check_mag(what, got, out, NULL, 8 * U, 1e-38, n);   /* as rmsnorm_forward */
    free(x); free(a); free(w); free(out); free(got); free(gx);
    zb_cuda_free(dx); zb_cuda_free(da); zb_cuda_free(dw); zb_cuda_free(dout);
}

/* ---- RMSNorm ---------------------------------------------------------------------------- */
static void test_rmsnorm(zb_rng *rng, int N, int C) {
    size_t n = (size_t)N * C;
    float *x = zb_falloc(n), *w = zb_falloc(C), *out = zb_falloc(n), *rstd = zb_falloc(N);
    float *got = zb_falloc(n), *grstd = zb_falloc(N);
    zb_fill_uniform(x, n, 2.0f, rng);
    zb_fill_uniform(w, C, 1.5f, rng);
    zb_rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    float *dx = zb_dev_f(x, n), *dw = zb_dev_f(w, C), *dout = zb_dev_f(NULL, n), *dr = zb_dev_f(NULL, N);
    zb_cuda_rmsnorm_forward(dout, dr, dx, dw, N, C, 1e-5f);
    zb_host_f(got, dout, n);
    zb_host_f(grstd, dr, N);
    char what[96];
    /* r from a double sum (one rounding to float each side); y = w (x r): two more roundings */
    snprintf(what, sizeof what, "rmsnorm_forward N=%d C=%d", N, C);
    zb_check_mag(what, got, out, NULL, 8 * U, 1e-38, n);
    zb_check_mag("rmsnorm_forward rstd", grstd, rstd, NULL, 4 * U, 0, N);
    /* backward, accumulating into nonzero dx, dw */
    float *dy = zb_falloc(n), *gx = zb_falloc(n), *gw = zb_falloc(C), *gx0 = zb_falloc(n), *gw0 = zb_falloc(C);
    zb_fill_uniform(dy, n, 1.0f, rng);
    zb_fill_uniform(gx0, n, 1.0f, rng);
    zb_fill_uniform(gw0, C, 1.0f, rng);
    memcpy(gx, gx0, n * 4);
    memcpy(gw, gw0, C * 4);
    zb_rmsnorm_backward(gx, gw, dy, x, w, rstd, N, C);
    double *mx = zb_dalloc(n), *mw = zb_dalloc(C);
    for (int r = 0; r < N; r++) {
        double dot = 0;
        for (int i = 0; i < C; i++) dot += (double)w[i] * dy[(size_t)r * C + i] * x[(size_t)r * C + i];
        double k = fabs(dot) * rstd[r] * rstd[r] * rstd[r] / C;
        for (int i = 0; i < C; i++) {
            size_t j = (size_t)r * C + i;
            mx[j] = fabs(gx0[j]) + fabs(rstd[r] * w[i] * dy[j]) + k * fabs(x[j]);
            mw[i] += fabs((double)dy[j] * x[j] * rstd[r]);
        }
    }
    for (int i = 0; i < C; i++) mw[i] += fabs(gw0[i]);
    float *d_dy = zb_dev_f(dy, n), *d_gx = zb_dev_f(gx0, n), *d_gw = zb_dev_f(gw0, C);
    /* the GPU uses its own rstd (equal to the CPU's within 4u, included in the bound below) */
    zb_cuda_rmsnorm_backward(d_gx, d_gw, d_dy, dx, dw, dr, N, C);
    float *hx = zb_falloc(n), *hw = zb_falloc(C);
    zb_host_f(hx, d_gx, n);
    zb_host_f(hw, d_gw, C);
    zb_check_mag("rmsnorm_backward dx", hx, gx, mx, 20 * U, 1e-38, n);
    zb_check_mag("rmsnorm_backward dw", hw, gw, mw, 2 * (N + 8) * U, 1e-38, C);
    free(x); free(w); free(out); free(rstd); free(got); free(grstd); free(dy); free(gx); free(gw); free(gx0);
    free(gw0); free(mx); free(mw); free(hx); free(hw);
    zb_cuda_free(dx); zb_cuda_free(dw); zb_cuda_free(dout); zb_cuda_free(dr); zb_cuda_free(d_dy);
    zb_cuda_free(d_gx); zb_cuda_free(d_gw);
}

/* ---- RoPE ------------------------------------------------------------------------------- */
/* scaling 0: default, 1: llama3, 2: YaRN (the release's MLA rope: cos / sin x mscale 1.3466) */
static void test_rope(zb_rng *rng, int interleave, int inverse, int scaling) {
    zb_rope_cfg cfg = {.type = scaling == 2 ? ZB_ROPE_YARN : scaling ? ZB_ROPE_LLAMA3 : ZB_ROPE_DEFAULT,
                       .theta = 500000.0f, .factor = 32.0f, .low_freq_factor = 1.0f, .high_freq_factor = 4.0f,
                       .original_max_pos = 8192, .beta_fast = 32.0f, .beta_slow = 1.0f, .mscale = 1.0f};
    zb_rope r;
    int D = 24, H = 3, head_stride = 40, offset = 8, row_stride = H * head_stride + 5, B = 2, T = 19, pos0 = 1000;
    zb_rope_init(&r, D, &cfg);
    size_t n = (size_t)B * T * row_stride;
    float *x = zb_falloc(n), *ref = zb_falloc(n), *got = zb_falloc(n);
    zb_fill_uniform(x, n, 1.0f, rng);
    memcpy(ref, x, n * 4);
    zb_rope_apply_seq(&r, ref, B, T, row_stride, H, head_stride, offset, pos0, interleave, inverse);
    float *dx = zb_dev_f(x, n);
    zb_cuda_rope_apply_seq(&r, dx, B, T, row_stride, H, head_stride, offset, pos0, interleave, inverse);
    zb_host_f(got, dx, n);
    /* each output mixes two inputs with cos / sin: per side 2 roundings (or an FMA) of
     * x1 c - x2 s and cos / sin within 1 ulp (glibc) or 2 ulp (CUDA), an ulp <= 2u of the value:
     * 4u + 6u per |x1| + |x2| <= 2 max|x| of the head, so 20u max|x| (untouched values equal) */
    double *mag = zb_dalloc(n);
    for (int row = 0; row < B * T; row++)
        for (int h = 0; h < H; h++) {
            size_t o = (size_t)row * row_stride + (size_t)h * head_stride + offset;
            double mx = 0;
            for (int j = 0; j < D; j++) mx = fmax(mx, fabs(x[o + j]));
            for (int j = 0; j < D; j++) mag[o + j] = mx * r.mscale;
        }
    char what[96];
    snprintf(what, sizeof what, "rope_apply_seq interleave=%d inverse=%d %s", interleave, inverse,
             scaling == 2 ? "yarn" : scaling ? "llama3" : "default");
    zb_check_mag(what, got, ref, mag, 20 * U, 0, n);
    /* rows at per-sequence positions (generation): 3 sequences of 4 rows */
    int nseq = 3, per = 4, pos[3] = {0, 5000, 31};
    size_t nr = (size_t)nseq * per * row_stride;
    memcpy(ref, x, nr * 4);
    for (int i = 0; i < nseq * per; i++)
        zb_rope_apply(&r, ref + (size_t)i * row_stride, H, head_stride, offset, pos[i / per] + i % per, interleave,
                      inverse);
    zb_cuda_upload(dx, x, nr * 4);
    int *dpos = zb_dev_i(pos, nseq);
    zb_cuda_rope_apply_rows(&r, dx, nseq * per, per, dpos, row_stride, H, head_stride, offset, interleave, inverse);
    zb_host_f(got, dx, nr);
    snprintf(what, sizeof what, "rope_apply_rows interleave=%d inverse=%d", interleave, inverse);
    zb_check_mag(what, got, ref, mag, 20 * U, 0, nr);
    free(x); free(ref); free(got); free(mag);
    zb_cuda_free(dx); zb_cuda_free(dpos);
}

/* a device cache of n values (bf16 or float32) as a new host float32 array */
static float *host_cache(const void *dc, int bf, size_t n) {
    float *h = zb_falloc(n);
    if (bf) {
        uint16_t *t = malloc(n * 2);
        zb_cuda_download(t, dc, n * 2);
        zb_bf16_to_f32_n(t, h, n);
        free(t);
    } else zb_host_f(h, dc, n);
    return h;
}

/* The decode step's fused q / k / v piece (zb_cuda_decode_qkv_prep: positions, RoPE of the query
 * and key heads, both cache stores in one kernel) against the separate kernels it replaces
 * (gather_int + rope_apply_rows + cache_store x 2), on caches of 3 slots where 2 sequences write.
 * The formulas are the same; nvcc may contract x1 c - x2 s into an FMA differently in the two
 * kernels, one rounding of the rotated values (<= 2u (|x1| + |x2|) mscale <= 4u max|x| mscale of
 * the head), copies exact; a bf16 cache may then round the other way: + 2^-8 |value|. */
static void test_decode_qkv_prep(zb_rng *rng, int bf, int H, int Hkv, int hd, int rot) {
    zb_rope_cfg cfg = {.type = ZB_ROPE_LLAMA3, .theta = 500000.0f, .factor = 8.0f, .low_freq_factor = 1.0f,
                       .high_freq_factor = 4.0f, .original_max_pos = 8192, .mscale = 1.0f};
    zb_rope r;
    zb_rope_init(&r, rot, &cfg);
    enum { NB = 2, SLOTS = 3, MAXT = 40 };
    int seqs[NB] = {2, 0}, pos[SLOTS] = {7, 0, 39};   /* pos by slot; slot 1 unused */
    int qd = H * hd, kd = Hkv * hd;
    size_t nq = (size_t)NB * qd, nk = (size_t)NB * kd, nc = (size_t)SLOTS * Hkv * MAXT * hd;
    long long ss = (long long)Hkv * MAXT * hd, gs = (long long)MAXT * hd;
    float *q = zb_falloc(nq), *k = zb_falloc(nk), *v = zb_falloc(nk), *c0 = zb_falloc(nc);
    zb_fill_uniform(q, nq, 2.0f, rng);
    zb_fill_uniform(k, nk, 2.0f, rng);
    zb_fill_uniform(v, nk, 2.0f, rng);
    zb_fill_uniform(c0, nc, 1.0f, rng);
    size_t cb = nc * (bf ? 2 : 4);
    void *hc0 = c0;
    uint16_t *c16 = NULL;
    if (bf) { c16 = malloc(nc * 2); zb_f32_to_bf16_n(c0, c16, nc); hc0 = c16; }
    float *got[2][3];   /* [path][q, k cache, v cache] */
    int gpos[2][NB];
    int *dseq = zb_dev_i(seqs, NB), *dpos = zb_dev_i(pos, SLOTS), *dposi = zb_dev_i(pos, NB);
    for (int path = 0; path < 2; path++) {
        float *dq = zb_dev_f(q, nq), *dk = zb_dev_f(k, nk), *dv = zb_dev_f(v, nk);
        void *dkc = zb_dev_bytes(hc0, cb), *dvc = zb_dev_bytes(hc0, cb);
        if (path == 0) {
            zb_cuda_dec_fuse_set(1);
            zb_check(zb_cuda_decode_qkv_prep_ok(&r, hd), "decode_qkv_prep takes rotary dim %d of head %d", rot, hd);
            zb_cuda_decode_qkv_prep(&r, dq, dk, dv, dkc, dvc, bf, dseq, dpos, dposi, NB, H, Hkv, hd, ss, gs);
        } else {
            zb_cuda_gather_int(dposi, dpos, dseq, NB);
            zb_cuda_rope_apply_rows(&r, dq, NB, 1, dposi, qd, H, hd, 0, 0, 0);
            zb_cuda_rope_apply_rows(&r, dk, NB, 1, dposi, kd, Hkv, hd, 0, 0, 0);
            zb_cuda_cache_store(dkc, bf, dk, kd, dseq, dposi, NB, 1, Hkv, hd, ss, gs, hd);
            zb_cuda_cache_store(dvc, bf, dv, kd, dseq, dposi, NB, 1, Hkv, hd, ss, gs, hd);
        }
        got[path][0] = zb_falloc(nq);
        zb_host_f(got[path][0], dq, nq);
        for (int w = 1; w < 3; w++) got[path][w] = host_cache(w == 1 ? dkc : dvc, bf, nc);
        zb_cuda_download(gpos[path], dposi, sizeof gpos[path]);
        zb_cuda_free(dq); zb_cuda_free(dk); zb_cuda_free(dv); zb_cuda_free(dkc); zb_cuda_free(dvc);
    }
    zb_cuda_dec_fuse_set(-1);
    /* the bounds: per head the largest input (q rows, and the k rows at their cache places) */
    double *mq = zb_dalloc(nq), *mc = zb_dalloc(nc);
    for (size_t e = 0; e < nq; e++) mq[e] = 0;
    for (size_t e = 0; e < nc; e++) mc[e] = bf ? 0x1p-8 / (4 * U) * fabs(got[1][1][e]) : 0;
    for (int i = 0; i < NB; i++)
        for (int h = 0; h < H + Hkv; h++) {
            const float *src = h < H ? q + (size_t)i * qd + (size_t)h * hd : k + (size_t)i * kd + (size_t)(h - H) * hd;
            double mx = 0;
            for (int j = 0; j < hd; j++) mx = fmax(mx, fabs(src[j]));
            for (int j = 0; j < rot; j++) {
                if (h < H) mq[(size_t)i * qd + (size_t)h * hd + j] = mx * r.mscale;
                else {
                    size_t o = (size_t)seqs[i] * ss + (size_t)(h - H) * gs + (size_t)pos[seqs[i]] * hd + j;
                    mc[o] += mx * r.mscale;
                }
            }
        }
    double *mv = zb_dalloc(nc);
    for (size_t e = 0; e < nc; e++) mv[e] = bf ? 0x1p-8 / (4 * U) * fabs(got[1][2][e]) : 0;
    char what[128];
    snprintf(what, sizeof what, "decode_qkv_prep H=%d/%d hd=%d rot=%d %s cache: q vs separate kernels", H, Hkv, hd,
             rot, bf ? "bf16" : "f32");
    zb_check_mag(what, got[0][0], got[1][0], mq, 4 * U, 0, nq);
    snprintf(what, sizeof what, "decode_qkv_prep H=%d/%d hd=%d %s cache: key cache vs separate kernels", H, Hkv, hd,
             bf ? "bf16" : "f32");
    zb_check_mag(what, got[0][1], got[1][1], mc, 4 * U, 0, nc);
    snprintf(what, sizeof what, "decode_qkv_prep H=%d/%d hd=%d %s cache: value cache vs separate kernels", H, Hkv, hd,
             bf ? "bf16" : "f32");
    zb_check_mag(what, got[0][2], got[1][2], mv, 4 * U, 0, nc);
    zb_check(gpos[0][0] == pos[seqs[0]] && gpos[0][1] == pos[seqs[1]] && gpos[1][0] == gpos[0][0] &&
                 gpos[1][1] == gpos[0][1],
             "decode_qkv_prep: the gathered positions (%d %d, separate %d %d)", gpos[0][0], gpos[0][1], gpos[1][0],
             gpos[1][1]);
    for (int p = 0; p < 2; p++) for (int w = 0; w < 3; w++) free(got[p][w]);
    free(q); free(k); free(v); free(c0); free(c16); free(mq); free(mc); free(mv);
    zb_cuda_free(dseq); zb_cuda_free(dpos); zb_cuda_free(dposi);
}

/* The decode step's attention in one kernel (zb_cuda_decode_attn_fused: RoPE of q and k, both
 * cache stores, flash-decoding, the chunks' merge by the last block) against
 * - the CPU attention (zb_attention_decode, float32) over the queries and caches
 *   that the separate kernels (zb_cuda_decode_qkv_prep + zb_cuda_decode_attn) made, within the
 *   bound of test_cached_shape plus the RoPE's: the fused kernel may round the rotated values of
 *   q and of key row p differently (nvcc's FMA contraction: <= 4u max|x| mscale of the head, and a
 *   bf16 cache may then round key or value row p the other way, 2^-8 of it);
 * - the separate kernels' caches (the rows written, within the same RoPE bound; all others equal)
 *   and their output (bits compared and reported: the same arithmetic for bf16 caches);
 * - itself: called again, and recorded as a CUDA graph and replayed twice (the merge's counters go
 *   back to 0), the same bits each time.
 * Sequence i writes slot seqs[i] = nb - i at position ps[i]; chunk > 0 forces the positions per
 * block (many chunks, several merges). */
static void test_decode_fused(zb_rng *rng, int bf, int H, int Hkv, int hd, int rot, int maxT, int nb, const int *ps,
                              int chunk) {
    zb_rope_cfg cfg = {.type = ZB_ROPE_LLAMA3, .theta = 500000.0f, .factor = 8.0f, .low_freq_factor = 1.0f,
                       .high_freq_factor = 4.0f, .original_max_pos = 8192, .mscale = 1.0f};
    zb_rope r;
    zb_rope_init(&r, rot, &cfg);
    const int slots = nb + 1, R = H / Hkv, qd = H * hd, kd = Hkv * hd;
    int seqs[8], pos[9];
    for (int s = 0; s < slots; s++) pos[s] = 0;
    for (int i = 0; i < nb; i++) { seqs[i] = nb - i; pos[seqs[i]] = ps[i]; }
    size_t nq = (size_t)nb * qd, nk = (size_t)nb * kd, nc = (size_t)slots * Hkv * maxT * hd, no = nq;
    long long ss = (long long)Hkv * maxT * hd, gs = (long long)maxT * hd;
    float *q = zb_falloc(nq), *k = zb_falloc(nk), *v = zb_falloc(nk), *c0 = zb_falloc(2 * nc);
    zb_fill_uniform(q, nq, 2.0f, rng);
    zb_fill_uniform(k, nk, 2.0f, rng);
    zb_fill_uniform(v, nk, 1.0f, rng);
    zb_fill_uniform(c0, 2 * nc, 1.0f, rng);
    size_t cb = nc * (bf ? 2 : 4);
    void *hc0 = c0;
    uint16_t *c16 = NULL;
    if (bf) { c16 = malloc(2 * nc * 2); zb_f32_to_bf16_n(c0, c16, 2 * nc); hc0 = c16; }
    float *outs[5], *caches[2][2], *qr = zb_falloc(nq), *nans = zb_falloc(no);   /* outs: old, new, again, graph x 2 */
    for (size_t e = 0; e < no; e++) nans[e] = NAN;   /* every output must be written */
    int posi[8] = {0};
    int *dseq = zb_dev_i(seqs, nb), *dpos = zb_dev_i(pos, slots), *dposi = zb_dev_i(posi, nb);
    zb_cuda_cache_attn a = {H, Hkv, hd, hd, ss, gs, hd, 1.0f / sqrtf((float)hd), bf};
    zb_cuda_decode_set_chunk(chunk);
    for (int path = 0; path < 2; path++) {
        float *dq = zb_dev_f(q, nq), *dk = zb_dev_f(k, nk), *dv = zb_dev_f(v, nk), *dout = zb_dev_f(NULL, no);
        void *dkc = zb_dev_bytes(hc0, cb), *dvc = zb_dev_bytes((char *)hc0 + cb, cb);
        zb_cuda_dec_fuse_set(1);
        zb_cuda_decode_attn_fused_set(path);
        if (path == 0) {
            zb_check(!zb_cuda_decode_attn_fused(&r, dout, dq, dk, dv, dkc, dvc, dseq, dpos, dposi, nb, maxT, &a),
                     "decode_attn_fused: off when set off");
            zb_cuda_decode_qkv_prep(&r, dq, dk, dv, dkc, dvc, bf, dseq, dpos, dposi, nb, H, Hkv, hd, ss, gs);
            zb_cuda_decode_attn(dout, dq, dkc, dvc, dseq, dposi, nb, maxT, &a);
            zb_host_f(qr, dq, nq);
        } else {
            for (int rep = 0; rep < 2; rep++) {
                zb_cuda_upload(dout, nans, no * sizeof(float));
                zb_check(zb_cuda_decode_attn_fused(&r, dout, dq, dk, dv, dkc, dvc, dseq, dpos, dposi, nb, maxT, &a),
                         "decode_attn_fused takes H=%d/%d hd=%d rot=%d", H, Hkv, hd, rot);
                outs[1 + rep] = zb_falloc(no);
                zb_host_f(outs[1 + rep], dout, no);
            }
            void *g = NULL;
            if (zb_cuda_graph_begin(&g, 1)) {
                zb_cuda_decode_attn_fused(&r, dout, dq, dk, dv, dkc, dvc, dseq, dpos, dposi, nb, maxT, &a);
                zb_check(zb_cuda_graph_end(g, 0), "decode_attn_fused recorded as a graph");
                for (int rep = 0; rep < 2; rep++) {
                    zb_cuda_upload(dout, nans, no * sizeof(float));
                    zb_check(zb_cuda_graph_replay(g, 1), "decode_attn_fused graph replayed");
                    outs[3 + rep] = zb_falloc(no);
                    zb_host_f(outs[3 + rep], dout, no);
                }
                zb_cuda_graph_free(g);
            } else {
                zb_check(0, "decode_attn_fused: graph capture began");
                outs[3] = zb_falloc(no); outs[4] = zb_falloc(no);
                memcpy(outs[3], outs[1], no * 4); memcpy(outs[4], outs[1], no * 4);
            }
            zb_cuda_download(posi, dposi, sizeof(int) * nb);
        }
        if (path == 0) { outs[0] = zb_falloc(no); zb_host_f(outs[0], dout, no); }
        for (int w = 0; w < 2; w++) caches[path][w] = host_cache(w ? dvc : dkc, bf, nc);
        zb_cuda_free(dq); zb_cuda_free(dk); zb_cuda_free(dv); zb_cuda_free(dout); zb_cuda_free(dkc); zb_cuda_free(dvc);
    }
    zb_cuda_decode_set_chunk(0);
    zb_cuda_decode_attn_fused_set(-1);
    zb_cuda_dec_fuse_set(-1);
    char what[200];
    snprintf(what, sizeof what, "H=%d/%d hd=%d rot=%d T=%d nb=%d p0=%d %s cache, chunk %d", H, Hkv, hd, rot, maxT, nb,
             ps[0], bf ? "bf16" : "f32", chunk);
    /* the CPU over the separate kernels' queries and caches; the bound per (sequence, head) */
    const float scale = a.scale;
    const double orel = bf ? 2 * ZB_U16 : 0, dr = 4 * U * r.mscale;
    float *ref = zb_falloc(no), *sc = zb_falloc(zb_attention_decode_scratch(H, hd, maxT));
    double *bound = zb_dalloc(no), *mk = zb_dalloc(nc), *mv = zb_dalloc(nc);
    for (size_t e = 0; e < nc; e++) {
        mk[e] = bf ? 0x1p-8 / dr * fabs(caches[0][0][e]) : 0;
        mv[e] = bf ? 0x1p-8 / dr * fabs(caches[0][1][e]) : 0;
    }
    for (int i = 0; i < nb; i++) {
        const int Tc = ps[i] + 1;
        const float *Kb = caches[0][0] + (size_t)seqs[i] * ss, *Vb = caches[0][1] + (size_t)seqs[i] * ss;
        zb_attention_decode(ref + (size_t)i * qd, qr + (size_t)i * qd, Kb, Vb, Tc, H, Hkv, hd, hd, hd, hd, (size_t)gs,
                            (size_t)gs, scale, sc, NULL);
        for (int h = 0; h < H; h++) {
            const int g = h / R;
            const float *qh = qr + (size_t)i * qd + (size_t)h * hd, *q0 = q + (size_t)i * qd + (size_t)h * hd;
            const float *k0 = k + (size_t)i * kd + (size_t)g * hd;
            double mq = 0, mk0 = 0, sq = 0;
            for (int j = 0; j < hd; j++) { mq = fmax(mq, fabs(q0[j])); mk0 = fmax(mk0, fabs(k0[j])); sq += fabs(qh[j]); }
            for (int j = 0; j < rot; j++) mk[(size_t)seqs[i] * ss + (size_t)g * gs + (size_t)ps[i] * hd + j] += mk0;
            double emax = 0, extra = 0, mx = -INFINITY, sum = 0;
            double *sv = zb_dalloc(Tc);
            for (int u = 0; u < Tc; u++) {
                const float *ku = Kb + (size_t)g * gs + (size_t)u * hd;
                double s = 0, am = 0, sk = 0, dk = 0;
                for (int j = 0; j < hd; j++) {
                    s += (double)qh[j] * ku[j];
                    am += fabs((double)qh[j] * ku[j]);
                    sk += fabs(ku[j]);
                    if (u == ps[i]) dk = fmax(dk, dr * mk0 + (bf ? 0x1p-8 * fabs(ku[j]) : 0));
                }
                sv[u] = s * scale;
                emax = fmax(emax, am * scale);
                extra = fmax(extra, (dr * mq * sk + dk * sq) * scale);
                mx = fmax(mx, sv[u]);
            }
            for (int u = 0; u < Tc; u++) sum += exp(sv[u] - mx);
            const double e = (2 * (hd + 2) * U + orel) * emax + extra;
            for (int c = 0; c < hd; c++) {
                double m = 0;
                for (int u = 0; u < Tc; u++) m += exp(sv[u] - mx) / sum * fabs(Vb[(size_t)g * gs + (size_t)u * hd + c]);
                bound[(size_t)i * qd + (size_t)h * hd + c] = (4 * e + 2 * orel + 4 * (Tc + hd + 8) * U) * m + 1e-30;
            }
            free(sv);
        }
    }
    char w2[300];
    snprintf(w2, sizeof w2, "decode_attn_fused vs CPU attention, %s", what);
    zb_check_bounds(w2, outs[1], ref, bound, no);
    snprintf(w2, sizeof w2, "decode_attn old kernels vs CPU attention, %s", what);
    zb_check_bounds(w2, outs[0], ref, bound, no);
    snprintf(w2, sizeof w2, "decode_attn_fused key cache vs the old kernels', %s", what);
    zb_check_mag(w2, caches[1][0], caches[0][0], mk, dr, 0, nc);
    snprintf(w2, sizeof w2, "decode_attn_fused value cache vs the old kernels', %s", what);
    zb_check_mag(w2, caches[1][1], caches[0][1], mv, dr, 0, nc);
    int same = 1;
    for (int t = 2; t < 5; t++) same &= !memcmp(outs[t], outs[1], no * sizeof(float));
    zb_check(same, "decode_attn_fused called again and replayed from a graph: the same bits, %s", what);
    int pok = 1;
    for (int i = 0; i < nb; i++) pok &= posi[i] == ps[i];
    zb_check(pok, "decode_attn_fused: the gathered positions, %s", what);
    size_t diff = 0;
    for (size_t e = 0; e < no; e++) diff += memcmp(&outs[0][e], &outs[1][e], sizeof(float)) != 0;
    printf("note: decode_attn_fused vs the old kernels: %zu of %zu outputs differ in bits (%s)\n", diff, no, what);
    for (int t = 0; t < 5; t++) free(outs[t]);
    for (int p = 0; p < 2; p++) for (int w = 0; w < 2; w++) free(caches[p][w]);
    free(q); free(k); free(v); free(c0); free(c16); free(qr); free(nans); free(ref); free(sc); free(bound); free(mk); free(mv);
    zb_cuda_free(dseq); zb_cuda_free(dpos); zb_cuda_free(dposi);
}

/* ---- SwiGLU, embedding, elementwise ------------------------------------------------------- */
static void test_swiglu(zb_rng *rng, size_t n) {
    float *g = zb_falloc(n), *u = zb_falloc(n), *h = zb_falloc(n), *got = zb_falloc(n), *dh = zb_falloc(n);
    zb_fill_uniform(g, n, 8.0f, rng);
    zb_fill_uniform(u, n, 2.0f, rng);
    zb_fill_uniform(dh, n, 1.0f, rng);
    zb_swiglu_forward(h, g, u, n);
    float *dg = zb_dev_f(g, n), *du = zb_dev_f(u, n), *dhh = zb_dev_f(NULL, n), *ddh = zb_dev_f(dh, n);
    zb_cuda_swiglu_forward(dhh, dg, du, n);
    zb_host_f(got, dhh, n);
    /* expf within 1 ulp (glibc) / 2 ulp (CUDA), an ulp <= 2u; add, divide, multiply: 5u + 7u */
    zb_check_mag("swiglu_forward", got, h, NULL, 12 * U, 1e-38, n);
    float *rg = zb_falloc(n), *ru = zb_falloc(n), *hg = zb_falloc(n), *hu = zb_falloc(n);
    zb_swiglu_backward(rg, ru, dh, g, u, n);
    float *d_rg = zb_dev_f(NULL, n), *d_ru = zb_dev_f(NULL, n);
    zb_cuda_swiglu_backward(d_rg, d_ru, ddh, dg, du, n);
    zb_host_f(hg, d_rg, n);
    zb_host_f(hu, d_ru, n);
    double *mg = zb_dalloc(n);
    for (size_t i = 0; i < n; i++) {   /* 1 + g (1 - s) cancels near g = -1.28: its terms' size */
        double s = 1.0 / (1.0 + exp(-(double)g[i]));
        mg[i] = fabs((double)dh[i] * u[i] * s) * (2.0 + fabs(g[i]));
    }
    /* du = dh g s: s to 4u (CPU) / 6u (GPU), two products: 14u */
    zb_check_mag("swiglu_backward du", hu, ru, NULL, 16 * U, 1e-38, n);
    /* dg = dh u s (1 + g (1 - s)): per side |dh u s| (10u + 17u |g|) from s's error through
     * 1 - s and the roundings of each operation; both sides within 36u |dh u s| (2 + |g|) */
    zb_check_mag("swiglu_backward dg", hg, rg, mg, 36 * U, 1e-38, n);
    free(g); free(u); free(h); free(got); free(dh); free(rg); free(ru); free(hg); free(hu); free(mg);
    zb_cuda_free(dg); zb_cuda_free(du); zb_cuda_free(dhh); zb_cuda_free(ddh); zb_cuda_free(d_rg); zb_cuda_free(d_ru);
}

static void test_embedding(zb_rng *rng, int C) {
    int V = 50, N = 37;
    int ids[37];
    for (int i = 0; i < N; i++) ids[i] = (int)(zb_rng_u64(rng) % 7) * 7;   /* repeated rows */
    size_t nt = (size_t)V * C, no = (size_t)N * C;
    float *tab = zb_falloc(nt), *out = zb_falloc(no), *got = zb_falloc(no);
    zb_fill_uniform(tab, nt, 1.0f, rng);
    zb_embedding_forward(out, ids, tab, N, C);
    float *dtab = zb_dev_f(tab, nt), *dout = zb_dev_f(NULL, no);
    int *dids = zb_dev_i(ids, N);
    zb_cuda_embedding_forward(dout, dids, dtab, N, C);
    zb_host_f(got, dout, no);
    zb_check_mag("embedding_forward (exact)", got, out, NULL, 0, 0, no);
    uint16_t *t16 = malloc(nt * 2);
    float *tr = zb_falloc(nt);
    zb_f32_to_bf16_n(tab, t16, nt);
    zb_bf16_to_f32_n(t16, tr, nt);
    zb_embedding_forward(out, ids, tr, N, C);
    uint16_t *d16 = zb_dev_bytes(t16, nt * 2);
    zb_cuda_embedding_forward_bf16(dout, dids, d16, N, C);
    zb_host_f(got, dout, no);
    zb_check_mag("embedding_forward bf16 table (exact)", got, out, NULL, 0, 0, no);
    /* backward: sums over the repeated ids, in another order (atomics) */
    float *g = zb_falloc(no), *gt = zb_falloc(nt), *gt0 = zb_falloc(nt), *hg = zb_falloc(nt);
    zb_fill_uniform(g, no, 1.0f, rng);
    zb_fill_uniform(gt0, nt, 1.0f, rng);
    memcpy(gt, gt0, nt * 4);
    zb_embedding_backward(gt, g, ids, N, C);
    float *mt = fabs_copy(gt0, nt), *ag = fabs_copy(g, no);
    zb_embedding_backward(mt, ag, ids, N, C);
    double *md = zb_dalloc(nt);
    for (size_t i = 0; i < nt; i++) md[i] = mt[i];
    float *dg = zb_dev_f(g, no), *dgt = zb_dev_f(gt0, nt);
    zb_cuda_embedding_backward(dgt, dg, dids, N, C);
    zb_host_f(hg, dgt, nt);
    zb_check_mag("embedding_backward", hg, gt, md, 2 * (N + 1) * U, 0, nt);
    free(tab); free(out); free(got); free(t16); free(tr); free(g); free(gt); free(gt0); free(hg); free(mt); free(ag);
    free(md);
    zb_cuda_free(dtab); zb_cuda_free(dout); zb_cuda_free(dids); zb_cuda_free(d16); zb_cuda_free(dg); zb_cuda_free(dgt);
}

static void test_elementwise(zb_rng *rng) {
    size_t n = 1003;
    float *a = zb_falloc(n), *b = zb_falloc(n), *ref = zb_falloc(n), *got = zb_falloc(n);
    zb_fill_uniform(a, n, 1.0f, rng);
    zb_fill_uniform(b, n, 1.0f, rng);
    float *da = zb_dev_f(a, n), *db = zb_dev_f(b, n), *dc = zb_dev_f(NULL, n);
    for (size_t i = 0; i < n; i++) ref[i] = a[i] + b[i];
    zb_cuda_add(dc, da, db, n);
    zb_host_f(got, dc, n);
    zb_check_mag("add (exact)", got, ref, NULL, 0, 0, n);
    for (size_t i = 0; i < n; i++) ref[i] = ref[i] + 0.5f * a[i];
    zb_cuda_axpy(dc, 0.5f, da, n);
    zb_host_f(got, dc, n);
    double *m = zb_dalloc(n);
    for (size_t i = 0; i < n; i++) m[i] = fabs(ref[i]) + fabs(a[i]);
    zb_check_mag("axpy", got, ref, m, 2 * U, 0, n);   /* an FMA may round once instead of twice */
    /* strided columns: rows of 10 with stride 13 -> stride 11 */
    int rows = 7, cols = 10;
    float *dst = zb_falloc(rows * 11), *src = zb_falloc(rows * 13), *hd = zb_falloc(rows * 11);
    zb_fill_uniform(dst, rows * 11, 1.0f, rng);
    zb_fill_uniform(src, rows * 13, 1.0f, rng);
    float *ddst = zb_dev_f(dst, rows * 11), *dsrc = zb_dev_f(src, rows * 13);
    zb_cuda_add_cols(ddst, 11, dsrc, 13, rows, cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[r * 11 + c] += src[r * 13 + c];
    zb_host_f(hd, ddst, rows * 11);
    zb_check_mag("add_cols (exact)", hd, dst, NULL, 0, 0, rows * 11);
    zb_cuda_copy_cols(ddst, 11, dsrc, 13, rows, cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[r * 11 + c] = src[r * 13 + c];
    zb_host_f(hd, ddst, rows * 11);
    zb_check_mag("copy_cols (exact)", hd, dst, NULL, 0, 0, rows * 11);
    free(a); free(b); free(ref); free(got); free(m); free(dst); free(src); free(hd);
    zb_cuda_free(da); zb_cuda_free(db); zb_cuda_free(dc); zb_cuda_free(ddst); zb_cuda_free(dsrc);
}

/* ---- attention (training) ------------------------------------------------------------------- */
/* Double-precision probabilities and the magnitudes of the summed terms of out, dq, dk, dv. */
static void attn_mags(const zb_attn_shape *s, const float *q, const float *k, const float *v, const float *dout,
                      double *P, double *lse, double *eps_row, double *m_out, double *m_dq, double *m_dk,
                      double *m_dv, double orel) {
    int B = s->B, T = s->T, H = s->H, rep = H / s->Hkv, dqk = s->dqk, dv = s->dv;
    size_t nk = (size_t)B * T * s->k_stride, nv = (size_t)B * T * s->v_stride, nq = (size_t)B * T * s->q_stride;
    memset(m_dq, 0, nq * 8); memset(m_dk, 0, nk * 8); memset(m_dv, 0, nv * 8);
    double *dP = malloc(sizeof(double) * T), *mS = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / rep;
            for (int t = 0; t < T; t++) {
                const float *qt = q + ((size_t)b * T + t) * s->q_stride + (size_t)h * dqk;
                double *Pr = P + (((size_t)b * H + h) * T + t) * T, mx = -INFINITY, sum = 0, emax = 0;
                for (int u = 0; u <= t; u++) {
                    const float *ku = k + ((size_t)b * T + u) * s->k_stride + (size_t)g * dqk;
                    double a = 0, am = 0;
                    for (int j = 0; j < dqk; j++) { a += (double)qt[j] * ku[j]; am += fabs((double)qt[j] * ku[j]); }
                    Pr[u] = a * s->scale;
                    emax = fmax(emax, am * s->scale);
                    mx = fmax(mx, Pr[u]);
                }
                for (int u = 0; u <= t; u++) sum += exp(Pr[u] - mx);
                lse[((size_t)b * H + h) * T + t] = mx + log(sum);
                for (int u = 0; u <= t; u++) Pr[u] = exp(Pr[u] - mx) / sum;
                for (int u = t + 1; u < T; u++) Pr[u] = 0;
                /* a score is off by at most (2 (dqk + 2) u + bf16's 2^-8) x its summed terms */
                eps_row[((size_t)b * H + h) * T + t] = (2 * (dqk + 2) * U + orel) * emax;
                /* out: sum_u P |v| */
                for (int c = 0; c < dv; c++) {
                    double a = 0;
                    for (int u = 0; u <= t; u++) a += Pr[u] * fabs(v[((size_t)b * T + u) * s->v_stride + (size_t)g * dv + c]);
                    m_out[((size_t)b * T + t) * H * dv + (size_t)h * dv + c] = a;
                }
                /* backward: dP, D = sum P dP, |dS| <= P (|dP| + |D| + error of dP) */
                const float *dot = dout + ((size_t)b * T + t) * H * dv + (size_t)h * dv;
                double D = 0, DM = 0;
                for (int u = 0; u <= t; u++) {
                    const float *vu = v + ((size_t)b * T + u) * s->v_stride + (size_t)g * dv;
                    double a = 0, am = 0;
                    for (int j = 0; j < dv; j++) { a += (double)dot[j] * vu[j]; am += fabs((double)dot[j] * vu[j]); }
                    dP[u] = a;
                    mS[u] = am * (1 + 2 * (dv + 2) * U + orel);
                    D += Pr[u] * a;
                    DM += Pr[u] * am;
                }
                /* the flash backward takes D = rowsum(dO O) from the forward's output, whose
                 * error is (4 eps + bf16's) x sum_u P_u |dO||v_u|: DM joins the magnitude */
                for (int u = 0; u <= t; u++) {
                    double ms = Pr[u] * (fabs(dP[u]) + fabs(D) + mS[u] + DM);
                    const float *ku = k + ((size_t)b * T + u) * s->k_stride + (size_t)g * dqk;
                    double *mq = m_dq + ((size_t)b * T + t) * s->q_stride + (size_t)h * dqk;
                    double *mk = m_dk + ((size_t)b * T + u) * s->k_stride + (size_t)g * dqk;
                    double *mv = m_dv + ((size_t)b * T + u) * s->v_stride + (size_t)g * dv;
                    for (int j = 0; j < dqk; j++) {
                        mq[j] += s->scale * ms * fabs(ku[j]);
                        mk[j] += s->scale * ms * fabs(qt[j]);
                    }
                    for (int j = 0; j < dv; j++) mv[j] += Pr[u] * fabs(dot[j]);
                }
            }
        }
    free(dP);
    free(mS);
}

static void test_attention(zb_rng *rng, int B, int T, int H, int Hkv, int dqk, int dv, int pad, int block) {
    zb_attn_shape s = {B, T, H, Hkv, dqk, dv, H * dqk + pad, Hkv * dqk + pad, Hkv * dv + pad, 1.0f / sqrtf((float)dqk)};
    size_t nq = (size_t)B * T * s.q_stride, nk = (size_t)B * T * s.k_stride, nv = (size_t)B * T * s.v_stride;
    size_t no = (size_t)B * T * H * dv, nl = (size_t)B * H * T;
    float *q = zb_falloc(nq), *k = zb_falloc(nk), *v = zb_falloc(nv), *out = zb_falloc(no), *probs = zb_falloc(nl * T);
    zb_fill_uniform(q, nq, 1.5f, rng);
    zb_fill_uniform(k, nk, 1.5f, rng);
    zb_fill_uniform(v, nv, 1.0f, rng);
    zb_attention_forward(out, probs, q, k, v, &s);
    float *dout = zb_falloc(no);
    zb_fill_uniform(dout, no, 1.0f, rng);
    /* CPU backward; dq/dk/dv overwrite head columns: start from a pattern the padding keeps */
    float *rq = zb_falloc(nq), *rk = zb_falloc(nk), *rv = zb_falloc(nv);
    zb_attention_backward(rq, rk, rv, dout, probs, q, k, v, &s);

    double orel = op_rel();
    double *P = zb_dalloc(nl * T), *lse = zb_dalloc(nl), *eps = zb_dalloc(nl), *mo = zb_dalloc(no);
    double *mq = zb_dalloc(nq), *mk = zb_dalloc(nk), *mv = zb_dalloc(nv);
    attn_mags(&s, q, k, v, dout, P, lse, eps, mo, mq, mk, mv, orel);
    float *dq_ = zb_dev_f(q, nq), *dk_ = zb_dev_f(k, nk), *dv_ = zb_dev_f(v, nv), *dout_ = zb_dev_f(NULL, no);
    float *dlse = zb_dev_f(NULL, nl), *ddo = zb_dev_f(dout, no);
    zb_cuda_attention_block_rows(block);
    zb_cuda_attention_forward(dout_, dlse, dq_, dk_, dv_, &s);
    float *got = zb_falloc(no), *glse = zb_falloc(nl);
    zb_host_f(got, dout_, no);
    zb_host_f(glse, dlse, nl);
    /* out: every score off by <= eps (both sides), so each probability by a factor e^(2 eps);
     * the sums over T positions and the products P v (bf16: 2^-8) add their roundings */
    double *bo = zb_dalloc(no);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                double e = eps[((size_t)b * H + h) * T + t];
                for (int c = 0; c < dv; c++) {
                    size_t i = ((size_t)b * T + t) * H * dv + (size_t)h * dv + c;
                    bo[i] = (4 * e + orel + 4 * (T + dv + 8) * U) * mo[i] + 1e-30;
                }
            }
    char what[256];
    const char *path = attn_path(&s, dq_, dk_, dv_);
    snprintf(what, sizeof what, "attention_forward %s %s B=%d T=%d H=%d Hkv=%d dqk=%d dv=%d block=%d", mode_name(), path,
             B, T, H, Hkv, dqk, dv, block);
    zb_check_bounds(what, got, out, bo, no);
    float *lref = zb_falloc(nl);
    double *bl = zb_dalloc(nl);
    for (size_t i = 0; i < nl; i++) { lref[i] = (float)lse[i]; bl[i] = eps[i] + 8 * U * (fabs(lse[i]) + 1); }
    snprintf(what, sizeof what, "attention_forward lse %s (vs double)", mode_name());
    zb_check_bounds(what, glse, lref, bl, nl);
    /* backward: the GPU's dq / dk / dv buffers hold garbage outside the head columns; only the
     * head columns are compared */
    float *gq = zb_dev_f(NULL, nq), *gk = zb_dev_f(NULL, nk), *gv = zb_dev_f(NULL, nv);
    zb_cuda_attention_backward(gq, gk, gv, ddo, dout_, dlse, dq_, dk_, dv_, &s);
    float *hq = zb_falloc(nq), *hk = zb_falloc(nk), *hv = zb_falloc(nv);
    zb_host_f(hq, gq, nq);
    zb_host_f(hk, gk, nk);
    zb_host_f(hv, gv, nv);
    double emax = 0;
    for (size_t i = 0; i < nl; i++) emax = fmax(emax, eps[i]);
    double rel = 4 * emax + 3 * orel + 4 * (T + dqk + dv + 8) * U;
    double *b1 = zb_dalloc(nq), *b2 = zb_dalloc(nk), *b3 = zb_dalloc(nv);
    for (size_t i = 0; i < nq; i++) b1[i] = rel * mq[i] + 1e-30;
    for (size_t i = 0; i < nk; i++) b2[i] = rel * mk[i] + 1e-30;
    for (size_t i = 0; i < nv; i++) b3[i] = rel * mv[i] + 1e-30;
    /* zero the padding columns on both sides so that they compare equal */
    for (int r = 0; r < B * T; r++) {
        for (int j = H * dqk; j < s.q_stride; j++) hq[(size_t)r * s.q_stride + j] = rq[(size_t)r * s.q_stride + j] = 0;
        for (int j = Hkv * dqk; j < s.k_stride; j++) hk[(size_t)r * s.k_stride + j] = rk[(size_t)r * s.k_stride + j] = 0;
        for (int j = Hkv * dv; j < s.v_stride; j++) hv[(size_t)r * s.v_stride + j] = rv[(size_t)r * s.v_stride + j] = 0;
    }
    snprintf(what, sizeof what, "attention_backward dq %s %s T=%d dqk=%d block=%d", mode_name(), path, T, dqk, block);
    zb_check_bounds(what, hq, rq, b1, nq);
    snprintf(what, sizeof what, "attention_backward dk %s %s T=%d dqk=%d block=%d", mode_name(), path, T, dqk, block);
    zb_check_bounds(what, hk, rk, b2, nk);
    snprintf(what, sizeof what, "attention_backward dv %s %s T=%d dqk=%d block=%d", mode_name(), path, T, dqk, block);
    zb_check_bounds(what, hv, rv, b3, nv);
    zb_cuda_attention_block_rows(0);
    free(q); free(k); free(v); free(out); free(probs); free(dout); free(rq); free(rk); free(rv); free(P); free(lse);
    free(eps); free(mo); free(mq); free(mk); free(mv); free(got); free(glse); free(bo); free(lref); free(bl);
    free(hq); free(hk); free(hv); free(b1); free(b2); free(b3);
    zb_cuda_free(dq_); zb_cuda_free(dk_); zb_cuda_free(dv_); zb_cuda_free(dout_); zb_cuda_free(dlse);
    zb_cuda_free(ddo); zb_cuda_free(gq); zb_cuda_free(gk); zb_cuda_free(gv);
}

/* ---- attention over caches (generation) ------------------------------------------------------ */
/* GQA head-major cache [slots][Hkv][maxT][hd] (K and V), or MLA's latent rows [slots][maxT][W]
 * with values = the first dv columns (mla = 1: Hkv = 1, K = V). n new rows per sequence. */
static int g_mla_dqk = 40, g_mla_dv = 32;   /* the MLA latent rows' width and values' (test_cached_shape) */

static void test_cached_shape(zb_rng *rng, int mla, int bf16, int n, int H, int Hkv_gqa, int dqk_gqa, int maxT) {
    int slots = 4, Hkv = mla ? 1 : Hkv_gqa, dqk = mla ? g_mla_dqk : dqk_gqa, dv = mla ? g_mla_dv : dqk_gqa;
    int nb = 3, seqs[3] = {2, 0, 3}, pos[3] = {maxT / 5, maxT - 13, 0};
    for (int i = 0; i < nb; i++) if (pos[i] + n > maxT) pos[i] = maxT - n;
    long long row = mla ? dqk : dqk, grp = mla ? 0 : (long long)maxT * dqk, seqs_stride = (long long)Hkv * maxT * dqk;
    size_t nc = (size_t)slots * seqs_stride;
    float *K = zb_falloc(nc), *V = mla ? K : zb_falloc(nc);
    zb_fill_uniform(K, nc, 1.5f, rng);
    if (!mla) zb_fill_uniform(V, nc, 1.0f, rng);
    uint16_t *K16 = malloc(nc * 2), *V16 = malloc(nc * 2);
    if (bf16) {   /* the CPU reads the same rounded values */
        zb_f32_to_bf16_n(K, K16, nc); zb_bf16_to_f32_n(K16, K, nc);
        if (!mla) { zb_f32_to_bf16_n(V, V16, nc); zb_bf16_to_f32_n(V16, V, nc); }
    }
    size_t nq = (size_t)nb * n * H * dqk, no = (size_t)nb * n * H * dv;
    float *q = zb_falloc(nq), *out = zb_falloc(no), *got = zb_falloc(no);
    zb_fill_uniform(q, nq, 1.5f, rng);
    float scale = 1.0f / sqrtf((float)dqk);
    float *sc = zb_falloc(zb_attention_decode_scratch(H, dv, maxT));
    double *bound = zb_dalloc(no), orel = bf16 ? 2 * ZB_U16 : op_rel();
    int max_len = 0;
    for (int i = 0; i < nb; i++) {
        if (pos[i] + n > max_len) max_len = pos[i] + n;
        const float *Kb = K + (size_t)seqs[i] * seqs_stride, *Vb = V + (size_t)seqs[i] * seqs_stride;
        for (int t = 0; t < n; t++) {
            size_t r = (size_t)i * n + t;
            int Tc = pos[i] + t + 1;
            zb_attention_decode(out + r * H * dv, q + r * H * dqk, Kb, Vb, Tc, H, Hkv, dqk, dv, (int)row, (int)row,
                                (size_t)grp, (size_t)grp, scale, sc, NULL);
            /* bound: scores off by eps, products P v (bf16 P and v: 2^-8) */
            for (int h = 0; h < H; h++) {
                int g = h / (H / Hkv);
                const float *qh = q + r * H * dqk + (size_t)h * dqk;
                double emax = 0, mx = -INFINITY, sum = 0;
                double *sv = zb_dalloc(Tc);
                for (int u = 0; u < Tc; u++) {
                    const float *ku = Kb + g * grp + u * row;
                    double a = 0, am = 0;
                    for (int j = 0; j < dqk; j++) { a += (double)qh[j] * ku[j]; am += fabs((double)qh[j] * ku[j]); }
                    sv[u] = a * scale;
                    emax = fmax(emax, am * scale);
                    mx = fmax(mx, sv[u]);
                }
                for (int u = 0; u < Tc; u++) sum += exp(sv[u] - mx);
                double e = (2 * (dqk + 2) * U + orel) * emax;
                for (int c = 0; c < dv; c++) {
                    double m = 0;
                    for (int u = 0; u < Tc; u++) m += exp(sv[u] - mx) / sum * fabs(Vb[g * grp + u * row + c]);
                    bound[r * H * dv + (size_t)h * dv + c] = (4 * e + 2 * orel + 4 * (Tc + dv + 8) * U) * m + 1e-30;
                }
                free(sv);
            }
        }
    }
    void *dK, *dV;
    if (bf16) {
        dK = zb_dev_bytes(K16, nc * 2);
        dV = mla ? dK : zb_dev_bytes(V16, nc * 2);
    } else {
        dK = zb_dev_f(K, nc);
        dV = mla ? dK : zb_dev_f(V, nc);
    }
    int *dseq = zb_dev_i(seqs, nb), *dpos = zb_dev_i(pos, nb);
    float *dq = zb_dev_f(q, nq), *dout = zb_dev_f(NULL, no);
    zb_cuda_cache_attn a = {H, Hkv, dqk, dv, seqs_stride, grp, row, scale, bf16};
    zb_cuda_attention_cached(dout, dq, dK, dV, dseq, dpos, nb, n, max_len, &a);
    zb_host_f(got, dout, no);
    char what[128];
    snprintf(what, sizeof what, "attention_cached %s H=%d/%d d=%d T=%d cache=%s n=%d mode=%s (%s)",
             mla ? "mla" : "gqa", H, Hkv, dqk, maxT, bf16 ? "bf16" : "f32", n, mode_name(),
             n == 1 ? "flash-decoding" : "cuBLAS blocks");
    zb_check_bounds(what, got, out, bound, no);
    if (n == 1) {   /* the decode kernel given only the cache length as its bound (as the backend does) */
        zb_cuda_attention_cached(dout, dq, dK, dV, dseq, dpos, nb, n, maxT, &a);
        zb_host_f(got, dout, no);
        snprintf(what, sizeof what, "attention_cached %s H=%d/%d d=%d cache=%s decode bounded by max_T",
                 mla ? "mla" : "gqa", H, Hkv, dqk, bf16 ? "bf16" : "f32");
        zb_check_bounds(what, got, out, bound, no);
        /* forced chunk lengths: many chunks per sequence, and several rows per slot of a block */
        int chunks[2] = {32, 512};
        for (int c = 0; c < 2; c++) {
            zb_cuda_decode_set_chunk(chunks[c]);
            for (size_t e = 0; e < no; e++) got[e] = NAN;   /* every output must be written */
            zb_cuda_upload(dout, got, no * sizeof(float));
            zb_cuda_attention_cached(dout, dq, dK, dV, dseq, dpos, nb, n, maxT, &a);
            zb_cuda_decode_set_chunk(0);
            zb_host_f(got, dout, no);
            snprintf(what, sizeof what, "attention_cached %s H=%d/%d d=%d cache=%s decode, %d positions per block",
                     mla ? "mla" : "gqa", H, Hkv, dqk, bf16 ? "bf16" : "f32", chunks[c]);
            zb_check_bounds(what, got, out, bound, no);
        }
        /* MLA's fused decode kernel (bf16 latent cache, values = the first dv columns of the rows):
         * the chosen chunks, then 64 positions per block (a chunk per tile), then 128 */
        if (mla && zb_cuda_decode_mla_ok(dK, dK, &a)) {
            /* both kernels (the register one, mma.sync; the wmma one); 64 = one tile per chunk,
             * 512 = 8 tiles (the ring of 3 stages wraps), the last tile of a chunk partly past the
             * sequence (pos 0: one row; maxT - 13) */
            int mch[4] = {0, 64, 128, 512};
            for (int kern = 0; kern < 2; kern++)
                for (int c = 0; c < 4; c++) {
                    zb_cuda_decode_mla_set_kernel(kern);
                    zb_cuda_decode_set_chunk(mch[c]);
                    for (size_t e = 0; e < no; e++) got[e] = NAN;
                    zb_cuda_upload(dout, got, no * sizeof(float));
                    zb_cuda_decode_mla(dout, dq, dK, dseq, dpos, nb, maxT, &a);
                    zb_cuda_decode_set_chunk(0);
                    zb_cuda_decode_mla_set_kernel(-1);
                    zb_host_f(got, dout, no);
                    snprintf(what, sizeof what, "decode_mla (fused, %s) H=%d d=%d/%d T=%d, %d positions per block%s",
                             kern ? "wmma" : "mma.sync", H, dqk, dv, maxT, mch[c], mch[c] ? "" : " (its choice)");
                    zb_check_bounds(what, got, out, bound, no);
                }
        } else if (mla && bf16 && dqk % 16 == 0 && dv % 16 == 0) {
            zb_check(0, "decode_mla takes H=%d d=%d/%d (a bf16 latent cache of its shapes)", H, dqk, dv);
        }
        /* the cuBLAS form (MLA's decode: a group's heads as the rows of each sequence's products;
         * past 2048 positions P V in pieces summed in order), given the exact length and max_T */
        for (int bnd = 0; bnd < 2; bnd++) {
            for (size_t e = 0; e < no; e++) got[e] = NAN;
            zb_cuda_upload(dout, got, no * sizeof(float));
            zb_cuda_attention_cached_gemm(dout, dq, dK, dV, dseq, dpos, nb, n, bnd ? maxT : max_len, &a);
            zb_host_f(got, dout, no);
            snprintf(what, sizeof what, "attention_cached_gemm %s H=%d/%d d=%d T=%d cache=%s decode%s",
                     mla ? "mla" : "gqa", H, Hkv, dqk, maxT, bf16 ? "bf16" : "f32", bnd ? " bounded by max_T" : "");
            zb_check_bounds(what, got, out, bound, no);
        }
    }
    /* cache_store: write the rows of a [nb*n, Hkv*dqk] source into the cache and read them back */
    if (!mla && !bf16) {
        size_t ns = (size_t)nb * n * Hkv * dqk;
        float *src = zb_falloc(ns), *ref = zb_falloc(nc), *hc = zb_falloc(nc);
        zb_fill_uniform(src, ns, 1.0f, rng);
        memcpy(ref, K, nc * 4);
        for (int i = 0; i < nb; i++)
            for (int t = 0; t < n; t++)
                for (int g = 0; g < Hkv; g++)
                    memcpy(ref + seqs[i] * seqs_stride + g * grp + (pos[i] + t) * row,
                           src + ((size_t)i * n + t) * Hkv * dqk + (size_t)g * dqk, sizeof(float) * dqk);
        float *dsrc = zb_dev_f(src, ns);
        zb_cuda_cache_store(dK, 0, dsrc, Hkv * dqk, dseq, dpos, nb, n, Hkv, dqk, seqs_stride, grp, row);
        zb_host_f(hc, dK, nc);
        zb_check_mag("cache_store (exact)", hc, ref, NULL, 0, 0, nc);
        free(src); free(ref); free(hc);
        zb_cuda_free(dsrc);
    }
    free(K); if (!mla) free(V); free(K16); free(V16); free(q); free(out); free(got); free(sc); free(bound);
    zb_cuda_free(dK); if (!mla) zb_cuda_free(dV); zb_cuda_free(dseq); zb_cuda_free(dpos); zb_cuda_free(dq);
    zb_cuda_free(dout);
}

static void test_cached(zb_rng *rng, int mla, int bf16, int n) { test_cached_shape(rng, mla, bf16, n, 4, 2, 24, 50); }

/* ---- greedy picks ------------------------------------------------------------------------------ */

/* argmax_rows against the CPU backend's (zb_sample's scan): random rows, and rows made to catch
 * the order of the reduction: equal maxima (the lowest index), all equal, NaN at 0 (then 0), NaNs
 * elsewhere (never picked), all -inf, -0 before +0 (equal: the first), all NaN. Exact. */
static void test_argmax(zb_rng *rng, int V) {
    int N = 9;
    float *x = zb_falloc((size_t)N * V);
    zb_fill_uniform(x, (size_t)N * V, 3.0f, rng);
    float *r = x + (size_t)V;   /* row 1: the maximum twice */
    r[V / 3] = 7.0f; r[V - 2] = 7.0f;
    r = x + 2 * (size_t)V;      /* row 2: all equal */
    for (int v = 0; v < V; v++) r[v] = 0.5f;
    r = x + 3 * (size_t)V;      /* row 3: NaN first */
    r[0] = NAN; r[V / 2] = 9.0f;
    r = x + 4 * (size_t)V;      /* row 4: NaNs elsewhere, around the maximum, at the slices' starts */
    for (int v = 1; v < V; v += 7) r[v] = NAN;
    r[V / 3] = NAN; r[V / 2] = NAN; r[2 * V / 3] = NAN;
    r[V - 3] = 8.0f; r[V - 4] = NAN; r[V - 2] = NAN;
    r = x + 5 * (size_t)V;      /* row 5: all -inf */
    for (int v = 0; v < V; v++) r[v] = -INFINITY;
    r = x + 6 * (size_t)V;      /* row 6: -0 then +0 above negative values */
    for (int v = 0; v < V; v++) r[v] = -1.0f - (float)v;
    r[V / 4] = -0.0f; r[V / 2] = 0.0f;
    r = x + 7 * (size_t)V;      /* row 7: all NaN */
    for (int v = 0; v < V; v++) r[v] = NAN;
    r = x + 8 * (size_t)V;      /* row 8: +inf last */
    r[V - 1] = INFINITY;
    int want[9], got[9];
    zb_backend_cpu()->argmax_rows(zb_backend_cpu(), want, x, N, V);
    float *dx = zb_dev_f(x, (size_t)N * V);
    int *dout = zb_dev_i(NULL, N);
    zb_cuda_argmax_rows(dout, dx, N, V);
    if (zb_cuda_download(got, dout, sizeof(int) * N)) zb_check(0, "argmax_rows: download");
    int bad = 0;
    for (int n = 0; n < N; n++)
        if (got[n] != want[n]) { bad++; printf("  row %d: GPU %d, CPU %d\n", n, got[n], want[n]); }
    zb_check(!bad && want[1] == V / 3 && want[2] == 0 && want[3] == 0 && want[4] == V - 3 && want[5] == 0 &&
                 want[6] == V / 4 && want[7] == 0 && want[8] == V - 1,
             "argmax_rows V=%d: the CPU scan's picks (ties, NaN, -inf, -0/+0), %d rows", V, N);
    /* the same rows split in P slices (TP's vocabulary slices: ties and -0/+0 across them, NaN
     * at a slice's start): GPU pairs bitwise the CPU's, and the picks over them argmax_rows' */
    for (int P = 2; P <= 3; P++) {
        int *pairs = malloc(sizeof(int) * 2 * (size_t)N * P), *gpairs = malloc(sizeof(int) * 2 * (size_t)N * P);
        int *dpairs = zb_dev_i(NULL, 2 * N * P), pick[9];
        for (int p = 0; p < P; p++) {
            int v0 = p * V / P, Vs = (p + 1) * V / P - v0;
            float *s = zb_falloc((size_t)N * Vs);
            for (int n = 0; n < N; n++) memcpy(s + (size_t)n * Vs, x + (size_t)n * V + v0, sizeof(float) * Vs);
            zb_backend_cpu()->argmax_pairs(zb_backend_cpu(), pairs + 2 * (size_t)N * p, s, N, Vs, v0);
            float *ds = zb_dev_f(s, (size_t)N * Vs);
            zb_cuda_argmax_pairs(dpairs + 2 * N * p, ds, N, Vs, v0);
            zb_cuda_free(ds);
            free(s);
        }
        zb_cuda_argmax_pick(dout, dpairs, N, P);
        if (zb_cuda_download(gpairs, dpairs, sizeof(int) * 2 * N * P) || zb_cuda_download(got, dout, sizeof(int) * N))
            zb_check(0, "argmax_pairs: download");
        zb_check(!memcmp(pairs, gpairs, sizeof(int) * 2 * N * P), "argmax_pairs V=%d, %d slices: GPU pairs bitwise the CPU's", V, P);
        zb_backend_cpu()->argmax_pick(zb_backend_cpu(), pick, pairs, N, P);
        bad = 0;
        for (int n = 0; n < N; n++) bad += got[n] != want[n] || pick[n] != want[n];
        zb_check(!bad, "argmax_pick V=%d, %d slices: argmax_rows' picks on GPU and CPU (%d rows differ)", V, P, bad);
        free(pairs); free(gpairs);
        zb_cuda_free(dpairs);
    }
    free(x);
    zb_cuda_free(dx); zb_cuda_free(dout);
}

/* ---- losses ------------------------------------------------------------------------------------ */
static void test_losses(zb_rng *rng, int N, int V) {
    size_t n = (size_t)N * V;
    float *lg = zb_falloc(n), *tg = zb_falloc(n), *d = zb_falloc(n), *got = zb_falloc(n);
    int *y = malloc(sizeof(int) * N), *mask = malloc(sizeof(int) * N);
    zb_fill_uniform(lg, n, 6.0f, rng);
    zb_fill_uniform(tg, n, 6.0f, rng);
    int nv = 0;
    for (int i = 0; i < N; i++) {
        y[i] = i % 5 == 3 ? -1 : (int)(zb_rng_u64(rng) % V);
        mask[i] = y[i] >= 0;
        nv += y[i] >= 0;
    }
    float scale = 1.0f / nv;
    double ref = zb_cross_entropy(d, lg, y, N, V, scale, NULL);
    float *dl = zb_dev_f(lg, n), *dd = zb_dev_f(NULL, n), *dt = zb_dev_f(tg, n);
    int *dy = zb_dev_i(y, N), *dm = zb_dev_i(mask, N);
    double g = zb_cuda_cross_entropy(dd, dl, dy, N, V, scale);
    zb_host_f(got, dd, n);
    /* per row: each exp within 2 ulp of a rounded difference, so lse within 4u + u max|x - max|;
     * bounded by 8u (1 + |lse| + |x_y|). The gradient: lse's error, the rounding of x - lse,
     * expf, the scale: scale p (32u + 4u (|lse| + |x - lse|)) + 2u scale for the one-hot. */
    double bl = 0, *bd = zb_dalloc(n);
    for (int r = 0; r < N; r++) {
        const float *row = lg + (size_t)r * V;
        double mx = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, row[v]);
        for (int v = 0; v < V; v++) s += exp(row[v] - mx);
        double lse = mx + log(s);
        if (y[r] >= 0) bl += 8 * U * (1 + fabs(lse) + fabs(row[y[r]]));
        for (int v = 0; v < V; v++)
            bd[(size_t)r * V + v] = y[r] < 0 ? 0 : scale * (exp(row[v] - lse) * (4 * U * (fabs(lse) + fabs(row[v] - lse)) + 32 * U) + 2 * U);
    }
    zb_check(fabs(g - ref) <= bl, "cross_entropy sum: gpu %.12g cpu %.12g |d| %.3g bound %.3g", g, ref, fabs(g - ref), bl);
    zb_check_bounds("cross_entropy dlogits", got, d, bd, n);
    /* in place (dlogits == logits) */
    double g2 = zb_cuda_cross_entropy(dl, dl, dy, N, V, scale);
    zb_host_f(got, dl, n);
    zb_check(fabs(g2 - ref) <= bl, "cross_entropy in place sum: gpu %.12g cpu %.12g", g2, ref);
    zb_check_bounds("cross_entropy dlogits in place", got, d, bd, n);
    zb_cuda_upload(dl, lg, n * 4);
    /* target log-probabilities */
    double *dlp = (double *)zb_dev_bytes(NULL, sizeof(double) * N), *lp = zb_dalloc(N);
    zb_cuda_target_logprobs(dlp, dl, dy, N, V);
    zb_cuda_download(lp, dlp, sizeof(double) * N);
    int badlp = 0;
    for (int r = 0; r < N; r++) {
        double want = 0;
        if (y[r] >= 0) {
            const float *row = lg + (size_t)r * V;
            double mx = -INFINITY, s = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, row[v]);
            for (int v = 0; v < V; v++) s += exp(row[v] - mx);
            want = row[y[r]] - mx - log(s);
            if (fabs(lp[r] - want) > 8 * U * (1 + fabs(mx) + fabs(want))) {
                printf("  MISMATCH target_logprobs [%d]: gpu %.12g double %.12g\n", r, lp[r], want);
                badlp++;
            }
        } else if (lp[r] != 0) badlp++;
    }
    zb_check(badlp == 0, "target_logprobs: %d rows off", badlp);
    /* KL at tau 2 */
    float tau = 2.0f;
    double kref = zb_kl_div(d, lg, tg, mask, N, V, tau, scale);
    double kg = zb_cuda_kl_div(dd, dl, dt, dm, N, V, tau, scale);
    zb_host_f(got, dd, n);
    double bk = 0;
    for (int r = 0; r < N; r++) {
        if (!mask[r]) { for (int v = 0; v < V; v++) bd[(size_t)r * V + v] = 0; continue; }
        const float *s = lg + (size_t)r * V, *t = tg + (size_t)r * V;
        double ms = -INFINITY, mt = -INFINITY, zs = 0, zt = 0, acc = 0;
        for (int v = 0; v < V; v++) { ms = fmax(ms, s[v] / tau); mt = fmax(mt, t[v] / tau); }
        for (int v = 0; v < V; v++) { zs += exp(s[v] / tau - ms); zt += exp(t[v] / tau - mt); }
        double lzs = ms + log(zs), lzt = mt + log(zt);
        for (int v = 0; v < V; v++) {
            double lpt = t[v] / tau - lzt, lps = s[v] / tau - lzs, pt = exp(lpt), ps = exp(lps);
            acc += pt * (fabs(lpt - lps) + 1);
            bd[(size_t)r * V + v] = scale / tau * 8 * U * (ps + pt + fabs(lps) * ps + fabs(lpt) * pt) + 1e-30;
        }
        /* log-partitions within 4u + u max|x/tau - max| each (float exps); the row's KL moves by
         * that times sum pt (|lpt - lps| + 2) */
        bk += 16 * U * (acc + fabs(ms) + fabs(mt));
    }
    zb_check(fabs(kg - kref) <= bk, "kl_div sum: gpu %.12g cpu %.12g |d| %.3g bound %.3g", kg, kref, fabs(kg - kref), bk);
    zb_check_bounds("kl_div dstudent", got, d, bd, n);
    /* MSE */
    double mref = zb_mse(d, lg, tg, n, 0.5f);
    double mg = zb_cuda_mse(dd, dl, dt, n, 0.5f);
    zb_host_f(got, dd, n);
    zb_check(fabs(mg - mref) <= 1e-12 * mref, "mse: gpu %.15g cpu %.15g", mg, mref);
    zb_check_mag("mse grad", got, d, NULL, 2 * U, 0, n);
    /* mean row distance (ILD as the release) against double sums: rows of V values */
    {
        double ref = 0;
        float *gr = zb_falloc(n);
        double *bg = zb_dalloc(n);
        for (int r = 0; r < N; r++) {
            double ss = 0;
            for (int v = 0; v < V; v++) { double e = (double)lg[(size_t)r * V + v] - tg[(size_t)r * V + v]; ss += e * e; }
            double nr = sqrt(ss);
            ref += nr / N;
            for (int v = 0; v < V; v++) {
                double e = (double)lg[(size_t)r * V + v] - tg[(size_t)r * V + v];
                gr[(size_t)r * V + v] = (float)(0.5 * e / (nr * N));
                bg[(size_t)r * V + v] = 4 * U * fabs(0.5 * e / (nr * N)) + 1e-30;   /* one float rounding each side */
            }
        }
        double gm = zb_cuda_mean_row_dist(dd, dl, dt, N, V, 0.5f);
        zb_host_f(got, dd, n);
        zb_check(fabs(gm - ref) <= 1e-12 * ref, "mean_row_dist: gpu %.15g double %.15g", gm, ref);
        zb_check_bounds("mean_row_dist grad", got, gr, bg, n);
        free(gr); free(bg);
    }
    free(lg); free(tg); free(d); free(got); free(y); free(mask); free(bd); free(lp);
    zb_cuda_free(dl); zb_cuda_free(dd); zb_cuda_free(dt); zb_cuda_free(dy); zb_cuda_free(dm); zb_cuda_free(dlp);
}

/* ---- AdamW and the gradient norm on a small model's layout ------------------------------------- */
static void test_adamw(zb_rng *rng, const char *fixtures) {
    char path[1024];
    snprintf(path, sizeof path, "%s/hf-llama-tiny/config.json", fixtures);
    zb_config c;
    if (zb_config_load(path, &c)) { zb_check(0, "load %s: %s", path, zb_errmsg()); return; }
    zb_model m;
    if (zb_model_init(&m, &c) || zb_model_alloc_grad(&m)) { zb_check(0, "model: %s", zb_errmsg()); return; }
    zb_model_init_random(&m, 3, 0.1f);
    zb_optim_cfg oc = zb_optim_defaults();
    zb_adamw o;
    zb_adamw_init(&o, &m, &oc);
    zb_adamw_set_group(&o, &m, "mlp", 0.5f, -1, -1);
    zb_adamw_set_group(&o, &m, "model.layers.1.", -1, -1, 0);   /* frozen */
    size_t n = m.n_floats;
    zb_fill_uniform(m.grad, n, 0.1f, rng);
    for (size_t i = 0; i < n; i++) { o.m[i] = 0.01f * m.grad[i]; o.v[i] = 0.001f * fabsf(m.grad[i]); }
    o.step = 2;
    float *w0 = zb_falloc(n), *m0 = zb_falloc(n), *v0 = zb_falloc(n);
    memcpy(w0, m.data, n * 4); memcpy(m0, o.m, n * 4); memcpy(v0, o.v, n * 4);
    double norm = zb_grad_norm(&o, &m);
    float lr = 1e-3f, gs = 0.7f;
    float *dw = zb_dev_f(m.data, n), *dg = zb_dev_f(m.grad, n), *dm = zb_dev_f(o.m, n), *dv = zb_dev_f(o.v, n);
    zb_cuda_segs *segs = NULL;
    if (zb_cuda_segs_from_adamw(&segs, &o, &m)) { zb_check(0, "segments: %s", zb_errmsg()); return; }
    double ss = zb_cuda_sumsq(segs, dg);
    zb_check(fabs(sqrt(ss) - norm) <= 1e-12 * norm, "grad norm: gpu %.15g cpu %.15g", sqrt(ss), norm);
    zb_adamw_update_range(&o, &m, 0, n, m.grad, o.m, o.v, lr, gs);
    zb_cuda_adamw(segs, dw, dg, dm, dv, lr, oc.beta1, oc.beta2, oc.eps, gs, o.step + 1);
    float *hw = zb_falloc(n), *hm = zb_falloc(n), *hv = zb_falloc(n);
    zb_host_f(hw, dw, n); zb_host_f(hm, dm, n); zb_host_f(hv, dv, n);
    double *bw = zb_dalloc(n), *bm = zb_dalloc(n), *bv = zb_dalloc(n);
    double bc1 = 1 - pow(oc.beta1, 3.0), bc2 = sqrt(1 - pow(oc.beta2, 3.0));
    for (size_t i = 0; i < n; i++) {
        double g = fabs((double)m.grad[i] * gs);
        bm[i] = 4 * U * (oc.beta1 * fabs(m0[i]) + (1 - oc.beta1) * g);
        bv[i] = 4 * U * (oc.beta2 * fabs(v0[i]) + (1 - oc.beta2) * g * g);
        double upd = lr / bc1 * fabs(o.m[i]) / (sqrt(o.v[i]) / bc2 + oc.eps);
        /* the update's quotient inherits m's and v's differences (bm, bv) */
        bw[i] = 8 * U * (fabs(w0[i]) + upd) + upd * (bm[i] / (fabs(o.m[i]) + 1e-30) + bv[i] / (o.v[i] + 1e-30));
    }
    zb_check_bounds("adamw weights", hw, m.data, bw, n);
    zb_check_bounds("adamw first moments", hm, o.m, bm, n);
    zb_check_bounds("adamw second moments", hv, o.v, bv, n);
    zb_cuda_segs_free(segs);
    free(w0); free(m0); free(v0); free(hw); free(hm); free(hv); free(bw); free(bm); free(bv);
    zb_cuda_free(dw); zb_cuda_free(dg); zb_cuda_free(dm); zb_cuda_free(dv);
    zb_adamw_free(&o);
    zb_model_free(&m);
}

/* bf16 CONVERT: the backward's dout rounded once for both products == once per product (bits) */
static void test_bwd_shared(zb_rng *rng, int N, int C, int OC) {
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    float *x = zb_falloc(nx), *w = zb_falloc(nw), *go = zb_falloc(no);
    zb_fill_uniform(x, nx, 1.0f, rng);
    zb_fill_uniform(w, nw, 0.5f, rng);
    zb_fill_uniform(go, no, 1.0f, rng);
    float *dx = zb_dev_f(x, nx), *dw = zb_dev_f(w, nw), *dgo = zb_dev_f(go, no);
    float *r[2][2], *h[2][2];
    for (int k = 0; k < 2; k++) {
        zb_cuda_matmul_bwd_shared(k == 0);
        r[k][0] = zb_dev_f(NULL, nx);
        r[k][1] = zb_dev_f(NULL, nw);
        zb_cuda_matmul_backward(r[k][0], r[k][1], NULL, dgo, dx, dw, N, C, OC);
        h[k][0] = zb_falloc(nx);
        h[k][1] = zb_falloc(nw);
        zb_host_f(h[k][0], r[k][0], nx);
        zb_host_f(h[k][1], r[k][1], nw);
    }
    zb_cuda_matmul_bwd_shared(1);
    zb_check(!memcmp(h[0][0], h[1][0], nx * 4) && !memcmp(h[0][1], h[1][1], nw * 4),
             "matmul_backward bf16 CONVERT %dx%dx%d: dout rounded once == once per product (bits; max |d| %.3g, %.3g)",
             N, C, OC, zb_max_abs_diff(h[0][0], h[1][0], nx), zb_max_abs_diff(h[0][1], h[1][1], nw));
    for (int k = 0; k < 2; k++) {
        zb_cuda_free(r[k][0]); zb_cuda_free(r[k][1]);
        free(h[k][0]); free(h[k][1]);
    }
    zb_cuda_free(dx); zb_cuda_free(dw); zb_cuda_free(dgo);
    free(x); free(w); free(go);
}

/* bf16 CONVERT: the head's loss + backward with the logits gradient handed over in bf16 by the loss
 * kernel (zb_cuda_cross_entropy_head) == the float32 gradient in place, then rounded by the shared
 * backward (ZB_CUDA_DLOGITS16=0): the same float32 values rounded once each, so the same bits (loss,
 * dinp, dW); some rows ignored (target -1). */
static void test_head_grad16(zb_rng *rng, int N, int C, int V) {
    size_t nx = (size_t)N * C, nw = (size_t)V * C, nl = (size_t)N * V;
    float *x = zb_falloc(nx), *w = zb_falloc(nw), *lg = zb_falloc(nl);
    int *y = (int *)malloc(sizeof(int) * N);
    zb_fill_uniform(x, nx, 1.0f, rng);
    zb_fill_uniform(w, nw, 0.5f, rng);
    zb_fill_uniform(lg, nl, 4.0f, rng);
    for (int i = 0; i < N; i++) y[i] = i % 7 == 3 ? -1 : (int)(zb_rng_u64(rng) % V);
    float *dx = zb_dev_f(x, nx), *dw = zb_dev_f(w, nw);
    int *dy = zb_dev_i(y, N);
    float *h[2][2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        zb_cuda_dlogits16(k);
        float *dl = zb_dev_f(lg, nl), *gi = zb_dev_f(NULL, nx), *gw = zb_dev_f(NULL, nw);
        loss[k] = zb_cuda_cross_entropy_head(dl, dy, N, V, 1.0f / N);
        zb_cuda_matmul_backward(gi, gw, NULL, dl, dx, dw, N, C, V);
        h[k][0] = zb_falloc(nx);
        h[k][1] = zb_falloc(nw);
        zb_host_f(h[k][0], gi, nx);
        zb_host_f(h[k][1], gw, nw);
        zb_cuda_free(dl); zb_cuda_free(gi); zb_cuda_free(gw);
    }
    zb_cuda_dlogits16(-1);
    zb_check(loss[0] == loss[1] && !memcmp(h[0][0], h[1][0], nx * 4) && !memcmp(h[0][1], h[1][1], nw * 4),
             "head backward bf16 CONVERT %dx%dx%d: bf16 logits gradient from the loss == float32 then rounded "
             "(bits; loss %.17g vs %.17g, max |d| %.3g, %.3g)",
             N, C, V, loss[1], loss[0], zb_max_abs_diff(h[0][0], h[1][0], nx), zb_max_abs_diff(h[0][1], h[1][1], nw));
    for (int k = 0; k < 2; k++) { free(h[k][0]); free(h[k][1]); }
    zb_cuda_free(dx); zb_cuda_free(dw); zb_cuda_free(dy);
    free(x); free(w); free(lg); free(y);
}

/* ---- the MLP with bf16 activations (zb_cuda_mlp_*_bf16) against the CPU's float32 MLP ----
 * Bounds from one bf16 rounding per stored operand (unit roundoff u16 = 2^-9: ln, g, u, h, the
 * weights' copies; backward dout, dh, dg, du), propagated through each step with the magnitudes
 * of the summed terms (computed on the host from absolute values), plus float32 sums on both
 * sides (2 (K + 2) u32 per length-K product). silu' lies in [-0.1, 1.1], |silu''| <= 1/2. */
static double *mat_abs(const float *A, const float *B, int M, int K, int Nn, int tB) {
    /* |A|[M,K] |B|^T (tB: B [Nn,K]) or |A| |B| (B [K,Nn]), in double */
    double *o = zb_dalloc((size_t)M * Nn);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            double a = fabs(A[(size_t)i * K + k]);
            if (a == 0) continue;
            for (int j = 0; j < Nn; j++) o[(size_t)i * Nn + j] += a * fabs(tB ? B[(size_t)j * K + k] : B[(size_t)k * Nn + j]);
        }
    return o;
}
static double *dmat(const double *A, const double *B, int M, int K, int Nn, int tA, int tB) {
    /* A' B' with A' = A [M,K] or A^T (A [K,M]), B' = B [K,Nn] or B^T (B [Nn,K]): nonnegative */
    double *o = zb_dalloc((size_t)M * Nn);
    for (int k = 0; k < K; k++)
        for (int i = 0; i < M; i++) {
            double a = tA ? A[(size_t)k * M + i] : A[(size_t)i * K + k];
            if (a == 0) continue;
            for (int j = 0; j < Nn; j++) o[(size_t)i * Nn + j] += a * (tB ? B[(size_t)j * K + k] : B[(size_t)k * Nn + j]);
        }
    return o;
}
static double *dabs(const float *x, size_t n) {
    double *o = zb_dalloc(n);
    for (size_t i = 0; i < n; i++) o[i] = fabs(x[i]);
    return o;
}

static void test_mlp_bf16(zb_rng *rng, int N, int d, int F, int off) {
    const zb_backend *cpu = zb_backend_cpu();
    size_t Nd = (size_t)N * d, NF = (size_t)N * F, dF = (size_t)d * F;
    float eps = 1e-5f;
    float *x = zb_falloc(Nd), *nw = zb_falloc(d), *Wg = zb_falloc(dF), *Wu = zb_falloc(dF), *Wd = zb_falloc(dF);
    float *dout = zb_falloc(Nd), *gw0 = zb_falloc(3 * dF);
    zb_fill_uniform(x, Nd, 2.0f, rng);
    for (int i = 0; i < d; i++) nw[i] = 0.5f + 0.5f * (float)zb_rng_uniform(rng);
    zb_fill_uniform(Wg, dF, 0.1f, rng);
    zb_fill_uniform(Wu, dF, 0.1f, rng);
    zb_fill_uniform(Wd, dF, 0.05f, rng);
    zb_fill_uniform(dout, Nd, 1.0f, rng);
    zb_fill_uniform(gw0, 3 * dF, 0.1f, rng);
    /* the reference: the CPU's separate calls, float32 */
    float *out = zb_falloc(Nd), *ln = zb_falloc(Nd), *rstd = zb_falloc(N), *g = zb_falloc(NF), *u = zb_falloc(NF);
    float *h = zb_falloc(NF), *dln = zb_falloc(Nd), *gw = zb_falloc(3 * dF), *s1 = zb_falloc(NF), *s2 = zb_falloc(NF);
    float *s3 = zb_falloc(NF);
    memcpy(gw, gw0, sizeof(float) * 3 * dF);
    zb_mlp_forward_calls(cpu, out, ln, rstd, g, u, h, x, nw, Wg, Wu, Wd, N, d, F, eps);
    zb_mlp_backward_calls(cpu, dln, gw, gw + dF, gw + 2 * dF, dout, ln, g, u, h, Wg, Wu, Wd, s1, s2, s3, N, d, F);
    /* the GPU's bf16 path */
    float *D_x = zb_dev_f(x, Nd), *D_nw = zb_dev_f(nw, d), *D_Wg = zb_dev_f(Wg, dF), *D_Wu = zb_dev_f(Wu, dF);
    float *D_Wd = zb_dev_f(Wd, dF), *D_dout = zb_dev_f(dout, Nd), *D_gw = zb_dev_f(gw0, 3 * dF);
    float *D_out = zb_dev_f(NULL, Nd), *D_ln = zb_dev_f(NULL, Nd), *D_rstd = zb_dev_f(NULL, N);
    float *D_gb = zb_dev_f(NULL, NF + 1), *D_ub = zb_dev_f(NULL, NF + 1), *D_hb = zb_dev_f(NULL, NF + 1);
    float *D_dln = zb_dev_f(NULL, Nd);
    float *D_s1b = zb_dev_f(NULL, NF + 1), *D_s2b = zb_dev_f(NULL, NF + 1), *D_s3b = zb_dev_f(NULL, NF + 1);
    /* off: the bf16 buffers start 4 bytes in (not 16-byte aligned: SwiGLU's scalar path) */
    float *D_g = D_gb + off, *D_u = D_ub + off, *D_h = D_hb + off, *D_s1 = D_s1b + off, *D_s2 = D_s2b + off;
    float *D_s3 = D_s3b + off;
    zb_check(zb_cuda_mlp_forward_bf16(D_out, D_ln, D_rstd, D_g, D_u, D_h, D_x, D_nw, D_Wg, D_Wu, D_Wd, N, d, F, eps),
             "mlp bf16 forward taken (bf16 CONVERT mode)");
    zb_check(zb_cuda_mlp_backward_bf16(D_dln, D_gw, D_gw + dF, D_gw + 2 * dF, D_dout, D_ln, D_g, D_u, D_h, D_Wg, D_Wu,
                                       D_Wd, D_s1, D_s2, D_s3, N, d, F),
             "mlp bf16 backward taken");
    float *got = zb_falloc(3 * dF > NF ? 3 * dF : NF);
    const double u16 = ZB_U16, u32 = U;
    /* magnitudes: ln, g, u, h; dh, dg, du */
    double *Mln = dabs(ln, Nd), *Mg = mat_abs(ln, Wg, N, d, F, 1), *Mu = mat_abs(ln, Wu, N, d, F, 1);
    double *Mh = zb_dalloc(NF), *Mdh = mat_abs(dout, Wd, N, d, F, 0);
    double e1 = 3 * u16 + 2 * (d + 2) * u32;   /* g, u: ln and W rounded, the sum, the stored result */
    double eh = 2.1 * e1 + e1 * e1 + u16 + 12 * u32, edh = 3 * u16 + 2 * (d + 2) * u32;
    double *Bdg = zb_dalloc(NF), *Bdu = zb_dalloc(NF), *Mdg = zb_dalloc(NF), *Mdu = zb_dalloc(NF);
    for (size_t i = 0; i < NF; i++) {
        Mh[i] = Mg[i] * Mu[i];
        double k = 1 + 4 * e1;   /* the second-order terms */
        Bdu[i] = k * Mdh[i] * Mg[i] * (edh + 1.1 * e1 + u16 + 16 * u32);
        Bdg[i] = k * Mdh[i] * Mu[i] * (1.1 * edh + 1.1 * e1 + 1.1 * u16 + 0.5 * e1 * Mg[i] + 36 * u32 * (2 + Mg[i]));
        Mdg[i] = 1.1 * Mdh[i] * Mu[i] + Bdg[i];
        Mdu[i] = Mdh[i] * Mg[i] + Bdu[i];
    }
    char what[160];
    /* out = h Wd^T: h's error (eh Mh), Wd rounded, the sums */
    double *aWd = dabs(Wd, dF), *Mo = dmat(Mh, aWd, N, F, d, 0, 1);
    zb_host_f(got, D_out, Nd);
    snprintf(what, sizeof what, "mlp bf16 out N=%d d=%d F=%d", N, d, F);
    zb_check_mag(what, got, out, Mo, (1 + 2 * e1) * (eh + u16 + 2 * (F + 2) * u32), 1e-30, Nd);
    zb_host_f(got, D_rstd, N);
    zb_check_mag("mlp bf16 rstd", got, rstd, NULL, 8 * u32, 1e-30, N);
    /* dln = dg Wg + du Wu */
    double *aWg = dabs(Wg, dF), *aWu = dabs(Wu, dF);
    double *b1 = dmat(Bdg, aWg, N, F, d, 0, 0), *b2 = dmat(Bdu, aWu, N, F, d, 0, 0);
    double *m1 = dmat(Mdg, aWg, N, F, d, 0, 0), *m2 = dmat(Mdu, aWu, N, F, d, 0, 0);
    double *bd = zb_dalloc(Nd);
    for (size_t i = 0; i < Nd; i++) bd[i] = b1[i] + b2[i] + (u16 + 2 * (2 * F + 2) * u32) * (m1[i] + m2[i]) + 1e-30;
    zb_host_f(got, D_dln, Nd);
    snprintf(what, sizeof what, "mlp bf16 dln N=%d d=%d F=%d", N, d, F);
    zb_check_bounds(what, got, dln, bd, Nd);
    /* dWd += dout^T h; dWg += dg^T ln; dWu += du^T ln (from gw0) */
    double *adout = dabs(dout, Nd), *ag0 = dabs(gw0, 3 * dF);
    double *mwd = dmat(adout, Mh, d, N, F, 1, 0);
    double *bwg = dmat(Bdg, Mln, F, N, d, 1, 0), *mwg = dmat(Mdg, Mln, F, N, d, 1, 0);
    double *bwu = dmat(Bdu, Mln, F, N, d, 1, 0), *mwu = dmat(Mdu, Mln, F, N, d, 1, 0);
    double *bw = zb_dalloc(3 * dF);
    double en = 2 * (N + 3) * u32;
    for (size_t i = 0; i < dF; i++) {
        bw[i] = bwg[i] + (u16 + en) * mwg[i] + en * ag0[i] + 1e-30;
        bw[dF + i] = bwu[i] + (u16 + en) * mwu[i] + en * ag0[dF + i] + 1e-30;
        bw[2 * dF + i] = (u16 + eh + en) * mwd[i] + en * ag0[2 * dF + i] + 1e-30;
    }
    zb_host_f(got, D_gw, 3 * dF);
    snprintf(what, sizeof what, "mlp bf16 dW gate|up|down N=%d d=%d F=%d", N, d, F);
    zb_check_bounds(what, got, gw, bw, 3 * dF);
    void *fr[] = {x, nw, Wg, Wu, Wd, dout, gw0, out, ln, rstd, g, u, h, dln, gw, s1, s2, s3, got, Mln, Mg, Mu, Mh, Mdh,
                  Bdg, Bdu, Mdg, Mdu, Mo, aWd, aWg, aWu, b1, b2, m1, m2, bd, adout, ag0, mwd, bwg, mwg, bwu, mwu, bw};
    for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) free(fr[i]);
    float *df[] = {D_x, D_nw, D_Wg, D_Wu, D_Wd, D_dout, D_gw, D_out, D_ln, D_rstd, D_gb, D_ub, D_hb, D_dln, D_s1b, D_s2b, D_s3b};
    for (size_t i = 0; i < sizeof df / sizeof df[0]; i++) zb_cuda_free(df[i]);
}

/* mlp_linear_forward with bf16 matrices (the KD teacher's inference MLP) against the CPU's
 * float32 calls on the same (widened) matrices: the input, g, u and h each rounded to bf16 once,
 * the bounds of test_mlp_bf16's forward (their weight term is then an upper bound). stacked:
 * Wu right after Wg (one product) or apart (two). */
static void test_mlp_linear_bf16(zb_rng *rng, int N, int C, int F, int OC, int stacked) {
    const zb_backend *cpu = zb_backend_cpu();
    size_t NC = (size_t)N * C, NF = (size_t)N * F, CF = (size_t)C * F, FO = (size_t)F * OC, no = (size_t)N * OC;
    float *x = zb_falloc(NC), *W = zb_falloc(2 * CF + FO + 8);
    zb_fill_uniform(x, NC, 1.0f, rng);
    zb_fill_uniform(W, 2 * CF + FO + 8, 0.1f, rng);
    for (size_t i = 0; i < 2 * CF + FO + 8; i++) W[i] = zb_bf16_to_f32(zb_f32_to_bf16(W[i]));   /* bf16 values */
    float *Wg = W, *Wu = W + CF + (stacked ? 0 : 8), *Wd = Wu + CF;
    float *out = zb_falloc(no), *g = zb_falloc(NF), *u = zb_falloc(NF);
    zb_mlp_linear_forward_calls(cpu, out, g, u, x, zb_wt_of_f32(Wg), zb_wt_of_f32(Wu), zb_wt_of_f32(Wd), N, C, F, OC);
    float *D_W = zb_dev_f(W, 2 * CF + FO + 8), *D_x = zb_dev_f(x, NC), *D_out = zb_dev_f(NULL, no);
    float *D_g = zb_dev_f(NULL, NF), *D_u = zb_dev_f(NULL, NF);
    uint16_t *W16 = (uint16_t *)zb_dev_f(NULL, CF + FO / 2 + 8);
    zb_cuda_f32_to_bf16(W16, D_W, 2 * CF + FO + 8);   /* exact: the values are bf16 */
    const uint16_t *g16 = W16, *u16 = W16 + (Wu - W), *d16 = W16 + (Wd - W);
    zb_check(zb_cuda_mlp_linear_forward_bf16(D_out, D_g, D_u, D_x, zb_wt_of_bf16(g16), zb_wt_of_bf16(u16),
                                             zb_wt_of_bf16(d16), N, C, F, OC),
             "mlp_linear_forward bf16 taken (N = %d)", N);
    float *got = zb_falloc(no);
    zb_host_f(got, D_out, no);
    double u16v = ZB_U16, u32 = U, e1 = 3 * u16v + 2 * (C + 2) * u32;
    double eh = 2.1 * e1 + e1 * e1 + u16v + 12 * u32;
    double *Mg = mat_abs(x, Wg, N, C, F, 1), *Mu = mat_abs(x, Wu, N, C, F, 1), *Mh = zb_dalloc(NF);
    for (size_t i = 0; i < NF; i++) Mh[i] = Mg[i] * Mu[i];
    double *aWd = dabs(Wd, FO), *Mo = dmat(Mh, aWd, N, F, OC, 0, 1);
    char what[160];
    snprintf(what, sizeof what, "mlp_linear_forward bf16 N=%d C=%d F=%d OC=%d %s", N, C, F, OC,
             stacked ? "stacked" : "apart");
    zb_check_mag(what, got, out, Mo, (1 + 2 * e1) * (eh + u16v + 2 * (F + 2) * u32), 1e-30, no);
    free(x); free(W); free(out); free(g); free(u); free(got); free(Mg); free(Mu); free(Mh); free(aWd); free(Mo);
    zb_cuda_free(D_W); zb_cuda_free(D_x); zb_cuda_free(D_out); zb_cuda_free(D_g); zb_cuda_free(D_u); zb_cuda_free(W16);
}

int main(int argc, char **argv) {
    int rc = zb_cuda_test_init(&argc, &argv);
    if (rc) return rc;
    const char *fixtures = argc > 1 ? argv[1] : "../shared/fixtures";
    zb_rng rng;
    zb_rng_seed(&rng, 20251201);

    zb_cuda_set_precision(ZB_PREC_F32);
    test_matmul(&rng, 37, 67, 45, 1, 1);
    test_matmul(&rng, 1, 67, 45, 0, 1);
    test_matmul(&rng, 300, 1027, 515, 0, 1);
    test_linear_bf16(&rng, 37, 67, 45);
    test_linear_bf16(&rng, 1, 1027, 515);
    test_linear_bf16(&rng, 3, 1032, 77);    /* the decode GEMV (N <= 8, C % 8 == 0), its ragged tail */
    test_linear_bf16(&rng, 8, 4096, 100);
    for (int N = 1; N <= 8; N++) {   /* every row count of the GEMV; C not a multiple of the warp's sweep */
        test_linear_bf16(&rng, N, 1032 + 8 * N, 70 + 3 * N);
        test_gemv_fused(&rng, N, 520 + 24 * N, 64 + N, 17 + N, 45 + 2 * N);
    }
    test_gemv_fused(&rng, 2, 1036, 30, 10, 20);   /* C % 8 != 0: the separate products */
    for (int ks = 1; ks <= 8; ks *= 2) {   /* each split of a row over the block's warps */
        zb_cuda_gemv_set_split(ks);
        test_linear_bf16(&rng, 3, 4104, 13);
        test_gemv_fused(&rng, 1, 2056, 11, 5, 9);
        zb_cuda_gemv_set_unroll(8);   /* one row with 8 loads in flight per lane */
        test_linear_bf16(&rng, 1, 4104, 13);
        test_gemv_fused(&rng, 1, 2056, 11, 5, 9);
        zb_cuda_gemv_set_unroll(0);
    }
    zb_cuda_gemv_set_split(0);
    /* the decode step's products above 8 rows (batch 48): cublasGemmEx, then the algorithm timed
     * per shape (whichever it keeps) */
    for (int tune = 0; tune < 2; tune++) {
        zb_cuda_gemm_tune(tune);
        test_linear_bf16(&rng, 48, 1024, 1000);
        test_linear_bf16(&rng, 24, 2056, 312);
        test_linear_bf16(&rng, 48, 1024, 1000);   /* the choice made, used again */
    }
    zb_cuda_gemm_tune(-1);
    test_rmsnorm(&rng, 37, 200);
    test_rmsnorm(&rng, 5, 2051);
    test_rmsnorm(&rng, 301, 2048);
    zb_cuda_rmsnorm_bwd_fused(1);
    test_rmsnorm(&rng, 301, 2048);   /* the fused backward: blocks of 16 rows, a ragged last one */
    test_rmsnorm(&rng, 40, 4100);    /* C > 16 x 256: the two kernels */
    zb_cuda_rmsnorm_bwd_fused(-1);
    test_add_rmsnorm(&rng, 1, 4096);
    test_add_rmsnorm(&rng, 7, 2051);
    /* the GEMV + residual + norm: every row count, each split of a row, rows wider than 16 x 256
     * (add_rmsnorm's loop), an odd width above 128 */
    for (int N = 1; N <= 8; N++) test_gemv_norm(&rng, N, 512 + 8 * N, 300 + 7 * N);
    test_gemv_norm(&rng, 1, 4096, 4096);
    test_gemv_norm(&rng, 2, 1024, 4200);
    test_gemv_norm(&rng, 3, 1032, 129);
    for (int ks = 1; ks <= 8; ks *= 2) {
        zb_cuda_gemv_set_split(ks);
        test_gemv_norm(&rng, 1, 2056, 513);
        test_gemv_norm(&rng, 5, 2056, 257);
    }
    zb_cuda_gemv_set_split(0);
    zb_cuda_gemv_set_unroll(8);
    test_gemv_norm(&rng, 1, 4104, 1001);
    zb_cuda_gemv_set_unroll(0);
    for (int il = 0; il < 2; il++)
        for (int inv = 0; inv < 2; inv++) {
            test_rope(&rng, il, inv, il);
            test_rope(&rng, il, inv, 2);
        }
    test_swiglu(&rng, 1003);
    test_embedding(&rng, 70);
    test_embedding(&rng, 2100);   /* 3 blocks a row, the last ragged */
    test_elementwise(&rng);
    test_attention(&rng, 2, 37, 4, 2, 24, 16, 8, 0);
    test_attention(&rng, 2, 37, 4, 2, 24, 16, 8, 16);
    test_attention(&rng, 1, 70, 4, 4, 40, 24, 0, 32);
    test_attention(&rng, 2, 33, 6, 1, 32, 32, 0, 0);
    for (int bf = 0; bf < 2; bf++) {
        test_cached(&rng, 0, bf, 1);
        test_cached(&rng, 0, bf, 5);
        test_cached(&rng, 1, bf, 1);
        test_cached(&rng, 1, bf, 5);
        /* the bf16 fast path's shapes (head dims 64, 128, 256; 1, 2, 4, 8 heads per group) and the
         * same shapes on float32 caches */
        test_cached_shape(&rng, 0, bf, 1, 8, 8, 64, 700);
        test_cached_shape(&rng, 0, bf, 1, 8, 4, 128, 700);
        test_cached_shape(&rng, 0, bf, 1, 8, 2, 128, 1100);
        test_cached_shape(&rng, 0, bf, 1, 16, 2, 64, 300);
        test_cached_shape(&rng, 0, bf, 1, 8, 2, 256, 200);
        test_cached_shape(&rng, 0, bf, 1, 6, 2, 128, 90);   /* 3 per group: the general kernel */
        test_cached_shape(&rng, 1, bf, 1, 8, 0, 0, 2600);    /* MLA past 2048 positions: P V in pieces */
        /* the fused MLA decode kernel's shapes (bf16 caches): Zebra-8B's latent rows (160 + 64, 32
         * heads) over chunks of 512 with a ragged last tile, and 20 heads (padded to 32) of 96 / 32 */
        g_mla_dqk = 224; g_mla_dv = 160;
        test_cached_shape(&rng, 1, bf, 1, 32, 0, 0, 1100);
        g_mla_dqk = 96; g_mla_dv = 32;
        test_cached_shape(&rng, 1, bf, 1, 20, 0, 0, 300);
        g_mla_dqk = 128; g_mla_dv = 64;   /* 3 head tiles (the register kernel's small instance) */
        test_cached_shape(&rng, 1, bf, 1, 48, 0, 0, 300);
        g_mla_dqk = 224; g_mla_dv = 160;  /* 64 heads: 4 head tiles, 8 warps */
        test_cached_shape(&rng, 1, bf, 1, 64, 0, 0, 700);
        g_mla_dqk = 40; g_mla_dv = 32;
    }
    /* the fused kernels: rows one float at a time (V odd), 4 at a time (V % 4 == 0; the vocabulary of
     * Llama 3), then the kernels of one pass per statistic (ZB_CUDA_LOSS=rows) */
    test_losses(&rng, 37, 1003);
    test_losses(&rng, 37, 1004);
    test_losses(&rng, 3, 128256);
    zb_cuda_loss_use_rows(1);
    test_losses(&rng, 37, 1003);
    zb_cuda_loss_use_rows(0);
    test_argmax(&rng, 1003);
    test_argmax(&rng, 37);
    test_argmax(&rng, 128256);   /* 32 blocks a row (k_argmax_split) */
    test_argmax(&rng, 128256);   /* again: the tickets reset by the last call */
    test_argmax(&rng, 8193);     /* 3 blocks, the last of one column */
    zb_cuda_argmax_set_split(0);   /* ZB_ARGMAX_SPLIT=0: one block a row */
    test_argmax(&rng, 128256);
    zb_cuda_argmax_set_split(-1);
    test_adamw(&rng, fixtures);

    /* the mixed mode: bf16 operands of the products, both ways of feeding them */
    zb_cuda_set_precision(ZB_PREC_BF16);
    for (int impl = 0; impl < 2; impl++) {
        zb_cuda_set_bf16_gemm(impl ? ZB_BF16_GEMM_CONVERT : ZB_BF16_GEMM_FAST);
        test_matmul(&rng, 37, 67, 45, 1, 1);
        test_matmul(&rng, 300, 1027, 515, 0, 1);
    }
    zb_cuda_set_bf16_gemm(ZB_BF16_GEMM_CONVERT);
    test_bwd_shared(&rng, 300, 1027, 515);
    test_bwd_shared(&rng, 64, 256, 1000);
    test_head_grad16(&rng, 64, 256, 1004);   /* float4 rows */
    test_head_grad16(&rng, 37, 72, 1003);    /* scalar rows */
    test_mlp_bf16(&rng, 300, 256, 688, 0);   /* 8 bf16 per 16 bytes: the vector path */
    test_mlp_bf16(&rng, 37, 72, 101, 1);     /* unaligned buffers, N F odd: the scalar path */
    test_mlp_linear_bf16(&rng, 1100, 64, 96, 72, 1);   /* >= 1024 rows: the bf16 path */
    test_mlp_linear_bf16(&rng, 1030, 40, 52, 33, 0);
    test_attention(&rng, 2, 37, 4, 2, 24, 16, 8, 16);
    test_attention(&rng, 1, 70, 4, 4, 40, 24, 0, 0);
    /* the tensor-core flash kernels (head dims 64 / 128): ragged T, GQA, padded rows; version 2
     * (cuda_flash2.cu, the default) and version 1 (cuda_flash.cu, ZB_FLASH=old) */
    for (int ver = 2; ver >= 1; ver--) {
        zb_cuda_flash_set_version(ver);
        test_attention(&rng, 2, 100, 8, 2, 64, 64, 0, 0);
        test_attention(&rng, 1, 130, 4, 4, 128, 128, 8, 0);
        test_attention(&rng, 1, 64, 4, 1, 64, 64, 4, 0);
    }
    /* version 2 with each forward CTA shape (4 x 16, 8 x 16, 4 x 32 query rows) and each
     * backward shape (4 warps for 2 or 3 CTAs per SM, 8 warps): the models' GQA 32/8 with T not
     * a multiple of the tiles, several key tiles with one row in the last, fewer rows than a
     * tile, one KV head for all */
    zb_cuda_flash_set_version(2);
    for (int sh = 1; sh <= 3; sh++) {
        zb_cuda_flash2_tune(sh, sh);
        g_fa2_shape = sh;
        test_attention(&rng, 2, 150, 32, 8, 64, 64, 0, 0);
        test_attention(&rng, 1, 200, 32, 8, 128, 128, 8, 0);
        test_attention(&rng, 1, 257, 4, 2, 64, 64, 4, 0);
        test_attention(&rng, 1, 300, 4, 1, 128, 128, 0, 0);
        test_attention(&rng, 3, 5, 4, 4, 64, 64, 0, 0);
    }
    zb_cuda_flash2_tune(0, 0);
    g_fa2_shape = 0;
    zb_cuda_flash_set_version(0);
    zb_cuda_attention_use_flash(0);   /* the same shapes on the blocked path in bf16 */
    test_attention(&rng, 2, 100, 8, 2, 64, 64, 0, 0);
    zb_cuda_attention_use_flash(1);
    test_cached(&rng, 0, 0, 1);
    test_cached(&rng, 1, 0, 5);
    test_pdl_chain(&rng, 1);
    test_pdl_chain(&rng, 5);
    for (int bf = 0; bf < 2; bf++) {   /* the fused decode piece: the 8B's shape, a partial rotary dim */
        test_decode_qkv_prep(&rng, bf, 32, 8, 128, 128);
        test_decode_qkv_prep(&rng, bf, 6, 2, 40, 24);
    }
    for (int bf = 0; bf < 2; bf++) {   /* the decode attention in one kernel */
        const int p1[1] = {0}, p2[1] = {17}, p3[3] = {63, 64, 255}, p4[2] = {8191, 5000}, p5[2] = {130, 0};
        test_decode_fused(&rng, bf, 32, 8, 128, 128, 40, 1, p1, 0);     /* the 8B's shape: one position */
        test_decode_fused(&rng, bf, 32, 8, 128, 128, 136, 1, p2, 0);    /* short: one chunk, no merge */
        test_decode_fused(&rng, bf, 32, 8, 128, 128, 300, 3, p3, 0);    /* across chunk boundaries, batch 3 */
        test_decode_fused(&rng, bf, 32, 8, 128, 128, 300, 3, p3, 32);   /* many chunks */
        test_decode_fused(&rng, bf, 8, 2, 128, 128, 8192, 2, p4, 0);    /* 8k: 128 chunks, k_decode_merge after */
        zb_cuda_decode_attn_set_merge_max(1024);                           /* the same merged by the last block */
        test_decode_fused(&rng, bf, 8, 2, 128, 128, 8192, 2, p4, 0);
        zb_cuda_decode_attn_set_merge_max(0);                              /* every merge by k_decode_merge */
        test_decode_fused(&rng, bf, 32, 8, 128, 128, 300, 3, p3, 32);
        test_decode_fused(&rng, bf, 4, 2, 64, 32, 200, 2, p5, 0);
        zb_cuda_decode_attn_set_merge_max(-1);
        test_decode_fused(&rng, bf, 4, 2, 64, 32, 200, 2, p5, 0);       /* partial rotary dim, 2 heads a group */
        test_decode_fused(&rng, bf, 8, 1, 256, 64, 200, 2, p5, 64);     /* 8 heads a group, 256 wide */
        test_decode_fused(&rng, bf, 2, 2, 64, 64, 200, 2, p5, 512);     /* a head a group, one chunk of 512 */
    }
    zb_cuda_set_precision(ZB_PREC_F32);
    int st = zb_cuda_sync();
    zb_check(st == ZB_OK, "no pending device error (%s)", st ? zb_errmsg() : "none");
    return zb_test_finish();
}
