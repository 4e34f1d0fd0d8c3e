/* test_cuda_mamba2.c [hf-mamba2-layer dir] — the CUDA Mamba2 mixer (core/cuda) against the CPU
 * mixer (core/mamba2.c), a double-precision reference and the HF fixture. Exits 77 (ctest SKIP)
 * with one line where no CUDA device is present.
 *
 * 1. Each stage alone, fed the CPU mixer's own intermediate values (acts, backward scratch),
 *    against the CPU's result of that stage: dt, conv + SiLU, chunked SSD (y and chunk states),
 *    gated RMSNorm, and the backward of each (norm, SSD, dt, conv) with the parameter gradients.
 * 2. The SSD scan alone on random inputs with an initial state (prefill continuing from a cache)
 *    against the recurrence S_t = e^{dt A} S_{t-1} + dt x B^T, y = S C + D x in double, forward
 *    (y, chunk states, final state) and backward (dx, dB, dC, ddt, dA_log, dD by reverse-mode
 *    through the recurrence), each also in the bf16 mode (its tile products on the tensor cores
 *    with TF32 operands); the one-token step for rows of sequences at other positions.
 * 3. The whole mixer: forward output, dx and every parameter gradient against the CPU, run on a
 *    handle of its own and as the backend runs it (the backend's stream and linear layers) in
 *    f32 and in the bf16 mode (bf16 bounds, see BF16_OUT_TOL); decode
 *    (n = 1 steps), prefill + decode, prefill continuing from a cache, batched decode_seqs with
 *    sequences at different positions, bf16 weight views; the HF fixture as test_mamba2 checks it.
 * The SSD scan runs the fused per-chunk kernels where the chunk, head and state fit 64 (the
 * training chunk) and the tile kernels elsewhere; test 2 runs both on the fused shapes.
 * Shapes: n_groups 1 and 2, x / B groups repeated to heads (Zebra), C per head, per-head and
 * whole-width norm, chunk > T, ragged last chunks, chunks of several 64-row tiles, head and state
 * widths that are not multiples of 64, a clamped dt, no conv bias.
 *
 * Tolerances. Elementwise, from the arithmetic (Higham, Accuracy and Stability, 3.1): a value
 * computed from exact inputs by sums of at most n terms (any order, FMA or not) is within
 * gamma_n M ~ n u M of the exact value, u = 2^-24, M = sum of |terms| (the "magnitude",
 * computed here in double with every term's absolute value). Against the double reference the
 * bound is n u M; GPU against CPU (both rounded) 2 n u M. n counts the longest chain of
 * roundings: the sums' lengths, a few units per exp / log1p / division, and the chunked form's
 * cumulative sums cs (their error, <= L u |cs|, enters every exp(cs_i - cs_j) and exp(cs_L) as
 * an absolute error of the exponent: n_cs = (2 + nchunks) L max|cs_L| + ...). The magnitude of a
 * gradient sums |terms| over the chunked form's own terms where it differs from the recurrence
 * (ddt, dA: the exponents' gradients are sums of terms that cancel). Whole-mixer results chain
 * GEMMs of cuBLAS with the kernels; they use the tolerances of the f32 HF comparison of the CPU
 * mixer (tests/test_mamba2.c: output 1e-4 max-relative, gradients 1e-3 norm-relative), as issue
 * 17 asks ("same tolerances in f32").
 * Every mismatch prints kernel, [row, col], got, want and bound (the first 40 per check;
 * ZB_CUDA_TEST_ALL=1 prints all). */
#include <cjson/cJSON.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linear.h"
#include "mamba2.h"
#include "cuda_common.h"
#include "cuda_ops.h"
#include "mamba2_cuda.h"
#include "ops.h"
#include "safetensors.h"
#include "zb_common.h"
#include "zb_test.h"

#define U 0x1p-24

#define CU(call)                                                                                      \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

/* ---- device helpers ---------------------------------------------------------------------------- */

static float *dnew(size_t n) {
    void *p = NULL;
    CU(cudaMalloc(&p, (n ? n : 1) * sizeof(float)));
    CU(cudaMemset(p, 0, (n ? n : 1) * sizeof(float)));
    return (float *)p;
}
static float *dup_(const float *h, size_t n) {
    float *d = dnew(n);
    if (n) CU(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}
/* waits for the work queued so far; a kernel fault is reported with what ran */
static void dsync(const char *what) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        fprintf(stderr, "FATAL after %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}
static float *dget(const float *d, size_t n, const char *what) {
    dsync(what);
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (n) CU(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}
static void dput(float *d, const float *h, size_t n) {
    if (n) CU(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
}

/* ---- comparisons ---------------------------------------------------------------------------- */

static int g_all;

/* |got - want| <= k n u mag elementwise (k = 2: want is itself rounded f32, 1: a double
 * reference). Exactly one of wf / wd is set. skip (may be NULL) leaves elements out. */
static void cmp(const char *what, const float *got, const float *wf, const double *wd, const double *mag,
                size_t n, int cols, double n_eff, double k, const unsigned char *skip) {
    size_t bad = 0, used = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip && skip[i]) continue;
        used++;
        double want = wf ? wf[i] : wd[i], bound = k * n_eff * U * mag[i] + 1e-37;
        double d = fabs((double)got[i] - want);
        if (!(d <= bound)) {   /* NaN fails */
            bad++;
            if (bad <= 40 || g_all)
                printf("  MISMATCH %s [%zu, %zu]: got %.9g want %.9g |d| %.3g bound %.3g\n", what, i / cols,
                       i % cols, got[i], want, d, bound);
        }
        double r = d / bound;
        if (r > worst || isnan(r)) worst = isnan(r) ? INFINITY : r;
    }
    if (bad > 40 && !g_all) printf("  ... %zu mismatches in %s in all\n", bad, what);
    zb_check(bad == 0, "%s: %zu values, max |d|/bound = %.3g (n = %.0f, %s), %zu mismatches", what, used, worst,
             n_eff, k == 1 ? "vs double" : "vs CPU f32", bad);
}

/* the columns [c0, c0 + w) of rows of stride `stride`, into a packed array */
static float *cols_f(const float *a, size_t N, int stride, int c0, int w) {
    float *o = malloc((size_t)N * w * sizeof(float) + 1);
    for (size_t r = 0; r < N; r++) memcpy(o + r * w, a + r * stride + c0, (size_t)w * sizeof(float));
    return o;
}

/* ---- a random layer ------------------------------------------------------------------------ */

#define NP 8
typedef struct {
    const char *name;
    zb_mamba2_dims m;
    int d, B, T;
    float dt_lo, dt_hi;
} cfg;

typedef struct {
    zb_mamba2_dims m;
    int d;
    zb_mamba2_weights w, g, dw, dg;   /* host weights / grads, device weights / grads */
    size_t n[NP];
} layer;

static float **wslot(zb_mamba2_weights *w, int i) {
    float **s[NP] = {&w->in_proj, &w->conv_w, &w->conv_b, &w->dt_bias, &w->A_log, &w->D, &w->norm_w, &w->out_proj};
    return s[i];
}
static const char *pname[NP] = {"in_proj", "conv_w", "conv_b", "dt_bias", "A_log", "D", "norm_w", "out_proj"};

static void fill(zb_rng *r, float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = scale * zb_rng_normal(r);
}
static float inv_softplus(float y) { return y + logf(-expm1f(-y)); }

static void layer_init(layer *L, const cfg *c, zb_rng *r) {
    const zb_mamba2_dims *m = &c->m;
    L->m = *m;
    L->d = c->d;
    int d = c->d, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), nh = m->nheads;
    size_t n[NP] = {(size_t)P * d, (size_t)cd * m->conv_k, (size_t)cd, (size_t)nh, (size_t)nh,
                    (size_t)nh, (size_t)m->d_inner, (size_t)d * m->d_inner};
    for (int i = 0; i < NP; i++) {
        L->n[i] = n[i];
        *wslot(&L->w, i) = calloc(n[i], sizeof(float));
        *wslot(&L->g, i) = calloc(n[i], sizeof(float));
    }
    zb_mamba2_weights *w = &L->w;
    fill(r, w->in_proj, n[0], 1.0f / sqrtf((float)d));
    fill(r, w->conv_w, n[1], 0.5f);
    fill(r, w->conv_b, n[2], 0.1f);
    for (int h = 0; h < nh; h++) {
        float u = zb_rng_uniform(r);
        w->dt_bias[h] = inv_softplus(expf(logf(c->dt_lo) + u * (logf(c->dt_hi) - logf(c->dt_lo))));
        w->A_log[h] = logf(1.0f + 15.0f * zb_rng_uniform(r));
        w->D[h] = 0.5f + zb_rng_uniform(r);
    }
    for (int i = 0; i < m->d_inner; i++) w->norm_w[i] = 1.0f + 0.1f * zb_rng_normal(r);
    fill(r, w->out_proj, n[7], 1.0f / sqrtf((float)m->d_inner));
    if (!m->conv_bias) { free(w->conv_b); w->conv_b = NULL; free(L->g.conv_b); L->g.conv_b = NULL; }
    for (int i = 0; i < NP; i++) {
        float *h = *wslot(&L->w, i);
        *wslot(&L->dw, i) = h ? dup_(h, n[i]) : NULL;
        *wslot(&L->dg, i) = h ? dnew(n[i]) : NULL;
    }
}

static void layer_free(layer *L) {
    for (int i = 0; i < NP; i++) {
        free(*wslot(&L->w, i));
        free(*wslot(&L->g, i));
        if (*wslot(&L->dw, i)) CU(cudaFree(*wslot(&L->dw, i)));
        if (*wslot(&L->dg, i)) CU(cudaFree(*wslot(&L->dg, i)));
    }
}

/* views of the CPU acts / scratch (core/mamba2.c layout, which the CUDA acts share) */
typedef struct { float *proj, *xbc_pre, *xbc, *dt, *y, *rstd, *o, *states; } acts_v;
static int norm_groups(const zb_mamba2_dims *m) {
    return m->d_inner / (m->norm_group > 0 ? m->norm_group : m->d_inner);
}
static int n_chunks(const zb_mamba2_dims *m, int T) { return (T + m->chunk - 1) / m->chunk; }
static acts_v acts_view(const zb_mamba2_dims *m, float *a, int B, int T) {
    size_t N = (size_t)B * T, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner;
    acts_v v;
    v.proj = a; a += N * P;
    v.xbc_pre = a; a += N * cd;
    v.xbc = a; a += N * cd;
    v.dt = a; a += N * m->nheads;
    v.y = a; a += N * di;
    v.rstd = a; a += N * norm_groups(m);
    v.o = a; a += N * di;
    v.states = a;
    return v;
}

/* ---- double reference of the SSD scan -------------------------------------------------------- */

typedef struct {
    double *y, *ym;          /* [N, di] value, magnitude */
    double *st, *stm;        /* [B, nc, nh, hd, ds] state at each chunk start */
    double *fin, *finm;      /* [B, nh, hd, ds] final state */
    double *dx, *dxm;        /* [N, cd] gradient of xbc (x, B, C columns) */
    double *ddt, *ddtm;      /* [N, nh] */
    double *gA, *gAm, *gD, *gDm;   /* [nh] dA_log, dD */
    double cmax;             /* max over chunks of |cs_L| */
} ssd_ref;

static void ssd_ref_free(ssd_ref *r) {
    free(r->y); free(r->ym); free(r->st); free(r->stm); free(r->fin); free(r->finm);
    free(r->dx); free(r->dxm); free(r->ddt); free(r->ddtm); free(r->gA); free(r->gAm); free(r->gD); free(r->gDm);
}

/* S0: initial state of sequence b at S0 + b nh hs (NULL: zero); dy (NULL: forward only). */
static void ref_ssd(const zb_mamba2_dims *m, int B, int T, const float *xbc, const float *dt, const float *A_log,
                    const float *Dp, const float *S0, const float *dy, ssd_ref *r) {
    int nh = m->nheads, hd = m->headdim, ds = m->d_state, cd = zb_mamba2_conv_dim(m), di = m->d_inner,
        Lc = m->chunk, nc = n_chunks(m, T);
    int bo = m->x_groups * hd, co = bo + m->b_groups * ds;
    size_t N = (size_t)B * T, hs = (size_t)hd * ds;
    r->y = calloc(N * di, 8); r->ym = calloc(N * di, 8);
    r->st = calloc((size_t)B * nc * nh * hs, 8); r->stm = calloc((size_t)B * nc * nh * hs, 8);
    r->fin = calloc((size_t)B * nh * hs, 8); r->finm = calloc((size_t)B * nh * hs, 8);
    r->dx = calloc(N * cd, 8); r->dxm = calloc(N * cd, 8);
    r->ddt = calloc(N * nh, 8); r->ddtm = calloc(N * nh, 8);
    r->gA = calloc(nh, 8); r->gAm = calloc(nh, 8); r->gD = calloc(nh, 8); r->gDm = calloc(nh, 8);
    r->cmax = 0;
    double *S = calloc((size_t)(T + 1) * hs, 8), *Sa = calloc((size_t)(T + 1) * hs, 8);
    double *dS = calloc(hs, 8), *dSa = calloc(hs, 8), *dSe = calloc((size_t)nc * hs, 8);
    double *cs = calloc(Lc, 8), *mdcs = calloc(Lc, 8), *mddt = calloc(Lc, 8), *tmp = calloc(ds, 8);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            int xg = h / (nh / m->x_groups), bg = h / (nh / m->b_groups), cg = h / (nh / m->c_groups);
            double A = -exp((double)A_log[h]), Dh = Dp[h];
            for (size_t q = 0; q < hs; q++) {
                S[q] = S0 ? S0[((size_t)b * nh + h) * hs + q] : 0.0;
                Sa[q] = fabs(S[q]);
            }
            for (int c = 0; c < nc; c++) {   /* the chunks' exponent sums */
                double a = 0;
                for (int t = c * Lc; t < T && t < (c + 1) * Lc; t++) a += dt[((size_t)b * T + t) * nh + h] * A;
                if (fabs(a) > r->cmax) r->cmax = fabs(a);
            }
            for (int t = 0; t < T; t++) {
                size_t row = (size_t)b * T + t;
                const float *X = xbc + row * cd + xg * hd, *Bv = xbc + row * cd + bo + bg * ds,
                            *Cv = xbc + row * cd + co + cg * ds;
                double *Sp = S + t * hs, *Sn = Sp + hs, *Sap = Sa + t * hs, *San = Sap + hs;
                if (t % Lc == 0) {
                    size_t o = (((size_t)b * nc + t / Lc) * nh + h) * hs;
                    memcpy(r->st + o, Sp, hs * 8);
                    memcpy(r->stm + o, Sap, hs * 8);
                }
                double dtt = dt[row * nh + h], a = exp(dtt * A);
                for (int p = 0; p < hd; p++) {
                    double yv = Dh * X[p], ym = fabs(Dh * X[p]);
                    for (int s = 0; s < ds; s++) {
                        size_t q = (size_t)p * ds + s;
                        Sn[q] = a * Sp[q] + dtt * X[p] * Bv[s];
                        San[q] = a * Sap[q] + dtt * fabs(X[p] * Bv[s]);
                        yv += Sn[q] * Cv[s];
                        ym += San[q] * fabs(Cv[s]);
                    }
                    r->y[row * di + h * hd + p] = yv;
                    r->ym[row * di + h * hd + p] = ym;
                }
            }
            memcpy(r->fin + ((size_t)b * nh + h) * hs, S + (size_t)T * hs, hs * 8);
            memcpy(r->finm + ((size_t)b * nh + h) * hs, Sa + (size_t)T * hs, hs * 8);
            if (!dy) continue;
            /* reverse mode through the recurrence */
            memset(dS, 0, hs * 8);
            memset(dSa, 0, hs * 8);
            double dA = 0, dD = 0, dDm = 0;
            for (int t = T - 1; t >= 0; t--) {
                size_t row = (size_t)b * T + t;
                int c = t / Lc;
                if (t == (T < (c + 1) * Lc ? T : (c + 1) * Lc) - 1) memcpy(dSe + (size_t)c * hs, dSa, hs * 8);
                const float *X = xbc + row * cd + xg * hd, *Bv = xbc + row * cd + bo + bg * ds,
                            *Cv = xbc + row * cd + co + cg * ds, *dY = dy + row * di + h * hd;
                double *dX = r->dx + row * cd + xg * hd, *dB = r->dx + row * cd + bo + bg * ds,
                       *dC = r->dx + row * cd + co + cg * ds;
                double *dXm = r->dxm + row * cd + xg * hd, *dBm = r->dxm + row * cd + bo + bg * ds,
                       *dCm = r->dxm + row * cd + co + cg * ds;
                const double *St = S + (size_t)(t + 1) * hs, *Sat = Sa + (size_t)(t + 1) * hs, *Sprev = S + (size_t)t * hs;
                for (int p = 0; p < hd; p++)
                    for (int s = 0; s < ds; s++) {
                        dS[(size_t)p * ds + s] += (double)dY[p] * Cv[s];
                        dSa[(size_t)p * ds + s] += fabs((double)dY[p] * Cv[s]);
                    }
                double dtt = dt[row * nh + h], a = exp(dtt * A), inner = 0, xdb = 0;
                for (int s = 0; s < ds; s++) {
                    double v = 0, vm = 0, wb = 0, wbm = 0;
                    for (int p = 0; p < hd; p++) {
                        size_t q = (size_t)p * ds + s;
                        v += St[q] * dY[p];
                        vm += Sat[q] * fabs(dY[p]);
                        wb += dS[q] * X[p];
                        wbm += dSa[q] * fabs(X[p]);
                    }
                    dC[s] += v; dCm[s] += vm;
                    dB[s] += dtt * wb; dBm[s] += dtt * wbm;
                    xdb += wb * Bv[s];
                }
                for (int p = 0; p < hd; p++) {
                    double v = 0, vm = 0;
                    for (int s = 0; s < ds; s++) {
                        v += dS[(size_t)p * ds + s] * Bv[s];
                        vm += dSa[(size_t)p * ds + s] * fabs(Bv[s]);
                    }
                    dX[p] += dtt * v + Dh * dY[p];
                    dXm[p] += dtt * vm + fabs(Dh * dY[p]);
                    dD += (double)dY[p] * X[p];
                    dDm += fabs((double)dY[p] * X[p]);
                }
                for (size_t q = 0; q < hs; q++) inner += Sprev[q] * dS[q];
                r->ddt[row * nh + h] = xdb + A * a * inner;
                dA += dtt * a * inner;
                for (size_t q = 0; q < hs; q++) { dS[q] *= a; dSa[q] *= a; }
            }
            /* magnitudes of ddt and dA: the terms of the chunked form (core/mamba2.c ssd_backward) */
            double dAm = 0;
            for (int c = 0; c < nc; c++) {
                int t0 = c * Lc, L = T - t0 < Lc ? T - t0 : Lc;
                size_t r0 = (size_t)b * T + t0;
                double acc = 0;
                for (int i = 0; i < L; i++) { acc += dt[(r0 + i) * nh + h] * A; cs[i] = acc; mdcs[i] = 0; mddt[i] = 0; }
                double cl = cs[L - 1];
                const double *Sst = Sa + (size_t)t0 * hs, *dSc = dSe + (size_t)c * hs;
                for (int i = 0; i < L; i++) {
                    const float *Ci = xbc + (r0 + i) * cd + co + cg * ds, *dYi = dy + (r0 + i) * di + h * hd;
                    for (int j = 0; j <= i; j++) {
                        const float *Bj = xbc + (r0 + j) * cd + bo + bg * ds, *Xj = xbc + (r0 + j) * cd + xg * hd;
                        double G = 0, W = 0, dtj = dt[(r0 + j) * nh + h];
                        for (int s = 0; s < ds; s++) G += fabs((double)Ci[s] * Bj[s]);
                        for (int p = 0; p < hd; p++) W += fabs((double)dYi[p] * Xj[p]);
                        double qp = W * exp(cs[i] - cs[j]) * G;
                        mddt[j] += qp;
                        mdcs[i] += qp * dtj;
                        mdcs[j] += qp * dtj;
                    }
                    double T1 = 0;
                    for (int s = 0; s < ds; s++) {
                        double v = 0;
                        for (int p = 0; p < hd; p++) v += fabs((double)dYi[p]) * Sst[(size_t)p * ds + s];
                        T1 += v * fabs(Ci[s]);
                    }
                    mdcs[i] += exp(cs[i]) * T1;
                }
                double sd = 0;
                for (size_t q = 0; q < hs; q++) sd += dSc[q] * Sst[q];
                mdcs[L - 1] += exp(cl) * sd;
                for (int j = 0; j < L; j++) {
                    const float *Bj = xbc + (r0 + j) * cd + bo + bg * ds, *Xj = xbc + (r0 + j) * cd + xg * hd;
                    for (int s = 0; s < ds; s++) {
                        tmp[s] = 0;
                        for (int p = 0; p < hd; p++) tmp[s] += fabs((double)Xj[p]) * dSc[(size_t)p * ds + s];
                    }
                    double u = 0, e = exp(cl - cs[j]), dtj = dt[(r0 + j) * nh + h];
                    for (int s = 0; s < ds; s++) u += tmp[s] * fabs(Bj[s]);
                    mddt[j] += u * e;
                    mdcs[L - 1] += u * e * dtj;
                    mdcs[j] += u * e * dtj;
                }
                double da = 0;
                for (int k = L - 1; k >= 0; k--) {
                    da += mdcs[k];
                    r->ddtm[(r0 + k) * nh + h] = mddt[k] + da * fabs(A);
                    dAm += da * dt[(r0 + k) * nh + h];
                }
            }
            r->gA[h] += A * dA;
            r->gAm[h] += fabs(A) * dAm;
            r->gD[h] += dD;
            r->gDm[h] += dDm;
        }
    free(S); free(Sa); free(dS); free(dSa); free(dSe); free(cs); free(mdcs); free(mddt); free(tmp);
}

/* roundings along the chunked SSD (see the header): forward, backward */
static double n_cs(const zb_mamba2_dims *m, int T, double cmax) {
    int L = m->chunk < T ? m->chunk : T;
    return (2.0 + n_chunks(m, T)) * L * cmax + cmax + 4;
}
static double n_fwd(const zb_mamba2_dims *m, int T, double cmax) {
    return T + 3.0 * n_chunks(m, T) + m->d_state + m->headdim + m->chunk + 16 + n_cs(m, T, cmax);
}
static double n_bwd(const zb_mamba2_dims *m, int T, double cmax) {
    int rep = m->nheads / m->x_groups;
    if (m->nheads / m->b_groups > rep) rep = m->nheads / m->b_groups;
    if (m->nheads / m->c_groups > rep) rep = m->nheads / m->c_groups;
    return n_fwd(m, T, cmax) + T + 2.0 * m->chunk + m->headdim + m->d_state + 16 + rep;
}

/* ---- 1. each stage alone on the CPU mixer's intermediates --------------------------------------- */

static void stages_vs_cpu(const cfg *c, layer *L, const float *x, const float *R) {
    const zb_mamba2_dims *m = &L->m;
    int d = L->d, B = c->B, T = c->T, N = B * T, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m),
        di = m->d_inner, nh = m->nheads, K = m->conv_k, ng = norm_groups(m), G = di / ng, nc = n_chunks(m, T);
    size_t hs = (size_t)m->headdim * m->d_state, nst = (size_t)B * nc * nh * hs;
    char what[256];
    /* the CPU mixer, forward and backward */
    float *acts = malloc(zb_mamba2_act_floats(m, d, B, T) * sizeof(float));
    float *scr = malloc(zb_mamba2_scratch_floats(m, d, B, T) * sizeof(float));
    float *out = malloc((size_t)N * d * sizeof(float)), *dx = calloc((size_t)N * d, sizeof(float));
    for (int i = 0; i < NP; i++)
        if (*wslot(&L->g, i)) memset(*wslot(&L->g, i), 0, L->n[i] * sizeof(float));
    zb_mamba2_forward(m, d, 1e-5f, &L->w, x, out, acts, B, T);
    acts_v a = acts_view(m, acts, B, T);
    /* dL/do as the CPU backward computes it first (the same call, the same bits) */
    float *dO = calloc((size_t)N * di, sizeof(float));
    zb_matmul_backward(dO, NULL, NULL, R, a.o, L->w.out_proj, N, di, d);
    zb_mamba2_backward(m, d, 1e-5f, &L->w, &L->g, x, R, dx, acts, scr, B, T);
    float *c_dproj = scr, *c_dxbc = c_dproj + (size_t)N * P, *c_dy = c_dxbc + (size_t)N * cd,
          *c_ddt = c_dy + (size_t)N * di;

    /* dt */
    {
        float *dproj = dup_(a.proj, (size_t)N * P), *ddt = dnew((size_t)N * nh);
        zb_cuda_m2_dt_forward(m, L->dw.dt_bias, dproj, ddt, N);
        float *got = dget(ddt, (size_t)N * nh, "dt forward");
        double *mag = malloc((size_t)N * nh * 8);
        for (int r = 0; r < N; r++)
            for (int h = 0; h < nh; h++) {
                double v = (double)a.proj[(size_t)r * P + P - nh + h] + L->w.dt_bias[h];
                mag[(size_t)r * nh + h] = fabs(v) + fabs(a.dt[(size_t)r * nh + h]);
            }
        snprintf(what, sizeof what, "[%s] dt = softplus(dt + dt_bias) clamped", c->name);
        cmp(what, got, a.dt, NULL, mag, (size_t)N * nh, nh, 8, 2, NULL);
        free(got); free(mag);
        CU(cudaFree(dproj)); CU(cudaFree(ddt));
    }
    /* conv + SiLU: the kernel over channel pairs (the default where the shape allows), over groups of
     * 8 rows (ZB_CONV=rows), a block per row (ZB_CONV=old); pre and post the same bits in all three (the
     * same sums in the same order) */
    float *cf_keep[2] = {0};
    for (int kind = 2; kind >= 0; kind--) {
        static const char *hows[] = {" (a block per row)", " (groups of 8 rows)", ""};
        const char *how = hows[kind];
        zb_cuda_m2_conv_rows(kind > 0);
        zb_cuda_m2_conv_fwd_kind(kind);
        float *dproj = dup_(a.proj, (size_t)N * P), *dpre = dnew((size_t)N * cd), *dpost = dnew((size_t)N * cd);
        zb_cuda_m2_conv_forward(m, L->dw.conv_w, L->dw.conv_b, dproj, NULL, 0, dpre, dpost, B, T);
        float *gpre = dget(dpre, (size_t)N * cd, "conv forward"), *gpost = dget(dpost, (size_t)N * cd, "conv forward");
        double *mpre = malloc((size_t)N * cd * 8), *mpost = malloc((size_t)N * cd * 8);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int ch = 0; ch < cd; ch++) {
                    size_t r = (size_t)b * T + t;
                    double s = L->w.conv_b ? fabs(L->w.conv_b[ch]) : 0;
                    for (int k = 0; k < K; k++) {
                        int u = t - (K - 1) + k;
                        if (u >= 0) s += fabs((double)L->w.conv_w[(size_t)ch * K + k] * a.proj[((size_t)b * T + u) * P + di + ch]);
                    }
                    mpre[r * cd + ch] = s;
                    mpost[r * cd + ch] = 1.1 * s + fabs(a.xbc[r * cd + ch]);   /* |silu'| <= 1.1 */
                }
        snprintf(what, sizeof what, "[%s] conv1d pre-activation%s", c->name, how);
        cmp(what, gpre, a.xbc_pre, NULL, mpre, (size_t)N * cd, cd, K + 2, 2, NULL);
        snprintf(what, sizeof what, "[%s] conv1d + SiLU%s", c->name, how);
        cmp(what, gpost, a.xbc, NULL, mpost, (size_t)N * cd, cd, K + 8, 2, NULL);
        if (kind == 2) {
            cf_keep[0] = gpre;
            cf_keep[1] = gpost;
        } else {
            zb_check(!memcmp(gpre, cf_keep[0], (size_t)N * cd * sizeof(float)) &&
                         !memcmp(gpost, cf_keep[1], (size_t)N * cd * sizeof(float)),
                     "[%s] conv1d + SiLU%s: pre and post the same bits as the default kernel's", c->name, how);
            free(gpre);
            free(gpost);
        }
        free(mpre); free(mpost);
        CU(cudaFree(dproj)); CU(cudaFree(dpre)); CU(cudaFree(dpost));
    }
    zb_cuda_m2_conv_rows(-1);
    zb_cuda_m2_conv_fwd_kind(-1);
    free(cf_keep[0]);
    free(cf_keep[1]);
    /* SSD forward and backward */
    {
        ssd_ref rf;
        ref_ssd(m, B, T, a.xbc, a.dt, L->w.A_log, L->w.D, NULL, c_dy, &rf);
        double nf = n_fwd(m, T, rf.cmax), nb = n_bwd(m, T, rf.cmax);
        float *dxbc = dup_(a.xbc, (size_t)N * cd), *ddt = dup_(a.dt, (size_t)N * nh),
              *coef = dnew(4 * (size_t)N * nh), *dy = dnew((size_t)N * di), *st = dnew(nst);
        zb_cuda_m2_ssd_coef(m, L->dw.A_log, ddt, coef, B, T);
        zb_cuda_m2_ssd_forward(m, L->dw.D, dxbc, coef, dy, st, NULL, NULL, 0, B, T);
        float *gy = dget(dy, (size_t)N * di, "SSD forward"), *gst = dget(st, nst, "SSD forward");
        snprintf(what, sizeof what, "[%s] SSD y", c->name);
        cmp(what, gy, a.y, NULL, rf.ym, (size_t)N * di, di, nf, 2, NULL);
        snprintf(what, sizeof what, "[%s] SSD chunk start states", c->name);
        cmp(what, gst, a.states, NULL, rf.stm, nst, (int)hs, nf, 2, NULL);
        /* backward on the CPU's states and dy */
        float *dst = dup_(a.states, nst), *ddy = dup_(c_dy, (size_t)N * di), *gdx = dnew((size_t)N * cd),
              *gddt = dnew((size_t)N * nh), *gA = dnew(nh), *gD = dnew(nh),
              *work = dnew(zb_cuda_m2_ssd_bwd_floats(m, B, T));
        zb_cuda_m2_ssd_backward(m, L->dw.A_log, L->dw.D, dxbc, coef, dst, ddy, gdx, gddt, gA, gD, work, B, T);
        float *hdx = dget(gdx, (size_t)N * cd, "SSD backward"), *hddt = dget(gddt, (size_t)N * nh, "SSD backward"),
              *hA = dget(gA, nh, "SSD backward"), *hD = dget(gD, nh, "SSD backward");
        snprintf(what, sizeof what, "[%s] SSD backward d[x|B|C]", c->name);
        cmp(what, hdx, c_dxbc, NULL, rf.dxm, (size_t)N * cd, cd, nb, 2, NULL);
        snprintf(what, sizeof what, "[%s] SSD backward ddt", c->name);
        cmp(what, hddt, c_ddt, NULL, rf.ddtm, (size_t)N * nh, nh, nb, 2, NULL);
        snprintf(what, sizeof what, "[%s] SSD backward dA_log", c->name);
        cmp(what, hA, L->g.A_log, NULL, rf.gAm, nh, nh, nb + N, 2, NULL);
        snprintf(what, sizeof what, "[%s] SSD backward dD", c->name);
        cmp(what, hD, L->g.D, NULL, rf.gDm, nh, nh, (double)N * m->headdim + 8, 2, NULL);
        free(gy); free(gst); free(hdx); free(hddt); free(hA); free(hD);
        CU(cudaFree(dxbc)); CU(cudaFree(ddt)); CU(cudaFree(coef)); CU(cudaFree(dy)); CU(cudaFree(st));
        CU(cudaFree(dst)); CU(cudaFree(ddy)); CU(cudaFree(gdx)); CU(cudaFree(gddt)); CU(cudaFree(gA));
        CU(cudaFree(gD)); CU(cudaFree(work));
        ssd_ref_free(&rf);
    }
    /* gated RMSNorm forward and backward: the S6 kernels (ZB_GNORM=old), then the default (over groups of
     * rows where the norm groups are 32-128 wide), each against the CPU and bit for bit with each other
     * (the same sums in the same order) */
    float *gn_keep[5] = {0};
    for (int rows = 0; rows < 2; rows++) {
        zb_cuda_m2_gnorm_rows(rows);
        const char *how = rows ? "" : " (ZB_GNORM=old)";
        float *dyv = dup_(a.y, (size_t)N * di), *dproj = dup_(a.proj, (size_t)N * P), *dov = dnew((size_t)N * di),
              *drs = dnew((size_t)N * ng);
        zb_cuda_m2_gated_norm_forward(m, L->dw.norm_w, 1e-5f, dyv, dproj, P, dov, drs, N);
        float *go = dget(dov, (size_t)N * di, "gated norm"), *grs = dget(drs, (size_t)N * ng, "gated norm");
        double *mo = malloc((size_t)N * di * 8), *mrs = malloc((size_t)N * ng * 8);
        for (size_t i = 0; i < (size_t)N * di; i++) mo[i] = fabs(a.o[i]);
        for (size_t i = 0; i < (size_t)N * ng; i++) mrs[i] = fabs(a.rstd[i]);
        snprintf(what, sizeof what, "[%s] gated RMSNorm output%s", c->name, how);
        cmp(what, go, a.o, NULL, mo, (size_t)N * di, di, G + 16, 2, NULL);
        snprintf(what, sizeof what, "[%s] gated RMSNorm rstd%s", c->name, how);
        cmp(what, grs, a.rstd, NULL, mrs, (size_t)N * ng, ng, G + 8, 2, NULL);
        /* backward from the CPU's dL/do, on the CPU's rstd */
        dput(drs, a.rstd, (size_t)N * ng);
        float *ddo = dup_(dO, (size_t)N * di), *dz = dnew((size_t)N * P), *gw = dnew(di),
              *work = dnew(zb_cuda_m2_colsum_floats(di));
        zb_cuda_m2_gated_norm_backward(m, L->dw.norm_w, dyv, dproj, P, drs, ddo, dz, gw, work, N);
        float *hdy = dget(ddo, (size_t)N * di, "gated norm backward"), *hdz = dget(dz, (size_t)N * P, "gated norm backward"),
              *hgw = dget(gw, di, "gated norm backward");
        double *mdy = malloc((size_t)N * di * 8), *mdz = malloc((size_t)N * di * 8), *mgw = calloc(di, 8);
        for (int r = 0; r < N; r++)
            for (int k = 0; k < ng; k++) {
                double rs = a.rstd[(size_t)r * ng + k], sabs = 0;
                for (int ch = k * G; ch < (k + 1) * G; ch++) {
                    double z = a.proj[(size_t)r * P + ch], sg = 1 / (1 + exp(-z)), g = a.y[(size_t)r * di + ch] * z * sg;
                    sabs += fabs(dO[(size_t)r * di + ch] * L->w.norm_w[ch] * g);
                    mgw[ch] += fabs(dO[(size_t)r * di + ch] * g * rs);
                }
                double fa = sabs / G * rs * rs * rs;
                for (int ch = k * G; ch < (k + 1) * G; ch++) {
                    size_t i = (size_t)r * di + ch;
                    double z = a.proj[(size_t)r * P + ch], sg = 1 / (1 + exp(-z)), yv = a.y[i], g = yv * z * sg;
                    double dgm = rs * fabs(L->w.norm_w[ch] * dO[i]) + fa * fabs(g);
                    mdy[i] = dgm * fabs(z * sg);
                    mdz[i] = dgm * fabs(yv) * sg * (1 + fabs(z) * (1 - sg));
                }
            }
        float *gdz = cols_f(hdz, N, P, 0, di), *cdz = cols_f(c_dproj, N, P, 0, di);
        snprintf(what, sizeof what, "[%s] gated RMSNorm backward dy%s", c->name, how);
        cmp(what, hdy, c_dy, NULL, mdy, (size_t)N * di, di, G + 16, 2, NULL);
        snprintf(what, sizeof what, "[%s] gated RMSNorm backward dz%s", c->name, how);
        cmp(what, gdz, cdz, NULL, mdz, (size_t)N * di, di, G + 16, 2, NULL);
        snprintf(what, sizeof what, "[%s] gated RMSNorm backward d norm_w%s", c->name, how);
        cmp(what, hgw, L->g.norm_w, NULL, mgw, di, di, N + 8, 2, NULL);
        {
            float *cur[5] = {go, grs, hdy, gdz, hgw};
            size_t n5[5] = {(size_t)N * di, (size_t)N * ng, (size_t)N * di, (size_t)N * di, (size_t)di};
            int same = 1;
            for (int q = 0; q < 5; q++) {
                if (!rows) {
                    gn_keep[q] = malloc(n5[q] * sizeof(float));
                    memcpy(gn_keep[q], cur[q], n5[q] * sizeof(float));
                } else {
                    same &= !memcmp(gn_keep[q], cur[q], n5[q] * sizeof(float));
                    free(gn_keep[q]);
                }
            }
            if (rows)
                zb_check(same, "[%s] gated RMSNorm over groups of rows: output, rstd, dy, dz, d norm_w the same bits "
                         "as the S6 kernels'", c->name);
        }
        free(go); free(grs); free(mo); free(mrs); free(hdy); free(hdz); free(hgw); free(mdy); free(mdz); free(mgw);
        free(gdz); free(cdz);
        CU(cudaFree(dyv)); CU(cudaFree(dproj)); CU(cudaFree(dov)); CU(cudaFree(drs)); CU(cudaFree(ddo));
        CU(cudaFree(dz)); CU(cudaFree(gw)); CU(cudaFree(work));
    }
    zb_cuda_m2_gnorm_rows(-1);
    /* dt backward */
    {
        float *dproj = dup_(a.proj, (size_t)N * P), *dd = dup_(c_ddt, (size_t)N * nh), *gdp = dnew((size_t)N * P),
              *gb = dnew(nh), *work = dnew(zb_cuda_m2_colsum_floats(nh));
        zb_cuda_m2_dt_backward(m, L->dw.dt_bias, dproj, dd, gdp, gb, work, N);
        float *hdp = dget(gdp, (size_t)N * P, "dt backward"), *hb = dget(gb, nh, "dt backward");
        float *gv = cols_f(hdp, N, P, P - nh, nh), *cv = cols_f(c_dproj, N, P, P - nh, nh);
        double *mv = malloc((size_t)N * nh * 8), *mb = calloc(nh, 8);
        unsigned char *edge = calloc((size_t)N * nh, 1);
        for (int r = 0; r < N; r++)
            for (int h = 0; h < nh; h++) {
                size_t i = (size_t)r * nh + h;
                double v = (double)a.proj[(size_t)r * P + P - nh + h] + L->w.dt_bias[h], sg = 1 / (1 + exp(-v));
                double sp = v > 20 ? v : log1p(exp(v));
                /* where softplus sits on a clamp edge within its rounding, either side is right */
                double tol = 8 * U * (fabs(v) + sp);
                if (fabs(sp - m->dt_min) <= tol || (isfinite(m->dt_max) && fabs(sp - m->dt_max) <= tol)) edge[i] = 1;
                mv[i] = fabs(c_ddt[i]) * (sg + fabs(v) * sg * (1 - sg));
                mb[h] += mv[i];
            }
        snprintf(what, sizeof what, "[%s] dt backward d(dt raw)", c->name);
        cmp(what, gv, cv, NULL, mv, (size_t)N * nh, nh, 8, 2, edge);
        snprintf(what, sizeof what, "[%s] dt backward d dt_bias", c->name);
        cmp(what, hb, L->g.dt_bias, NULL, mb, nh, nh, N + 8, 2, NULL);
        free(hdp); free(hb); free(gv); free(cv); free(mv); free(mb); free(edge);
        CU(cudaFree(dproj)); CU(cudaFree(dd)); CU(cudaFree(gdp)); CU(cudaFree(gb)); CU(cudaFree(work));
    }
    /* conv backward: the two kernels (ZB_CONV_BWD=old), the one pass over 8-row groups (ZB_CONV_BWD=one),
     * the one pass over channel quads (ZB_CONV_BWD=quad) and pairs (the default where the shape allows);
     * d(conv input) of the vector kernels bitwise as the two kernels' (the same terms in the same order) */
    float *din_two = NULL;
    for (int mode = 0; mode < 4; mode++) {
        static const char *hows[] = {" (two kernels)", " (one pass, 8-row groups)", " (channel quads)",
                                     " (channel pairs)"};
        const char *how = hows[mode];
        zb_cuda_m2_conv_bwd_vec(mode == 2 ? 4 : mode == 3 ? 2 : 0);
        zb_cuda_m2_conv_bwd_one(mode == 1);
        float *dproj = dup_(a.proj, (size_t)N * P), *dpre = dup_(a.xbc_pre, (size_t)N * cd),
              *ddx = dup_(c_dxbc, (size_t)N * cd), *gdpre = dnew((size_t)N * cd), *gdp = dnew((size_t)N * P),
              *gw = dnew((size_t)cd * K), *gb = L->w.conv_b ? dnew(cd) : NULL,
              *work = dnew(zb_cuda_m2_colsum_floats(cd * (K + 1)));
        zb_cuda_m2_conv_backward(m, L->dw.conv_w, dproj, dpre, ddx, gdpre, gdp, gw, gb, work, B, T);
        float *hdp = dget(gdp, (size_t)N * P, "conv backward"), *hw = dget(gw, (size_t)cd * K, "conv backward");
        float *gv = cols_f(hdp, N, P, di, cd), *cv = cols_f(c_dproj, N, P, di, cd);
        double *mp = malloc((size_t)N * cd * 8), *mv = calloc((size_t)N * cd, 8), *mw = calloc((size_t)cd * K, 8),
               *mb = calloc(cd, 8);
        for (size_t i = 0; i < (size_t)N * cd; i++) {
            double p = a.xbc_pre[i], sg = 1 / (1 + exp(-p));
            mp[i] = fabs(c_dxbc[i]) * sg * (1 + fabs(p) * (1 - sg));
        }
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int ch = 0; ch < cd; ch++) {
                    size_t r = (size_t)b * T + t;
                    mb[ch] += mp[r * cd + ch];
                    for (int k = 0; k < K; k++) {
                        int u = t - (K - 1) + k;
                        if (u < 0) continue;
                        size_t ru = (size_t)b * T + u;
                        mw[(size_t)ch * K + k] += mp[r * cd + ch] * fabs(a.proj[ru * P + di + ch]);
                        mv[ru * cd + ch] += fabs(L->w.conv_w[(size_t)ch * K + k]) * mp[r * cd + ch];
                    }
                }
        snprintf(what, sizeof what, "[%s] conv backward d(conv input)%s", c->name, how);
        cmp(what, gv, cv, NULL, mv, (size_t)N * cd, cd, K + 10, 2, NULL);
        if (mode == 0) {
            din_two = malloc((size_t)N * cd * sizeof(float));
            memcpy(din_two, gv, (size_t)N * cd * sizeof(float));
        } else if (mode >= 2)
            zb_check(!memcmp(gv, din_two, (size_t)N * cd * sizeof(float)),
                     "[%s] conv backward d(conv input)%s: the same bits as the two kernels'", c->name, how);
        snprintf(what, sizeof what, "[%s] conv backward d conv_w%s", c->name, how);
        cmp(what, hw, L->g.conv_w, NULL, mw, (size_t)cd * K, K, N + 10, 2, NULL);
        if (gb) {
            float *hb = dget(gb, cd, "conv backward");
            snprintf(what, sizeof what, "[%s] conv backward d conv_b%s", c->name, how);
            cmp(what, hb, L->g.conv_b, NULL, mb, cd, cd, N + 10, 2, NULL);
            free(hb);
            CU(cudaFree(gb));
        }
        free(hdp); free(hw); free(gv); free(cv); free(mp); free(mv); free(mw); free(mb);
        CU(cudaFree(dproj)); CU(cudaFree(dpre)); CU(cudaFree(ddx)); CU(cudaFree(gdpre)); CU(cudaFree(gdp));
        CU(cudaFree(gw)); CU(cudaFree(work));
    }
    zb_cuda_m2_conv_bwd_one(-1);
    zb_cuda_m2_conv_bwd_vec(-1);
    free(din_two);
    free(acts); free(scr); free(out); free(dx); free(dO);
}

/* ---- 2. the SSD scan on random inputs against the double recurrence --------------------------- */

static void ssd_vs_double(const cfg *c, zb_rng *rng) {
    const zb_mamba2_dims *m = &c->m;
    int B = c->B, T = c->T, N = B * T, cd = zb_mamba2_conv_dim(m), di = m->d_inner, nh = m->nheads,
        nc = n_chunks(m, T);
    size_t hs = (size_t)m->headdim * m->d_state, nst = (size_t)B * nc * nh * hs, nS = (size_t)B * nh * hs;
    char what[256];
    float *xbc = malloc((size_t)N * cd * sizeof(float)), *dt = malloc((size_t)N * nh * sizeof(float)),
          *dy = malloc((size_t)N * di * sizeof(float)), *S0 = malloc(nS * sizeof(float)),
          *A_log = malloc(nh * sizeof(float)), *D = malloc(nh * sizeof(float));
    fill(rng, xbc, (size_t)N * cd, 1.0f);
    fill(rng, dy, (size_t)N * di, 1.0f);
    fill(rng, S0, nS, 0.5f);
    for (size_t i = 0; i < (size_t)N * nh; i++)
        dt[i] = expf(logf(c->dt_lo) + zb_rng_uniform(rng) * (logf(c->dt_hi) - logf(c->dt_lo)));
    for (int h = 0; h < nh; h++) { A_log[h] = logf(1.0f + 15.0f * zb_rng_uniform(rng)); D[h] = 0.5f + zb_rng_uniform(rng); }
    ssd_ref rf;
    ref_ssd(m, B, T, xbc, dt, A_log, D, S0, dy, &rf);
    double nf = n_fwd(m, T, rf.cmax), nb = n_bwd(m, T, rf.cmax) + nf;   /* + the states' own error */
    float *dx = dup_(xbc, (size_t)N * cd), *ddt = dup_(dt, (size_t)N * nh), *dA = dup_(A_log, nh),
          *dD = dup_(D, nh), *coef = dnew(4 * (size_t)N * nh), *dyo = dnew((size_t)N * di), *st = dnew(nst),
          *Sc = dup_(S0, nS);
    zb_cuda_m2_ssd_coef(m, dA, ddt, coef, B, T);
    /* the float32 forward, and the bf16 precision mode's: its tile products on the tensor cores
     * with TF32 operands, each rounding 2^-11 = 2^13 u of its term; a term of y or of a state
     * passes through at most 4 of them (x and w B into the chunk states, then the state and C, or
     * C and B, then their product scaled and x). The float32 run last: its states feed the backward. */
    for (int tc = 1; tc >= 0; tc--) {
        dput(Sc, S0, nS);
        zb_cuda_set_precision(tc ? ZB_PREC_BF16 : ZB_PREC_F32);
        zb_cuda_m2_ssd_forward(m, dD, dx, coef, dyo, st, Sc, Sc, nh * hs, B, T);   /* in place, as the cache */
        zb_cuda_set_precision(ZB_PREC_F32);
        const char *how = tc ? ", tensor cores (TF32)" : "";
        double n_eff = tc ? nf + 4 * 8192.0 : nf;
        float *gy = dget(dyo, (size_t)N * di, "SSD forward from S0"), *gst = dget(st, nst, "SSD forward from S0"),
              *gfin = dget(Sc, nS, "SSD forward from S0");
        snprintf(what, sizeof what, "[%s] SSD y from an initial state%s", c->name, how);
        cmp(what, gy, NULL, rf.y, rf.ym, (size_t)N * di, di, n_eff, 1, NULL);
        snprintf(what, sizeof what, "[%s] SSD chunk start states from an initial state%s", c->name, how);
        cmp(what, gst, NULL, rf.st, rf.stm, nst, (int)hs, n_eff, 1, NULL);
        snprintf(what, sizeof what, "[%s] SSD final state (cache updated in place)%s", c->name, how);
        cmp(what, gfin, NULL, rf.fin, rf.finm, nS, (int)hs, n_eff, 1, NULL);
        free(gy); free(gst); free(gfin);
    }
    float *ddy = dup_(dy, (size_t)N * di), *gdx = dnew((size_t)N * cd), *gddt = dnew((size_t)N * nh), *gA = dnew(nh),
          *gD = dnew(nh), *work = dnew(zb_cuda_m2_ssd_bwd_floats(m, B, T));
    /* the float32 backward, and the bf16 precision mode's: every tile product on the tensor cores
     * with TF32 operands (2^13 u per rounding); a term of a gradient passes through at most 4 of
     * them, as in the forward (dx: C, B into C B^T, then that and dy; or dy, e^cs C into the state
     * gradient, then it and B; ddt's Q' = (dy.x)(C.B): two of each factor). dD sums dy x directly. */
    for (int tc = 1; tc >= 0; tc--) {
        CU(cudaMemset(gA, 0, nh * sizeof(float)));
        CU(cudaMemset(gD, 0, nh * sizeof(float)));
        dsync("SSD backward: zeroed gradients");
        zb_cuda_set_precision(tc ? ZB_PREC_BF16 : ZB_PREC_F32);
        zb_cuda_m2_ssd_backward(m, dA, dD, dx, coef, st, ddy, gdx, gddt, gA, gD, work, B, T);
        zb_cuda_set_precision(ZB_PREC_F32);
        const char *how = tc ? ", tensor cores (TF32)" : "";
        double ntc = tc ? 4 * 8192.0 : 0;
        float *hdx = dget(gdx, (size_t)N * cd, "SSD backward"), *hddt = dget(gddt, (size_t)N * nh, "SSD backward"),
              *hA = dget(gA, nh, "SSD backward"), *hD = dget(gD, nh, "SSD backward");
        snprintf(what, sizeof what, "[%s] SSD backward d[x|B|C] vs the recurrence%s", c->name, how);
        cmp(what, hdx, NULL, rf.dx, rf.dxm, (size_t)N * cd, cd, nb + ntc, 1, NULL);
        snprintf(what, sizeof what, "[%s] SSD backward ddt vs the recurrence%s", c->name, how);
        cmp(what, hddt, NULL, rf.ddt, rf.ddtm, (size_t)N * nh, nh, nb + ntc, 1, NULL);
        snprintf(what, sizeof what, "[%s] SSD backward dA_log vs the recurrence%s", c->name, how);
        cmp(what, hA, NULL, rf.gA, rf.gAm, nh, nh, nb + N + ntc, 1, NULL);
        snprintf(what, sizeof what, "[%s] SSD backward dD vs the recurrence%s", c->name, how);
        cmp(what, hD, NULL, rf.gD, rf.gDm, nh, nh, (double)N * m->headdim + 8, 1, NULL);
        free(hdx); free(hddt); free(hA); free(hD);
    }
    /* the fused backward with each head's coefficients fetched at its start (ZB_SSD_BWD_PREFETCH=0):
     * the same values loaded earlier, so the same bits as the default's */
    for (int tc = 1; tc >= 0; tc--) {
        float *h[2][4];
        for (int pf = 1; pf >= 0; pf--) {
            CU(cudaMemset(gA, 0, nh * sizeof(float)));
            CU(cudaMemset(gD, 0, nh * sizeof(float)));
            dsync("SSD backward: zeroed gradients");
            zb_cuda_set_precision(tc ? ZB_PREC_BF16 : ZB_PREC_F32);
            zb_cuda_m2_ssd_bwd_prefetch(pf);
            zb_cuda_m2_ssd_backward(m, dA, dD, dx, coef, st, ddy, gdx, gddt, gA, gD, work, B, T);
            zb_cuda_m2_ssd_bwd_prefetch(-1);
            zb_cuda_set_precision(ZB_PREC_F32);
            h[pf][0] = dget(gdx, (size_t)N * cd, "SSD backward");
            h[pf][1] = dget(gddt, (size_t)N * nh, "SSD backward");
            h[pf][2] = dget(gA, nh, "SSD backward");
            h[pf][3] = dget(gD, nh, "SSD backward");
        }
        size_t n4[4] = {(size_t)N * cd, (size_t)N * nh, (size_t)nh, (size_t)nh};
        int same = 1;
        for (int q = 0; q < 4; q++) {
            same &= !memcmp(h[0][q], h[1][q], n4[q] * sizeof(float));
            free(h[0][q]);
            free(h[1][q]);
        }
        zb_check(same, "[%s] SSD backward%s, coefficients fetched at each head's start (ZB_SSD_BWD_PREFETCH=0): "
                 "d[x|B|C], ddt, dA_log, dD the same bits as the default's", c->name, tc ? ", tensor cores" : "");
    }
    CU(cudaFree(dx)); CU(cudaFree(ddt)); CU(cudaFree(dA)); CU(cudaFree(dD)); CU(cudaFree(coef));
    CU(cudaFree(dyo)); CU(cudaFree(st)); CU(cudaFree(Sc)); CU(cudaFree(ddy)); CU(cudaFree(gdx));
    CU(cudaFree(gddt)); CU(cudaFree(gA)); CU(cudaFree(gD)); CU(cudaFree(work));

    /* the one-token step: 3 rows into 4 state slots (seqs 2, 0, 3; slot 1 untouched), slots
     * strided with a gap as in the cache: 7 floats (the scalar kernel), 8 (16-byte aligned slots:
     * the float4 kernel where d_state is 128 or 256) */
    for (int pad = 7; pad <= 8; pad++) {
        int nb = 3, slots = 4, seqs[3] = {2, 0, 3};
        size_t ss = nh * hs + pad;
        float *S = malloc(slots * ss * sizeof(float));
        fill(rng, S, slots * ss, 0.5f);
        float *dS = dup_(S, slots * ss), *dxr = dup_(xbc, (size_t)nb * cd), *ddr = dup_(dt, (size_t)nb * nh),
              *dyr = dnew((size_t)nb * di);
        int *dseq = NULL;
        CU(cudaMalloc((void **)&dseq, sizeof seqs));
        CU(cudaMemcpy(dseq, seqs, sizeof seqs, cudaMemcpyHostToDevice));
        float *dA2 = dup_(A_log, nh), *dD2 = dup_(D, nh);
        zb_cuda_m2_ssd_step(m, dA2, dD2, dxr, ddr, dS, ss, dseq, dyr, nb);
        float *gS = dget(dS, slots * ss, "SSD step"), *gyr = dget(dyr, (size_t)nb * di, "SSD step");
        double *wS = malloc(slots * ss * 8), *mS = malloc(slots * ss * 8), *wy2 = calloc((size_t)nb * di, 8),
               *my2 = calloc((size_t)nb * di, 8), amax = 0;
        for (size_t i = 0; i < slots * ss; i++) { wS[i] = S[i]; mS[i] = fabs(S[i]); }
        int hd = m->headdim, ds = m->d_state, bo = m->x_groups * hd, co = bo + m->b_groups * ds;
        for (int i = 0; i < nb; i++)
            for (int h = 0; h < nh; h++) {
                int xg = h / (nh / m->x_groups), bg = h / (nh / m->b_groups), cg = h / (nh / m->c_groups);
                const float *X = xbc + (size_t)i * cd + xg * hd, *Bv = xbc + (size_t)i * cd + bo + bg * ds,
                            *Cv = xbc + (size_t)i * cd + co + cg * ds;
                double A = -exp((double)A_log[h]), dtt = dt[(size_t)i * nh + h], e = exp(dtt * A);
                if (fabs(dtt * A) > amax) amax = fabs(dtt * A);
                for (int p = 0; p < hd; p++) {
                    double yv = (double)D[h] * X[p], ym = fabs((double)D[h] * X[p]);
                    for (int s = 0; s < ds; s++) {
                        size_t q = (size_t)seqs[i] * ss + (size_t)h * hs + (size_t)p * ds + s;
                        double v = e * S[q] + dtt * X[p] * Bv[s], vm = e * fabs(S[q]) + dtt * fabs(X[p] * Bv[s]);
                        wS[q] = v; mS[q] = vm;
                        yv += v * Cv[s];
                        ym += vm * fabs(Cv[s]);
                    }
                    wy2[(size_t)i * di + h * hd + p] = yv;
                    my2[(size_t)i * di + h * hd + p] = ym;
                }
            }
        double nS1 = 3 * amax + 10;
        snprintf(what, sizeof what, "[%s] SSD one-token step, slot gap %d: states (slot 1 and the gaps unchanged)",
                 c->name, pad);
        cmp(what, gS, NULL, wS, mS, slots * ss, (int)ss, nS1, 1, NULL);
        snprintf(what, sizeof what, "[%s] SSD one-token step, slot gap %d: y", c->name, pad);
        cmp(what, gyr, NULL, wy2, my2, (size_t)nb * di, di, nS1 + ds + 4, 1, NULL);
        /* the same step on bf16 states (generation with bf16 weights): slot s's bf16 values in the
         * first half of its float room, input states bf16 (the reference reads the same rounded
         * values); y from the float32 update (the bound above), each stored state element its
         * float32 value rounded once to bf16 (8 significant bits: unit roundoff 2^-8): |d| <= 2^-8 |v|
         * + the float32 bound; everything else
         * (slot 1, the rest of each slot's room) bit for bit unchanged */
        {
            size_t nS = (size_t)nh * hs, n16 = slots * ss * 2;
            uint16_t *S16 = malloc(n16 * 2), *g16 = malloc(n16 * 2);
            float *Sr = malloc(slots * ss * sizeof(float));
            for (size_t q = 0; q < n16; q++) S16[q] = (uint16_t)(0x3c00u + (q * 2654435761u >> 20) % 1024);   /* 2^-7..2^-6: filler */
            for (int sl = 0; sl < slots; sl++)
                for (size_t q = 0; q < nS; q++) {
                    uint16_t b;
                    zb_f32_to_bf16_n(S + (size_t)sl * ss + q, &b, 1);
                    S16[(size_t)sl * ss * 2 + q] = b;
                    zb_bf16_to_f32_n(&b, Sr + (size_t)sl * ss + q, 1);
                }
            float *dS16 = NULL;
            CU(cudaMalloc((void **)&dS16, n16 * 2));
            CU(cudaMemcpy(dS16, S16, n16 * 2, cudaMemcpyHostToDevice));
            zb_cuda_m2_ssd_step_st(m, dA2, dD2, dxr, ddr, dS16, ss, dseq, dyr, nb, 1);
            CU(cudaMemcpy(g16, dS16, n16 * 2, cudaMemcpyDeviceToHost));
            float *gy16 = dget(dyr, (size_t)nb * di, "SSD step (bf16 state)");
            double *wv = calloc((size_t)nb * nS, 8), *mv = calloc((size_t)nb * nS, 8);
            float *gv = malloc((size_t)nb * nS * sizeof(float));
            unsigned char *mine = calloc(n16, 1);
            for (int i = 0; i < nb; i++)
                for (int h = 0; h < nh; h++) {
                    int xg = h / (nh / m->x_groups), bg = h / (nh / m->b_groups), cg = h / (nh / m->c_groups);
                    const float *X = xbc + (size_t)i * cd + xg * hd, *Bv = xbc + (size_t)i * cd + bo + bg * ds,
                                *Cv = xbc + (size_t)i * cd + co + cg * ds;
                    double A = -exp((double)A_log[h]), dtt = dt[(size_t)i * nh + h], e = exp(dtt * A);
                    for (int p = 0; p < hd; p++) {
                        double yv = (double)D[h] * X[p], ym = fabs((double)D[h] * X[p]);
                        for (int s2 = 0; s2 < ds; s2++) {
                            size_t q = (size_t)h * hs + (size_t)p * ds + s2, k16 = (size_t)seqs[i] * ss * 2 + q;
                            double sv = Sr[(size_t)seqs[i] * ss + q];
                            double v = e * sv + dtt * X[p] * Bv[s2], vm = e * fabs(sv) + dtt * fabs(X[p] * Bv[s2]);
                            wv[(size_t)i * nS + q] = v;
                            mv[(size_t)i * nS + q] = vm;
                            zb_bf16_to_f32_n(&g16[k16], &gv[(size_t)i * nS + q], 1);
                            mine[k16] = 1;
                            yv += v * Cv[s2];
                            ym += vm * fabs(Cv[s2]);
                        }
                        wy2[(size_t)i * di + h * hd + p] = yv;
                        my2[(size_t)i * di + h * hd + p] = ym;
                    }
                }
            snprintf(what, sizeof what, "[%s] SSD one-token step, bf16 states, slot gap %d: y", c->name, pad);
            cmp(what, gy16, NULL, wy2, my2, (size_t)nb * di, di, nS1 + ds + 4, 1, NULL);
            size_t bad = 0, other = 0;
            double worst = 0;
            for (size_t k = 0; k < (size_t)nb * nS; k++) {
                double bound = 0x1p-8 * fabs(wv[k]) + (nS1 + 1) * U * mv[k] + 1e-37, dd = fabs(gv[k] - wv[k]);
                if (!(dd <= bound)) bad++;
                if (dd / bound > worst || isnan(dd)) worst = isnan(dd) ? INFINITY : dd / bound;
            }
            for (size_t q = 0; q < n16; q++) other += !mine[q] && g16[q] != S16[q];
            zb_check(bad == 0, "[%s] SSD one-token step, bf16 states, slot gap %d: the stored states within 2^-8 |v| "
                     "+ the float32 bound: max |d|/bound = %.3g, %zu mismatches", c->name, pad, worst, bad);
            zb_check(other == 0, "[%s] SSD one-token step, bf16 states, slot gap %d: %zu other bf16 values changed "
                     "(slot 1, the rest of each slot)", c->name, pad, other);
            free(S16); free(g16); free(Sr); free(gy16); free(wv); free(mv); free(gv); free(mine);
            CU(cudaFree(dS16));
        }
        free(S); free(gS); free(gyr); free(wS); free(mS); free(wy2); free(my2);
        CU(cudaFree(dS)); CU(cudaFree(dxr)); CU(cudaFree(ddr)); CU(cudaFree(dyr)); CU(cudaFree(dseq));
        CU(cudaFree(dA2)); CU(cudaFree(dD2));
    }
    ssd_ref_free(&rf);
    free(xbc); free(dt); free(dy); free(S0); free(A_log); free(D);
}

/* ---- 3. the whole mixer ------------------------------------------------------------------------ */

#define OUT_TOL 1e-4    /* tests/test_mamba2.c: the CPU mixer against HF in f32 */
#define GRAD_TOL 1e-3

/* How the whole mixer runs: on its own cuBLAS handle (the kernels driven alone, plain float32
 * products), or as the backend table runs it, on the backend's handle and stream (zb_cuda_init
 * done): its linear layers for the projections, float32 or the bf16 precision mode. */
enum { RUN_OWN, RUN_BACKEND_F32, RUN_BACKEND_BF16 };
static const char *run_name[] = {"own handle, f32", "backend route, f32", "backend route, bf16"};

/* bf16 operands: 8 significant bits, unit roundoff 2^-8 */
#define BF16_U 0x1p-8
/* Norm-relative bounds of the bf16 mode (as tests/test_cuda_mla.c counts them): each rounding of an
 * operand to bf16 adds BF16_U to a product's relative error, the TF32 tile products of the scan
 * 4 x 2^-11 = BF16_U / 2. Forward: x and in_proj, the scan, o and out_proj: 4.5 roundings, 6 with
 * the gated norm's division by the rms of g (its own error again). Gradients: the forward's, and
 * dout with out_proj, the scan's backward, dproj with in_proj (or with x for in_proj's gradient):
 * 12. */
#define BF16_OUT_TOL (OUT_TOL + 6 * BF16_U)
#define BF16_GRAD_TOL (GRAD_TOL + 12 * BF16_U)

static void mixer_vs_cpu(const cfg *c, layer *L, const float *x, const float *R, int run) {
    const zb_mamba2_dims *m = &L->m;
    int d = L->d, B = c->B, T = c->T, N = B * T;
    size_t nx = (size_t)N * d;
    char what[256];
    float *acts = malloc(zb_mamba2_act_floats(m, d, B, T) * sizeof(float));
    float *scr = malloc(zb_mamba2_scratch_floats(m, d, B, T) * sizeof(float));
    float *out = malloc(nx * sizeof(float)), *dx = calloc(nx, sizeof(float));
    for (int i = 0; i < NP; i++)
        if (*wslot(&L->g, i)) memset(*wslot(&L->g, i), 0, L->n[i] * sizeof(float));
    zb_mamba2_forward(m, d, 1e-5f, &L->w, x, out, acts, B, T);
    zb_mamba2_backward(m, d, 1e-5f, &L->w, &L->g, x, R, dx, acts, scr, B, T);

    float *gx = dup_(x, nx), *gR = dup_(R, nx), *gout = dnew(nx), *gdx = dnew(nx),
          *gacts = dnew(zb_cuda_mamba2_act_floats(m, d, B, T)), *gscr = dnew(zb_cuda_mamba2_scratch_floats(m, d, B, T));
    for (int i = 0; i < NP; i++)
        if (*wslot(&L->dg, i)) CU(cudaMemset(*wslot(&L->dg, i), 0, L->n[i] * sizeof(float)));
    if (run != RUN_OWN) {
        /* the backend's stream does not wait for the legacy stream's memsets above */
        dsync("mixer: zeroed buffers");
        zb_cuda_mamba2_set_blas(zb_cuda_cublas_handle(), zb_cuda_stream_handle());
        zb_cuda_weights_changed();   /* this layer's weights may sit where an earlier layer's did */
        zb_cuda_set_precision(run == RUN_BACKEND_BF16 ? ZB_PREC_BF16 : ZB_PREC_F32);
    }
    float *oout = NULL, *odx = NULL, *og[NP] = {0};
    if (run == RUN_BACKEND_BF16) {
        /* first with o and dproj in float32, converted by out_proj's and in_proj's products
         * (ZB_M2_O16=0, ZB_M2_DPROJ16=0), and the conv's pre-activation stored by the forward
         * (ZB_CONV_PRE=keep; the default recomputes it in the backward): kept for the bitwise comparison
         * below, then the gradients zeroed */
        zb_cuda_m2_o16(0);
        zb_cuda_m2_dproj16(0);
        zb_cuda_m2_conv_pre_recompute(0);
        zb_cuda_mamba2_forward(m, d, 1e-5f, &L->dw, gx, gout, gacts, B, T);
        zb_cuda_mamba2_backward(m, d, 1e-5f, &L->dw, &L->dg, gx, gR, gdx, gacts, gscr, B, T);
        zb_cuda_m2_o16(-1);
        zb_cuda_m2_dproj16(-1);
        zb_cuda_m2_conv_pre_recompute(-1);
        zb_check(zb_cuda_sync() == ZB_OK, "[%s] mixer, float32 o and dproj: no device error", c->name);
        oout = dget(gout, nx, "mixer forward, float32 o");
        odx = dget(gdx, nx, "mixer backward, float32 dproj");
        CU(cudaMemset(gdx, 0, nx * sizeof(float)));
        for (int i = 0; i < NP; i++)
            if (*wslot(&L->dg, i)) {
                og[i] = dget(*wslot(&L->dg, i), L->n[i], "mixer backward, float32 dproj");
                CU(cudaMemset(*wslot(&L->dg, i), 0, L->n[i] * sizeof(float)));
            }
        dsync("mixer: zeroed gradients");
    }
    zb_cuda_mamba2_forward(m, d, 1e-5f, &L->dw, gx, gout, gacts, B, T);
    zb_cuda_mamba2_backward(m, d, 1e-5f, &L->dw, &L->dg, gx, gR, gdx, gacts, gscr, B, T);
    dsync("mixer forward/backward");
    if (run != RUN_OWN) {
        int st = zb_cuda_sync();   /* the backend's products record their errors there */
        zb_check(st == ZB_OK, "[%s] mixer (%s): no device error (%s)", c->name, run_name[run], st ? zb_errmsg() : "none");
        zb_cuda_set_precision(ZB_PREC_F32);
        zb_cuda_mamba2_set_blas(NULL, NULL);   /* back to a handle of its own on the legacy stream */
    }
    int bf = run == RUN_BACKEND_BF16;
    float *hout = dget(gout, nx, "mixer forward/backward"), *hdx = dget(gdx, nx, "mixer backward");
    if (odx) {   /* o and dproj written in bf16 by their producers == float32 then rounded by the products:
                  * the same bits, where cuBLAS sees operands of the same alignment (o's products read it
                  * in the acts instead of the 256-byte aligned scratch: compared where o is so aligned;
                  * dx and the other gradients do not depend on o) */
        int ngr = m->d_inner / (m->norm_group > 0 ? m->norm_group : m->d_inner);
        const float *o_dev = zb_mamba2_acts_y(m, gacts, B, T) + (size_t)N * m->d_inner + (size_t)N * ngr;   /* o follows y and rstd */
        int o_cmp = ((uintptr_t)o_dev & 255) == 0;
        int same = !memcmp(odx, hdx, nx * sizeof(float)) && (!o_cmp || !memcmp(oout, hout, nx * sizeof(float)));
        for (int i = 0; i < NP; i++)
            if (og[i]) {
                float *hg = dget(*wslot(&L->dg, i), L->n[i], "mixer backward");
                if (o_cmp || i != 7) same = same && !memcmp(og[i], hg, L->n[i] * sizeof(float));   /* 7: out_proj */
                free(hg);
                free(og[i]);
            }
        zb_check(same, "[%s] mixer (%s): o and dproj in bf16 from their producers, the conv's pre-activation "
                 "recomputed == float32 then converted, pre stored (dx and the gradients%s, bits; max |d| out %.3g, dx %.3g)", c->name, run_name[run],
                 o_cmp ? ", the output and out_proj's gradient" : " but out_proj's",
                 zb_max_abs_diff(oout, hout, nx), zb_max_abs_diff(odx, hdx, nx));
        free(oout);
        free(odx);
    }
    snprintf(what, sizeof what, "[%s] mixer forward output vs CPU (%s)", c->name, run_name[run]);
    if (bf) zb_check_norm_rel(what, hout, out, nx, BF16_OUT_TOL);
    else zb_check_max_rel(what, hout, out, nx, OUT_TOL);
    snprintf(what, sizeof what, "[%s] mixer backward dx vs CPU (%s)", c->name, run_name[run]);
    zb_check_norm_rel(what, hdx, dx, nx, bf ? BF16_GRAD_TOL : GRAD_TOL);
    for (int i = 0; i < NP; i++) {
        if (!*wslot(&L->g, i)) continue;
        float *hg = dget(*wslot(&L->dg, i), L->n[i], "mixer backward");
        snprintf(what, sizeof what, "[%s] mixer backward grad %s vs CPU (%s)", c->name, pname[i], run_name[run]);
        if (bf && (i == 3 || i == 4)) {
            /* dt_bias and A_log: sums over every token of the exponents' gradients, whose terms
             * cancel (test 2's magnitudes): a norm-relative bound of the bf16 products says nothing
             * there. Their bf16-mode kernels are bounded elementwise in test 2 (TF32 tiles) and the
             * same path in f32 above; here the difference is printed. */
            double num = 0, den = 0;
            for (size_t k = 0; k < L->n[i]; k++) {
                double e = (double)hg[k] - (*wslot(&L->g, i))[k];
                num += e * e;
                den += (double)(*wslot(&L->g, i))[k] * (*wslot(&L->g, i))[k];
            }
            printf("  %s: norm-relative difference %.3g (reported, not bounded)\n", what, sqrt(num / (den > 0 ? den : 1)));
        } else zb_check_norm_rel(what, hg, *wslot(&L->g, i), L->n[i], bf ? BF16_GRAD_TOL : GRAD_TOL);
        free(hg);
    }
    /* the CUDA acts keep the CPU layout: the SSD output view */
    float *hy = dget(zb_mamba2_acts_y(m, gacts, B, T), (size_t)N * m->d_inner, "acts view");
    snprintf(what, sizeof what, "[%s] zb_mamba2_acts_y view of the CUDA acts vs CPU (%s)", c->name, run_name[run]);
    if (bf)   /* y after x and in_proj in bf16 and the TF32 scan: within the forward's bf16 bound */
        zb_check_norm_rel(what, hy, zb_mamba2_acts_y(m, acts, B, T), (size_t)N * m->d_inner, BF16_OUT_TOL);
    else zb_check_max_rel(what, hy, zb_mamba2_acts_y(m, acts, B, T), (size_t)N * m->d_inner, OUT_TOL);
    free(hy);
    free(acts); free(scr); free(out); free(dx); free(hout); free(hdx);
    CU(cudaFree(gx)); CU(cudaFree(gR)); CU(cudaFree(gout)); CU(cudaFree(gdx)); CU(cudaFree(gacts)); CU(cudaFree(gscr));
}

/* Generation: B sequences through pieces of n tokens (n = 1: the recurrent step, else the chunked
 * prefill from the cached state; the last length repeats to the end), CUDA against the CPU after
 * every piece (outputs) and at the end (states). */
static void steps_vs_cpu(const cfg *c, layer *L, const float *x, const int *pieces, int np, const char *label) {
    const zb_mamba2_dims *m = &L->m;
    int d = L->d, B = c->B, T = c->T, maxn = 0;
    for (int i = 0; i < np; i++) if (pieces[i] > maxn) maxn = pieces[i];
    size_t sf = zb_mamba2_state_floats(m);
    char what[256];
    float *st = calloc((size_t)B * sf, sizeof(float)), *scr = malloc(zb_mamba2_step_scratch_floats(m, d, maxn) * sizeof(float));
    float *xin = malloc((size_t)B * maxn * d * sizeof(float)), *oc = malloc((size_t)B * maxn * d * sizeof(float));
    float *got = malloc((size_t)B * T * d * sizeof(float)), *want = malloc((size_t)B * T * d * sizeof(float));
    float *gst = dnew((size_t)B * sf), *gscr = dnew(zb_cuda_mamba2_step_scratch_floats(m, d, maxn, B)),
          *gx = dnew((size_t)B * maxn * d), *go = dnew((size_t)B * maxn * d);
    int t0 = 0;
    for (int i = 0; t0 < T; i++) {   /* the last piece length repeats */
        int pn = pieces[i < np ? i : np - 1], n = pn < T - t0 ? pn : T - t0;
        for (int b = 0; b < B; b++)
            memcpy(xin + (size_t)b * n * d, x + ((size_t)b * T + t0) * d, (size_t)n * d * sizeof(float));
        zb_mamba2_step(m, d, 1e-5f, &L->w, xin, oc, st, n, B, scr);
        dput(gx, xin, (size_t)B * n * d);
        zb_cuda_mamba2_step(m, d, 1e-5f, &L->dw, gx, go, gst, n, B, gscr);
        float *h = dget(go, (size_t)B * n * d, "step");
        for (int b = 0; b < B; b++) {
            memcpy(got + ((size_t)b * T + t0) * d, h + (size_t)b * n * d, (size_t)n * d * sizeof(float));
            memcpy(want + ((size_t)b * T + t0) * d, oc + (size_t)b * n * d, (size_t)n * d * sizeof(float));
        }
        free(h);
        t0 += n;
    }
    snprintf(what, sizeof what, "[%s] %s: outputs vs CPU", c->name, label);
    zb_check_max_rel(what, got, want, (size_t)B * T * d, OUT_TOL);
    float *hs = dget(gst, (size_t)B * sf, "step");
    snprintf(what, sizeof what, "[%s] %s: conv + SSM states vs CPU", c->name, label);
    zb_check_max_rel(what, hs, st, (size_t)B * sf, OUT_TOL);
    free(hs); free(st); free(scr); free(xin); free(oc); free(got); free(want);
    CU(cudaFree(gst)); CU(cudaFree(gscr)); CU(cudaFree(gx)); CU(cudaFree(go));
}

/* Batched decode: 4 cache slots prefilled to different lengths (slot 0 in two prefills, the second
 * continuing from the cache; slot 1 never used), then rounds of decode_seqs over seqs {2, 0, 3}, with
 * f32 and with bf16 weight views. */
static void decode_seqs_vs_cpu(const cfg *c, layer *L, zb_rng *rng, int bf16, int sbf) {
    const zb_mamba2_dims *m = &L->m;
    int d = L->d, P = zb_mamba2_in_proj_rows(m), di = m->d_inner;
    enum { SLOTS = 4, NB = 3, ROUNDS = 4 };
    int seqs[NB] = {2, 0, 3};
    int pre[][2] = {{0, 5}, {0, 4}, {2, 12}, {3, 1}};   /* (slot, tokens) prefills in order */
    size_t sf = zb_mamba2_state_floats(m);
    char what[256];
    /* weight views */
    uint16_t *hin = NULL, *hout = NULL, *din = NULL, *dout = NULL;
    zb_mamba2_lin lc = {zb_wt_of_f32(L->w.in_proj), zb_wt_of_f32(L->w.out_proj)};
    zb_mamba2_lin lg = {zb_wt_of_f32(L->dw.in_proj), zb_wt_of_f32(L->dw.out_proj)};
    if (bf16) {
        hin = malloc((size_t)P * d * 2); hout = malloc((size_t)d * di * 2);
        zb_f32_to_bf16_n(L->w.in_proj, hin, (size_t)P * d);
        zb_f32_to_bf16_n(L->w.out_proj, hout, (size_t)d * di);
        CU(cudaMalloc((void **)&din, (size_t)P * d * 2));
        CU(cudaMalloc((void **)&dout, (size_t)d * di * 2));
        CU(cudaMemcpy(din, hin, (size_t)P * d * 2, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dout, hout, (size_t)d * di * 2, cudaMemcpyHostToDevice));
        lc.in_proj = zb_wt_of_bf16(hin); lc.out_proj = zb_wt_of_bf16(hout);
        lg.in_proj = zb_wt_of_bf16(din); lg.out_proj = zb_wt_of_bf16(dout);
    }
    int maxn = 12;
    float *st = calloc(SLOTS * sf, sizeof(float)), *x = malloc((size_t)maxn * d * sizeof(float)),
          *o = malloc((size_t)maxn * d * sizeof(float));
    size_t cs = zb_mamba2_step_scratch_floats(m, d, maxn), cs2 = zb_mamba2_step_scratch_floats(m, d, NB);
    float *scr = malloc((cs > cs2 ? cs : cs2) * sizeof(float));
    size_t gs = zb_cuda_mamba2_step_scratch_floats(m, d, maxn, 1), gs2 = zb_cuda_mamba2_step_scratch_floats(m, d, 1, NB);
    float *gst = dnew(SLOTS * sf), *gscr = dnew(gs > gs2 ? gs : gs2), *gx = dnew((size_t)maxn * d),
          *go = dnew((size_t)maxn * d);
    float *allg = malloc((size_t)(4 + ROUNDS) * maxn * d * sizeof(float)), *allc = malloc((size_t)(4 + ROUNDS) * maxn * d * sizeof(float));
    size_t no = 0;
    /* sbf (bf16 SSM states on the GPU): the norm of the CPU's states after each call, the bound
     * of the roundings (each call rounds every state it touches once, |d| <= 2^-8 |S| elementwise;
     * the recurrence carries an earlier error times e^{dt A} <= 1, so they add up) */
    size_t conv = (size_t)zb_mamba2_conv_dim(m) * (m->conv_k - 1);
    double round_sum = 0;
    for (int k = 0; k < 4; k++) {
        int s = pre[k][0], n = pre[k][1];
        fill(rng, x, (size_t)n * d, 1.0f);
        zb_mamba2_step_lin(m, d, 1e-5f, &L->w, &lc, x, o, st + (size_t)s * sf, n, 1, scr);
        double nn = 0;
        for (size_t q = conv; q < sf; q++) nn += (double)st[(size_t)s * sf + q] * st[(size_t)s * sf + q];
        round_sum += sqrt(nn);
        dput(gx, x, (size_t)n * d);
        zb_cuda_mamba2_step_lin(m, d, 1e-5f, &L->dw, &lg, gx, go, gst + (size_t)s * sf, n, 1, gscr, sbf);
        float *h = dget(go, (size_t)n * d, "prefill");
        memcpy(allg + no, h, (size_t)n * d * sizeof(float));
        memcpy(allc + no, o, (size_t)n * d * sizeof(float));
        no += (size_t)n * d;
        free(h);
    }
    int *dseq = NULL;
    CU(cudaMalloc((void **)&dseq, sizeof seqs));
    CU(cudaMemcpy(dseq, seqs, sizeof seqs, cudaMemcpyHostToDevice));
    for (int r = 0; r < ROUNDS; r++) {
        fill(rng, x, (size_t)NB * d, 1.0f);
        zb_mamba2_decode_seqs(m, d, 1e-5f, &L->w, &lc, x, o, st, seqs, NB, scr, NULL);
        double nn = 0;
        for (int i = 0; i < NB; i++)
            for (size_t q = conv; q < sf; q++) nn += (double)st[(size_t)seqs[i] * sf + q] * st[(size_t)seqs[i] * sf + q];
        round_sum += sqrt(nn);
        dput(gx, x, (size_t)NB * d);
        zb_cuda_mamba2_decode_seqs(m, d, 1e-5f, &L->dw, &lg, gx, go, gst, dseq, NB, gscr, sbf);
        float *h = dget(go, (size_t)NB * d, "decode_seqs");
        memcpy(allg + no, h, (size_t)NB * d * sizeof(float));
        memcpy(allc + no, o, (size_t)NB * d * sizeof(float));
        no += (size_t)NB * d;
        free(h);
    }
    float *hs = dget(gst, SLOTS * sf, "decode_seqs");
    int zero = 1;
    for (size_t i = 0; i < sf; i++) zero &= hs[sf + i] == 0.0f;
    if (!sbf) {
        snprintf(what, sizeof what, "[%s] %s prefills (one continuing from the cache) + decode_seqs {2,0,3}: outputs vs CPU",
                 c->name, bf16 ? "bf16 weights:" : "f32 weights:");
        zb_check_max_rel(what, allg, allc, no, OUT_TOL);
        snprintf(what, sizeof what, "[%s] %s decode_seqs: every slot's state vs CPU", c->name, bf16 ? "bf16" : "f32");
        zb_check_max_rel(what, hs, st, SLOTS * sf, OUT_TOL);
    } else {
        /* the SSM states as bf16 in the first half of each slot's room: widened into the CPU's
         * layout (the conv states stay float32) */
        size_t nS = sf - conv;
        for (int sl = 0; sl < SLOTS; sl++) {
            uint16_t *b = malloc(nS * 2);
            memcpy(b, hs + (size_t)sl * sf + conv, nS * 2);
            zb_bf16_to_f32_n(b, hs + (size_t)sl * sf + conv, nS);
            free(b);
        }
        double ns = 0, nd = 0;
        for (size_t q = 0; q < SLOTS * sf; q++) {
            ns += (double)st[q] * st[q];
            nd += ((double)hs[q] - st[q]) * ((double)hs[q] - st[q]);
        }
        double tol = OUT_TOL + 0x1p-8 * round_sum / (sqrt(ns) + 1e-30);
        snprintf(what, sizeof what, "[%s] bf16 weights, bf16 SSM states: every slot's state vs CPU (the roundings' "
                 "bound %.3g)", c->name, tol);
        zb_check(sqrt(nd) <= tol * sqrt(ns), "%s: ||d||/||ref|| = %.3g", what, sqrt(nd) / (sqrt(ns) + 1e-30));
        /* outputs: each rounding of a state on the path, 2^-8 norm-relative at most (as
         * test_gen_cuda's stages): slot 0 sees 5 before its last call (2 prefills, 4 decodes) */
        snprintf(what, sizeof what, "[%s] bf16 weights, bf16 SSM states: prefills + decode_seqs {2,0,3}: outputs vs CPU",
                 c->name);
        zb_check_norm_rel(what, allg, allc, no, OUT_TOL + (1 + ROUNDS) * 0x1p-8);
    }
    zb_check(zero, "[%s] decode_seqs: the unused slot 1 stays zero", c->name);
    free(hs);
    free(st); free(x); free(o); free(scr); free(allg); free(allc); free(hin); free(hout);
    CU(cudaFree(gst)); CU(cudaFree(gscr)); CU(cudaFree(gx)); CU(cudaFree(go)); CU(cudaFree(dseq));
    if (din) CU(cudaFree(din));
    if (dout) CU(cudaFree(dout));
}

/* The fused decode step (mamba2_decode.cu: conv + dt + conv state in one kernel, the recurrence +
 * gated norm in another) against the separate kernels (ZB_DEC_FUSE=0), both on the GPU from the same
 * zero states, 4 rounds of decode_seqs over slots {2, 0, 3}: the same formulas in the same order, so
 * the values agree up to nvcc's FMA contraction, which may differ between the kernels: one rounding
 * per operation of a value's chain (conv taps, silu, the state update, y, the norm: K + 8 of them,
 * 2^-24 relative each) carried through out_proj's di-term sums (each term's relative error, the sum's
 * at most di times larger relative to the norm): (K + 8) 2^-24 di, norm-relative. With bf16 SSM
 * states a state may round the other way: 2^-8 of the state per round, carried into y (ROUNDS
 * roundings on the path). */
static void decode_fused_vs_unfused(const cfg *c, layer *L, zb_rng *rng, int sbf) {
    const zb_mamba2_dims *m = &L->m;
    int d = L->d, di = m->d_inner;
    enum { SLOTS = 4, NB = 3, ROUNDS = 4 };
    int seqs[NB] = {2, 0, 3};
    size_t sf = zb_mamba2_state_floats(m), gs = zb_cuda_mamba2_step_scratch_floats(m, d, 1, NB);
    zb_mamba2_lin lg = {zb_wt_of_f32(L->dw.in_proj), zb_wt_of_f32(L->dw.out_proj)};
    float *x = malloc((size_t)NB * d * sizeof(float)), *st[3], *scr = dnew(gs), *gx = dnew((size_t)NB * d), *go = dnew((size_t)NB * d);
    float *outs[3];   /* 2: fused, each round recorded as a graph (the state's loads before the PDL wait) */
    st[2] = NULL;
    for (int p = 0; p < 3; p++) {
        st[p] = dnew(SLOTS * sf);
        CU(cudaMemset(st[p], 0, SLOTS * sf * sizeof(float)));
        outs[p] = malloc((size_t)ROUNDS * NB * d * sizeof(float));
    }
    int *dseq = NULL;
    CU(cudaMalloc((void **)&dseq, sizeof seqs));
    CU(cudaMemcpy(dseq, seqs, sizeof seqs, cudaMemcpyHostToDevice));
    for (int r = 0; r < ROUNDS; r++) {
        fill(rng, x, (size_t)NB * d, 1.0f);
        dput(gx, x, (size_t)NB * d);
        for (int p = 0; p < 3; p++) {
            zb_cuda_dec_fuse_set(p != 1);
            void *graph = NULL;
            int rec = p == 2 && zb_cuda_graph_begin(&graph, 11);
            zb_cuda_mamba2_decode_seqs(m, d, 1e-5f, &L->dw, &lg, gx, go, st[p], dseq, NB, scr, sbf);
            if (rec && !zb_cuda_graph_end(graph, 1))   /* not recorded: run as is */
                zb_cuda_mamba2_decode_seqs(m, d, 1e-5f, &L->dw, &lg, gx, go, st[p], dseq, NB, scr, sbf);
            zb_cuda_graph_free(graph);
            float *h = dget(go, (size_t)NB * d, "decode_seqs (fused / separate)");
            memcpy(outs[p] + (size_t)r * NB * d, h, (size_t)NB * d * sizeof(float));
            free(h);
        }
    }
    zb_cuda_dec_fuse_set(-1);
    double tol = (m->conv_k + 8) * 0x1p-24 * di + (sbf ? ROUNDS * 0x1p-8 : 0);
    char what[200];
    snprintf(what, sizeof what, "[%s] decode_seqs fused vs separate kernels (%s SSM states): outputs", c->name,
             sbf ? "bf16" : "f32");
    zb_check_norm_rel(what, outs[0], outs[1], (size_t)ROUNDS * NB * d, tol);
    {   /* recorded vs eager: the same kernels, so the same bits (outputs and states) */
        float *h0 = dget(st[0], SLOTS * sf, "states"), *h2 = dget(st[2], SLOTS * sf, "states");
        zb_check(!memcmp(outs[0], outs[2], (size_t)ROUNDS * NB * d * sizeof(float)) &&
                     !memcmp(h0, h2, SLOTS * sf * sizeof(float)),
                 "[%s] decode_seqs fused, recorded as graphs (%s SSM states): outputs and states bit for bit as run "
                 "directly", c->name, sbf ? "bf16" : "f32");
        free(h0); free(h2);
    }
    if (!sbf) {   /* the states (float32 throughout) */
        float *h0 = dget(st[0], SLOTS * sf, "states"), *h1 = dget(st[1], SLOTS * sf, "states");
        snprintf(what, sizeof what, "[%s] decode_seqs fused vs separate kernels: every slot's conv and SSM state",
                 c->name);
        zb_check_norm_rel(what, h0, h1, SLOTS * sf, (m->conv_k + 8) * 0x1p-24 * ROUNDS);
        free(h0); free(h1);
    }
    for (int p = 0; p < 3; p++) { CU(cudaFree(st[p])); free(outs[p]); }
    free(x);
    CU(cudaFree(scr)); CU(cudaFree(gx)); CU(cudaFree(go)); CU(cudaFree(dseq));
}

static void run_config(const cfg *c, uint64_t seed) {
    zb_rng r;
    zb_rng_seed(&r, seed);
    layer L;
    layer_init(&L, c, &r);
    size_t nx = (size_t)c->B * c->T * c->d;
    float *x = malloc(nx * sizeof(float)), *R = malloc(nx * sizeof(float));
    fill(&r, x, nx, 1.0f);
    fill(&r, R, nx, 1.0f);
    printf("config %s: B=%d T=%d d=%d heads=%d x %d state=%d groups x/B/C=%d/%d/%d chunk=%d norm group=%d "
           "dt limit (%g, %g) conv bias %d\n", c->name, c->B, c->T, c->d, c->m.nheads, c->m.headdim, c->m.d_state,
           c->m.x_groups, c->m.b_groups, c->m.c_groups, c->m.chunk, c->m.norm_group, c->m.dt_min, c->m.dt_max,
           c->m.conv_bias);
    stages_vs_cpu(c, &L, x, R);
    ssd_vs_double(c, &r);
    if (c->m.chunk <= 64 && c->m.headdim <= 64 && c->m.d_state <= 64) {
        /* the scan ran the fused per-chunk kernels: the tile kernels (ZB_SSD=tiles) on the same shape */
        char nm[200];
        snprintf(nm, sizeof nm, "%s, tile kernels", c->name);
        cfg c2 = *c;
        c2.name = nm;
        zb_cuda_m2_ssd_fused(0);
        ssd_vs_double(&c2, &r);
        zb_cuda_m2_ssd_fused(-1);
        /* the fused backward's 8-warp block (ZB_SSD_BWD_WARPS=8; the default has 16) */
        snprintf(nm, sizeof nm, "%s, 8-warp fused backward, 16-warp fused forward", c->name);
        zb_cuda_m2_ssd_bwd_warps(8);
        zb_cuda_m2_ssd_fwd_warps(16);
        ssd_vs_double(&c2, &r);
        zb_cuda_m2_ssd_bwd_warps(-1);
        zb_cuda_m2_ssd_fwd_warps(-1);
    }
    for (int run = RUN_OWN; run <= RUN_BACKEND_BF16; run++) mixer_vs_cpu(c, &L, x, R, run);
    int ones[1] = {1}, pf[2] = {7, 1}, mixed[10] = {2, 1, 5, 3, 1, 1, 9, 2, 17, 1};
    int big = c->T;
    steps_vs_cpu(c, &L, x, ones, 1, "decode n=1 x T");
    steps_vs_cpu(c, &L, x, pf, 2, "prefill 7 + decode");
    steps_vs_cpu(c, &L, x, mixed, 10, "pieces 2,1,5,3,1,1,9,2,17,1..");
    steps_vs_cpu(c, &L, x, &big, 1, "prefill of the whole sequence");
    decode_seqs_vs_cpu(c, &L, &r, 0, 0);
    decode_seqs_vs_cpu(c, &L, &r, 1, 0);
    decode_seqs_vs_cpu(c, &L, &r, 1, 1);   /* bf16 SSM states (generation with bf16 weights) */
    decode_fused_vs_unfused(c, &L, &r, 0);
    decode_fused_vs_unfused(c, &L, &r, 1);
    layer_free(&L);
    free(x); free(R);
}

/* ---- HF fixture ------------------------------------------------------------------------------ */

static char *py_json_fix(const char *s) {   /* Infinity -> 1e999, NaN -> 0 outside strings */
    size_t n = strlen(s);
    char *o = malloc(n + 1), *q = o;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (in_str) {
            *q++ = s[i];
            if (s[i] == '\\' && i + 1 < n) *q++ = s[++i];
            else if (s[i] == '"') in_str = 0;
        } else if (s[i] == '"') { in_str = 1; *q++ = s[i]; }
        else if (!strncmp(s + i, "Infinity", 8)) { memcpy(q, "1e999", 5); q += 5; i += 7; }
        else if (!strncmp(s + i, "NaN", 3)) { *q++ = '0'; i += 2; }
        else *q++ = s[i];
    }
    *q = 0;
    return o;
}
static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) { fprintf(stderr, "meta.json: no number %s\n", k); exit(2); }
    return v->valuedouble;
}
static float *st_load(zb_safetensors *st, const char *name, size_t want) {
    const zb_st_tensor *t = zb_st_get(st, name);
    if (!t || (size_t)t->numel != want) {
        fprintf(stderr, "fixture: tensor %s missing or numel != %zu\n", name, want);
        exit(2);
    }
    float *p = malloc(want * sizeof(float));
    if (zb_st_to_f32(t, p)) { fprintf(stderr, "%s\n", zb_errmsg()); exit(2); }
    return p;
}

static void hf_fixture(const char *dir) {
    char path[4096], nm[256];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    char *txt;
    size_t len;
    if (zb_read_file(path, &txt, &len)) { zb_check(0, "read %s: %s", path, zb_errmsg()); return; }
    char *fixed = py_json_fix(txt);
    cJSON *meta = cJSON_Parse(fixed);
    if (!meta) { zb_check(0, "%s: parse error", path); return; }
    const cJSON *cf = cJSON_GetObjectItemCaseSensitive(meta, "config");
    int B = (int)num(meta, "B"), T = (int)num(meta, "T");
    int d = (int)num(cf, "hidden_size"), nh = (int)num(cf, "num_heads"), hd = (int)num(cf, "head_dim"),
        ds = (int)num(cf, "state_size"), ng = (int)num(cf, "n_groups"), K = (int)num(cf, "conv_kernel"),
        chunk = (int)num(cf, "chunk_size");
    float eps = (float)num(cf, "layer_norm_epsilon");
    const cJSON *lim = cJSON_GetObjectItemCaseSensitive(cf, "time_step_limit");
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(cf, "use_conv_bias");
    zb_mamba2_dims m = {
        .d_inner = nh * hd, .nheads = nh, .headdim = hd, .d_state = ds, .x_groups = nh, .b_groups = ng,
        .c_groups = ng, .conv_k = K, .chunk = chunk, .norm_group = nh * hd,
        .dt_min = (float)cJSON_GetArrayItem(lim, 0)->valuedouble,
        .dt_max = (float)cJSON_GetArrayItem(lim, 1)->valuedouble, .conv_bias = cb ? cJSON_IsTrue(cb) : 1,
    };
    int P = zb_mamba2_in_proj_rows(&m), cd = zb_mamba2_conv_dim(&m), di = m.d_inner;
    size_t N = (size_t)B * T;
    snprintf(path, sizeof path, "%s/layer.safetensors", dir);
    zb_safetensors *st;
    if (zb_st_open(&st, path)) { zb_check(0, "open %s: %s", path, zb_errmsg()); return; }
    struct { const char *name; size_t n; size_t off; } ps[] = {
        {"in_proj.weight", (size_t)P * d, offsetof(zb_mamba2_weights, in_proj)},
        {"conv1d.weight", (size_t)cd * K, offsetof(zb_mamba2_weights, conv_w)},
        {"conv1d.bias", (size_t)cd, offsetof(zb_mamba2_weights, conv_b)},
        {"dt_bias", (size_t)nh, offsetof(zb_mamba2_weights, dt_bias)},
        {"A_log", (size_t)nh, offsetof(zb_mamba2_weights, A_log)},
        {"D", (size_t)nh, offsetof(zb_mamba2_weights, D)},
        {"norm.weight", (size_t)di, offsetof(zb_mamba2_weights, norm_w)},
        {"out_proj.weight", (size_t)d * di, offsetof(zb_mamba2_weights, out_proj)},
    };
    int np = (int)(sizeof ps / sizeof ps[0]);
    zb_mamba2_weights w, g;
    for (int i = 0; i < np; i++) {
        snprintf(nm, sizeof nm, "param.%s", ps[i].name);
        float *h = st_load(st, nm, ps[i].n);
        *(float **)((char *)&w + ps[i].off) = dup_(h, ps[i].n);
        *(float **)((char *)&g + ps[i].off) = dnew(ps[i].n);
        free(h);
    }
    float *x = st_load(st, "input", N * d), *ref = st_load(st, "output", N * d), *R = st_load(st, "dloss_doutput", N * d),
          *gx_ref = st_load(st, "grad.input", N * d);
    float *gx = dup_(x, N * d), *gR = dup_(R, N * d), *gout = dnew(N * d), *gdx = dnew(N * d),
          *acts = dnew(zb_cuda_mamba2_act_floats(&m, d, B, T)), *scr = dnew(zb_cuda_mamba2_scratch_floats(&m, d, B, T));
    printf("hf-mamba2-layer: B=%d T=%d d=%d heads=%d x %d state=%d groups=%d K=%d chunk=%d\n", B, T, d, nh, hd, ds,
           ng, K, chunk);
    zb_cuda_mamba2_forward(&m, d, eps, &w, gx, gout, acts, B, T);
    float *hout = dget(gout, N * d, "fixture forward");
    zb_check_max_rel("[hf-mamba2-layer] CUDA output vs HF", hout, ref, N * d, OUT_TOL);
    zb_cuda_mamba2_backward(&m, d, eps, &w, &g, gx, gR, gdx, acts, scr, B, T);
    float *hdx = dget(gdx, N * d, "fixture backward");
    zb_check_norm_rel("[hf-mamba2-layer] CUDA grad.input vs HF", hdx, gx_ref, N * d, GRAD_TOL);
    for (int i = 0; i < np; i++) {
        snprintf(nm, sizeof nm, "grad.%s", ps[i].name);
        float *gr = st_load(st, nm, ps[i].n), *hg = dget(*(float **)((char *)&g + ps[i].off), ps[i].n, "fixture");
        char what[300];
        snprintf(what, sizeof what, "[hf-mamba2-layer] CUDA %s vs HF", nm);
        zb_check_norm_rel(what, hg, gr, ps[i].n, GRAD_TOL);
        free(gr); free(hg);
    }
    int chunks[] = {1, 5, 64};
    for (int k = 0; k < 3; k++) {
        zb_mamba2_dims m2 = m;
        m2.chunk = chunks[k];
        float *a2 = dnew(zb_cuda_mamba2_act_floats(&m2, d, B, T));
        zb_cuda_mamba2_forward(&m2, d, eps, &w, gx, gout, a2, B, T);
        float *h = dget(gout, N * d, "fixture forward (chunk)");
        char what[300];
        snprintf(what, sizeof what, "[hf-mamba2-layer] CUDA output (chunk %d) vs HF", chunks[k]);
        zb_check_max_rel(what, h, ref, N * d, OUT_TOL);
        free(h);
        CU(cudaFree(a2));
    }
    for (int i = 0; i < np; i++) {
        CU(cudaFree(*(float **)((char *)&w + ps[i].off)));
        CU(cudaFree(*(float **)((char *)&g + ps[i].off)));
    }
    free(x); free(ref); free(R); free(gx_ref); free(hout); free(hdx);
    CU(cudaFree(gx)); CU(cudaFree(gR)); CU(cudaFree(gout)); CU(cudaFree(gdx)); CU(cudaFree(acts)); CU(cudaFree(scr));
    zb_st_close(st);
    cJSON_Delete(meta);
    free(fixed); free(txt);
}

/* ---- main ------------------------------------------------------------------------------------- */

#define DIMS(nh_, hd_, ds_, xg_, bg_, cg_, chunk_, ngrp_, lo_, hi_, cb_) \
    {.d_inner = (nh_) * (hd_), .nheads = nh_, .headdim = hd_, .d_state = ds_, .x_groups = xg_, .b_groups = bg_, \
     .c_groups = cg_, .conv_k = 4, .chunk = chunk_, .norm_group = ngrp_, .dt_min = lo_, .dt_max = hi_, .conv_bias = cb_}

int main(int argc, char **argv) {
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0) {
        printf("SKIP test_cuda_mamba2: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    zb_test_init(&argc, &argv);
    g_all = getenv("ZB_CUDA_TEST_ALL") && atoi(getenv("ZB_CUDA_TEST_ALL"));
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    /* the backend's device state (stream, handles): the whole mixer also runs as the backend
     * table runs it (mixer_vs_cpu); the other checks keep the kernels on their own handle */
    if (zb_cuda_init(0) != ZB_OK) {
        printf("FATAL: zb_cuda_init: %s\n", zb_errmsg());
        return 1;
    }
    float inf = INFINITY;
    cfg cfgs[] = {
        /* HF Mamba2 shape: n_groups 2, whole-width norm, ragged last chunk (37 = 4 x 8 + 5) */
        {"hf groups 2", DIMS(8, 16, 16, 8, 2, 2, 8, 128, 0.0f, inf, 1), 48, 2, 37, 0.001f, 0.1f},
        /* n_groups 1, T < chunk */
        {"groups 1, T < chunk", DIMS(4, 16, 8, 4, 1, 1, 16, 64, 0.0f, inf, 1), 40, 2, 10, 0.001f, 0.1f},
        /* Zebra: x / B groups = 2 KV groups repeated to 4 heads, C per head, per-head norm; chunk of
         * 64 + 36 rows, ragged last chunk, hd 80 and d_state 72 (64-wide tiles + ragged tiles) */
        {"zebra kv groups, tiles", DIMS(4, 80, 72, 2, 2, 4, 100, 80, 0.0f, inf, 1), 64, 2, 150, 0.001f, 0.05f},
        /* dt clamped into [0.01, 0.05], no conv bias, chunk 3 */
        {"dt clamp, no conv bias", DIMS(2, 8, 4, 2, 1, 1, 3, 8, 0.01f, 0.05f, 0), 24, 1, 9, 0.002f, 0.2f},
        /* chunk 256 = 4 row tiles (the full causal triangle of tiles), T = 256 + 44, one x group for
         * both heads, per-head norm */
        {"chunk 256, x shared", DIMS(2, 64, 64, 1, 1, 2, 256, 64, 0.0f, inf, 1), 32, 1, 300, 0.001f, 0.02f},
        /* the Zebra-1B head shape (hd = d_state = 64, x / B groups of 2 heads, C per head) in 64-row
         * chunks, the training chunk: the fused per-chunk kernels; ragged last chunk */
        {"zebra-1b heads, fused", DIMS(4, 64, 64, 2, 2, 4, 64, 64, 0.0f, inf, 1), 64, 2, 150, 0.001f, 0.1f},
        /* Zebra-8B's d_state 128 (the float4 decode step), x / B groups of 2 heads, C per head */
        {"d_state 128, zebra groups", DIMS(4, 32, 128, 2, 2, 4, 64, 32, 0.0f, inf, 1), 64, 2, 70, 0.001f, 0.05f},
    };
    int nc = (int)(sizeof cfgs / sizeof cfgs[0]);
    for (int i = 0; i < nc; i++) run_config(&cfgs[i], 1234 + i);
    if (argc >= 2) hf_fixture(argv[1]);
    else printf("no fixture directory given: the HF check is skipped\n");
    return zb_test_finish();
}
