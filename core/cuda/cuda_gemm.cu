/* cuda_gemm.cu — matrix products on cuBLAS (row-major wrappers), bf16 conversions, the linear
 * layers of ops.h / linear.h. See cuda_ops.h and, for the precision modes, cuda_common.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"

/* ---- conversions ------------------------------------------------------------------------ */

__global__ void k_f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void k_bf16_to_f32(float *dst, const __nv_bfloat16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

extern "C" void zb_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
    if (!n) return;
    k_f32_to_bf16<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>((__nv_bfloat16 *)dst, src, n);
    ZB_CUDA_LAUNCHED("f32_to_bf16");
}

extern "C" void zb_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    if (!n) return;
    k_bf16_to_f32<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(dst, (const __nv_bfloat16 *)src, n);
    ZB_CUDA_LAUNCHED("bf16_to_f32");
}

/* dst [groups * rep, per] float32: row h = src's row h / rep (float32, or bf16 widened) */
__global__ void k_expand_groups(float *dst, const float *s32, const __nv_bfloat16 *s16, int rep, size_t per, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t h = i / per, si = (h / rep) * per + (i - h * per);
        dst[i] = s16 ? __bfloat162float(s16[si]) : s32[si];
    }
}

extern "C" void zb_cuda_expand_groups(float *dst, const void *src, int src_bf16, int groups, int rep, size_t per) {
    size_t n = (size_t)groups * rep * per;
    if (!n) return;
    k_expand_groups<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(
        dst, src_bf16 ? NULL : (const float *)src, src_bf16 ? (const __nv_bfloat16 *)src : NULL, rep, per, n);
    ZB_CUDA_LAUNCHED("expand_groups");
}

/* ---- the one cuBLAS entry --------------------------------------------------------------- */

/* Row-major C[M,N] = alpha op(A) op(B) + beta C over `batch` problems. cuBLAS is column-major:
 * a row-major X [r, c] with leading dimension ld is the column-major X^T, so C^T = op(B)^T op(A)^T
 * is one column-major product with the operands swapped. */
static void gemm_ex(int tA, int tB, int M, int N, int K, float alpha, const void *A, cudaDataType_t at, int lda,
                    long long sA, const void *B, cudaDataType_t bt, int ldb, long long sB, float beta, float *C,
                    int ldc, long long sC, int batch, cublasComputeType_t ct) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    cublasOperation_t oA = tA ? CUBLAS_OP_T : CUBLAS_OP_N, oB = tB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        ZB_CUBLAS(cublasGemmEx(zb_cuda_cublas(), oB, oA, N, M, K, &alpha, B, bt, ldb, A, at, lda, &beta, C,
                               CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT));
    else
        ZB_CUBLAS(cublasGemmStridedBatchedEx(zb_cuda_cublas(), oB, oA, N, M, K, &alpha, B, bt, ldb, sB, A, at, lda,
                                             sA, &beta, C, CUDA_R_32F, ldc, sC, batch, ct, CUBLAS_GEMM_DEFAULT));
}

/* Elements spanned by `batch` stored matrices of rows x cols, leading dimension ld, stride s. */
static size_t span(int rows, int cols, int ld, long long s, int batch) {
    size_t one = (size_t)(rows - 1) * ld + cols;
    return (size_t)(batch - 1) * (size_t)s + one;
}

extern "C" void zb_cuda_gemm_strided(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                                     long long sA, const float *B, int ldb, long long sB, float beta, float *C,
                                     int ldc, long long sC, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    if (K <= 0) {   /* an empty sum: C = beta C */
        for (int i = 0; i < batch; i++)
            for (int r = 0; r < M; r++) zb_cuda_scale(C + i * sC + (size_t)r * ldc, beta, (size_t)N);
        return;
    }
    if (zb_cuda_precision() == ZB_PREC_F32) {
        gemm_ex(tA, tB, M, N, K, alpha, A, CUDA_R_32F, lda, sA, B, CUDA_R_32F, ldb, sB, beta, C, ldc, sC, batch,
                CUBLAS_COMPUTE_32F_PEDANTIC);
    } else if (zb_cuda_bf16_gemm_impl() == ZB_BF16_GEMM_FAST) {
        gemm_ex(tA, tB, M, N, K, alpha, A, CUDA_R_32F, lda, sA, B, CUDA_R_32F, ldb, sB, beta, C, ldc, sC, batch,
                CUBLAS_COMPUTE_32F_FAST_16BF);
    } else {   /* CONVERT: both operands rounded to bf16 (same layout) in scratch */
        size_t na = tA ? span(K, M, lda, sA, batch) : span(M, K, lda, sA, batch);
        size_t nb = tB ? span(N, K, ldb, sB, batch) : span(K, N, ldb, sB, batch);
        uint16_t *a16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, na * 2);
        uint16_t *b16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_B, nb * 2);
        if (!a16 || !b16) return;
        zb_cuda_f32_to_bf16(a16, A, na);
        zb_cuda_f32_to_bf16(b16, B, nb);
        gemm_ex(tA, tB, M, N, K, alpha, a16, CUDA_R_16BF, lda, sA, b16, CUDA_R_16BF, ldb, sB, beta, C, ldc, sC,
                batch, CUBLAS_COMPUTE_32F);
    }
}

extern "C" void zb_cuda_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                             const float *B, int ldb, float beta, float *C, int ldc) {
    zb_cuda_gemm_strided(tA, tB, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

extern "C" void zb_cuda_gemm_bf16_native(int M, int N, int K, const void *A, const void *B, float *C) {
    gemm_ex(0, 1, M, N, K, 1.0f, A, CUDA_R_16BF, K, 0, B, CUDA_R_16BF, K, 0, 0.0f, C, N, 0, 1, CUBLAS_COMPUTE_32F);
}

/* ---- bf16 copies of weight matrices (CONVERT) ---------------------------------------------
 * Keyed by the float32 address and length; converted again when zb_cuda_weights_version moved
 * (the optimizer changed the weights) or the slot is taken by another matrix. */
#define ZB_SHADOWS 2048
typedef struct { const float *w, *w2; size_t n; unsigned long long version; uint16_t *b; size_t cap; } shadow_t;
static shadow_t g_shadow[ZB_SHADOWS];

/* n values of W, then (W2 != NULL) n values of W2: one stacked copy [W; W2] */
static void shadow_fill(uint16_t *b, const float *W, const float *W2, size_t n) {
    zb_cuda_f32_to_bf16(b, W, n);
    if (W2) zb_cuda_f32_to_bf16(b + n, W2, n);
}

static const uint16_t *weight_bf16_2(const float *W, const float *W2, size_t n) {
    size_t hsh = ((uintptr_t)W >> 8) * 0x9E3779B97F4A7C15ull;
    unsigned long long ver = zb_cuda_weights_version();
    shadow_t *free_slot = NULL;
    for (int probe = 0; probe < 16; probe++) {
        shadow_t *s = &g_shadow[(hsh + probe) % ZB_SHADOWS];
        if (s->w == W && s->w2 == W2 && s->n == n) {
            if (s->version != ver) {
                shadow_fill(s->b, W, W2, n);
                s->version = ver;
            }
            return s->b;
        }
        if (!s->w && !free_slot) free_slot = s;
    }
    shadow_t *s = free_slot ? free_slot : &g_shadow[hsh % ZB_SHADOWS];   /* evict the home slot */
    size_t tot = W2 ? 2 * n : n;
    if (s->cap < tot) {
        cudaFree(s->b);
        s->b = NULL;
        s->cap = 0;
        if (cudaMalloc((void **)&s->b, tot * 2) != cudaSuccess) {
            cudaGetLastError();
            s->w = NULL;
            return NULL;   /* no room: the caller converts into scratch */
        }
        s->cap = tot;
    }
    s->w = W;
    s->w2 = W2;
    s->n = n;
    s->version = ver;
    shadow_fill(s->b, W, W2, n);
    return s->b;
}

static const uint16_t *weight_bf16(const float *W, size_t n) { return weight_bf16_2(W, NULL, n); }

/* out[M, N] (+)= A[M, K] @ W^T (transW) or A @ W (W [K, N]) with W a weight matrix: the
 * activation rounded to bf16 in scratch, the weight's cached bf16 copy (CONVERT mode). */
static void gemm_weight_bf16(int tW, int M, int N, int K, const float *A, const float *W, size_t wn, float beta,
                             float *C) {
    const uint16_t *w16 = weight_bf16(W, wn);
    uint16_t *a16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, (size_t)M * K * 2);
    if (!a16) return;
    if (!w16) {   /* no memory for a copy: convert into scratch each time */
        uint16_t *b16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_B, wn * 2);
        if (!b16) return;
        zb_cuda_f32_to_bf16(b16, W, wn);
        w16 = b16;
    }
    zb_cuda_f32_to_bf16(a16, A, (size_t)M * K);
    gemm_ex(0, tW, M, N, K, 1.0f, a16, CUDA_R_16BF, K, 0, w16, CUDA_R_16BF, tW ? K : N, 0, beta, C, N, 0, 1,
            CUBLAS_COMPUTE_32F);
}

static int convert_mode(void) {
    return zb_cuda_precision() == ZB_PREC_BF16 && zb_cuda_bf16_gemm_impl() == ZB_BF16_GEMM_CONVERT;
}

/* ---- linear layers ------------------------------------------------------------------------ */

__global__ void k_add_bias(float *out, const float *bias, size_t N, int OC) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N * OC; i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % OC];
}

/* column sums of dout [N, OC] into dbias: blocks of 256 columns x a slice of rows, atomics */
__global__ void k_colsum(float *dbias, const float *dout, int N, int OC, int rows_per) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float s = 0;
    for (int r = r0; r < r1; r++) s += dout[(size_t)r * OC + o];
    atomicAdd(&dbias[o], s);
}

static void colsum_add(float *dst, const float *src, int N, int C) {
    int rows_per = 64;
    dim3 grid((C + 255) / 256, (N + rows_per - 1) / rows_per);
    k_colsum<<<grid, 256, 0, zb_cuda_stream()>>>(dst, src, N, C, rows_per);
    ZB_CUDA_LAUNCHED("colsum");
}

extern "C" void zb_cuda_matmul_forward(float *out, const float *inp, const float *W, const float *bias, int N,
                                       int C, int OC) {
    if (convert_mode() && N > 0 && OC > 0 && C > 0) gemm_weight_bf16(1, N, OC, C, inp, W, (size_t)OC * C, 0.0f, out);
    else zb_cuda_gemm(0, 1, N, OC, C, 1.0f, inp, C, W, C, 0.0f, out, OC);
    if (bias) {
        k_add_bias<<<zb_cuda_blocks((size_t)N * OC, 256), 256, 0, zb_cuda_stream()>>>(out, bias, (size_t)N, OC);
        ZB_CUDA_LAUNCHED("add_bias");
    }
}

/* CONVERT mode with both gradients: dout rounded to bf16 once for the two products (the separate
 * paths below round it twice: for the head's [N, V] gradient 1.5 bytes per logit each time); the
 * same cuBLAS calls on the same bf16 operands as those paths. 0: not taken (ZB_CUDA_BWD_SHARED=0,
 * another mode, no room for the weight's bf16 copy). */
static int g_bwd_shared_off = -1;   /* -1: from the environment at the first use */
extern "C" void zb_cuda_matmul_bwd_shared(int on) { g_bwd_shared_off = !on; }
static int matmul_backward_shared(float *dinp, float *dW, const float *dout, const float *inp, const float *W, int N,
                                  int C, int OC, const uint16_t *dout16, const uint16_t *inp16 = NULL) {
    if (g_bwd_shared_off < 0) {
        const char *e = getenv("ZB_CUDA_BWD_SHARED");
        g_bwd_shared_off = e && !strcmp(e, "0");
    }
    if (g_bwd_shared_off || !convert_mode() || !dinp || !dW || N <= 0 || C <= 0 || OC <= 0) return 0;
    const uint16_t *w16 = weight_bf16(W, (size_t)OC * C);
    if (!w16) return 0;
    /* dout16: dout already rounded, in this scratch (zb_cuda_dout16) */
    uint16_t *d16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, (size_t)N * OC * 2);
    /* inp16: inp already rounded (zb_cuda_matmul_backward_in16) */
    uint16_t *i16 = inp16 ? (uint16_t *)inp16 : (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_B, (size_t)N * C * 2);
    if (!d16 || !i16) return 1;   /* the error is recorded */
    if (dout16 && dout16 != d16) {   /* the scratch moved since the loss wrote it: the gradient is lost */
        zb_cuda_note_error2("head backward", "the loss's bf16 logits gradient was overwritten (scratch regrown)",
                            __FILE__, __LINE__);
        return 1;
    }
    if (!dout16) zb_cuda_f32_to_bf16(d16, dout, (size_t)N * OC);
    /* dinp += dout @ W (gemm_weight_bf16's call) */
    gemm_ex(0, 0, N, C, OC, 1.0f, d16, CUDA_R_16BF, OC, 0, w16, CUDA_R_16BF, C, 0, 1.0f, dinp, C, 0, 1,
            CUBLAS_COMPUTE_32F);
    /* dW += dout^T @ inp (zb_cuda_gemm_strided's CONVERT call) */
    if (!inp16) zb_cuda_f32_to_bf16(i16, inp, (size_t)N * C);
    gemm_ex(1, 0, OC, C, N, 1.0f, d16, CUDA_R_16BF, OC, 0, i16, CUDA_R_16BF, C, 0, 1.0f, dW, C, 0, 1,
            CUBLAS_COMPUTE_32F);
    return 1;
}

/* An output gradient handed over in bf16 by the kernels that make it (the head's by the loss, the
 * Mamba2 in_proj's by the mixer's backward): dout's address and size, and the GEMM_A scratch it lies
 * in (the address the shared path rounds dout into). Taken by the next zb_cuda_matmul_backward of
 * that dout; the float32 dout is not written. */
static struct {
    const float *dout;
    size_t n;
    const uint16_t *d16;
} g_head16;

static int g_dlogits16 = -1;   /* -1: from the environment at the first use */
extern "C" void zb_cuda_dlogits16(int on) { g_dlogits16 = on < 0 ? -1 : on != 0; }
extern "C" int zb_cuda_dlogits16_on(void) { return zb_cuda_env_switch(&g_dlogits16, "ZB_CUDA_DLOGITS16", "0"); }

extern "C" uint16_t *zb_cuda_dout16(const float *dout, int N, int OC) {
    g_head16.dout = NULL;
    if (g_bwd_shared_off < 0) {
        const char *e = getenv("ZB_CUDA_BWD_SHARED");
        g_bwd_shared_off = e && !strcmp(e, "0");
    }
    if (g_bwd_shared_off || !convert_mode() || N <= 0 || OC <= 0) return NULL;
    size_t n = (size_t)N * OC;
    uint16_t *d16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, n * 2);
    if (!d16) return NULL;
    g_head16.dout = dout;
    g_head16.n = n;
    g_head16.d16 = d16;
    return d16;
}

/* the bf16 dout of zb_cuda_dout16 if it is this one (then forgotten), else NULL */
static const uint16_t *take_head16(const float *dout, size_t n) {
    if (!g_head16.dout || g_head16.dout != dout || g_head16.n != n) {
        g_head16.dout = NULL;
        return NULL;
    }
    g_head16.dout = NULL;
    return g_head16.d16;
}

extern "C" void zb_cuda_matmul_backward(float *dinp, float *dW, float *dbias, const float *dout, const float *inp,
                                        const float *W, int N, int C, int OC) {
    const uint16_t *h16 = take_head16(dout, (size_t)N * OC);
    if (h16) {
        /* the loss wrote dout only in bf16, where the shared path rounds it: that path without the
         * rounding, or (a bias, no room for the weight's copy) dout widened back for the paths below */
        if (!dbias && matmul_backward_shared(dinp, dW, dout, inp, W, N, C, OC, h16)) return;
        zb_cuda_bf16_to_f32((float *)dout, h16, (size_t)N * OC);
    }
    if (matmul_backward_shared(dinp, dW, dout, inp, W, N, C, OC, NULL)) {
        if (dbias) colsum_add(dbias, dout, N, OC);
        return;
    }
    if (dinp) {   /* += dout @ W */
        if (convert_mode() && N > 0 && OC > 0 && C > 0) gemm_weight_bf16(0, N, C, OC, dout, W, (size_t)OC * C, 1.0f, dinp);
        else zb_cuda_gemm(0, 0, N, C, OC, 1.0f, dout, OC, W, C, 1.0f, dinp, C);
    }
    if (dW) zb_cuda_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dW, C);       /* += dout^T @ inp */
    if (dbias) colsum_add(dbias, dout, N, OC);
}

/* The CONVERT mode's products with the input activation already in bf16 (written so by the kernel
 * that made it): the calls of zb_cuda_matmul_forward / _backward on the same bf16 operands, without
 * the activation's conversion (the same bits). 0: not the CONVERT mode (nothing done). */
extern "C" int zb_cuda_matmul_forward_in16(float *out, const uint16_t *in16, const float *W, int N, int C, int OC) {
    if (!convert_mode()) return 0;
    if (N <= 0 || C <= 0 || OC <= 0) return 1;
    const uint16_t *w16 = weight_bf16(W, (size_t)OC * C);
    if (!w16) {   /* no memory for a copy: converted into scratch (as gemm_weight_bf16) */
        uint16_t *b16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_B, (size_t)OC * C * 2);
        if (!b16) return 1;
        zb_cuda_f32_to_bf16(b16, W, (size_t)OC * C);
        w16 = b16;
    }
    gemm_ex(0, 1, N, OC, C, 1.0f, in16, CUDA_R_16BF, C, 0, w16, CUDA_R_16BF, C, 0, 0.0f, out, OC, 0, 1,
            CUBLAS_COMPUTE_32F);
    return 1;
}

extern "C" int zb_cuda_matmul_backward_in16(float *dinp, float *dW, const float *dout, const uint16_t *in16,
                                            const float *W, int N, int C, int OC) {
    if (!convert_mode()) return 0;
    if (N <= 0 || C <= 0 || OC <= 0) return 1;
    if (matmul_backward_shared(dinp, dW, dout, NULL, W, N, C, OC, take_head16(dout, (size_t)N * OC), in16)) return 1;
    /* the shared path not taken (ZB_CUDA_BWD_SHARED=0, no dinp, no room for the weight's copy): the
     * input widened back to float32 for zb_cuda_matmul_backward */
    float *in32 = (float *)zb_cuda_scratch(ZB_WS_MISC, (size_t)N * C * sizeof(float));
    if (!in32) return 1;
    zb_cuda_bf16_to_f32(in32, in16, (size_t)N * C);
    zb_cuda_matmul_backward(dinp, dW, NULL, dout, in32, W, N, C, OC);
    return 1;
}

/* ---- the training MLP with bf16 activations (cuda_ops.h) -----------------------------------
 * Each activation that only feeds products is written in bf16 by the kernel that makes it: per
 * layer at N = 16384, F = 8192 this drops the float32 gate / up / h tensors (512 MB each) and
 * their conversion passes. The residual stream, its gradient, the norm statistics and every
 * weight gradient stay float32. */

/* Row-major C[M,N] = op(A) op(B) + beta C, bf16 A and B, C float32 or bf16 (ct), float32 sums. */
static void gemm16(int tA, int tB, int M, int N, int K, const void *A, int lda, const void *B, int ldb, float beta,
                   void *C, cudaDataType_t ct, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    const float one = 1.0f;
    ZB_CUBLAS(cublasGemmEx(zb_cuda_cublas(), tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                           &one, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, ct, ldc, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT));
}

static int g_mlp_bf16 = -1;   /* -1: from the environment at the first use */
extern "C" void zb_cuda_mlp_bf16(int on) { g_mlp_bf16 = on < 0 ? -1 : on != 0; }
static int mlp_bf16_on(int N, int d, int F) {
    if (g_mlp_bf16 < 0) {
        const char *e = getenv("ZB_CUDA_MLP_BF16");
        g_mlp_bf16 = !(e && !strcmp(e, "0"));
    }
    return g_mlp_bf16 && convert_mode() && N > 0 && d > 0 && F > 0;
}

/* The bf16 copies: gate and up stacked [Wg; Wu] = [2F, d] (one product for both), and down: the
 * cached ones, or (no room for a copy) converted into scratch, so that a forward and its backward
 * always take the same path (the saved activations' format follows mlp_bf16_on alone). 0: no
 * memory (the error is recorded). */
static int mlp_weights(const uint16_t **wgu, const uint16_t **wd, const float *Wg, const float *Wu, const float *Wd,
                       size_t dF) {
    *wgu = weight_bf16_2(Wg, Wu, dF);
    *wd = weight_bf16(Wd, dF);
    if (*wgu && *wd && *wgu == weight_bf16_2(Wg, Wu, dF)) return 1;   /* the second did not evict the first */
    uint16_t *b = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_B, 3 * dF * 2);
    if (!b) return 0;
    shadow_fill(b, Wg, Wu, dF);
    zb_cuda_f32_to_bf16(b + 2 * dF, Wd, dF);
    *wgu = b;
    *wd = b + 2 * dF;
    return 1;
}

extern "C" int zb_cuda_mlp_forward_bf16(float *out, float *ln, float *rstd, float *g, float *u, float *h,
                                        const float *x, const float *norm_w, const float *Wg, const float *Wu,
                                        const float *Wd, int N, int d, int F, float eps) {
    (void)u;   /* g holds [g | u] */
    if (!mlp_bf16_on(N, d, F)) return 0;
    size_t dF = (size_t)d * F;
    const uint16_t *wgu, *wd;
    if (!mlp_weights(&wgu, &wd, Wg, Wu, Wd, dF)) return 1;   /* the error is recorded */
    uint16_t *ln16 = (uint16_t *)ln, *gu16 = (uint16_t *)g, *h16 = (uint16_t *)h;
    zb_cuda_rmsnorm_forward_bf16(ln16, rstd, x, norm_w, N, d, eps);
    gemm16(0, 1, N, 2 * F, d, ln16, d, wgu, d, 0.0f, gu16, CUDA_R_16BF, 2 * F);   /* [g | u] = ln [Wg; Wu]^T */
    zb_cuda_swiglu_forward_bf16(h16, gu16, N, F);
    gemm16(0, 1, N, d, F, h16, F, wd, F, 0.0f, out, CUDA_R_32F, d);                 /* out = h Wd^T */
    return 1;
}

extern "C" int zb_cuda_mlp_backward_bf16(float *dln, float *dWg, float *dWu, float *dWd, const float *dout,
                                         const float *ln, const float *g, const float *u, const float *h,
                                         const float *Wg, const float *Wu, const float *Wd, float *dh, float *dg,
                                         float *du, int N, int d, int F) {
    (void)u; (void)du;   /* g holds [g | u], dg [dg | du] */
    if (!mlp_bf16_on(N, d, F)) return 0;
    size_t dF = (size_t)d * F;
    const uint16_t *wgu, *wd;
    if (!mlp_weights(&wgu, &wd, Wg, Wu, Wd, dF)) return 1;
    const uint16_t *ln16 = (const uint16_t *)ln, *gu16 = (const uint16_t *)g, *h16 = (const uint16_t *)h;
    uint16_t *dh16 = (uint16_t *)dh, *dgu16 = (uint16_t *)dg;
    uint16_t *d16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, (size_t)N * d * 2);
    if (!d16) return 1;   /* the error is recorded */
    zb_cuda_f32_to_bf16(d16, dout, (size_t)N * d);
    gemm16(0, 0, N, F, d, d16, d, wd, F, 0.0f, dh16, CUDA_R_16BF, F);            /* dh = dout Wd */
    if (dWd) gemm16(1, 0, d, F, N, d16, d, h16, F, 1.0f, dWd, CUDA_R_32F, F);   /* dWd += dout^T h */
    zb_cuda_swiglu_backward_bf16(dgu16, dh16, gu16, N, F);
    gemm16(0, 0, N, d, 2 * F, dgu16, 2 * F, wgu, d, 0.0f, dln, CUDA_R_32F, d);   /* dln = [dg | du] [Wg; Wu] */
    if (dWg && dWu == dWg + dF)   /* [dWg; dWu] += [dg | du]^T ln, one product where they are stacked */
        gemm16(1, 0, 2 * F, d, N, dgu16, 2 * F, ln16, d, 1.0f, dWg, CUDA_R_32F, d);
    else {
        if (dWg) gemm16(1, 0, F, d, N, dgu16, 2 * F, ln16, d, 1.0f, dWg, CUDA_R_32F, d);
        if (dWu) gemm16(1, 0, F, d, N, dgu16 + F, 2 * F, ln16, d, 1.0f, dWu, CUDA_R_32F, d);
    }
    return 1;
}

extern "C" int zb_cuda_mlp_linear_forward_bf16(float *out, float *g, float *u, const float *inp, zb_wt Wg, zb_wt Wu,
                                               zb_wt Wd, int N, int C, int F, int OC) {
    if (g_mlp_bf16 < 0) mlp_bf16_on(1, 1, 1);   /* reads the environment */
    if (!g_mlp_bf16 || !Wg.bf16 || !Wu.bf16 || !Wd.bf16 || N < 1024 || C <= 0 || F <= 0 || OC <= 0) return 0;
    uint16_t *x16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, (size_t)N * C * 2);
    if (!x16) return 1;   /* the error is recorded */
    uint16_t *gu16 = (uint16_t *)g, *h16 = (uint16_t *)u;
    zb_cuda_f32_to_bf16(x16, inp, (size_t)N * C);
    if (Wu.bf16 == Wg.bf16 + (size_t)F * C)   /* stacked [Wg; Wu] (zb_model's layout): one product */
        gemm16(0, 1, N, 2 * F, C, x16, C, Wg.bf16, C, 0.0f, gu16, CUDA_R_16BF, 2 * F);
    else {
        gemm16(0, 1, N, F, C, x16, C, Wg.bf16, C, 0.0f, gu16, CUDA_R_16BF, 2 * F);
        gemm16(0, 1, N, F, C, x16, C, Wu.bf16, C, 0.0f, gu16 + F, CUDA_R_16BF, 2 * F);
    }
    zb_cuda_swiglu_forward_bf16(h16, gu16, N, F);
    gemm16(0, 1, N, OC, F, h16, F, Wd.bf16, F, 0.0f, out, CUDA_R_32F, OC);
    return 1;
}

/* ---- skinny bf16 products (decode of 9..LT_MAX_ROWS rows): the algorithm timed once per shape ----
 * At batch 48 the decode step's products (out[N, OC] = x[N, C] W^T, bf16 W read once) are bound by
 * the weights' bytes, and cuBLAS's first choice for N = 48 read them at ~2.6-3.0 TB/s of the
 * H200's 4.2 (S4M1). At the first eager use of a shape (N, C, OC) cuBLASLt's heuristic candidates
 * and the cublasGemmEx default are each timed (1 warm-up + LT_REPS runs on the stream); the
 * fastest Lt algorithm is kept when it beats the default, else the default stays. During a CUDA
 * Graph capture nothing is timed (an untuned shape takes the default). ZB_CUDA_GEMM_TUNE=0 (or
 * zb_cuda_gemm_tune(0)) keeps cublasGemmEx. Another algorithm sums in another order: the result
 * stays within the same bf16 / float32 bounds (test_cuda_ops). */
#define LT_MAX_ROWS 64   /* decode batches; S4R2: tuning the 256-row prefill chunks inside a timed
                            * batch-1 prefill cost it 60% (a one-time ~0.1 s) */
#define LT_SHAPES 128
#define LT_CAND 12
#define LT_REPS 5
typedef struct {
    int N, C, OC, use;   /* use: 1 the Lt algorithm, 0 cublasGemmEx */
    unsigned align;      /* the pointers' alignment (bytes, <= 256) the algorithm was chosen for */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    size_t ws;
    float ms_lt, ms_ex;
} lt_shape;
static lt_shape g_lt[LT_SHAPES];
static int g_lt_n = 0, g_lt_on = -1;

extern "C" void zb_cuda_gemm_tune(int on) { g_lt_on = on < 0 ? -1 : on != 0; }

extern "C" void zb_cuda_gemm_tune_reset(void) {
    for (int i = 0; i < g_lt_n; i++) {
        cublasLtMatmulDescDestroy(g_lt[i].op);
        cublasLtMatrixLayoutDestroy(g_lt[i].a);
        cublasLtMatrixLayoutDestroy(g_lt[i].b);
        cublasLtMatrixLayoutDestroy(g_lt[i].c);
    }
    g_lt_n = 0;
}

/* the choice made for (N, C, OC): 1 Lt, 0 the default, -1 not tuned (for the benchmark) */
extern "C" int zb_cuda_gemm_tune_choice(int N, int C, int OC, float *ms_lt, float *ms_ex) {
    for (int i = 0; i < g_lt_n; i++)
        if (g_lt[i].N == N && g_lt[i].C == C && g_lt[i].OC == OC) {
            if (ms_lt) *ms_lt = g_lt[i].ms_lt;
            if (ms_ex) *ms_ex = g_lt[i].ms_ex;
            return g_lt[i].use;
        }
    return -1;
}

static cublasStatus_t lt_run(const lt_shape *e, const cublasLtMatmulAlgo_t *algo, size_t ws, float *out,
                             const uint16_t *x16, const uint16_t *W) {
    const float one = 1.0f, zero = 0.0f;
    size_t wsb = 0;
    void *wsp = zb_cuda_cublas_workspace(&wsb);
    if (ws > wsb) return CUBLAS_STATUS_NOT_SUPPORTED;
    /* column-major: D[OC, N] = W^T(op T of the stored [C, OC]) x16[C, N], i.e. row-major out = x W^T */
    return cublasLtMatmul(zb_cuda_cublaslt(), e->op, &one, W, e->a, x16, e->b, &zero, out, e->c, out, e->c, algo, wsp, ws,
                          zb_cuda_stream());
}

static void ex_run(float *out, const uint16_t *x16, const uint16_t *W, int N, int C, int OC) {
    gemm_ex(0, 1, N, OC, C, 1.0f, x16, CUDA_R_16BF, C, 0, W, CUDA_R_16BF, C, 0, 0.0f, out, OC, 0, 1,
            CUBLAS_COMPUTE_32F);
}

/* ms per run of f (the stream's events, after one warm-up) */
template <typename F> static float lt_time(F f) {
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) != cudaSuccess) return INFINITY;
    if (cudaEventCreate(&e1) != cudaSuccess) { cudaEventDestroy(e0); return INFINITY; }
    float ms = INFINITY;
    if (f()) {
        cudaEventRecord(e0, zb_cuda_stream());
        int ok = 1;
        for (int r = 0; r < LT_REPS && ok; r++) ok = f();
        cudaEventRecord(e1, zb_cuda_stream());
        if (ok && cudaEventSynchronize(e1) == cudaSuccess) {
            cudaEventElapsedTime(&ms, e0, e1);
            ms /= LT_REPS;
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms;
}

/* the largest power of two <= 256 dividing every pointer (cuBLASLt's algorithms state theirs) */
static unsigned lt_align(const void *a, const void *b, const void *c) {
    uintptr_t u = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | 256;
    return (unsigned)(u & (~u + 1));
}

/* the tuned entry of (N, C, OC), made now if the stream is not being captured; NULL: none */
static const lt_shape *lt_entry(float *out, const uint16_t *x16, const uint16_t *W, int N, int C, int OC) {
    for (int i = 0; i < g_lt_n; i++)
        if (g_lt[i].N == N && g_lt[i].C == C && g_lt[i].OC == OC) return &g_lt[i];
    if (g_lt_n >= LT_SHAPES) return NULL;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(zb_cuda_stream(), &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
        cudaGetLastError();
        return NULL;
    }
    if (zb_cuda_status() != ZB_OK) return NULL;   /* an earlier error: no timing on a broken stream */
    lt_shape e;
    memset(&e, 0, sizeof e);
    e.N = N; e.C = C; e.OC = OC;
    cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    if (cublasLtMatmulDescCreate(&e.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return NULL;
    cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA);
    cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB);
    int ok = cublasLtMatrixLayoutCreate(&e.a, CUDA_R_16BF, C, OC, C) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&e.b, CUDA_R_16BF, C, N, C) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&e.c, CUDA_R_32F, OC, N, OC) == CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t res[LT_CAND];
    int nres = 0;
    if (ok) {
        size_t wsb = 0;
        zb_cuda_cublas_workspace(&wsb);
        cublasLtMatmulPreference_t pref;
        ok = cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
        if (ok) {
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
            e.align = lt_align(out, x16, W);
            uint32_t al = e.align;
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al);
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
            if (cublasLtMatmulAlgoGetHeuristic(zb_cuda_cublaslt(), e.op, e.a, e.b, e.c, e.c, pref, LT_CAND, res, &nres) !=
                CUBLAS_STATUS_SUCCESS)
                nres = 0;
            cublasLtMatmulPreferenceDestroy(pref);
        }
    }
    e.ms_ex = lt_time([&] { ex_run(out, x16, W, N, C, OC); return zb_cuda_status() == ZB_OK; });
    e.ms_lt = INFINITY;
    for (int k = 0; ok && k < nres; k++) {
        if (res[k].state != CUBLAS_STATUS_SUCCESS) continue;
        float ms = lt_time([&] { return lt_run(&e, &res[k].algo, res[k].workspaceSize, out, x16, W) == CUBLAS_STATUS_SUCCESS; });
        if (ms < e.ms_lt) { e.ms_lt = ms; e.algo = res[k].algo; e.ws = res[k].workspaceSize; }
    }
    cudaGetLastError();
    e.use = ok && e.ms_lt < e.ms_ex;
    g_lt[g_lt_n++] = e;
    return &g_lt[g_lt_n - 1];
}

/* out[N, OC] = x16 W^T, bf16 operands, float32 sums: the tuned algorithm where there is one */
static void bf16_product(float *out, const uint16_t *x16, const uint16_t *W, int N, int C, int OC) {
    if (g_lt_on < 0) {
        const char *e = getenv("ZB_CUDA_GEMM_TUNE");
        g_lt_on = !(e && !strcmp(e, "0"));
    }
    if (g_lt_on && N > 8 && N <= LT_MAX_ROWS) {
        const lt_shape *e = lt_entry(out, x16, W, N, C, OC);
        if (e && e->use && lt_align(out, x16, W) >= e->align && lt_run(e, &e->algo, e->ws, out, x16, W) == CUBLAS_STATUS_SUCCESS)
            return;
    }
    ex_run(out, x16, W, N, C, OC);
}

extern "C" void zb_cuda_linear_forward(float *out, const float *inp, zb_wt W, int N, int C, int OC) {
    if (W.f32) { zb_cuda_matmul_forward(out, inp, W.f32, NULL, N, C, OC); return; }
    if (zb_cuda_gemv_ok(inp, W.bf16, N, C)) { zb_cuda_gemv_bf16(out, inp, W.bf16, N, C, OC); return; }   /* decode */
    uint16_t *x16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, (size_t)N * C * 2);
    if (!x16) return;
    zb_cuda_f32_to_bf16(x16, inp, (size_t)N * C);
    bf16_product(out, x16, W.bf16, N, C, OC);
}

extern "C" void zb_cuda_linear_add_rmsnorm(float *out, const float *inp, zb_wt W, int N, int C, int OC, float *x,
                                           float *ln, const float *w, float eps) {
    if (!W.f32 && zb_cuda_gemv_bf16_add_rmsnorm(out, inp, W.bf16, N, C, OC, x, ln, w, eps)) return;
    zb_cuda_linear_forward(out, inp, W, N, C, OC);
    zb_cuda_add_rmsnorm(x, out, ln, w, N, OC, eps);
}

extern "C" void zb_cuda_linear_forward3(float *out0, float *out1, float *out2, const float *inp, zb_wt W0, zb_wt W1,
                                        zb_wt W2, int N, int C, int OC0, int OC1, int OC2) {
    if (W0.bf16 && W1.bf16 && W2.bf16 && zb_cuda_gemv_ok(inp, W0.bf16, N, C) && zb_cuda_gemv_ok(inp, W1.bf16, N, C) &&
        zb_cuda_gemv_ok(inp, W2.bf16, N, C)) {
        zb_gemv_seg s[3] = {{W0.bf16, out0, OC0}, {W1.bf16, out1, OC1}, {W2.bf16, out2, OC2}};
        zb_cuda_gemv_bf16_multi(inp, N, C, 3, s);
        return;
    }
    zb_cuda_linear_forward(out0, inp, W0, N, C, OC0);
    zb_cuda_linear_forward(out1, inp, W1, N, C, OC1);
    zb_cuda_linear_forward(out2, inp, W2, N, C, OC2);
}

extern "C" void zb_cuda_swiglu_linear_forward(float *h, float *u, const float *inp, zb_wt Wg, zb_wt Wu, int N, int C,
                                              int F) {
    if (Wg.bf16 && Wu.bf16 && zb_cuda_gemv_ok(inp, Wg.bf16, N, C) && zb_cuda_gemv_ok(inp, Wu.bf16, N, C)) {
        zb_cuda_gemv_bf16_swiglu(h, inp, Wg.bf16, Wu.bf16, N, C, F);
        return;
    }
    zb_cuda_linear_forward(h, inp, Wg, N, C, F);
    zb_cuda_linear_forward(u, inp, Wu, N, C, F);
    zb_cuda_swiglu_forward(h, h, u, (size_t)N * F);
}
