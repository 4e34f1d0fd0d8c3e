/* mamba2.c — the Mamba2 (SSD) mixer, HF Mamba2Mixer semantics (SPEC.md §4).
 *
 * Per head h with a_t = dt_t A (A = -exp(A_log) < 0), state S in R^{headdim x d_state}:
 *   S_t = exp(a_t) S_{t-1} + dt_t x_t B_t^T,   y_t = S_t C_t + D x_t.
 * Full sequences use the chunked SSD form (Dao & Gu 2024, "Transformers are SSMs", §6):
 * inside a chunk with cs_i = sum_{k<=i} a_k (cumsum restarted per chunk),
 *   y_i = sum_{j<=i} exp(cs_i - cs_j) (C_i . B_j) dt_j x_j + exp(cs_i) S_prev C_i,
 *   S_end = exp(cs_L) S_prev + sum_j exp(cs_L - cs_j) dt_j x_j B_j^T.
 * Every exponent is a difference cs_i - cs_j with j <= i, or a cs_i itself, hence <= 0.
 *
 * Activation layout (acts, per call, N = B*T rows):
 *   proj [N,P] | xbc_pre [N,cd] | xbc [N,cd] | dt [N,nh] | y [N,di] | rstd [N,ng] | o [N,di]
 *   | states [B, nchunks, nh, hd, ds] (state at the start of each chunk) | chunk temps. */
#include "mamba2.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "ops.h"

static int n_chunks(const zb_mamba2_dims *m, int T) { return (T + m->chunk - 1) / m->chunk; }
static int norm_groups(const zb_mamba2_dims *m) {
    int G = m->norm_group > 0 ? m->norm_group : m->d_inner;
    return m->d_inner / G;
}

/* Chunk temporaries: 3 [L,L] + [L,hd] + 3 [L,ds] + 2 [hd,ds] + 4 [L]. */
static size_t chunk_tmp_floats(const zb_mamba2_dims *m) {
    size_t L = (size_t)m->chunk, hd = (size_t)m->headdim, ds = (size_t)m->d_state;
    return 3 * L * L + L * hd + 3 * L * ds + 2 * hd * ds + 4 * L;
}

size_t zb_mamba2_act_floats(const zb_mamba2_dims *m, int d, int B, int T) {
    (void)d;
    size_t N = (size_t)B * T, P = (size_t)zb_mamba2_in_proj_rows(m),
           cd = (size_t)zb_mamba2_conv_dim(m), di = (size_t)m->d_inner, nh = (size_t)m->nheads;
    size_t st = (size_t)B * n_chunks(m, T) * nh * m->headdim * m->d_state;
    return N * (P + 2 * cd + nh + 2 * di + (size_t)norm_groups(m)) + st + chunk_tmp_floats(m);
}

size_t zb_mamba2_scratch_floats(const zb_mamba2_dims *m, int d, int B, int T) {
    (void)d;
    size_t N = (size_t)B * T, P = (size_t)zb_mamba2_in_proj_rows(m),
           cd = (size_t)zb_mamba2_conv_dim(m);
    /* dproj [N,P] | dxbc [N,cd] | dy [N,di] | ddt [N,nh] | chunk temps */
    return N * (P + cd + (size_t)m->d_inner + (size_t)m->nheads) + chunk_tmp_floats(m);
}

size_t zb_mamba2_step_scratch_floats(const zb_mamba2_dims *m, int d, int n) {
    size_t P = (size_t)zb_mamba2_in_proj_rows(m), cd = (size_t)zb_mamba2_conv_dim(m);
    /* proj [n,P] | xbc [n,cd] | dt [n,nh] | y [n,di] | o [n,di] | rstd [n,ng] | chunk temps */
    (void)d;
    return (size_t)n * (P + cd + (size_t)m->nheads + 2 * (size_t)m->d_inner +
                        (size_t)norm_groups(m)) + chunk_tmp_floats(m);
}

/* ---- pieces shared by forward, backward and step ------------------------------------------ */

/* dt = clamp(softplus(raw + dt_bias), dt_min, dt_max); (0, inf) never clamps. */
static void dt_forward(const zb_mamba2_dims *m, const zb_mamba2_weights *w, const float *proj,
                       float *dt, int N) {
    int P = zb_mamba2_in_proj_rows(m), nh = m->nheads, off = P - nh;
    for (int r = 0; r < N; r++)
        for (int h = 0; h < nh; h++) {
            float v = zb_softplus(proj[(size_t)r * P + off + h] + w->dt_bias[h]);
            if (v < m->dt_min) v = m->dt_min;
            if (v > m->dt_max) v = m->dt_max;
            dt[(size_t)r * nh + h] = v;
        }
}

/* Depthwise causal conv over one sequence of T rows: pre[t,c] = b_c + sum_k w[c,k] in[t-K+1+k, c]
 * with in[s] for s < 0 taken from hist[c, K-1+s] (the conv state, oldest first) or 0. */
static void conv_forward(const zb_mamba2_dims *m, const zb_mamba2_weights *w, const float *in,
                         int in_stride, const float *hist, float *pre, float *post, int T) {
    int cd = zb_mamba2_conv_dim(m), K = m->conv_k;
    for (int t = 0; t < T; t++) {
        float *pr = pre ? pre + (size_t)t * cd : post + (size_t)t * cd;
        for (int c = 0; c < cd; c++) {
            float acc = w->conv_b ? w->conv_b[c] : 0.0f;
            for (int k = 0; k < K; k++) {
                int s = t - (K - 1) + k;
                if (s >= 0) acc += w->conv_w[(size_t)c * K + k] * in[(size_t)s * in_stride + c];
                else if (hist)
                    acc += w->conv_w[(size_t)c * K + k] * hist[(size_t)c * (K - 1) + (K - 1) + s];
            }
            pr[c] = acc;
        }
        float *po = post + (size_t)t * cd;
        for (int c = 0; c < cd; c++) po[c] = zb_silu(pr[c]);
    }
}

/* Chunked SSD over one sequence of T rows (SSD paper §6). xbc rows [T,cd]; dt rows [T,nh];
 * y rows [T,di] (OVERWRITTEN, includes D x); S [nh,hd,ds] is the initial state on entry and
 * the final state on exit (NULL: start from zero, final state dropped); states (may be NULL)
 * receives the state at the start of each chunk, [nchunks, nh, hd, ds]. */
static void ssd_forward(const zb_mamba2_dims *m, const zb_mamba2_weights *w, const float *xbc,
                        const float *dt, float *y, float *S, float *states, int T, float *tmp) {
    int cd = zb_mamba2_conv_dim(m), di = m->d_inner, nh = m->nheads, hd = m->headdim,
        ds = m->d_state, Lc = m->chunk, nc = n_chunks(m, T);
    int xo = 0, bo = m->x_groups * hd, co = bo + m->b_groups * ds;
    size_t hs = (size_t)hd * ds;
    float *M = tmp, *Xw = M + (size_t)Lc * Lc, *Cs = Xw + (size_t)Lc * hd, *cs = Cs + (size_t)Lc * ds;
    for (int h = 0; h < nh; h++) {
        int xg = h / (nh / m->x_groups), bg = h / (nh / m->b_groups), cg = h / (nh / m->c_groups);
        float A = -expf(w->A_log[h]), Dh = w->D[h];
        float *Sh = S ? S + (size_t)h * hs : cs + 4 * (size_t)Lc;
        if (!S) memset(Sh, 0, hs * sizeof(float));
        for (int c = 0; c < nc; c++) {
            int t0 = c * Lc, L = T - t0 < Lc ? T - t0 : Lc;
            const float *X = xbc + (size_t)t0 * cd + xo + xg * hd;
            const float *Bm = xbc + (size_t)t0 * cd + bo + bg * ds;
            const float *Cm = xbc + (size_t)t0 * cd + co + cg * ds;
            float *Y = y + (size_t)t0 * di + h * hd;
            if (states) memcpy(states + ((size_t)c * nh + h) * hs, Sh, hs * sizeof(float));
            float acc = 0.0f;
            for (int i = 0; i < L; i++) { acc += dt[(size_t)(t0 + i) * nh + h] * A; cs[i] = acc; }
            /* M_ij = (C_i . B_j) exp(cs_i - cs_j) dt_j for j <= i */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, ds, 1.0f, Cm, cd, Bm, cd,
                        0.0f, M, L);
            for (int i = 0; i < L; i++)
                for (int j = 0; j < L; j++)
                    M[i * L + j] = j <= i ? M[i * L + j] * expf(cs[i] - cs[j]) *
                                                dt[(size_t)(t0 + j) * nh + h] : 0.0f;
            /* Y = M X + diag(exp(cs)) C S^T + D X */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, hd, L, 1.0f, M, L, X, cd,
                        0.0f, Y, di);
            for (int i = 0; i < L; i++) {
                float e = expf(cs[i]);
                for (int s = 0; s < ds; s++) Cs[i * ds + s] = e * Cm[(size_t)i * cd + s];
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, hd, ds, 1.0f, Cs, ds, Sh, ds,
                        1.0f, Y, di);
            for (int i = 0; i < L; i++)
                for (int p = 0; p < hd; p++) Y[(size_t)i * di + p] += Dh * X[(size_t)i * cd + p];
            /* S = exp(cs_L) S + X^T diag(exp(cs_L - cs_j) dt_j) B */
            float cl = cs[L - 1];
            for (int j = 0; j < L; j++) {
                float wj = expf(cl - cs[j]) * dt[(size_t)(t0 + j) * nh + h];
                for (int p = 0; p < hd; p++) Xw[j * hd + p] = wj * X[(size_t)j * cd + p];
            }
            float el = expf(cl);
            for (size_t q = 0; q < hs; q++) Sh[q] *= el;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, ds, L, 1.0f, Xw, hd, Bm, cd,
                        1.0f, Sh, ds);
        }
    }
}

/* Gated RMSNorm (HF MambaRMSNormGated, norm_before_gate = False):
 * g = y silu(z); o = w g / sqrt(mean_group(g^2) + eps) per group of norm_group channels. */
static void gated_norm_forward(const zb_mamba2_dims *m, const float *nw, float eps,
                               const float *y, const float *z, int z_stride, float *o,
                               float *rstd, int N) {
    int di = m->d_inner, ng = norm_groups(m), G = di / ng;
    for (int r = 0; r < N; r++) {
        const float *yr = y + (size_t)r * di, *zr = z + (size_t)r * z_stride;
        float *orow = o + (size_t)r * di;
        for (int k = 0; k < ng; k++) {
            double ss = 0;
            for (int c = k * G; c < (k + 1) * G; c++) {
                float g = yr[c] * zb_silu(zr[c]);
                orow[c] = g;
                ss += (double)g * g;
            }
            float rs = 1.0f / sqrtf((float)(ss / G) + eps);
            if (rstd) rstd[(size_t)r * ng + k] = rs;
            for (int c = k * G; c < (k + 1) * G; c++) orow[c] *= rs * nw[c];
        }
    }
}

/* ---- training forward / backward ------------------------------------------------------------ */

typedef struct {
    float *proj, *xbc_pre, *xbc, *dt, *y, *rstd, *o, *states, *tmp;
} m2_acts;

static m2_acts acts_layout(const zb_mamba2_dims *m, float *a, int B, int T) {
    size_t N = (size_t)B * T, P = (size_t)zb_mamba2_in_proj_rows(m),
           cd = (size_t)zb_mamba2_conv_dim(m), di = (size_t)m->d_inner;
    m2_acts s;
    s.proj = a; a += N * P;
    s.xbc_pre = a; a += N * cd;
    s.xbc = a; a += N * cd;
    s.dt = a; a += N * m->nheads;
    s.y = a; a += N * di;
    s.rstd = a; a += N * norm_groups(m);
    s.o = a; a += N * di;
    s.states = a; a += (size_t)B * n_chunks(m, T) * m->nheads * m->headdim * m->d_state;
    s.tmp = a;
    return s;
}

float *zb_mamba2_acts_y(const zb_mamba2_dims *m, float *acts, int B, int T) {
    return acts_layout(m, acts, B, T).y;
}
float *zb_mamba2_acts_xbc(const zb_mamba2_dims *m, float *acts, int B, int T) {
    return acts_layout(m, acts, B, T).xbc;
}
float *zb_mamba2_acts_o(const zb_mamba2_dims *m, float *acts, int B, int T) {
    return acts_layout(m, acts, B, T).o;
}

void zb_mamba2_forward(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                       const float *x, float *out, float *acts, int B, int T) {
    int N = B * T, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner,
        nh = m->nheads, nc = n_chunks(m, T);
    size_t hs = (size_t)m->headdim * m->d_state;
    m2_acts a = acts_layout(m, acts, B, T);
    zb_matmul_forward(a.proj, x, w->in_proj, NULL, N, d, P);
    dt_forward(m, w, a.proj, a.dt, N);
    for (int b = 0; b < B; b++) {
        size_t r0 = (size_t)b * T;
        conv_forward(m, w, a.proj + r0 * P + di, P, NULL, a.xbc_pre + r0 * cd, a.xbc + r0 * cd, T);
        float *st = a.states + (size_t)b * nc * nh * hs;
        ssd_forward(m, w, a.xbc + r0 * cd, a.dt + r0 * nh, a.y + r0 * di, NULL, st, T, a.tmp);
    }
    gated_norm_forward(m, w->norm_w, eps, a.y, a.proj, P, a.o, a.rstd, N);
    zb_matmul_forward(out, a.o, w->out_proj, NULL, N, di, d);
}

/* Backward of one sequence's chunked SSD (the forward above, reversed chunk by chunk).
 * dy rows [T,di] (gradient of y, D x included); dxbc rows [T,cd] and ddt rows [T,nh] accumulate;
 * gA_log[h], gD[h] accumulate (A = -exp(A_log): dA_log = dA A). Derivation, per chunk with W_ij = G_ij e^{cs_i-cs_j} dt_j,
 * G = C B^T, w_j = e^{cs_L-cs_j} dt_j, incoming dS = dL/dS_end:
 *   dX += W^T dY + diag(w) B dS^T,  dW = dY X^T,  dG = dW o E o dt_j,  dC += dG B,  dB += dG^T C,
 *   dC_i += e^{cs_i} (dY S_prev)_i,  dB_j += w_j (X dS)_j,
 *   dS_prev = e^{cs_L} dS + dY^T diag(e^{cs}) C,
 *   dcs from every exponent, then da_k = sum_{i>=k} dcs_i, ddt += da A, dA += da dt. */
static void ssd_backward(const zb_mamba2_dims *m, const zb_mamba2_weights *w, const float *xbc,
                         const float *dt, const float *states, const float *dy, float *dxbc,
                         float *ddt, float *gA_log, float *gD, int T, float *tmp) {
    int cd = zb_mamba2_conv_dim(m), di = m->d_inner, nh = m->nheads, hd = m->headdim,
        ds = m->d_state, Lc = m->chunk, nc = n_chunks(m, T);
    int xo = 0, bo = m->x_groups * hd, co = bo + m->b_groups * ds;
    size_t hs = (size_t)hd * ds, LL = (size_t)Lc * Lc;
    float *Wm = tmp, *dW = Wm + LL, *dG = dW + LL, *tLh = dG + LL, *T1 = tLh + (size_t)Lc * hd,
          *T2 = T1 + (size_t)Lc * ds, *Cs = T2 + (size_t)Lc * ds, *dS = Cs + (size_t)Lc * ds,
          *cs = dS + 2 * hs, *dcs = cs + Lc;
    for (int h = 0; h < nh; h++) {
        int xg = h / (nh / m->x_groups), bg = h / (nh / m->b_groups), cg = h / (nh / m->c_groups);
        float A = -expf(w->A_log[h]), Dh = w->D[h];
        double dAh = 0, dDh = 0;
        memset(dS, 0, hs * sizeof(float));
        for (int c = nc - 1; c >= 0; c--) {
            int t0 = c * Lc, L = T - t0 < Lc ? T - t0 : Lc;
            size_t ro = (size_t)t0 * cd;
            const float *X = xbc + ro + xo + xg * hd, *Bm = xbc + ro + bo + bg * ds,
                        *Cm = xbc + ro + co + cg * ds;
            float *dX = dxbc + ro + xo + xg * hd, *dB = dxbc + ro + bo + bg * ds,
                  *dC = dxbc + ro + co + cg * ds;
            const float *dY = dy + (size_t)t0 * di + h * hd;
            const float *Sp = states + ((size_t)c * nh + h) * hs;
            const float *dtc = dt + (size_t)t0 * nh + h;   /* dtc[j * nh] */
            float *ddtc = ddt + (size_t)t0 * nh + h;
            float acc = 0.0f;
            for (int i = 0; i < L; i++) { acc += dtc[(size_t)i * nh] * A; cs[i] = acc; dcs[i] = 0; }
            float cl = cs[L - 1], el = expf(cl);
            /* D x: dD += dY . X, dX += D dY */
            for (int i = 0; i < L; i++)
                for (int p = 0; p < hd; p++) {
                    dDh += (double)dY[(size_t)i * di + p] * X[(size_t)i * cd + p];
                    dX[(size_t)i * cd + p] += Dh * dY[(size_t)i * di + p];
                }
            /* intra-chunk (quadratic) part */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, ds, 1.0f, Cm, cd, Bm, cd,
                        0.0f, Wm, L);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, hd, 1.0f, dY, di, X, cd,
                        0.0f, dW, L);
            for (int i = 0; i < L; i++)
                for (int j = 0; j < L; j++) {
                    size_t ij = (size_t)i * L + j;
                    if (j > i) { Wm[ij] = 0; dG[ij] = 0; continue; }
                    float e = expf(cs[i] - cs[j]), dtj = dtc[(size_t)j * nh], G = Wm[ij];
                    float R = dW[ij] * e, q = R * G * dtj;
                    dG[ij] = R * dtj;
                    ddtc[(size_t)j * nh] += R * G;
                    dcs[i] += q;
                    dcs[j] -= q;
                    Wm[ij] = G * e * dtj;
                }
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, L, 1.0f, Wm, L, dY, di,
                        1.0f, dX, cd);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, ds, L, 1.0f, dG, L, Bm, cd,
                        1.0f, dC, cd);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, ds, L, 1.0f, dG, L, Cm, cd,
                        1.0f, dB, cd);
            /* inter-chunk output e^{cs_i} S_prev C_i: T1 = dY S_prev */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, ds, hd, 1.0f, dY, di, Sp, ds,
                        0.0f, T1, ds);
            for (int i = 0; i < L; i++) {
                float e = expf(cs[i]);
                double dot = 0;
                for (int s = 0; s < ds; s++) {
                    dot += (double)T1[(size_t)i * ds + s] * Cm[(size_t)i * cd + s];
                    dC[(size_t)i * cd + s] += e * T1[(size_t)i * ds + s];
                    Cs[(size_t)i * ds + s] = e * Cm[(size_t)i * cd + s];
                }
                dcs[i] += e * (float)dot;
            }
            /* state passing S_end = e^{cs_L} S_prev + X^T diag(w) B, with the incoming dS */
            {
                double dot = 0;
                for (size_t q = 0; q < hs; q++) dot += (double)dS[q] * Sp[q];
                dcs[L - 1] += el * (float)dot;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, ds, hd, 1.0f, X, cd, dS, ds,
                        0.0f, T2, ds);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, hd, ds, 1.0f, Bm, cd, dS, ds,
                        0.0f, tLh, hd);
            for (int j = 0; j < L; j++) {
                float e = expf(cl - cs[j]), wj = e * dtc[(size_t)j * nh];
                double dot = 0;
                for (int s = 0; s < ds; s++) {
                    dot += (double)T2[(size_t)j * ds + s] * Bm[(size_t)j * cd + s];
                    dB[(size_t)j * cd + s] += wj * T2[(size_t)j * ds + s];
                }
                for (int p = 0; p < hd; p++) dX[(size_t)j * cd + p] += wj * tLh[(size_t)j * hd + p];
                ddtc[(size_t)j * nh] += (float)dot * e;
                dcs[L - 1] += (float)dot * wj;
                dcs[j] -= (float)dot * wj;
            }
            /* dS_prev = e^{cs_L} dS + dY^T Cs */
            for (size_t q = 0; q < hs; q++) dS[q] *= el;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, ds, L, 1.0f, dY, di, Cs, ds,
                        1.0f, dS, ds);
            /* cs_i = sum_{k<=i} dt_k A */
            float da = 0.0f;
            for (int k = L - 1; k >= 0; k--) {
                da += dcs[k];
                ddtc[(size_t)k * nh] += da * A;
                dAh += (double)da * dtc[(size_t)k * nh];
            }
        }
        gA_log[h] += (float)(dAh * A);
        gD[h] += (float)dDh;
    }
}

void zb_mamba2_backward(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                        zb_mamba2_weights *g, const float *x, const float *dout, float *dx,
                        float *acts, float *scratch, int B, int T) {
    int N = B * T, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner,
        nh = m->nheads, nc = n_chunks(m, T), K = m->conv_k, ng = norm_groups(m), Gn = di / ng;
    size_t hs = (size_t)m->headdim * m->d_state;
    (void)eps;
    m2_acts a = acts_layout(m, acts, B, T);
    float *dproj = scratch, *dxbc = dproj + (size_t)N * P, *dy = dxbc + (size_t)N * cd,
          *ddt = dy + (size_t)N * di, *tmp = ddt + (size_t)N * nh;
    memset(scratch, 0, (size_t)N * (P + cd + di + nh) * sizeof(float));
    /* out = o @ out_proj^T */
    zb_matmul_backward(dy, g->out_proj, NULL, dout, a.o, w->out_proj, N, di, d);
    /* gated RMSNorm: o = w g r, r = (mean g^2 + eps)^-1/2, g = y silu(z):
     * dg = r w do - r^3 g mean(w do g);  dy = dg silu(z);  dz = dg y silu'(z) */
    for (int r = 0; r < N; r++) {
        const float *yr = a.y + (size_t)r * di, *zr = a.proj + (size_t)r * P;
        float *dyr = dy + (size_t)r * di, *dzr = dproj + (size_t)r * P;
        for (int k = 0; k < ng; k++) {
            float rs = a.rstd[(size_t)r * ng + k];
            double sum = 0;
            for (int c = k * Gn; c < (k + 1) * Gn; c++) {
                float gc = yr[c] * zb_silu(zr[c]);
                g->norm_w[c] += dyr[c] * gc * rs;
                sum += (double)dyr[c] * w->norm_w[c] * gc;
            }
            float f = (float)(sum / Gn) * rs * rs * rs;
            for (int c = k * Gn; c < (k + 1) * Gn; c++) {
                float sg = zb_sigmoid(zr[c]), sz = zr[c] * sg;
                float gc = yr[c] * sz;
                float dg = rs * w->norm_w[c] * dyr[c] - f * gc;
                dzr[c] = dg * yr[c] * sg * (1.0f + zr[c] * (1.0f - sg));
                dyr[c] = dg * sz;
            }
        }
    }
    /* SSD */
    for (int b = 0; b < B; b++) {
        size_t r0 = (size_t)b * T;
        ssd_backward(m, w, a.xbc + r0 * cd, a.dt + r0 * nh, a.states + (size_t)b * nc * nh * hs,
                     dy + r0 * di, dxbc + r0 * cd, ddt + r0 * nh, g->A_log, g->D, T, tmp);
    }
    /* dt = clamp(softplus(v)), v = raw + dt_bias: dv = ddt sigmoid(v) inside the clamp range */
    for (int r = 0; r < N; r++)
        for (int h = 0; h < nh; h++) {
            float v = a.proj[(size_t)r * P + P - nh + h] + w->dt_bias[h], sp = zb_softplus(v);
            float dv = (sp < m->dt_min || sp > m->dt_max) ? 0.0f
                                                           : ddt[(size_t)r * nh + h] * zb_sigmoid(v);
            dproj[(size_t)r * P + P - nh + h] = dv;
            g->dt_bias[h] += dv;
        }
    /* conv + SiLU: dpre = dpost silu'(pre); dw[c,k] += dpre[t] in[t-K+1+k]; din[t-K+1+k] += w dpre */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)b * T + t;
            for (int c = 0; c < cd; c++) {
                float pre = a.xbc_pre[r * cd + c], sg = zb_sigmoid(pre);
                float dp = dxbc[r * cd + c] * sg * (1.0f + pre * (1.0f - sg));
                if (g->conv_b) g->conv_b[c] += dp;
                for (int k = 0; k < K; k++) {
                    int s = t - (K - 1) + k;
                    if (s < 0) continue;
                    size_t rs = (size_t)b * T + s;
                    g->conv_w[(size_t)c * K + k] += dp * a.proj[rs * P + di + c];
                    dproj[rs * P + di + c] += w->conv_w[(size_t)c * K + k] * dp;
                }
            }
        }
    zb_matmul_backward(dx, g->in_proj, NULL, dproj, x, w->in_proj, N, d, P);
}

/* ---- generation ------------------------------------------------------------------------------ */

void zb_mamba2_step(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                    const float *x, float *out, float *state, int n, int B, float *scratch) {
    zb_mamba2_lin lin = {zb_wt_of_f32(w->in_proj), zb_wt_of_f32(w->out_proj)};
    zb_mamba2_step_lin(m, d, eps, w, &lin, x, out, state, n, B, scratch);
}

/* Everything between in_proj and out_proj for one sequence: proj [n, P] (this sequence's
 * rows) -> o [n, di], state cst updated. t: scratch for xbc, dt, y, rstd and chunk temps. */
/* One step's input side for n tokens of one sequence: dt, the causal conv over [conv state |
 * new inputs] into xbc, and the conv state moved on to the last K-1 inputs. */
static void step_pre(const zb_mamba2_dims *m, const zb_mamba2_weights *w, const float *proj, float *cst,
                     float *xbc, float *dt, int n) {
    int P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner, K = m->conv_k;
    dt_forward(m, w, proj, dt, n);
    conv_forward(m, w, proj + di, P, cst, NULL, xbc, n);
    for (int c = 0; c < cd; c++) {
        float *hc = cst + (size_t)c * (K - 1);
        for (int k = 0; k < K - 1; k++) {
            int s = n - (K - 1) + k;   /* index into the new inputs; < 0: old state */
            hc[k] = s >= 0 ? proj[(size_t)s * P + di + c] : hc[k + n];
        }
    }
}

/* The recurrent step of head h for one token: S = exp(dt A) S + dt x B^T;  y = S C + D x
 * (SPEC §4, the one-token form of the SSD scan). S is the sequence's SSM state [nh, hd, ds]. */
static void step_head(const zb_mamba2_dims *m, const zb_mamba2_weights *w, const float *xbc, const float *dt,
                      float *S, float *y, int h) {
    int nh = m->nheads, hd = m->headdim, ds = m->d_state;
    int bo = m->x_groups * hd, co = bo + m->b_groups * ds;
    int xg = h / (nh / m->x_groups), bg = h / (nh / m->b_groups), cg = h / (nh / m->c_groups);
    float dth = dt[h], e = expf(dth * -expf(w->A_log[h]));
    const float *X = xbc + xg * hd, *Bv = xbc + bo + bg * ds, *Cv = xbc + co + cg * ds;
    float *Sh = S + (size_t)h * hd * ds;
    for (int p = 0; p < hd; p++) {
        float *Sr = Sh + (size_t)p * ds, xp = dth * X[p];
        double acc = 0;
        for (int s = 0; s < ds; s++) {
            Sr[s] = e * Sr[s] + xp * Bv[s];
            acc += (double)Sr[s] * Cv[s];
        }
        y[h * hd + p] = (float)acc + w->D[h] * X[p];
    }
}

static void step_mid(const zb_mamba2_dims *m, float eps, const zb_mamba2_weights *w, const float *proj,
                     float *o, float *cst, int n, float *t) {
    int P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner,
        nh = m->nheads, K = m->conv_k, ng = norm_groups(m);
    float *xbc = t, *dt = xbc + (size_t)n * cd, *y = dt + (size_t)n * nh, *rstd = y + (size_t)n * di,
          *tmp = rstd + (size_t)n * ng;
    float *S = cst + (size_t)cd * (K - 1);
    step_pre(m, w, proj, cst, xbc, dt, n);
    if (n == 1)   /* heads are independent (own state rows, own outputs) */
        for (int h = 0; h < nh; h++) step_head(m, w, xbc, dt, S, y, h);
    else
        ssd_forward(m, w, xbc, dt, y, S, NULL, n, tmp);
    gated_norm_forward(m, w->norm_w, eps, y, proj, P, o, rstd, n);
}

void zb_mamba2_step_lin(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                        const zb_mamba2_lin *lin, const float *x, float *out, float *state, int n,
                        int B, float *scratch) {
    int P = zb_mamba2_in_proj_rows(m), di = m->d_inner;
    size_t sf = zb_mamba2_state_floats(m);
    /* proj [n,P] | o [n,di] | the rest (step_mid) */
    float *proj = scratch, *o = proj + (size_t)n * P, *t = o + (size_t)n * di;
    for (int b = 0; b < B; b++) {
        zb_linear_forward(proj, x + (size_t)b * n * d, lin->in_proj, n, d, P);
        step_mid(m, eps, w, proj, o, state + (size_t)b * sf, n, t);
        zb_linear_forward(out + (size_t)b * n * d, o, lin->out_proj, n, di, d);
    }
}

void zb_mamba2_decode_seqs(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                           const zb_mamba2_lin *lin, const float *x, float *out, float *state,
                           const int *seqs, int nb, float *scratch, const zb_backend_opts *opt) {
    int P = zb_mamba2_in_proj_rows(m), di = m->d_inner, cd = zb_mamba2_conv_dim(m), nh = m->nheads;
    size_t sf = zb_mamba2_state_floats(m), conv = (size_t)cd * (m->conv_k - 1);
    /* proj [nb,P] | o [nb,di] | xbc [nb,cd] | dt [nb,nh] | y [nb,di] | rstd [nb,ng] */
    float *proj = scratch, *o = proj + (size_t)nb * P, *xbc = o + (size_t)nb * di;
    float *dt = xbc + (size_t)nb * cd, *y = dt + (size_t)nb * nh, *rstd = y + (size_t)nb * di;
    zb_linear_forward(proj, x, lin->in_proj, nb, d, P);
    for (int i = 0; i < nb; i++)
        step_pre(m, w, proj + (size_t)i * P, state + (size_t)seqs[i] * sf, xbc + (size_t)i * cd, dt + (size_t)i * nh, 1);
    /* the state updates of every (sequence, head) in one threaded loop (when the run decodes on
     * OpenMP, opt->decode_omp): one fork per layer, not one per sequence */
    int par = opt && opt->decode_omp && (size_t)nb * sf >= (1u << 15);
#pragma omp parallel for schedule(static) if (par)
    for (int k = 0; k < nb * nh; k++) {
        int i = k / nh;
        step_head(m, w, xbc + (size_t)i * cd, dt + (size_t)i * nh, state + (size_t)seqs[i] * sf + conv,
                  y + (size_t)i * di, k % nh);
    }
    gated_norm_forward(m, w->norm_w, eps, y, proj, P, o, rstd, nb);
    zb_linear_forward(out, o, lin->out_proj, nb, di, d);
}
