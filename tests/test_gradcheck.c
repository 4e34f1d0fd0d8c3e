/* test_gradcheck — every kernel of core/ops against a naive double-precision forward:
 * (1) the float forward equals the double forward; (2) the float backward equals central
 * finite differences of the double forward of L = sum(out * R), R random. Bounds: see
 * fwd_check / fd_check (float32 rounding of each kernel x its condition, zb_test.h). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "zb_common.h"
#include "zb_test.h"

static zb_rng rng;
static float *randv(size_t n, float scale) {
    float *x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = scale * zb_rng_normal(&rng);
    return x;
}
static float *zerov(size_t n) { return calloc(n, sizeof(float)); }

/* A double forward: fills out (double) from the inputs (double). */
typedef void (*fwd_d)(double *out, double **in, const void *ctx);

/* Bounds (zb_test.h). The double forward is exact to ~1e-16, so each check bounds one float32
 * evaluation. A float32 kernel whose longest chain of roundings is k deep (a reduction of n
 * terms: n) computes the exact result of inputs perturbed by at most gamma(k) relatively
 * (backward error, Higham §3.1); to first order its output o then moves by at most
 * gamma(k) sum_j |J_oj| |x_j|, J = d out / d in (the componentwise condition), plus the final
 * rounding u |o|. J comes from central differences of the double forward. An analytic gradient
 * g_j = sum_o R_o J_oj (L = sum out R) likewise errs by at most gamma(k) sum_o |R_o J_oj| (k: the
 * backward's depth), and the central difference D_h of the double forward by
 * 2 |D_2h - D_h| / 3 (Richardson) + its double rounding. */
static double **to_double(float **inf, const size_t *sizes, int n_in) {
    double **in = malloc(sizeof(double *) * n_in);
    for (int i = 0; i < n_in; i++) {
        in[i] = malloc(sizeof(double) * sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++) in[i][j] = inf[i][j];
    }
    return in;
}
static void free_double(double **in, int n_in) {
    for (int i = 0; i < n_in; i++) free(in[i]);
    free(in);
}

/* Central differences of every output with respect to in[k][j], steps h and 2h:
 * j1 = (out(+h) - out(-h)) / 2h and j2 the same with 2h, each [n_out]. */
static void jac_col(fwd_d f, const void *ctx, double **in, int k, size_t j, size_t n_out, double h, double *j1,
                    double *j2, double *op, double *om) {
    double x0 = in[k][j];
    for (int r = 1; r <= 2; r++) {
        double *jj = r == 1 ? j1 : j2, hh = r * h;
        in[k][j] = x0 + hh; f(op, in, ctx);
        in[k][j] = x0 - hh; f(om, in, ctx);
        for (size_t o = 0; o < n_out; o++) jj[o] = (op[o] - om[o]) / (2 * hh);
    }
    in[k][j] = x0;
}

/* Finite-difference gradient of L = sum(out*R) wrt input k, compared with `analytic` (depth k_bwd
 * of the backward's roundings): |analytic_j - D_j| <= tol_fd_j + gamma(k_bwd) max_j' M_j',
 * M_j = sum_o |R_o J_oj| (the tensor's largest magnitude: a gradient that cancels to ~0 still
 * carries the rounding of its parts). */
static void fd_check(const char *what, fwd_d f, const void *ctx, float **inf, const size_t *sizes,
                     int n_in, int k, size_t n_out, const float *R, const float *analytic, double k_bwd) {
    double **in = to_double(inf, sizes, n_in);
    double *op = malloc(sizeof(double) * n_out), *om = malloc(sizeof(double) * n_out);
    double *j1 = malloc(sizeof(double) * n_out), *j2 = malloc(sizeof(double) * n_out);
    double worst = 0, mmax = 0;
    size_t wj = 0, nj = sizes[k];
    f(op, in, ctx);
    double lmag = 0;   /* |L|'s summed terms: the double rounding of each difference */
    for (size_t o = 0; o < n_out; o++) lmag += fabs(op[o] * R[o]);
    double *num = malloc(sizeof(double) * nj), *tol = malloc(sizeof(double) * nj);
    for (size_t j = 0; j < nj; j++) {
        double h = 1e-6 * fmax(1.0, fabs(in[k][j]));
        jac_col(f, ctx, in, k, j, n_out, h, j1, j2, op, om);
        double d1 = 0, d2 = 0, m = 0;
        for (size_t o = 0; o < n_out; o++) { d1 += R[o] * j1[o]; d2 += R[o] * j2[o]; m += fabs(R[o] * j1[o]); }
        num[j] = d1;
        /* truncation (Richardson), the double rounding of L over the step, ref's float rounding */
        tol[j] = 2 * fabs(d2 - d1) / 3 + 4 * 0x1p-53 * (n_out + 8) * lmag / h + ZB_U32 * fabs(d1);
        if (m > mmax) mmax = m;
    }
    for (size_t j = 0; j < nj; j++) {
        double r = fabs(analytic[j] - num[j]) / (tol[j] + zb_gamma32(k_bwd) * mmax);
        if (!(r <= worst)) { worst = r; wj = j; }
    }
    free(num); free(tol);
    zb_check(worst <= 1, "%s: |analytic - fd| within its bound (worst %.2g of it, at %zu)", what, worst, wj);
    free_double(in, n_in);
    free(op); free(om); free(j1); free(j2);
}

/* The float forward `got` against the double one: |got_o - ref_o| <= gamma(k_fwd) sum_j |J_oj x_j|
 * + u |ref_o|, over every input j of every input tensor. */
static void fwd_check(const char *what, fwd_d f, const void *ctx, float **inf, const size_t *sizes,
                      int n_in, const float *got, size_t n_out, double k_fwd) {
    double **in = to_double(inf, sizes, n_in);
    double *ref = malloc(sizeof(double) * n_out), *mag = calloc(n_out, sizeof(double));
    double *op = malloc(sizeof(double) * n_out), *om = malloc(sizeof(double) * n_out);
    double *j1 = malloc(sizeof(double) * n_out), *j2 = malloc(sizeof(double) * n_out);
    f(ref, in, ctx);
    for (int k = 0; k < n_in; k++)
        for (size_t j = 0; j < sizes[k]; j++) {
            jac_col(f, ctx, in, k, j, n_out, 1e-6 * fmax(1.0, fabs(in[k][j])), j1, j2, op, om);
            for (size_t o = 0; o < n_out; o++) mag[o] += fabs(j1[o] * in[k][j]);
        }
    double worst = 0;
    size_t wo = 0;
    for (size_t o = 0; o < n_out; o++) {
        /* + the double central differences' own error (~h^2 = 1e-12 relative) */
        double b = zb_gamma32(k_fwd) * mag[o] + ZB_U32 * fabs(ref[o]) + 1e-12 * (mag[o] + fabs(ref[o]));
        double r = fabs(got[o] - ref[o]) / b;
        if (!(r <= worst)) { worst = r; wo = o; }
    }
    zb_check(worst <= 1, "%s: |float - double| within gamma(%g) x condition (worst %.2g of it, at %zu)", what, k_fwd,
             worst, wo);
    free_double(in, n_in);
    free(ref); free(mag); free(op); free(om); free(j1); free(j2);
}

/* ---- matmul ---- */
typedef struct { int N, C, OC; } mm_ctx;
static void mm_d(double *out, double **in, const void *c) {
    const mm_ctx *m = c;
    for (int n = 0; n < m->N; n++)
        for (int o = 0; o < m->OC; o++) {
            double s = in[2][o];
            for (int i = 0; i < m->C; i++) s += in[0][n * m->C + i] * in[1][o * m->C + i];
            out[n * m->OC + o] = s;
        }
}
static void test_matmul(int N) {
    mm_ctx c = {N, 7, 5};
    size_t sz[3] = {(size_t)c.N * c.C, (size_t)c.OC * c.C, (size_t)c.OC};
    float *x = randv(sz[0], 1), *W = randv(sz[1], 1), *b = randv(sz[2], 1), *R = randv((size_t)N * c.OC, 1);
    float *out = zerov((size_t)N * c.OC), *dx = zerov(sz[0]), *dW = zerov(sz[1]), *db = zerov(sz[2]);
    float *in[3] = {x, W, b};
    zb_matmul_forward(out, x, W, b, c.N, c.C, c.OC);
    /* depths: a dot of C (+ bias); dx sums over OC, dW and db over N */
    fwd_check(N == 1 ? "matmul fwd (gemv)" : "matmul fwd", mm_d, &c, in, sz, 3, out, (size_t)N * c.OC, c.C + 1);
    zb_matmul_backward(dx, dW, db, R, x, W, c.N, c.C, c.OC);
    fd_check("matmul dx", mm_d, &c, in, sz, 3, 0, (size_t)N * c.OC, R, dx, c.OC + 1);
    fd_check("matmul dW", mm_d, &c, in, sz, 3, 1, (size_t)N * c.OC, R, dW, N + 1);
    fd_check("matmul db", mm_d, &c, in, sz, 3, 2, (size_t)N * c.OC, R, db, N + 1);
    free(x); free(W); free(b); free(R); free(out); free(dx); free(dW); free(db);
}

/* ---- rmsnorm ---- */
typedef struct { int N, C; float eps; } rn_ctx;
static void rn_d(double *out, double **in, const void *c) {
    const rn_ctx *r = c;
    for (int n = 0; n < r->N; n++) {
        double ss = 0;
        for (int i = 0; i < r->C; i++) ss += in[0][n * r->C + i] * in[0][n * r->C + i];
        double k = 1.0 / sqrt(ss / r->C + r->eps);
        for (int i = 0; i < r->C; i++) out[n * r->C + i] = in[1][i] * in[0][n * r->C + i] * k;
    }
}
static void test_rmsnorm(void) {
    rn_ctx c = {4, 9, 1e-5f};
    size_t sz[2] = {36, 9};
    float *x = randv(36, 1), *w = randv(9, 1), *R = randv(36, 1), *out = zerov(36), *rs = zerov(4);
    float *dx = zerov(36), *dw = zerov(9), *in[2] = {x, w};
    zb_rmsnorm_forward(out, rs, x, w, c.N, c.C, c.eps);
    /* forward: the sum of squares in double, then rstd's cast, x r, w (x r); the backward's
     * row sum over C and dw's sum over N, each plus its few products */
    fwd_check("rmsnorm fwd", rn_d, &c, in, sz, 2, out, 36, 4);
    zb_rmsnorm_backward(dx, dw, R, x, w, rs, c.N, c.C);
    fd_check("rmsnorm dx", rn_d, &c, in, sz, 2, 0, 36, R, dx, c.C + 6);
    fd_check("rmsnorm dw", rn_d, &c, in, sz, 2, 1, 36, R, dw, c.N + 4);
    free(x); free(w); free(R); free(out); free(rs); free(dx); free(dw);
}

/* ---- rope (rotate-half and interleaved; llama3 and YaRN scaling) ---- */
typedef struct { const zb_rope *r; int B, T, H, hs, off, inter; } rp_ctx;
static void rp_d(double *out, double **in, const void *cv) {
    const rp_ctx *c = cv;
    int D = c->r->dim, half = D / 2, row = c->H * c->hs;
    double ms = c->r->mscale;
    for (int i = 0; i < c->B * c->T * row; i++) out[i] = in[0][i];
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->H; h++) {
                double *v = out + (b * c->T + t) * row + h * c->hs + c->off, tmp[64];
                if (c->inter) {
                    for (int i = 0; i < half; i++) { tmp[i] = v[2 * i]; tmp[half + i] = v[2 * i + 1]; }
                    memcpy(v, tmp, sizeof(double) * D);
                }
                for (int i = 0; i < half; i++) {
                    double a = (double)(float)((float)t * c->r->inv_freq[i]);
                    double x1 = v[i], x2 = v[i + half];
                    v[i] = ms * (x1 * cos(a) - x2 * sin(a));
                    v[i + half] = ms * (x2 * cos(a) + x1 * sin(a));
                }
            }
}
static void test_rope(int inter, const zb_rope_cfg *cfg, const char *name) {
    zb_rope r;
    zb_rope_init(&r, 8, cfg);
    rp_ctx c = {&r, 2, 5, 3, 12, 4, inter};
    size_t n = (size_t)c.B * c.T * c.H * c.hs, sz[1] = {n};
    float *x = randv(n, 1), *R = randv(n, 1), *y = malloc(sizeof(float) * n), *in[1] = {x};
    char what[96];
    memcpy(y, x, sizeof(float) * n);
    zb_rope_apply_seq(&r, y, c.B, c.T, c.H * c.hs, c.H, c.hs, c.off, 0, inter, 0);
    snprintf(what, sizeof what, "rope fwd (%s%s)", name, inter ? ", interleaved" : "");
    /* cosf / sinf of the same float angle (1 ulp), two products and a sum */
    fwd_check(what, rp_d, &c, in, sz, 1, y, n, 4);
    memcpy(y, R, sizeof(float) * n);   /* backward of a (scaled) rotation = its transpose applied to dout */
    zb_rope_apply_seq(&r, y, c.B, c.T, c.H * c.hs, c.H, c.hs, c.off, 0, inter, 1);
    snprintf(what, sizeof what, "rope dx (%s%s)", name, inter ? ", interleaved" : "");
    fd_check(what, rp_d, &c, in, sz, 1, 0, n, R, y, 4);
    free(x); free(R); free(y);
}

/* The YaRN frequencies and mscale from SPEC §3's formula in double (DeepSeek's
 * yarn_find_correction_range / linear ramp / get_mscale), against zb_rope_init (float32 like
 * the release): each inv_freq within 4 float32 ulps (pow, two divisions and the blend round),
 * mscale = 0.1 ln(factor) + 1 (SPEC: 1.3466 at 32, 1.2079 at 8). */
static void test_yarn_table(int dim, float theta, float factor, int orig) {
    zb_rope_cfg cfg = {.type = ZB_ROPE_YARN, .theta = theta, .factor = factor, .original_max_pos = orig,
                       .beta_fast = 32, .beta_slow = 1, .mscale = 1, .mscale_all_dim = 0};
    zb_rope r;
    zb_rope_init(&r, dim, &cfg);
    double cd_fast = dim * log(orig / (32 * 2 * M_PI)) / (2 * log(theta));
    double cd_slow = dim * log(orig / (1 * 2 * M_PI)) / (2 * log(theta));
    int lo = (int)floor(cd_fast), hi = (int)ceil(cd_slow);
    if (lo < 0) lo = 0;
    if (hi > dim - 1) hi = dim - 1;
    double worst = 0;
    for (int i = 0; i < dim / 2; i++) {
        double extra = pow(theta, -2.0 * i / dim), ramp = (i - lo) / (hi == lo ? 0.001 : (double)(hi - lo));
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double want = extra / factor * ramp + extra * (1 - ramp);
        double e = fabs(r.inv_freq[i] - want) / want;
        if (e > worst) worst = e;
    }
    zb_check(worst <= 4 * FLT_EPSILON, "YaRN inv_freq (dim %d, theta %g, factor %g, original %d, ramp %d..%d): "
             "max rel %.3g vs the double formula (tol 4 eps = %.3g)", dim, theta, factor, orig, lo, hi, worst,
             4 * FLT_EPSILON);
    double ms = 0.1 * log(factor) + 1;
    zb_check(fabs(r.mscale - ms) <= FLT_EPSILON * ms, "YaRN mscale %.7f == 0.1 ln(%g) + 1 = %.7f", r.mscale, factor, ms);
}

/* ---- attention ---- */
/* The float32 error bound of one attention output row (query q, Tc cached keys / values with
 * row strides ks / vs, dq / dv wide, scale sc), written to b[dv]: each score q.k errs by at
 * most d_u = gamma(dq) sc sum |q k_u|, which moves every weight p_u by at most 2 max d_u
 * relatively; the exp, the sums over Tc (split-K partials rescaled and merged) and the divide
 * add gamma(Tc + 8): |do_j| <= (2 max_u d_u + gamma(Tc + 8)) sum_u p_u |v_uj|. */
static void attn_row_bound(double *b, const float *q, const float *k, const float *v, int Tc, int dq, int dv, int ks,
                           int vs, double sc) {
    double *w = malloc(sizeof(double) * Tc), mx = -1e300, l = 0, dmax = 0;
    for (int u = 0; u < Tc; u++) {
        double a = 0, m = 0;
        for (int j = 0; j < dq; j++) { a += (double)q[j] * k[(size_t)u * ks + j]; m += fabs((double)q[j] * k[(size_t)u * ks + j]); }
        w[u] = sc * a;
        if (w[u] > mx) mx = w[u];
        if (zb_gamma32(dq) * sc * m > dmax) dmax = zb_gamma32(dq) * sc * m;
    }
    for (int u = 0; u < Tc; u++) { w[u] = exp(w[u] - mx); l += w[u]; }
    for (int j = 0; j < dv; j++) {
        double a = 0;
        for (int u = 0; u < Tc; u++) a += w[u] * fabs((double)v[(size_t)u * vs + j]);
        b[j] = (2 * dmax + zb_gamma32(Tc + 8)) * a / l;
    }
    free(w);
}

static void at_d(double *out, double **in, const void *cv) {
    const zb_attn_shape *s = cv;
    int rep = s->H / s->Hkv;
    double sc[64];
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int t = 0; t < s->T; t++) {
                int g = h / rep;
                const double *q = in[0] + (b * s->T + t) * s->q_stride + h * s->dqk;
                double mx = -1e300, sum = 0;
                for (int u = 0; u <= t; u++) {
                    const double *k = in[1] + (b * s->T + u) * s->k_stride + g * s->dqk;
                    double d = 0;
                    for (int i = 0; i < s->dqk; i++) d += q[i] * k[i];
                    sc[u] = d * s->scale;
                    if (sc[u] > mx) mx = sc[u];
                }
                for (int u = 0; u <= t; u++) { sc[u] = exp(sc[u] - mx); sum += sc[u]; }
                double *o = out + (b * s->T + t) * s->H * s->dv + h * s->dv;
                for (int i = 0; i < s->dv; i++) {
                    double acc = 0;
                    for (int u = 0; u <= t; u++) acc += sc[u] / sum * in[2][(b * s->T + u) * s->v_stride + g * s->dv + i];
                    o[i] = acc;
                }
            }
}
static void test_attention(void) {
    zb_attn_shape s = {2, 6, 4, 2, 5, 3, 4 * 5, 2 * 5, 2 * 3, 1.0f / sqrtf(5.0f)};
    size_t nq = (size_t)s.B * s.T * s.q_stride, nk = (size_t)s.B * s.T * s.k_stride, nv = (size_t)s.B * s.T * s.v_stride;
    size_t no = (size_t)s.B * s.T * s.H * s.dv, sz[3] = {nq, nk, nv};
    float *q = randv(nq, 1), *k = randv(nk, 1), *v = randv(nv, 1), *R = randv(no, 1), *out = zerov(no);
    float *P = zerov((size_t)s.B * s.H * s.T * s.T), *dq = zerov(nq), *dk = zerov(nk), *dv = zerov(nv);
    float *in[3] = {q, k, v};
    zb_attention_forward(out, P, q, k, v, &s);
    /* q.k over dqk, the scale, exp, the sum over T, the divide, p.v over T; the backward adds
     * dP = dout.v over dv, the softmax's row sum over T and dq / dk over T */
    double kf = s.dqk + 2 * s.T + 4, kb = kf + s.dv + 2 * s.T + 4;
    fwd_check("attention fwd (GQA, causal)", at_d, &s, in, sz, 3, out, no, kf);
    zb_attention_backward(dq, dk, dv, R, P, q, k, v, &s);
    fd_check("attention dq", at_d, &s, in, sz, 3, 0, no, R, dq, kb);
    fd_check("attention dk", at_d, &s, in, sz, 3, 1, no, R, dk, kb);
    fd_check("attention dv", at_d, &s, in, sz, 3, 2, no, R, dv, kb);
    /* decode of the last token against the full cache equals the last row of the forward:
     * two float32 evaluations, each within attn_row_bound of the exact row */
    float od[4 * 3], *scr = zerov(zb_attention_decode_scratch(s.H, s.dv, s.T));
    float omag[4 * 3];
    for (int b = 0; b < s.B; b++) {
        const float *ql = q + ((size_t)b * s.T + s.T - 1) * s.q_stride;
        const float *kb0 = k + (size_t)b * s.T * s.k_stride, *vb0 = v + (size_t)b * s.T * s.v_stride;
        zb_attention_decode(od, ql, kb0, vb0, s.T, s.H, s.Hkv, s.dqk, s.dv, s.k_stride, s.v_stride, s.dqk, s.dv,
                            s.scale, scr, NULL);
        for (int h = 0; h < s.H; h++) {
            int g = h / (s.H / s.Hkv);
            double bb[3];
            attn_row_bound(bb, ql + h * s.dqk, kb0 + g * s.dqk, vb0 + g * s.dv, s.T, s.dqk, s.dv, s.k_stride,
                           s.v_stride, s.scale);
            for (int j = 0; j < s.dv; j++) omag[h * s.dv + j] = (float)(2 * bb[j]);
        }
        zb_check_elem_bound("attention decode == forward last row", od,
                            out + ((size_t)b * s.T + s.T - 1) * s.H * s.dv, omag, (size_t)s.H * s.dv, 1.0);
    }
    free(scr);
    /* a long cache (several split-K chunks, the last ragged, threaded): decode == a direct
     * softmax-weighted sum in double precision */
    /* head sizes (dqk/dv) 16/12, 72/40, 64/136, 20/24: the AVX2 task's 2-position score steps with
     * an odd tail (1003 = 3 x 256 + 235), its 16-column value blocks and scalar column tails; dqk
     * 20 is not a multiple of 8: the portable task even with SIMD on. Groups of 4, 3 and 1 query
     * heads per KV head (the task's head blocks of 4 and its 3- and 1-head bodies), the cache in
     * interleaved rows [Tc, Hkv*d] or head-major [Hkv, Tc, d]; last, MLA's shape: 32 heads over
     * one 160-float latent row whose first 128 floats are the values (K and V the same rows). */
    static const int dqs[5] = {16, 72, 64, 20, 160}, dvs[5] = {12, 40, 136, 24, 128};
    static const int Hs[4] = {8, 6, 5, 32}, Hkvs[4] = {2, 2, 5, 1};
    for (int shp = 0; shp < 5; shp++)
        for (int hc = 0; hc < 3; hc++) {
        int mla = shp == 4, Tc = 1003, dq = dqs[shp], dvv = dvs[shp];
        int H = mla ? Hs[3] : Hs[hc], Hkv = mla ? Hkvs[3] : Hkvs[hc], major = (shp + hc) % 2;
        if (mla && hc) break;
        /* interleaved: group g at +g*d, rows Hkv*d apart; head-major: group g at +g*Tc*d, rows d apart */
        int ks = major ? dq : Hkv * dq, vs = major ? dvv : Hkv * dvv;
        size_t kg = major ? (size_t)Tc * dq : (size_t)dq, vg = major ? (size_t)Tc * dvv : (size_t)dvv;
        if (mla) { ks = vs = dq; kg = vg = 0; }
        float *qq = randv((size_t)H * dq, 1), *kk = randv((size_t)Tc * Hkv * dq, 1);
        float *vv = mla ? kk : randv((size_t)Tc * Hkv * dvv, 1);
        float *o = zerov((size_t)H * dvv), *ref = zerov((size_t)H * dvv);
        float *sc = zerov(zb_attention_decode_scratch(H, dvv, Tc));
        float *o2 = zerov((size_t)H * dvv);
        zb_attention_decode(o2, qq, kk, vv, Tc, H, Hkv, dq, dvv, ks, vs, kg, vg, 0.25f, sc, NULL);   /* BLAS path */
        zb_backend_opts best = {.decode_omp = 1, .decode_simd = ZB_SIMD_BEST};   /* split-K */
        zb_attention_decode(o, qq, kk, vv, Tc, H, Hkv, dq, dvv, ks, vs, kg, vg, 0.25f, sc, &best);
        float *o3 = zerov((size_t)H * dvv), *o4 = zerov((size_t)H * dvv);
        zb_backend_opts plain = {.decode_omp = 1, .decode_simd = ZB_SIMD_PORTABLE};   /* split-K with the portable inner loops */
        zb_attention_decode(o3, qq, kk, vv, Tc, H, Hkv, dq, dvv, ks, vs, kg, vg, 0.25f, sc, &plain);
        /* AVX2 even where AVX-512 is present, in chunks of 72 (1003 = 13 x 72 + 67) */
        zb_backend_opts avx2 = {.decode_omp = 1, .decode_simd = ZB_SIMD_AVX2, .decode_chunk = 72};
        zb_attention_decode(o4, qq, kk, vv, Tc, H, Hkv, dq, dvv, ks, vs, kg, vg, 0.25f, sc, &avx2);
        double *w = malloc(sizeof(double) * Tc), *bb = malloc(sizeof(double) * dvv);
        float *bnd = malloc(sizeof(float) * (size_t)H * dvv);
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hkv);
            double mx = -1e300, l = 0;
            for (int u = 0; u < Tc; u++) {
                double a = 0;
                for (int j = 0; j < dq; j++) a += (double)qq[h * dq + j] * kk[g * kg + (size_t)u * ks + j];
                w[u] = 0.25 * a;
                if (w[u] > mx) mx = w[u];
            }
            for (int u = 0; u < Tc; u++) { w[u] = exp(w[u] - mx); l += w[u]; }
            for (int j = 0; j < dvv; j++) {
                double a = 0;
                for (int u = 0; u < Tc; u++) a += w[u] * vv[g * vg + (size_t)u * vs + j];
                ref[h * dvv + j] = (float)(a / l);
            }
            attn_row_bound(bb, qq + h * dq, kk + g * kg, vv + g * vg, Tc, dq, dvv, ks, vs, 0.25);
            for (int j = 0; j < dvv; j++) bnd[h * dvv + j] = (float)(bb[j] + ZB_U32 * fabs(ref[h * dvv + j]));
        }
        char nm[200];
        const char *lay = mla ? "MLA latent" : major ? "head-major" : "interleaved";
        snprintf(nm, sizeof nm, "attention decode split-K (SIMD%s), 1003-token cache, H %d Hkv %d dqk %d dv %d %s == direct (double)",
                 __builtin_cpu_supports("avx512f") && dq % 16 == 0 ? ", AVX-512" : "", H, Hkv, dq, dvv, lay);
        zb_check_elem_bound(nm, o, ref, bnd, (size_t)H * dvv, 1.0);
        snprintf(nm, sizeof nm, "attention decode split-K (AVX2, chunks of 72), H %d Hkv %d dqk %d dv %d %s == direct (double)", H, Hkv, dq, dvv, lay);
        zb_check_elem_bound(nm, o4, ref, bnd, (size_t)H * dvv, 1.0);
        free(o4);
        snprintf(nm, sizeof nm, "attention decode split-K (portable), H %d Hkv %d dqk %d dv %d %s == direct (double)", H, Hkv, dq, dvv, lay);
        zb_check_elem_bound(nm, o3, ref, bnd, (size_t)H * dvv, 1.0);
        free(o3);
        snprintf(nm, sizeof nm, "attention decode BLAS, H %d Hkv %d dqk %d dv %d %s == direct (double)", H, Hkv, dq, dvv, lay);
        zb_check_elem_bound(nm, o2, ref, bnd, (size_t)H * dvv, 1.0);
        free(w); free(bb); free(bnd); free(o2); free(qq); free(kk); if (!mla) free(vv); free(o); free(ref); free(sc);
        }
    free(q); free(k); free(v); free(R); free(out); free(P); free(dq); free(dk); free(dv);
}

/* ---- swiglu ---- */
static void sw_d(double *out, double **in, const void *c) {
    size_t n = *(const size_t *)c;
    for (size_t i = 0; i < n; i++) out[i] = in[0][i] / (1 + exp(-in[0][i])) * in[1][i];
}
static void test_swiglu(void) {
    size_t n = 40, sz[2] = {n, n};
    float *g = randv(n, 2), *u = randv(n, 1), *R = randv(n, 1), *h = zerov(n), *dg = zerov(n), *du = zerov(n);
    float *in[2] = {g, u};
    zb_swiglu_forward(h, g, u, n);
    /* silu: expf (1 ulp), 1 +, divide, then * up; the backward a few more products */
    fwd_check("swiglu fwd", sw_d, &n, in, sz, 2, h, n, 5);
    zb_swiglu_backward(dg, du, R, g, u, n);
    fd_check("swiglu dgate", sw_d, &n, in, sz, 2, 0, n, R, dg, 9);
    fd_check("swiglu dup", sw_d, &n, in, sz, 2, 1, n, R, du, 6);
    free(g); free(u); free(R); free(h); free(dg); free(du);
}

/* ---- embedding ---- */
typedef struct { const int *ids; int N, C; } em_ctx;
static void em_d(double *out, double **in, const void *cv) {
    const em_ctx *c = cv;
    for (int n = 0; n < c->N; n++)
        for (int i = 0; i < c->C; i++) out[n * c->C + i] = in[0][c->ids[n] * c->C + i];
}
static void test_embedding(void) {
    int ids[6] = {3, 1, 3, 0, 4, 1};
    em_ctx c = {ids, 6, 5};
    size_t sz[1] = {25};
    float *tab = randv(25, 1), *R = randv(30, 1), *out = zerov(30), *dt = zerov(25), *in[1] = {tab};
    zb_embedding_forward(out, ids, tab, 6, 5);
    /* a copy; the backward sums the rows of repeated ids (N at most) */
    fwd_check("embedding fwd", em_d, &c, in, sz, 1, out, 30, 0);
    zb_embedding_backward(dt, R, ids, 6, 5);
    fd_check("embedding dtable (repeated ids)", em_d, &c, in, sz, 1, 0, 30, R, dt, c.N);
    free(tab); free(R); free(out); free(dt);
}

/* ---- losses: out is the scalar loss, R = 1 ---- */
typedef struct { const int *tg; const int *mask; int N, V; float tau; } ls_ctx;
static void ce_d(double *out, double **in, const void *cv) {
    const ls_ctx *c = cv;
    double tot = 0;
    for (int n = 0; n < c->N; n++) {
        if (c->tg[n] < 0) continue;
        double mx = -1e300, s = 0;
        for (int v = 0; v < c->V; v++) if (in[0][n * c->V + v] > mx) mx = in[0][n * c->V + v];
        for (int v = 0; v < c->V; v++) s += exp(in[0][n * c->V + v] - mx);
        tot += mx + log(s) - in[0][n * c->V + c->tg[n]];
    }
    out[0] = tot;
}
static void kl_d(double *out, double **in, const void *cv) {
    const ls_ctx *c = cv;
    double tot = 0;
    for (int n = 0; n < c->N; n++) {
        if (c->mask && !c->mask[n]) continue;
        double ms = -1e300, mt = -1e300, zs = 0, zt = 0;
        const double *s = in[0] + n * c->V, *t = in[1] + n * c->V;
        for (int v = 0; v < c->V; v++) { if (s[v] / c->tau > ms) ms = s[v] / c->tau; if (t[v] / c->tau > mt) mt = t[v] / c->tau; }
        for (int v = 0; v < c->V; v++) { zs += exp(s[v] / c->tau - ms); zt += exp(t[v] / c->tau - mt); }
        for (int v = 0; v < c->V; v++) {
            double lpt = t[v] / c->tau - mt - log(zt), lps = s[v] / c->tau - ms - log(zs);
            tot += exp(lpt) * (lpt - lps);
        }
    }
    out[0] = tot;
}
static void mse_d(double *out, double **in, const void *cv) {
    size_t n = *(const size_t *)cv;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (in[0][i] - in[1][i]) * (in[0][i] - in[1][i]);
    out[0] = s / n;
}
static void test_losses(void) {
    int tg[4] = {2, -1, 0, 6}, mask[4] = {1, 0, 1, 1};
    ls_ctx c = {tg, mask, 4, 7, 2.0f};
    size_t sz[2] = {28, 28};
    float *lg = randv(28, 2), *tl = randv(28, 2), *d = zerov(28), one = 1.0f, *in[2] = {lg, tl};
    int nv = 0;
    /* the losses sum in double and return a float: depth 2 (a division z / tau in float, the
     * cast); their gradients p - t also move by |z| u relatively for each rounded input z:
     * depth V + 4 + max|z| / tau */
    double kz = 7 + 4 + zb_max_abs(lg, 28) + zb_max_abs(tl, 28);
    float l = (float)zb_cross_entropy(d, lg, tg, 4, 7, 1.0f, &nv);
    zb_check(nv == 3, "cross entropy counts valid rows (%d)", nv);
    fwd_check("cross entropy", ce_d, &c, in, sz, 1, &l, 1, 2);
    fd_check("cross entropy dlogits", ce_d, &c, in, sz, 1, 0, 1, &one, d, kz);
    l = (float)zb_kl_div(d, lg, tl, mask, 4, 7, 2.0f, 1.0f);
    fwd_check("KL(teacher||student), tau 2", kl_d, &c, in, sz, 2, &l, 1, 2);
    fd_check("KL dstudent", kl_d, &c, in, sz, 2, 0, 1, &one, d, kz);
    size_t n = 28;
    l = (float)zb_mse(d, lg, tl, n, 1.0f);
    fwd_check("MSE", mse_d, &n, in, sz, 2, &l, 1, 2);
    fd_check("MSE da", mse_d, &n, in, sz, 2, 0, 1, &one, d, 4);
    free(lg); free(tl); free(d);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    zb_rng_seed(&rng, 42);
    test_matmul(3);
    test_matmul(1);
    test_rmsnorm();
    zb_rope_cfg llama3 = {.type = ZB_ROPE_LLAMA3, .theta = 500000.0f, .factor = 32.0f, .low_freq_factor = 1.0f,
                          .high_freq_factor = 4.0f, .original_max_pos = 8192};
    /* the release's MLA rope (SPEC §3) at a small original context, so that the 5 positions of
     * the test turn the ramped pairs visibly; and at the release's own settings */
    zb_rope_cfg yarn = {.type = ZB_ROPE_YARN, .theta = 10000.0f, .factor = 32.0f, .original_max_pos = 64,
                        .beta_fast = 32.0f, .beta_slow = 1.0f, .mscale = 1.0f, .mscale_all_dim = 0.0f};
    zb_rope_cfg yarn_rel = yarn;
    yarn_rel.theta = 500000.0f;
    yarn_rel.original_max_pos = 8192;
    for (int inter = 0; inter < 2; inter++) {
        test_rope(inter, &llama3, "llama3");
        test_rope(inter, &yarn, "YaRN 32, original 64");
        test_rope(inter, &yarn_rel, "YaRN 32, release");
    }
    test_yarn_table(8, 500000.0f, 32.0f, 8192);     /* the fixture's rope 8 */
    test_yarn_table(32, 500000.0f, 32.0f, 8192);    /* 1B: rope 32 */
    test_yarn_table(64, 500000.0f, 32.0f, 8192);    /* 3B */
    test_yarn_table(64, 500000.0f, 8.0f, 8192);     /* 8B */
    test_yarn_table(8, 10000.0f, 4.0f, 4);          /* ramp clamped at 0, a one-pair ramp */
    test_attention();
    test_swiglu();
    test_embedding();
    test_losses();
    return zb_test_finish();
}
