/* linear.c — float32 / bfloat16 linear layers for inference; see linear.h. */
#include "linear.h"

#include <cblas.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"
#include "zb_common.h"

/* Output rows per OpenMP work item in the decode kernel: small enough to balance 2..64
 * threads on 1k..128k rows, large enough that scheduling costs nothing. */
#define ZB_BF16_ROWBLK 16
/* Weight rows converted to f32 per sgemm call in the prefill path (a tile of 256 x 14336
 * floats is 14 MB: the scratch stays far below the model). */
#define ZB_BF16_TILE 256

static inline float bf16f(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint32_t f32bits(float f) {
    union { float f; uint32_t u; } v;
    v.f = f;
    return v.u;
}

int zb_blas_uses_openmp(void) { return openblas_get_parallel() == 2; }

int zb_linear_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void zb_linear_set_threads(int n) {
#ifdef _OPENMP
    if (n >= 1) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* ---- direct kernels: rows [o0, o1) of out[n, o] = W[o] . x[n] for every n < N ------------
 * A micro-kernel computes R <= 4 weight rows against NI <= 4 inputs (R*NI accumulators): each
 * weight vector loaded (and widened bf16 -> f32, a 16-bit left shift) is used NI times, each
 * input vector R times. The inputs are walked in groups of 4, so the R rows (R * C * 2 bytes,
 * L1/L2-resident) are re-read from cache, never from memory: every weight row comes from
 * memory once for all N inputs. Products and sums in f32 (FMA): the result is an f32 dot
 * product up to the order of the additions. */

static void rows_scalar(const uint16_t *W, const float *x, int N, int C, int o0, int o1, float *out, int OC) {
    for (int o = o0; o < o1; o++) {
        const uint16_t *w = W + (size_t)o * C;
        for (int n = 0; n < N; n++) {
            const float *xn = x + (size_t)n * C;
            float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};   /* 8 partial sums: vectorisable, less rounding drift */
            int i = 0;
            for (; i + 8 <= C; i += 8)
                for (int k = 0; k < 8; k++) a[k] += bf16f(w[i + k]) * xn[i + k];
            float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
            for (; i < C; i++) s += bf16f(w[i]) * xn[i];
            out[(size_t)n * OC + o] = s;
        }
    }
}

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* the scalar tail (C not a multiple of the vector width) of row w against input xn */
static inline float tail_dot(const uint16_t *w, const float *xn, int i, int C) {
    float s = 0;
    for (; i < C; i++) s += bf16f(w[i]) * xn[i];
    return s;
}

#define MK_ATTR(t) __attribute__((target(t), always_inline)) static inline

/* The micro-kernel, one body for both instruction sets: VEC the vector type of WIDTH floats,
 * ZERO() a zero vector, WIDEN(p) WIDTH bf16 weights at p as f32 (a 16-bit left shift of the
 * zero-extended halves), LOAD(p) WIDTH floats, FMA(a, b, c) = a * b + c, HSUM(v) the sum of v. */
#define MK_BODY(VEC, WIDTH, ZERO, WIDEN, LOAD, FMA, HSUM)                                           \
    VEC acc[4][4];                                                                                  \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                             \
        _Pragma("GCC unroll 4") for (int j = 0; j < NI; j++) acc[r][j] = ZERO();                   \
    const uint16_t *w = W + (size_t)o * C;                                                          \
    const float *xn = x + (size_t)n * C;                                                            \
    int i = 0;                                                                                      \
    for (; i + WIDTH <= C; i += WIDTH) {                                                            \
        VEC wv[4];                                                                                  \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) wv[r] = WIDEN(w + (size_t)r * C + i);  \
        _Pragma("GCC unroll 4") for (int j = 0; j < NI; j++) {                                      \
            VEC xv = LOAD(xn + (size_t)j * C + i);                                                  \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[r][j] = FMA(wv[r], xv, acc[r][j]); \
        }                                                                                           \
    }                                                                                               \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                             \
        _Pragma("GCC unroll 4") for (int j = 0; j < NI; j++)                                        \
            out[(size_t)(n + j) * OC + o + r] =                                                     \
                HSUM(acc[r][j]) + tail_dot(w + (size_t)r * C, xn + (size_t)j * C, i, C);

#define WIDEN_AVX2(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define WIDEN_AVX512(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))

/* AVX2: 8 weights per vector */
MK_ATTR("avx2,fma") void mk_avx2(const uint16_t *W, const float *x, int C, int o, int n, float *out, int OC,
                                 const int R, const int NI) {
    MK_BODY(__m256, 8, _mm256_setzero_ps, WIDEN_AVX2, _mm256_loadu_ps, _mm256_fmadd_ps, hsum256)
}

/* AVX-512F: 16 weights per vector */
MK_ATTR("avx512f") void mk_avx512(const uint16_t *W, const float *x, int C, int o, int n, float *out, int OC,
                                  const int R, const int NI) {
    MK_BODY(__m512, 16, _mm512_setzero_ps, WIDEN_AVX512, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps)
}

/* rows [o0, o1) x all N inputs with a micro-kernel of every (R, NI) in 1..4 x 1..4, the
 * constants resolved at compile time (so the accumulators stay in registers) */
#define MK_CASE(fn, R, NI) case (R - 1) * 4 + NI - 1: fn(W, x, C, o, n, out, OC, R, NI); break;
#define MK_ROWS(name, fn, attr)                                                                  \
    attr static void name(const uint16_t *W, const float *x, int N, int C, int o0, int o1,      \
                          float *out, int OC) {                                                  \
        for (int o = o0; o < o1; o += 4) {                                                       \
            int R = o1 - o < 4 ? o1 - o : 4;                                                     \
            for (int n = 0; n < N; n += 4) {                                                     \
                int NI = N - n < 4 ? N - n : 4;                                                  \
                switch ((R - 1) * 4 + NI - 1) {                                                  \
                MK_CASE(fn, 1, 1) MK_CASE(fn, 1, 2) MK_CASE(fn, 1, 3) MK_CASE(fn, 1, 4)          \
                MK_CASE(fn, 2, 1) MK_CASE(fn, 2, 2) MK_CASE(fn, 2, 3) MK_CASE(fn, 2, 4)          \
                MK_CASE(fn, 3, 1) MK_CASE(fn, 3, 2) MK_CASE(fn, 3, 3) MK_CASE(fn, 3, 4)          \
                MK_CASE(fn, 4, 1) MK_CASE(fn, 4, 2) MK_CASE(fn, 4, 3) MK_CASE(fn, 4, 4)          \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }
MK_ROWS(rows_avx2, mk_avx2, __attribute__((target("avx2,fma"))))
MK_ROWS(rows_avx512, mk_avx512, __attribute__((target("avx512f"))))

int zb_bf16_impl_available(zb_bf16_impl impl) {
    switch (impl) {
    case ZB_BF16_AUTO: case ZB_BF16_SCALAR: return 1;
    case ZB_BF16_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ZB_BF16_AVX512: return __builtin_cpu_supports("avx512f");
    }
    return 0;
}

static zb_bf16_impl resolve(zb_bf16_impl impl) {
    if (impl != ZB_BF16_AUTO && zb_bf16_impl_available(impl)) return impl;
    if (zb_bf16_impl_available(ZB_BF16_AVX512)) return ZB_BF16_AVX512;
    if (zb_bf16_impl_available(ZB_BF16_AVX2)) return ZB_BF16_AVX2;
    return ZB_BF16_SCALAR;
}

const char *zb_bf16_impl_name(zb_bf16_impl impl) {
    switch (resolve(impl)) {
    case ZB_BF16_AVX512: return "avx512";
    case ZB_BF16_AVX2: return "avx2";
    default: return "scalar";
    }
}

/* N <= ZB_BF16_DIRECT_MAX_N inputs: every weight row read from memory once, blocks of output
 * rows over the threads */
static void bf16_direct(float *out, const float *inp, const uint16_t *W, int N, int C, int OC, zb_bf16_impl impl) {
    int nblk = (OC + ZB_BF16_ROWBLK - 1) / ZB_BF16_ROWBLK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int b = 0; b < nblk; b++) {
        int o0 = b * ZB_BF16_ROWBLK, o1 = o0 + ZB_BF16_ROWBLK < OC ? o0 + ZB_BF16_ROWBLK : OC;
        if (impl == ZB_BF16_AVX512) rows_avx512(W, inp, N, C, o0, o1, out, OC);
        else if (impl == ZB_BF16_AVX2) rows_avx2(W, inp, N, C, o0, o1, out, OC);
        else rows_scalar(W, inp, N, C, o0, o1, out, OC);
    }
}

void zb_linear_bf16(float *out, const float *inp, const uint16_t *W, int N, int C, int OC, zb_bf16_impl impl) {
    impl = resolve(impl);
    float *tile = N > ZB_BF16_DIRECT_MAX_N ? malloc(sizeof(float) * ZB_BF16_TILE * (size_t)C) : NULL;
    if (!tile) {
        /* decode, short prefill (or no memory for a tile): the direct kernel, at most
         * ZB_BF16_DIRECT_MAX_N inputs per pass over the weights */
        for (int n0 = 0; n0 < N; n0 += ZB_BF16_DIRECT_MAX_N) {
            int nn = N - n0 < ZB_BF16_DIRECT_MAX_N ? N - n0 : ZB_BF16_DIRECT_MAX_N;
            /* rows of out for inputs n0.. are contiguous: [nn, OC] with stride OC */
            bf16_direct(out + (size_t)n0 * OC, inp + (size_t)n0 * C, W, nn, C, OC, impl);
        }
        return;
    }
    /* prefill: compute-bound, so sgemm on f32 tiles converted in parallel */
    for (int o0 = 0; o0 < OC; o0 += ZB_BF16_TILE) {
        int rows = OC - o0 < ZB_BF16_TILE ? OC - o0 : ZB_BF16_TILE;
        const uint16_t *src = W + (size_t)o0 * C;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (int r = 0; r < rows; r++) zb_bf16_to_f32_n(src + (size_t)r * C, tile + (size_t)r * C, (size_t)C);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, rows, C, 1.0f, inp, C, tile, C, 0.0f,
                    out + o0, OC);
    }
    free(tile);
}

void zb_linear_forward(float *out, const float *inp, zb_wt W, int N, int C, int OC) {
    if (W.bf16) zb_linear_bf16(out, inp, W.bf16, N, C, OC, ZB_BF16_AUTO);
    else zb_matmul_forward(out, inp, W.f32, NULL, N, C, OC);
}
