/* test_gradcheck — every kernel of core/ops against a naive double-precision forward:
 * (1) the float forward equals the double forward; (2) the float backward equals central
 * finite differences (h = 1e-6) of the double forward of L = sum(out * R), R random.
 * Tolerances: forward 1e-5 relative (max), gradients 1e-4 relative (norm). */
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

/* Finite-difference gradient of L = sum(out*R) wrt input k, compared with `analytic`. */
static void fd_check(const char *what, fwd_d f, const void *ctx, float **inf, const size_t *sizes,
                     int n_in, int k, size_t n_out, const float *R, const float *analytic) {
    double **in = malloc(sizeof(double *) * n_in);
    for (int i = 0; i < n_in; i++) {
        in[i] = malloc(sizeof(double) * sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++) in[i][j] = inf[i][j];
    }
    double *out = malloc(sizeof(double) * n_out);
    float *num = calloc(sizes[k], sizeof(float));
    const double h = 1e-6;
    for (size_t j = 0; j < sizes[k]; j++) {
        double x0 = in[k][j], lp = 0, lm = 0;
        in[k][j] = x0 + h; f(out, in, ctx);
        for (size_t o = 0; o < n_out; o++) lp += out[o] * R[o];
        in[k][j] = x0 - h; f(out, in, ctx);
        for (size_t o = 0; o < n_out; o++) lm += out[o] * R[o];
        in[k][j] = x0;
        num[j] = (float)((lp - lm) / (2 * h));
    }
    zb_check_norm_rel(what, analytic, num, sizes[k], 1e-4);
    for (int i = 0; i < n_in; i++) free(in[i]);
    free(in); free(out); free(num);
}

static void fwd_check(const char *what, fwd_d f, const void *ctx, float **inf, const size_t *sizes,
                      int n_in, const float *got, size_t n_out) {
    double **in = malloc(sizeof(double *) * n_in);
    for (int i = 0; i < n_in; i++) {
        in[i] = malloc(sizeof(double) * sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++) in[i][j] = inf[i][j];
    }
    double *out = malloc(sizeof(double) * n_out);
    float *ref = malloc(sizeof(float) * n_out);
    f(out, in, ctx);
    for (size_t o = 0; o < n_out; o++) ref[o] = (float)out[o];
    zb_check_max_rel(what, got, ref, n_out, 1e-5);
    for (int i = 0; i < n_in; i++) free(in[i]);
    free(in); free(out); free(ref);
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
    fwd_check(N == 1 ? "matmul fwd (gemv)" : "matmul fwd", mm_d, &c, in, sz, 3, out, (size_t)N * c.OC);
    zb_matmul_backward(dx, dW, db, R, x, W, c.N, c.C, c.OC);
    fd_check("matmul dx", mm_d, &c, in, sz, 3, 0, (size_t)N * c.OC, R, dx);
    fd_check("matmul dW", mm_d, &c, in, sz, 3, 1, (size_t)N * c.OC, R, dW);
    fd_check("matmul db", mm_d, &c, in, sz, 3, 2, (size_t)N * c.OC, R, db);
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
    fwd_check("rmsnorm fwd", rn_d, &c, in, sz, 2, out, 36);
    zb_rmsnorm_backward(dx, dw, R, x, w, rs, c.N, c.C);
    fd_check("rmsnorm dx", rn_d, &c, in, sz, 2, 0, 36, R, dx);
    fd_check("rmsnorm dw", rn_d, &c, in, sz, 2, 1, 36, R, dw);
    free(x); free(w); free(R); free(out); free(rs); free(dx); free(dw);
}

/* ---- rope (rotate-half and interleaved; llama3 scaling) ---- */
typedef struct { const zb_rope *r; int B, T, H, hs, off, inter; } rp_ctx;
static void rp_d(double *out, double **in, const void *cv) {
    const rp_ctx *c = cv;
    int D = c->r->dim, half = D / 2, row = c->H * c->hs;
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
                    v[i] = x1 * cos(a) - x2 * sin(a);
                    v[i + half] = x2 * cos(a) + x1 * sin(a);
                }
            }
}
static void test_rope(int inter) {
    zb_rope_cfg cfg = {ZB_ROPE_LLAMA3, 500000.0f, 32.0f, 1.0f, 4.0f, 8192};
    zb_rope r;
    zb_rope_init(&r, 8, &cfg);
    rp_ctx c = {&r, 2, 5, 3, 12, 4, inter};
    size_t n = (size_t)c.B * c.T * c.H * c.hs, sz[1] = {n};
    float *x = randv(n, 1), *R = randv(n, 1), *y = malloc(sizeof(float) * n), *in[1] = {x};
    memcpy(y, x, sizeof(float) * n);
    zb_rope_apply_seq(&r, y, c.B, c.T, c.H * c.hs, c.H, c.hs, c.off, 0, inter, 0);
    fwd_check(inter ? "rope fwd (interleaved)" : "rope fwd", rp_d, &c, in, sz, 1, y, n);
    memcpy(y, R, sizeof(float) * n);   /* backward of a rotation = its transpose applied to dout */
    zb_rope_apply_seq(&r, y, c.B, c.T, c.H * c.hs, c.H, c.hs, c.off, 0, inter, 1);
    fd_check(inter ? "rope dx (interleaved)" : "rope dx", rp_d, &c, in, sz, 1, 0, n, R, y);
    free(x); free(R); free(y);
}

/* ---- attention ---- */
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
    fwd_check("attention fwd (GQA, causal)", at_d, &s, in, sz, 3, out, no);
    zb_attention_backward(dq, dk, dv, R, P, q, k, v, &s);
    fd_check("attention dq", at_d, &s, in, sz, 3, 0, no, R, dq);
    fd_check("attention dk", at_d, &s, in, sz, 3, 1, no, R, dk);
    fd_check("attention dv", at_d, &s, in, sz, 3, 2, no, R, dv);
    /* decode of the last token against the full cache equals the last row of the forward */
    float od[4 * 3], *scr = zerov(zb_attention_decode_scratch(s.H, s.dv, s.T));
    for (int b = 0; b < s.B; b++) {
        const float *ql = q + ((size_t)b * s.T + s.T - 1) * s.q_stride;
        zb_attention_decode(od, ql, k + (size_t)b * s.T * s.k_stride, v + (size_t)b * s.T * s.v_stride, s.T,
                            s.H, s.Hkv, s.dqk, s.dv, s.k_stride, s.v_stride, s.dqk, s.dv, s.scale, scr, NULL);
        zb_check_max_rel("attention decode == forward last row", od,
                         out + ((size_t)b * s.T + s.T - 1) * s.H * s.dv, (size_t)s.H * s.dv, 1e-6);
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
        double *w = malloc(sizeof(double) * Tc);
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
        }
        char nm[200];
        const char *lay = mla ? "MLA latent" : major ? "head-major" : "interleaved";
        snprintf(nm, sizeof nm, "attention decode split-K (SIMD%s), 1003-token cache, H %d Hkv %d dqk %d dv %d %s == direct (double)",
                 __builtin_cpu_supports("avx512f") && dq % 16 == 0 ? ", AVX-512" : "", H, Hkv, dq, dvv, lay);
        zb_check_max_rel(nm, o, ref, (size_t)H * dvv, 1e-5);
        snprintf(nm, sizeof nm, "attention decode split-K (AVX2, chunks of 72), H %d Hkv %d dqk %d dv %d %s == direct (double)", H, Hkv, dq, dvv, lay);
        zb_check_max_rel(nm, o4, ref, (size_t)H * dvv, 1e-5);
        free(o4);
        snprintf(nm, sizeof nm, "attention decode split-K (portable), H %d Hkv %d dqk %d dv %d %s == direct (double)", H, Hkv, dq, dvv, lay);
        zb_check_max_rel(nm, o3, ref, (size_t)H * dvv, 1e-5);
        free(o3);
        snprintf(nm, sizeof nm, "attention decode BLAS, H %d Hkv %d dqk %d dv %d %s == direct (double)", H, Hkv, dq, dvv, lay);
        zb_check_max_rel(nm, o2, ref, (size_t)H * dvv, 1e-5);
        free(w); free(o2); free(qq); free(kk); if (!mla) free(vv); free(o); free(ref); free(sc);
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
    fwd_check("swiglu fwd", sw_d, &n, in, sz, 2, h, n);
    zb_swiglu_backward(dg, du, R, g, u, n);
    fd_check("swiglu dgate", sw_d, &n, in, sz, 2, 0, n, R, dg);
    fd_check("swiglu dup", sw_d, &n, in, sz, 2, 1, n, R, du);
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
    fwd_check("embedding fwd", em_d, &c, in, sz, 1, out, 30);
    zb_embedding_backward(dt, R, ids, 6, 5);
    fd_check("embedding dtable (repeated ids)", em_d, &c, in, sz, 1, 0, 30, R, dt);
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
    float l = (float)zb_cross_entropy(d, lg, tg, 4, 7, 1.0f, &nv);
    zb_check(nv == 3, "cross entropy counts valid rows (%d)", nv);
    fwd_check("cross entropy", ce_d, &c, in, sz, 1, &l, 1);
    fd_check("cross entropy dlogits", ce_d, &c, in, sz, 1, 0, 1, &one, d);
    l = (float)zb_kl_div(d, lg, tl, mask, 4, 7, 2.0f, 1.0f);
    fwd_check("KL(teacher||student), tau 2", kl_d, &c, in, sz, 2, &l, 1);
    fd_check("KL dstudent", kl_d, &c, in, sz, 2, 0, 1, &one, d);
    size_t n = 28;
    l = (float)zb_mse(d, lg, tl, n, 1.0f);
    fwd_check("MSE", mse_d, &n, in, sz, 2, &l, 1);
    fd_check("MSE da", mse_d, &n, in, sz, 2, 0, 1, &one, d);
    free(lg); free(tl); free(d);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    zb_rng_seed(&rng, 42);
    test_matmul(3);
    test_matmul(1);
    test_rmsnorm();
    test_rope(0);
    test_rope(1);
    test_attention();
    test_swiglu();
    test_embedding();
    test_losses();
    return zb_test_finish();
}
