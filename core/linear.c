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

void zb_bf16_to_f32_n(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = bf16f(src[i]);
}

void zb_f32_to_bf16_n(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = zb_f32_to_bf16(src[i]);
}

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

/* ---- decode kernels: rows [o0, o1) of out[n, o] = W[o] . x[n], n < N <= GEMV_MAX_N ---------- */

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

/* bf16 -> f32 is a 16-bit left shift of the bits: 16 weights per iteration, two FMA chains */
__attribute__((target("avx2,fma")))
static void rows_avx2(const uint16_t *W, const float *x, int N, int C, int o0, int o1, float *out, int OC) {
    for (int o = o0; o < o1; o++) {
        const uint16_t *w = W + (size_t)o * C;
        __m256 a0[ZB_BF16_GEMV_MAX_N], a1[ZB_BF16_GEMV_MAX_N];
        for (int n = 0; n < N; n++) { a0[n] = _mm256_setzero_ps(); a1[n] = _mm256_setzero_ps(); }
        int i = 0;
        for (; i + 16 <= C; i += 16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(w + i));
            __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
            __m256 w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
            for (int n = 0; n < N; n++) {
                const float *xn = x + (size_t)n * C + i;
                a0[n] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xn), a0[n]);
                a1[n] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xn + 8), a1[n]);
            }
        }
        for (int n = 0; n < N; n++) {
            const float *xn = x + (size_t)n * C;
            float s = hsum256(_mm256_add_ps(a0[n], a1[n]));
            for (int j = i; j < C; j++) s += bf16f(w[j]) * xn[j];
            out[(size_t)n * OC + o] = s;
        }
    }
}

/* x (f32) -> three bf16 rows hi | mid | lo with x == hi + mid + lo exactly: each part is the
 * truncation of what is left, so each remainder is exact in f32 (24 = 8 + 8 + 8 bits). */
static void split3(const float *x, uint16_t *hi, uint16_t *mid, uint16_t *lo, int C) {
    for (int i = 0; i < C; i++) {
        uint32_t b = f32bits(x[i]);
        hi[i] = (uint16_t)(b >> 16);
        float r1 = x[i] - bf16f(hi[i]);
        mid[i] = (uint16_t)(f32bits(r1) >> 16);
        float r2 = r1 - bf16f(mid[i]);
        lo[i] = (uint16_t)(f32bits(r2) >> 16);
    }
}

/* vdpbf16ps: 32 bf16 products per instruction, summed in f32; xs holds [N][3][C] parts. */
__attribute__((target("avx512f,avx512bf16")))
static void rows_avx512bf16(const uint16_t *W, const uint16_t *xs, const float *x, int N, int C, int o0,
                            int o1, float *out, int OC) {
    for (int o = o0; o < o1; o++) {
        const uint16_t *w = W + (size_t)o * C;
        __m512 acc[ZB_BF16_GEMV_MAX_N];
        for (int n = 0; n < N; n++) acc[n] = _mm512_setzero_ps();
        int i = 0;
        for (; i + 32 <= C; i += 32) {
            __m512bh wv = (__m512bh)_mm512_loadu_si512((const void *)(w + i));
            for (int n = 0; n < N; n++) {
                const uint16_t *p = xs + (size_t)n * 3 * C + i;
                acc[n] = _mm512_dpbf16_ps(acc[n], wv, (__m512bh)_mm512_loadu_si512((const void *)p));
                acc[n] = _mm512_dpbf16_ps(acc[n], wv, (__m512bh)_mm512_loadu_si512((const void *)(p + C)));
                acc[n] = _mm512_dpbf16_ps(acc[n], wv, (__m512bh)_mm512_loadu_si512((const void *)(p + 2 * (size_t)C)));
            }
        }
        for (int n = 0; n < N; n++) {
            const float *xn = x + (size_t)n * C;
            float s = _mm512_reduce_add_ps(acc[n]);
            for (int j = i; j < C; j++) s += bf16f(w[j]) * xn[j];
            out[(size_t)n * OC + o] = s;
        }
    }
}

int zb_bf16_impl_available(zb_bf16_impl impl) {
    switch (impl) {
    case ZB_BF16_AUTO: case ZB_BF16_SCALAR: return 1;
    case ZB_BF16_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ZB_BF16_AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
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
    case ZB_BF16_AVX512: return "avx512bf16";
    case ZB_BF16_AVX2: return "avx2";
    default: return "scalar";
    }
}

/* N <= GEMV_MAX_N inputs: every weight row read once, output row blocks over the threads */
static void bf16_gemv(float *out, const float *inp, const uint16_t *W, int N, int C, int OC, zb_bf16_impl impl) {
    uint16_t *xs = NULL;
    if (impl == ZB_BF16_AVX512) {
        xs = malloc(sizeof(uint16_t) * 3 * (size_t)N * C);
        if (!xs) impl = zb_bf16_impl_available(ZB_BF16_AVX2) ? ZB_BF16_AVX2 : ZB_BF16_SCALAR;
        else
            for (int n = 0; n < N; n++) {
                uint16_t *p = xs + (size_t)n * 3 * C;
                split3(inp + (size_t)n * C, p, p + C, p + 2 * (size_t)C, C);
            }
    }
    int nblk = (OC + ZB_BF16_ROWBLK - 1) / ZB_BF16_ROWBLK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int b = 0; b < nblk; b++) {
        int o0 = b * ZB_BF16_ROWBLK, o1 = o0 + ZB_BF16_ROWBLK < OC ? o0 + ZB_BF16_ROWBLK : OC;
        if (impl == ZB_BF16_AVX512) rows_avx512bf16(W, xs, inp, N, C, o0, o1, out, OC);
        else if (impl == ZB_BF16_AVX2) rows_avx2(W, inp, N, C, o0, o1, out, OC);
        else rows_scalar(W, inp, N, C, o0, o1, out, OC);
    }
    free(xs);
}

void zb_linear_bf16(float *out, const float *inp, const uint16_t *W, int N, int C, int OC, zb_bf16_impl impl) {
    impl = resolve(impl);
    float *tile = N > ZB_BF16_GEMV_MAX_N ? malloc(sizeof(float) * ZB_BF16_TILE * (size_t)C) : NULL;
    if (!tile) {
        /* decode (or no memory for a tile): GEMV_MAX_N inputs at a time */
        for (int n0 = 0; n0 < N; n0 += ZB_BF16_GEMV_MAX_N) {
            int nn = N - n0 < ZB_BF16_GEMV_MAX_N ? N - n0 : ZB_BF16_GEMV_MAX_N;
            float *o = out + (size_t)n0 * OC;
            if (nn == N) { bf16_gemv(o, inp, W, nn, C, OC, impl); continue; }
            /* rows of out for inputs n0.. are contiguous: [nn, OC] with stride OC */
            bf16_gemv(o, inp + (size_t)n0 * C, W, nn, C, OC, impl);
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
