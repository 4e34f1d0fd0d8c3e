/* ops.c — layer kernels on one rank; see ops.h for conventions. */
#include "ops.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- linear ------------------------------------------------------------------------- */

void zb_matmul_forward(float *out, const float *inp, const float *W, const float *bias,
                       int N, int C, int OC) {
    if (N == 1) {   /* decode: a matrix-vector product reads W once */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, W, C, inp, 1, 0.0f, out, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, W, C,
                    0.0f, out, OC);
    }
    if (bias)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
}

void zb_matmul_backward(float *dinp, float *dW, float *dbias, const float *dout,
                        const float *inp, const float *W, int N, int C, int OC) {
    if (dinp)   /* dinp[N,C] += dout[N,OC] @ W[OC,C] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, W, C,
                    1.0f, dinp, C);
    if (dW)     /* dW[OC,C] += dout^T @ inp */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C,
                    1.0f, dW, C);
    if (dbias)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) dbias[o] += dout[(size_t)n * OC + o];
}

/* ---- RMSNorm ------------------------------------------------------------------------ */

void zb_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                        int N, int C, float eps) {
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        if (rstd) rstd[n] = r;
        for (int i = 0; i < C; i++) o[i] = w[i] * (xr[i] * r);
    }
}

/* y_i = w_i x_i r, r = (mean x^2 + eps)^-1/2:
 * dx_i = r (w_i dy_i) - r^3/C x_i sum_j (w_j dy_j x_j),  dw_i = sum_n dy_i x_i r. */
void zb_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                         const float *w, const float *rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C, *dy = dout + (size_t)n * C;
        float r = rstd[n];
        double dot = 0;
        for (int i = 0; i < C; i++) dot += (double)w[i] * dy[i] * xr[i];
        float k = (float)(dot * r * r * r / C);
        if (dx) {
            float *d = dx + (size_t)n * C;
            for (int i = 0; i < C; i++) d[i] += r * w[i] * dy[i] - k * xr[i];
        }
        if (dw)
            for (int i = 0; i < C; i++) dw[i] += dy[i] * xr[i] * r;
    }
}

/* ---- RoPE --------------------------------------------------------------------------- */

void zb_rope_apply(const zb_rope *r, float *x, int n_heads, int head_stride, int offset,
                   int pos, int interleave, int inverse) {
    int D = r->dim, half = D / 2;
    float c[ZB_ROPE_MAX_DIM / 2], s[ZB_ROPE_MAX_DIM / 2], tmp[ZB_ROPE_MAX_DIM];
    for (int i = 0; i < half; i++) {
        float a = (float)pos * r->inv_freq[i];   /* float32 angle, as HF */
        c[i] = cosf(a) * r->mscale;   /* YaRN scales cos and sin alike (SPEC §3) */
        s[i] = (inverse ? -sinf(a) : sinf(a)) * r->mscale;
    }
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_stride + offset;
        if (interleave && !inverse) {   /* (2i, 2i+1) pairs -> [evens | odds] */
            for (int i = 0; i < half; i++) { tmp[i] = v[2 * i]; tmp[half + i] = v[2 * i + 1]; }
            memcpy(v, tmp, sizeof(float) * D);
        }
        for (int i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * c[i] - x2 * s[i];
            v[i + half] = x2 * c[i] + x1 * s[i];
        }
        if (interleave && inverse) {    /* the transpose of the permutation */
            for (int i = 0; i < half; i++) { tmp[2 * i] = v[i]; tmp[2 * i + 1] = v[half + i]; }
            memcpy(v, tmp, sizeof(float) * D);
        }
    }
}

void zb_rope_apply_seq(const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                       int head_stride, int offset, int pos0, int interleave, int inverse) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            zb_rope_apply(r, x + ((size_t)b * T + t) * row_stride, n_heads, head_stride, offset,
                          pos0 + t, interleave, inverse);
}

/* ---- causal GQA attention ------------------------------------------------------------ */

void zb_attention_forward(float *out, float *probs, const float *q, const float *k,
                          const float *v, const zb_attn_shape *s) {
    int B = s->B, T = s->T, H = s->H, rep = s->H / s->Hkv;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / rep;
            const float *qh = q + (size_t)b * T * s->q_stride + (size_t)h * s->dqk;
            const float *kg = k + (size_t)b * T * s->k_stride + (size_t)g * s->dqk;
            const float *vg = v + (size_t)b * T * s->v_stride + (size_t)g * s->dv;
            float *P = probs + ((size_t)b * H + h) * T * T;
            /* S = scale * Q K^T, then causal softmax row by row (masked entries = 0) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, s->dqk, s->scale, qh,
                        s->q_stride, kg, s->k_stride, 0.0f, P, T);
            for (int t = 0; t < T; t++) {
                float *row = P + (size_t)t * T, mx = -INFINITY;
                for (int u = 0; u <= t; u++) if (row[u] > mx) mx = row[u];
                double sum = 0;
                for (int u = 0; u <= t; u++) { row[u] = expf(row[u] - mx); sum += row[u]; }
                float inv = (float)(1.0 / sum);
                for (int u = 0; u <= t; u++) row[u] *= inv;
                for (int u = t + 1; u < T; u++) row[u] = 0.0f;
            }
            float *oh = out + (size_t)b * T * H * s->dv + (size_t)h * s->dv;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, s->dv, T, 1.0f, P, T, vg,
                        s->v_stride, 0.0f, oh, H * s->dv);
        }
}

/* dP = dO V^T; dS = P ⊙ (dP - rowsum(dP ⊙ P)); dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO. */
void zb_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                           const float *probs, const float *q, const float *k, const float *v,
                           const zb_attn_shape *s) {
    int B = s->B, T = s->T, H = s->H, rep = s->H / s->Hkv;
    /* one T x T scratch for dP per call */
    float *buf = (float *)malloc((size_t)T * T * sizeof(float));
    for (int b = 0; b < B; b++) {
        /* zero this batch's dk/dv head columns: heads of a group accumulate into them */
        for (int t = 0; t < T; t++) {
            memset(dk + ((size_t)b * T + t) * s->k_stride, 0, sizeof(float) * s->Hkv * s->dqk);
            memset(dv + ((size_t)b * T + t) * s->v_stride, 0, sizeof(float) * s->Hkv * s->dv);
        }
        for (int h = 0; h < H; h++) {
            int g = h / rep;
            size_t qo = (size_t)b * T * s->q_stride + (size_t)h * s->dqk;
            size_t ko = (size_t)b * T * s->k_stride + (size_t)g * s->dqk;
            size_t vo = (size_t)b * T * s->v_stride + (size_t)g * s->dv;
            const float *P = probs + ((size_t)b * H + h) * T * T;
            const float *dO = dout + (size_t)b * T * H * s->dv + (size_t)h * s->dv;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, s->dv, 1.0f, dO, H * s->dv,
                        v + vo, s->v_stride, 0.0f, buf, T);
            for (int t = 0; t < T; t++) {
                float *row = buf + (size_t)t * T;
                const float *pr = P + (size_t)t * T;
                double dot = 0;
                for (int u = 0; u <= t; u++) dot += (double)row[u] * pr[u];
                for (int u = 0; u <= t; u++) row[u] = pr[u] * (row[u] - (float)dot);
                for (int u = t + 1; u < T; u++) row[u] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, s->dqk, T, s->scale, buf, T,
                        k + ko, s->k_stride, 0.0f, dq + qo, s->q_stride);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, s->dqk, T, s->scale, buf, T,
                        q + qo, s->q_stride, 1.0f, dk + ko, s->k_stride);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, s->dv, T, 1.0f, P, T, dO,
                        H * s->dv, 1.0f, dv + vo, s->v_stride);
        }
    }
    free(buf);
}

/* Split-K decode attention (the "flash-decoding" idea): the cache is cut into chunks of cs
 * positions; each (KV group, chunk) task computes, for every query head of the group, its
 * scores, their max m, sum l of exp(s - m) and o = sum exp(s - m) v over the chunk, reading each
 * cached key and value row once for all heads of the group. Tasks run in parallel (OpenMP) when
 * the cache is long; the partial results are merged exactly:
 * out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c, M = max_c m_c.
 * The chunk length (ZB_DEC_MIN..ZB_DEC_CHUNK, a multiple of 8) is chosen per call so that the
 * tasks fill the threads' rounds: one KV group (MLA) at 8k in chunks of 256 is 33 tasks, three
 * rounds of 16 threads for two rounds' work. */
#define ZB_DEC_CHUNK 256
#define ZB_DEC_MIN 64

size_t zb_attention_decode_scratch(int H, int dv, int Tc) {
    /* scores [tasks][rep][cs] + partial sums [tasks][rep][dv + 2], for the most tasks (cs = ZB_DEC_MIN) */
    size_t nc = (size_t)Tc / ZB_DEC_MIN + 1;
    return (size_t)H * ((size_t)Tc + ZB_DEC_CHUNK + nc * ((size_t)dv + 2));   /* >= the BLAS path's (H/Hkv) x Tc */
}

/* the chunk length for Hkv groups over Tc positions on T threads: the fewest rounds of tasks
 * (a round = T tasks at once), each task costing its length plus a fixed 16 positions' worth */
static int decode_chunk(int Tc, int Hkv, int T) {
    int best = ZB_DEC_CHUNK;
    double cost = 1e300;
    for (int cs = ZB_DEC_CHUNK; cs >= ZB_DEC_MIN; cs -= 8) {
        long ntask = (long)Hkv * ((Tc + cs - 1) / cs), rounds = (ntask + T - 1) / T;
        double c = (double)rounds * (cs + 16);
        if (c < cost - 1e-9) { cost = c; best = cs; }
    }
    return best;
}

/* One split-K task, portable: per position the scores of every head of the group (a dot
 * product each), the chunk softmax, then each value row added into every head's sum. */
static void task_plain(const float *qg, const float *kc, const float *vc, int u0, int len, int rep, int dqk,
                       int dv, int k_stride, int v_stride, float scale, float *s, int cs, float *part) {
    for (int u = 0; u < len; u++) {
        const float *k = kc + (size_t)(u0 + u) * k_stride;
        for (int h = 0; h < rep; h++) {
            const float *qh = qg + (size_t)h * dqk;
            float acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int j = 0; j < dqk; j++) acc += qh[j] * k[j];
            s[(size_t)h * cs + u] = acc * scale;
        }
    }
    for (int h = 0; h < rep; h++) {
        float *sh = s + (size_t)h * cs, mx = -INFINITY;
        for (int u = 0; u < len; u++) if (sh[u] > mx) mx = sh[u];
        double l = 0;
        for (int u = 0; u < len; u++) { sh[u] = expf(sh[u] - mx); l += sh[u]; }
        float *o = part + (size_t)h * (dv + 2);
        memset(o, 0, sizeof(float) * dv);
        o[dv] = mx;
        o[dv + 1] = (float)l;
    }
    for (int u = 0; u < len; u++) {
        const float *v = vc + (size_t)(u0 + u) * v_stride;
        for (int h = 0; h < rep; h++) {
            float p = s[(size_t)h * cs + u], *o = part + (size_t)h * (dv + 2);
#pragma omp simd
            for (int j = 0; j < dv; j++) o[j] += p * v[j];
        }
    }
}

/* exp(x) for x <= 0, 8 lanes (AVX2 + FMA): x = n ln2 + r, |r| <= ln2/2 (ln2 in two parts),
 * e^r by its degree-6 Taylor polynomial (relative error < 2e-7 on that range), 2^n by the
 * exponent field; x < -87 gives 0 (e^-87 is below the smallest normal float). */
__attribute__((target("avx2,fma"))) static inline __m256 exp_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);        /* ln2 high part: exact product */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);             /* ln2 low part */
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* The 8 sums of 8 vectors: lane i = the sum of the lanes of ai. */
__attribute__((target("avx2,fma"))) static inline __m256 hsum8_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                                                    __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
    t0 = _mm256_hadd_ps(t0, t1);   /* [a0 a1 a2 a3 | a0 a1 a2 a3] halves of each sum */
    t2 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

/* One split-K task with SIMD, in blocks of HB <= 4 heads of the group (an inlined body per HB,
 * so the accumulators stay in registers); WIDTH floats per vector (AVX2 8, AVX-512 16), dqk a
 * multiple of WIDTH:
 * - scores: HB heads x 2 positions per pass over dqk: 2 key loads and HB query loads feed
 *   2 HB FMAs (the key rows are read once per head block, from L1/L2 after the first); the
 *   8 sums leave through one transposing reduction. The first head block also prefetches the
 *   value rows of the positions it scores, so that their fetch overlaps the score arithmetic;
 * - the chunk's softmax per head (AVX2 vector exp);
 * - values: HB heads x 2 WIDTH columns in registers while the chunk's rows stream through:
 *   2 value loads and HB broadcasts feed 2 HB FMAs.
 * A group of 32 heads over one 160-float row (MLA's latent) is then a small register-blocked
 * GEMM rather than 32 dot-product sweeps.
 * VEC the vector type, ZERO() a zero vector, LOAD(p), FMA(a, b, c) = a * b + c, BCAST(p) *p
 * in every lane, STORE(p, v), RED8(t, a0..a7): t[i] = scale * (the sum of the lanes of ai). */
#define HEADS_BODY(VEC, WIDTH, ZERO, LOAD, FMA, BCAST, STORE, RED8)                                     \
    const VEC z = ZERO();                                                                               \
    const size_t ks = (size_t)k_stride;                                                                 \
    float t[8];                                                                                         \
    for (int u = 0; u < len; u += 2) {   /* scores, 2 positions (the last alone when len is odd) */     \
        int two = u + 1 < len;                                                                          \
        const float *k0 = kc + (size_t)(u0 + u) * ks, *k1 = two ? k0 + ks : k0;                         \
        if (first)                                                                                      \
            for (int j = 0; j < dv; j += 16) {                                                          \
                _mm_prefetch((const char *)(vc + (size_t)(u0 + u) * v_stride + j), _MM_HINT_T0);        \
                _mm_prefetch((const char *)(vc + (size_t)(u0 + u + two) * v_stride + j), _MM_HINT_T0);  \
            }                                                                                           \
        VEC a[4][2];                                                                                    \
        _Pragma("GCC unroll 4") for (int h = 0; h < 4; h++) a[h][0] = a[h][1] = z;                      \
        for (int j = 0; j < dqk; j += WIDTH) {                                                          \
            VEC kv0 = LOAD(k0 + j), kv1 = LOAD(k1 + j);                                                 \
            _Pragma("GCC unroll 4") for (int h = 0; h < HB; h++) {                                      \
                VEC qv = LOAD(qh + (size_t)h * dqk + j);                                                \
                a[h][0] = FMA(qv, kv0, a[h][0]);                                                        \
                a[h][1] = FMA(qv, kv1, a[h][1]);                                                        \
            }                                                                                           \
        }                                                                                               \
        RED8(t, a[0][0], a[1][0], a[2][0], a[3][0], a[0][1], a[1][1], a[2][1], a[3][1]);                \
        _Pragma("GCC unroll 4") for (int h = 0; h < HB; h++) {                                          \
            sh[(size_t)h * cs + u] = t[h];                                                              \
            if (two) sh[(size_t)h * cs + u + 1] = t[4 + h];                                             \
        }                                                                                               \
    }                                                                                                   \
    for (int h = 0; h < HB; h++) chunk_softmax(sh + (size_t)h * cs, len, part + (size_t)h * (dv + 2) + dv); \
    int j0 = 0;                                                                                         \
    for (; j0 + 2 * WIDTH <= dv; j0 += 2 * WIDTH) {   /* values: HB heads x 2 WIDTH columns */          \
        VEC a[4][2];                                                                                    \
        _Pragma("GCC unroll 4") for (int h = 0; h < 4; h++) a[h][0] = a[h][1] = z;                      \
        for (int u = 0; u < len; u++) {                                                                 \
            const float *v = vc + (size_t)(u0 + u) * v_stride + j0;                                     \
            VEC v0 = LOAD(v), v1 = LOAD(v + WIDTH);                                                     \
            _Pragma("GCC unroll 4") for (int h = 0; h < HB; h++) {                                      \
                VEC p = BCAST(sh + (size_t)h * cs + u);                                                 \
                a[h][0] = FMA(p, v0, a[h][0]);                                                          \
                a[h][1] = FMA(p, v1, a[h][1]);                                                          \
            }                                                                                           \
        }                                                                                               \
        _Pragma("GCC unroll 4") for (int h = 0; h < HB; h++) {                                          \
            STORE(part + (size_t)h * (dv + 2) + j0, a[h][0]);                                           \
            STORE(part + (size_t)h * (dv + 2) + j0 + WIDTH, a[h][1]);                                   \
        }                                                                                               \
    }                                                                                                   \
    for (; j0 < dv; j0++)   /* the columns past the last 2 WIDTH */                                     \
        for (int h = 0; h < HB; h++) {                                                                  \
            const float *s = sh + (size_t)h * cs;                                                       \
            float acc = 0;                                                                              \
            for (int u = 0; u < len; u++) acc += s[u] * vc[(size_t)(u0 + u) * v_stride + j0];           \
            part[(size_t)h * (dv + 2) + j0] = acc;                                                      \
        }

/* the softmax of one head's chunk of scores s[0..len): e^(s - max) in place; mlv = {max, sum} */
__attribute__((target("avx2,fma"))) static void chunk_softmax(float *s, int len, float *mlv) {
    int u8 = len & ~7;
    float mx = -INFINITY, t[8];
    for (int u = 0; u < len; u++) if (s[u] > mx) mx = s[u];
    __m256 m8 = _mm256_set1_ps(mx), l8 = _mm256_setzero_ps();
    for (int u = 0; u < u8; u += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + u), m8));
        _mm256_storeu_ps(s + u, e);
        l8 = _mm256_add_ps(l8, e);
    }
    _mm256_storeu_ps(t, l8);
    double l = 0;
    for (int i = 0; i < 8; i++) l += t[i];
    for (int u = u8; u < len; u++) { s[u] = expf(s[u] - mx); l += s[u]; }
    mlv[0] = mx;
    mlv[1] = (float)l;
}

#define RED8_AVX2(t, a0, a1, a2, a3, a4, a5, a6, a7) \
    _mm256_storeu_ps(t, _mm256_mul_ps(hsum8_avx2(a0, a1, a2, a3, a4, a5, a6, a7), _mm256_set1_ps(scale)))
/* 16 lanes to 8 (the two halves added), then the AVX2 reduction */
#define HALF512(a) _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))
#define RED8_AVX512(t, a0, a1, a2, a3, a4, a5, a6, a7) \
    RED8_AVX2(t, HALF512(a0), HALF512(a1), HALF512(a2), HALF512(a3), HALF512(a4), HALF512(a5), HALF512(a6), HALF512(a7))
#define BCAST_AVX2(p) _mm256_broadcast_ss(p)
#define BCAST_AVX512(p) _mm512_set1_ps(*(p))

#define HEADS_ARGS const float *qh, const float *kc, const float *vc, int u0, int len, int dqk, int dv, int k_stride, \
                   int v_stride, float scale, float *sh, int cs, float *part, int first, const int HB
__attribute__((target("avx2,fma"), always_inline)) static inline void heads_avx2(HEADS_ARGS) {
    HEADS_BODY(__m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, BCAST_AVX2, _mm256_storeu_ps, RED8_AVX2)
}
__attribute__((target("avx512f,avx2,fma"), always_inline)) static inline void heads_avx512(HEADS_ARGS) {
    HEADS_BODY(__m512, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, BCAST_AVX512, _mm512_storeu_ps,
               RED8_AVX512)
}

/* the task: the group's heads in blocks of 4 (then 3, 2 or 1), each block inlined with its HB */
#define TASK_SIMD(name, heads, attr)                                                                    \
    attr static void name(const float *qg, const float *kc, const float *vc, int u0, int len, int rep,  \
                          int dqk, int dv, int k_stride, int v_stride, float scale, float *s, int cs,   \
                          float *part) {                                                                \
        for (int h = 0; h < rep; h += 4) {                                                              \
            const float *qh = qg + (size_t)h * dqk;                                                     \
            float *sh = s + (size_t)h * cs, *ph = part + (size_t)h * (dv + 2);                          \
            int f = h == 0;                                                                             \
            switch (rep - h < 4 ? rep - h : 4) {                                                        \
            case 1: heads(qh, kc, vc, u0, len, dqk, dv, k_stride, v_stride, scale, sh, cs, ph, f, 1); break; \
            case 2: heads(qh, kc, vc, u0, len, dqk, dv, k_stride, v_stride, scale, sh, cs, ph, f, 2); break; \
            case 3: heads(qh, kc, vc, u0, len, dqk, dv, k_stride, v_stride, scale, sh, cs, ph, f, 3); break; \
            default: heads(qh, kc, vc, u0, len, dqk, dv, k_stride, v_stride, scale, sh, cs, ph, f, 4); break; \
            }                                                                                           \
        }                                                                                               \
    }
TASK_SIMD(task_avx2, heads_avx2, __attribute__((target("avx2,fma"))))
TASK_SIMD(task_avx512, heads_avx512, __attribute__((target("avx512f,avx2,fma"))))

static void decode_split_k(float *out, const float *q, const float *kc, const float *vc, int Tc,
                           int H, int Hkv, int dqk, int dv, int k_stride, int v_stride,
                           size_t k_group, size_t v_group, float scale, float *scratch,
                           const zb_backend_opts *o) {
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    /* 2: AVX-512 tasks, 1: AVX2, 0: portable */
    int simd = !avx2 || dqk % 8 || o->decode_simd == ZB_SIMD_PORTABLE ? 0
               : o->decode_simd == ZB_SIMD_BEST && dqk % 16 == 0 && __builtin_cpu_supports("avx512f") ? 2
                                                                                                       : 1;
    int par = (double)Tc * H * (dqk + dv) >= 1 << 17;               /* worth waking threads */
#ifdef _OPENMP
    int cs = decode_chunk(Tc, Hkv, par ? omp_get_max_threads() : 1);
#else
    int cs = ZB_DEC_CHUNK;
#endif
    if (o->decode_chunk > 0)   /* tests: a forced chunk length */
        cs = o->decode_chunk < ZB_DEC_MIN ? ZB_DEC_MIN : o->decode_chunk > ZB_DEC_CHUNK ? ZB_DEC_CHUNK : o->decode_chunk;
    int rep = H / Hkv, nc = (Tc + cs - 1) / cs, ntask = Hkv * nc;
    float *S = scratch;                                            /* [task][rep][cs] */
    float *P = scratch + (size_t)ntask * rep * cs;                 /* [task][rep][dv + 2] */
#pragma omp parallel if (par)
    {
#pragma omp for schedule(static)
        for (int task = 0; task < ntask; task++) {
            int g = task / nc, u0 = (task % nc) * cs;
            int len = Tc - u0 < cs ? Tc - u0 : cs;
            float *s = S + (size_t)task * rep * cs, *part = P + (size_t)task * rep * (dv + 2);
            const float *qg = q + (size_t)g * rep * dqk, *kg = kc + g * k_group, *vg = vc + g * v_group;
            if (simd == 2) task_avx512(qg, kg, vg, u0, len, rep, dqk, dv, k_stride, v_stride, scale, s, cs, part);
            else if (simd) task_avx2(qg, kg, vg, u0, len, rep, dqk, dv, k_stride, v_stride, scale, s, cs, part);
            else task_plain(qg, kg, vg, u0, len, rep, dqk, dv, k_stride, v_stride, scale, s, cs, part);
        }
#pragma omp for schedule(static)
        for (int h = 0; h < H; h++) {   /* merge the chunks of each head (in the same threads) */
            int g = h / rep, hh = h % rep;
            float M = -INFINITY;
            for (int c = 0; c < nc; c++) {
                float m = P[((size_t)(g * nc + c) * rep + hh) * (dv + 2) + dv];
                if (m > M) M = m;
            }
            float *oh = out + (size_t)h * dv;
            memset(oh, 0, sizeof(float) * dv);
            double L = 0;
            for (int c = 0; c < nc; c++) {
                const float *o = P + ((size_t)(g * nc + c) * rep + hh) * (dv + 2);
                float w = expf(o[dv] - M);
                L += (double)w * o[dv + 1];
                for (int j = 0; j < dv; j++) oh[j] += w * o[j];
            }
            float inv = (float)(1.0 / L);
            for (int j = 0; j < dv; j++) oh[j] *= inv;
        }
    }
}

/* Which decode attention runs: the BLAS one (a GEMM per KV group, OpenBLAS's threads) or the
 * split-K one threaded by OpenMP. One process should use one thread pool for everything: with
 * OpenBLAS's pthreads build and f32 weights, the weight GEMVs run on OpenBLAS's threads, and
 * OpenMP workers spinning after an attention region slowed them down (1k-context decode of the
 * 1B teacher fell from 17 to 7 tok/s); with bf16 weights every product is ours under OpenMP,
 * and with OpenBLAS's OpenMP build (linear.h zb_blas_uses_openmp) both share libgomp's pool,
 * so split-K is on. Set per run by the inference commands (zb_backend_opts.decode_omp). */

static void decode_blas(float *out, const float *q, const float *kc, const float *vc, int Tc, int H, int Hkv,
                        int dqk, int dv, int k_stride, int v_stride, size_t k_group, size_t v_group,
                        float scale, float *scratch) {
    /* one GEMM per KV group for all of its query heads: the cache is streamed once per token */
    int rep = H / Hkv;
    for (int g = 0; g < Hkv; g++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rep, Tc, dqk, scale,
                    q + (size_t)g * rep * dqk, dqk, kc + g * k_group, k_stride, 0.0f, scratch, Tc);
        for (int h = 0; h < rep; h++) {
            float *row = scratch + (size_t)h * Tc, mx = -INFINITY;
            for (int u = 0; u < Tc; u++) if (row[u] > mx) mx = row[u];
            double sum = 0;
            for (int u = 0; u < Tc; u++) { row[u] = expf(row[u] - mx); sum += row[u]; }
            float inv = (float)(1.0 / sum);
            for (int u = 0; u < Tc; u++) row[u] *= inv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rep, dv, Tc, 1.0f, scratch, Tc,
                    vc + g * v_group, v_stride, 0.0f, out + (size_t)g * rep * dv, dv);
    }
}

void zb_attention_decode(float *out, const float *q, const float *kc, const float *vc, int Tc,
                         int H, int Hkv, int dqk, int dv, int k_stride, int v_stride,
                         size_t k_group, size_t v_group, float scale, float *scratch,
                         const zb_backend_opts *o) {
    static const zb_backend_opts defaults;
    if (!o) o = &defaults;
    if (o->decode_omp)
        decode_split_k(out, q, kc, vc, Tc, H, Hkv, dqk, dv, k_stride, v_stride, k_group, v_group, scale, scratch, o);
    else decode_blas(out, q, kc, vc, Tc, H, Hkv, dqk, dv, k_stride, v_stride, k_group, v_group, scale, scratch);
}

/* ---- SwiGLU ----------------------------------------------------------------------------- */

void zb_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = zb_silu(g[i]) * u[i];
}

/* silu'(g) = s (1 + g (1 - s)), s = sigmoid(g) */
void zb_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                        size_t n) {
    for (size_t i = 0; i < n; i++) {
        float s = zb_sigmoid(g[i]);
        du[i] = dh[i] * g[i] * s;
        dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    }
}

/* ---- embedding ---------------------------------------------------------------------------- */

void zb_embedding_forward(float *out, const int *ids, const float *table, int N, int C) {
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, sizeof(float) * C);
}

void zb_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int C) {
    for (int n = 0; n < N; n++) {
        float *d = dtable + (size_t)ids[n] * C;
        const float *g = dout + (size_t)n * C;
        for (int i = 0; i < C; i++) d[i] += g[i];
    }
}

/* ---- losses ------------------------------------------------------------------------------ */

double zb_cross_entropy(float *dlogits, const float *logits, const int *targets, int N, int V,
                        float scale, int *n_valid) {
    double total = 0;
    int nv = 0;
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float *d = dlogits ? dlogits + (size_t)n * V : NULL;
        int y = targets[n];
        if (y < 0 || y >= V) {
            if (d) memset(d, 0, sizeof(float) * V);
            continue;
        }
        nv++;
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) if (row[v] > mx) mx = row[v];
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)row[v] - mx);
        double lse = mx + log(sum);
        total += lse - row[y];
        if (d) {
            for (int v = 0; v < V; v++) d[v] = (float)(scale * exp((double)row[v] - lse));
            d[y] -= scale;
        }
    }
    if (n_valid) *n_valid = nv;
    return total;
}

double zb_kl_div(float *dstudent, const float *student, const float *teacher, const int *mask,
                 int N, int V, float tau, float scale) {
    double total = 0;
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * V, *t = teacher + (size_t)n * V;
        float *d = dstudent ? dstudent + (size_t)n * V : NULL;
        if (mask && !mask[n]) {
            if (d) memset(d, 0, sizeof(float) * V);
            continue;
        }
        double ms = -INFINITY, mt = -INFINITY;
        for (int v = 0; v < V; v++) {
            if (s[v] / tau > ms) ms = s[v] / tau;
            if (t[v] / tau > mt) mt = t[v] / tau;
        }
        double zs = 0, zt = 0;
        for (int v = 0; v < V; v++) { zs += exp(s[v] / tau - ms); zt += exp(t[v] / tau - mt); }
        double lzs = ms + log(zs), lzt = mt + log(zt), kl = 0;
        for (int v = 0; v < V; v++) {
            double lpt = t[v] / tau - lzt, lps = s[v] / tau - lzs, pt = exp(lpt);
            kl += pt * (lpt - lps);
            if (d) d[v] = (float)(scale * (exp(lps) - pt) / tau);
        }
        total += kl;
    }
    return total;
}

double zb_mse(float *da, const float *a, const float *b, size_t n, float scale) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - b[i];
        s += e * e;
        if (da) da[i] = (float)(scale * 2.0 * e / n);
    }
    return s / n;
}

double zb_mean_row_dist(float *g, const float *s, const float *t, int N, int d, float scale) {
    double total = 0;
    for (int n = 0; n < N; n++) {
        const float *a = s + (size_t)n * d, *b = t + (size_t)n * d;
        double q = 0;
        for (int i = 0; i < d; i++) { double e = (double)a[i] - b[i]; q += e * e; }
        double r = sqrt(q);
        total += r;
        if (g) {
            double k = r > 0 ? scale / (r * N) : 0.0;
            for (int i = 0; i < d; i++) g[(size_t)n * d + i] = (float)(k * ((double)a[i] - b[i]));
        }
    }
    return total / N;
}
