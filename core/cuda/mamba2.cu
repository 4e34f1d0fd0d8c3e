/* mamba2.cu — the Mamba2 mixer on CUDA, float32: in_proj / out_proj on cuBLAS, the conv, dt,
 * gated-norm kernels and their backward here, the SSD scan in mamba2_ssd.cu (SPEC.md §4, the
 * semantics of core/mamba2.c; formulas and derivations are in its comments).
 *
 * Parallelisation:
 *  k_dt_fwd / k_dt_bwd          one thread per (row, head).
 *  k_conv_fwd                   one thread per (row, channel): K taps over the sequence's rows
 *                               or, before t = 0, the conv state (prefill / decode).
 *  k_conv_state_update          one thread per (sequence, channel), after k_conv_fwd has read it.
 *  k_conv_bwd_pre / _in         one thread per (row, channel): dpre = dpost silu'(pre), then
 *                               din[t] = sum_k w[k] dpre[t + K-1-k] inside the sequence (a gather,
 *                               no atomics).
 *  k_gnorm_fwd / _bwd           one warp per (row, norm group), a shuffle reduction of the group.
 *  k_colsum_part / _fin         the parameter gradients that sum over rows (norm weight, dt bias,
 *                               conv weight and bias): 32 columns x 8 row lanes per block over a
 *                               slice of rows, then a fixed-order sum of the slices (deterministic).
 *  k_linear_bf16                bf16 weight views off the backend's stream: the shared 64 x 64 tile product
 *                               of mamba2_tile.cuh with the weights widened on load.
 * The forward saves in acts what the CPU saves (proj, conv input and output, dt, SSD y, rstd,
 * gated-norm output, chunk start states) plus the SSD coefficients of mamba2_ssd.cu; the backward
 * recomputes g = y silu(z) and the L x L chunk products. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "cuda_ops.h"
#include "mamba2_cuda.h"
#include "mamba2_tile.cuh"

/* ---- handle, stream, checks -------------------------------------------------------------------- */

static cublasHandle_t s_blas;
static cudaStream_t s_stream;

extern "C" void zb_cuda_mamba2_set_blas(void *cublas_handle, void *stream) {
    s_blas = (cublasHandle_t)cublas_handle;
    s_stream = (cudaStream_t)stream;
}

extern "C" cudaStream_t zb_cuda_m2_stream(void) { return s_stream; }

void zb_cuda_m2_check_launch(const char *what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        fprintf(stderr, "cuda mamba2: %s: %s\n", what, cudaGetErrorString(e));
        exit(EXIT_FAILURE);
    }
}

static void blas_check(cublasStatus_t st, const char *what) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuda mamba2: %s: cuBLAS status %d\n", what, (int)st);
        exit(EXIT_FAILURE);
    }
}

/* ZB_SSD=old in the environment: the path before issue 17's speed work (float32 cuBLAS products
 * whatever the precision mode, the SSD backward on the CUDA cores), kept selectable to compare. */
bool zb_cuda_m2_new_path(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("ZB_SSD");
        on = !(e && !strcmp(e, "old"));
    }
    return on;
}

/* The fused kernels of the 2026-11-30 afternoon (the SSD per chunk in mamba2_ssd.cu, the conv
 * backward here): off with ZB_SSD=old or ZB_SSD=tiles. */
static bool m2_fused_path(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("ZB_SSD");
        on = !(e && (!strcmp(e, "old") || !strcmp(e, "tiles")));
    }
    return on;
}

/* A fast path's switch: var (1 on, 0 off, -1 not yet read from the environment) and its setter for
 * tests (-1: back to the environment's choice). */
#define M2_SWITCH(var, setter)                                                   \
    static int var = -1;                                                         \
    extern "C" void setter(int on) { var = on < 0 ? -1 : on != 0; }

/* ---- timing the pieces (zb_cuda_mamba2_profile) ------------------------------------------------- */

static double *s_prof, s_prof_t;

extern "C" void zb_cuda_mamba2_profile(double *parts) {
    s_prof = parts;
    zb_cuda_m2_prof(-1);
}

void zb_cuda_m2_prof(int part) {
    if (!s_prof) return;
    cudaStreamSynchronize(s_stream);   /* errors surface at the caller's next check */
    double now = zb_now();
    if (part >= 0) s_prof[part] += now - s_prof_t;
    s_prof_t = now;
}

static cublasHandle_t blas(void) {
    if (!s_blas) {
        blas_check(cublasCreate(&s_blas), "cublasCreate");
        blas_check(cublasSetStream(s_blas, s_stream), "cublasSetStream");
        /* plain f32 products (no TF32): the tests compare with the CPU in f32 */
        blas_check(cublasSetMathMode(s_blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    }
    return s_blas;
}

static int cdiv(int a, int b) { return (a + b - 1) / b; }
static unsigned blocks_for(size_t n, int t) { return (unsigned)((n + t - 1) / t); }

/* Row-major C[M,N] = alpha op(A) op(B) + beta C (as cblas_sgemm RowMajor): the column-major
 * product C^T = op(B)^T op(A)^T. */
static void gemm_rm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    blas_check(cublasSgemm(blas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                           &alpha, B, ldb, A, lda, &beta, C, ldc),
               "cublasSgemm");
}

/* The mixer's projections out[N,OC] = in[N,C] W[OC,C]^T (forward) and dinp += dout W, dW += dout^T
 * in (backward; dinp may be NULL): on the backend's handle and stream (zb_cuda_init done and
 * zb_cuda_mamba2_set_blas given them, as the backend table does) its linear layers, which follow
 * the precision mode (bf16 operands on the tensor cores with float32 sums in the bf16 mode, the
 * weights' bf16 copies cached); elsewhere (kernels driven on their own handle, ZB_SSD=old) plain
 * float32 cuBLAS. */
static bool backend_products(void) {
    return zb_cuda_m2_new_path() && zb_cuda_ready() && s_stream == zb_cuda_stream() &&
           (void *)s_blas == zb_cuda_cublas_handle();
}
static void proj_forward(float *out, const float *in, const float *W, int N, int C, int OC) {
    if (backend_products()) zb_cuda_matmul_forward(out, in, W, NULL, N, C, OC);
    else gemm_rm(false, true, N, OC, C, 1.0f, in, C, W, C, 0.0f, out, OC);
}
static void proj_backward(float *dinp, float *dW, const float *dout, const float *in, const float *W, int N, int C,
                          int OC) {
    if (backend_products()) {
        zb_cuda_matmul_backward(dinp, dW, NULL, dout, in, W, N, C, OC);
        return;
    }
    if (dinp) gemm_rm(false, false, N, C, OC, 1.0f, dout, OC, W, C, 1.0f, dinp, C);
    gemm_rm(true, false, OC, C, N, 1.0f, dout, OC, in, C, 1.0f, dW, C);
}

/* ---- bf16 weight views ------------------------------------------------------------------------- */

namespace {   /* kernels and functors: internal names */

__global__ void __launch_bounds__(M2_NT)
k_linear_bf16(float *out, const float *__restrict__ in, const uint16_t *__restrict__ W, int N, int C, int OC) {
    __shared__ m2_tile_smem sm;
    int r0 = blockIdx.x * M2_TB, o0 = blockIdx.y * M2_TB;
    float acc[4][4];
    m2_zero(acc);
    auto la = [&](int m, int k) { return r0 + m < N ? in[(size_t)(r0 + m) * C + k] : 0.0f; };
    auto lb = [&](int k, int n) {
        return o0 + n < OC ? __uint_as_float((uint32_t)W[(size_t)(o0 + n) * C + k] << 16) : 0.0f;
    };
    m2_mma<true, true>(acc, la, lb, C, sm);
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = r0 + m2_row(q), o = o0 + m2_col(r);
            if (i < N && o < OC) out[(size_t)i * OC + o] = acc[q][r];
        }
}

}   // namespace

/* out[N,OC] = in[N,C] W[OC,C]^T for a tagged weight view. */
static void linear(float *out, const float *in, zb_wt W, int N, int C, int OC) {
    if (N <= 0) return;
    if (W.f32) {
        gemm_rm(false, true, N, OC, C, 1.0f, in, C, W.f32, C, 0.0f, out, OC);
        return;
    }
    if (s_stream == zb_cuda_stream() && zb_cuda_gemv_ok(in, W.bf16, N, C)) {
        /* decode (<= 8 rows): the backend's GEMV, a warp per output row reading the weights at
         * the memory's rate (the tiled kernel below leaves most of the GPU idle at one row);
         * the same arithmetic: float32 input, bf16 weights, float32 sums */
        zb_cuda_gemv_bf16(out, in, W.bf16, N, C, OC);
        return;
    }
    if (s_stream == zb_cuda_stream() && zb_cuda_ready()) {
        /* more rows (batched decode, prefill): the backend's cuBLAS product on the tensor cores,
         * the input rounded to bf16 as every other bf16 linear layer of the backend (the tiled
         * kernel below took 1.5 ms per layer at 48 rows) */
        zb_cuda_linear_forward(out, in, W, N, C, OC);
        return;
    }
    k_linear_bf16<<<dim3(cdiv(N, M2_TB), cdiv(OC, M2_TB)), M2_NT, 0, s_stream>>>(out, in, W.bf16, N, C, OC);
    zb_cuda_m2_check_launch("k_linear_bf16");
}

/* ---- column sums (parameter gradients over rows) ------------------------------------------------ */

#define CS_SPLIT_MAX 64

namespace {

template <class F>
__global__ void k_colsum_part(F f, int R, int C, int rows_per, float *part) {
    __shared__ float red[8][33];
    int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    int c = blockIdx.x * 32 + tx, r0 = blockIdx.y * rows_per, r1 = min(R, r0 + rows_per);
    float s = 0.0f;
    if (c < C)
        for (int r = r0 + ty; r < r1; r += 8) s += f(r, c);
    red[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int t = 1; t < 8; t++) s += red[t][tx];
        part[(size_t)blockIdx.y * C + c] = s;
    }
}

__global__ void k_colsum_fin(const float *__restrict__ part, int ns, int C, float *g) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int k = 0; k < ns; k++) s += part[(size_t)k * C + c];
    g[c] += s;
}

}   // namespace

/* g[c] += sum_r f(r, c) over R rows. work: zb_cuda_m2_colsum_floats(C). */
template <class F>
static void colsum(const F &f, int R, int C, float *work, float *g, const char *what) {
    if (R <= 0 || C <= 0 || !g) return;
    int ns = cdiv(R, 64) < CS_SPLIT_MAX ? cdiv(R, 64) : CS_SPLIT_MAX;
    int rows_per = cdiv(R, ns);
    ns = cdiv(R, rows_per);
    k_colsum_part<F><<<dim3(cdiv(C, 32), ns), 256, 0, s_stream>>>(f, R, C, rows_per, work);
    zb_cuda_m2_check_launch(what);
    k_colsum_fin<<<cdiv(C, 256), 256, 0, s_stream>>>(work, ns, C, g);
    zb_cuda_m2_check_launch(what);
}

extern "C" size_t zb_cuda_m2_colsum_floats(int C) { return (size_t)CS_SPLIT_MAX * (C > 0 ? C : 0); }

/* ---- small elementwise pieces ------------------------------------------------------------------ */

static __device__ __forceinline__ float softplus_dev(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static __device__ __forceinline__ float sigmoid_dev(float x) { return 1.0f / (1.0f + expf(-x)); }
static __device__ __forceinline__ float silu_dev(float x) { return x / (1.0f + expf(-x)); }

static int norm_groups(const zb_mamba2_dims *m) {
    int G = m->norm_group > 0 ? m->norm_group : m->d_inner;
    return m->d_inner / G;
}

static __global__ void k_dt_fwd(int N, int nh, int P, const float *__restrict__ dt_bias,
                         const float *__restrict__ proj, float *dt, float lo, float hi) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)N * nh) return;
    size_t r = e / nh;
    int h = (int)(e % nh);
    float v = softplus_dev(proj[r * P + P - nh + h] + dt_bias[h]);
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    dt[e] = v;
}

extern "C" void zb_cuda_m2_dt_forward(const zb_mamba2_dims *m, const float *dt_bias, const float *proj,
                                      float *dt, int N) {
    if (N <= 0) return;
    int nh = m->nheads, P = zb_mamba2_in_proj_rows(m);
    k_dt_fwd<<<blocks_for((size_t)N * nh, 256), 256, 0, s_stream>>>(N, nh, P, dt_bias, proj, dt,
                                                                      m->dt_min, m->dt_max);
    zb_cuda_m2_check_launch("k_dt_fwd");
}

/* pre[t,c] = b_c + sum_k w[c,k] in[t-K+1+k, c], rows before 0 from the conv state of the
 * sequence (seqs[b] or b) or 0; post = silu(pre). */
static __global__ void k_conv_fwd(int cd, int K, int P, int di, int T, const float *__restrict__ w,
                           const float *__restrict__ bias, const float *__restrict__ proj,
                           const float *hist, size_t hist_stride, const int *__restrict__ seqs,
                           float *pre, float *post) {
    /* grid (rows, column blocks): no 64-bit division per element (rows < 2^31) */
    size_t r = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    size_t e = r * cd + c;
    int b = (int)blockIdx.x / T, t = (int)blockIdx.x % T;
    const float *hc = hist ? hist + (size_t)(seqs ? seqs[b] : b) * hist_stride + (size_t)c * (K - 1) : NULL;
    float acc = bias ? bias[c] : 0.0f;
    for (int k = 0; k < K; k++) {
        int s = t - (K - 1) + k;
        if (s >= 0) acc += w[(size_t)c * K + k] * proj[(r - (K - 1) + k) * P + di + c];
        else if (hc) acc += w[(size_t)c * K + k] * hc[(K - 1) + s];
    }
    if (pre) pre[e] = acc;
    post[e] = silu_dev(acc);
}

/* k_conv_fwd for training (no conv state: rows before a sequence's start are 0), a thread per channel
 * over M2_WROWS rows with the loads of their K + M2_WROWS - 1 input rows issued together (k_conv_fwd:
 * a block per row, its K loads one after another); the same sums in the same order. */
#define M2_KMAX 8
#define M2_WROWS 8
static __global__ void k_conv_fwd_rows(int cd, int K, int P, int di, int T, int R, const float *__restrict__ w,
                                       const float *__restrict__ bias, const float *__restrict__ proj, float *pre,
                                       float *post) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y * M2_WROWS;
    if (c >= cd) return;
    float iv[M2_WROWS + M2_KMAX - 1], wk[M2_KMAX];
#pragma unroll
    for (int k = 0; k < M2_KMAX; k++) wk[k] = k < K ? w[(size_t)c * K + k] : 0.0f;
    const float *in = proj + di + c;
#pragma unroll
    for (int q = 0; q < M2_WROWS + M2_KMAX - 1; q++) {
        long s = (long)r - (K - 1) + q;
        iv[q] = q < M2_WROWS + K - 1 && s >= 0 && s < R ? in[(size_t)s * P] : 0.0f;
    }
    float b0 = bias ? bias[c] : 0.0f;
#pragma unroll
    for (int u = 0; u < M2_WROWS; u++) {
        if (r + u >= R) break;
        int t = (r + u) % T;
        float acc = b0;
#pragma unroll
        for (int k = 0; k < M2_KMAX; k++)
            if (k < K && t - (K - 1) + k >= 0) acc += wk[k] * iv[u + k];
        size_t e = (size_t)(r + u) * cd + c;
        if (pre) pre[e] = acc;
        post[e] = silu_dev(acc);
    }
}

/* 1: the training conv forward over groups of rows (k_conv_fwd_rows), the default; 0: a block per
 * row (ZB_CONV=old); -1: from the environment */
M2_SWITCH(g_conv_rows, zb_cuda_m2_conv_rows)
static bool conv_rows(void) { return zb_cuda_env_switch(&g_conv_rows, "ZB_CONV", "old"); }
/* 1: the conv backward in one pass (k_conv_bwd_one; ZB_CONV_BWD=one: S6R1 measured it 1.1 ms slower
 * per Zebra-1B step than the two kernels, 12.80 vs 11.74 ms); 0: k_conv_bwd_fused + the weight sums,
 * the default; -1: from the environment */
M2_SWITCH(g_conv_bwd_one, zb_cuda_m2_conv_bwd_one)
/* The conv backward over V-channel vectors (k_conv_bwd_vec): V = 4 the default (S7R1: 3.54 ms per
 * Zebra-1B step, pairs 3.82, the S6 kernels 11.58), 2 with ZB_CONV_BWD=pair, 0 (ZB_CONV_BWD=old or =one) the two kernels or k_conv_bwd_one; -1 the environment's */
static int g_conv_bwd_vec = -1;
extern "C" void zb_cuda_m2_conv_bwd_vec(int v) { g_conv_bwd_vec = v < 0 ? -1 : v == 2 ? 2 : v ? 4 : 0; }
static int conv_bwd_vec(void) {
    if (g_conv_bwd_vec < 0) {
        const char *e = getenv("ZB_CONV_BWD");
        g_conv_bwd_vec = e && (!strcmp(e, "old") || !strcmp(e, "one")) ? 0 : e && !strcmp(e, "pair") ? 2 : 4;
    }
    return g_conv_bwd_vec;
}
/* 1: the training forward does not store the conv's pre-activation and the backward recomputes it from
 * the inputs it reads anyway (k_conv_bwd_vec; one float32 [N, cd] write and read less per layer, the
 * same bits), the default where that kernel runs; 0 (ZB_CONV_PRE=keep): stored and read back. The
 * forward and its backward decide alike (the switches, the shape); -1 the environment's. */
M2_SWITCH(g_conv_pre_rc, zb_cuda_m2_conv_pre_recompute)
static bool conv_pre_recompute(const zb_mamba2_dims *m, const float *proj) {
    int cd = zb_mamba2_conv_dim(m), P = zb_mamba2_in_proj_rows(m);
    return zb_cuda_env_switch(&g_conv_pre_rc, "ZB_CONV_PRE", "keep") && m2_fused_path() && conv_bwd_vec() &&
           m->conv_k == 4 && cd % 4 == 0 && m->d_inner % 4 == 0 && P % 4 == 0 && (uintptr_t)proj % 16 == 0;
}
static bool conv_bwd_one(void) {
    if (g_conv_bwd_one < 0) {
        const char *e = getenv("ZB_CONV_BWD");
        g_conv_bwd_one = e && !strcmp(e, "one");
    }
    return g_conv_bwd_one;
}

/* V floats from p (V = 2 or 4; zeros where !ok) / to p */
template <int V>
static __device__ __forceinline__ void ldv(float (&o)[V], const float *p, bool ok) {
    if (V == 4) {
        float4 v = ok ? *(const float4 *)p : make_float4(0, 0, 0, 0);
        o[0] = v.x; o[1] = v.y; o[V > 2 ? 2 : 0] = v.z; o[V > 3 ? 3 : 0] = v.w;
    } else {
        float2 v = ok ? *(const float2 *)p : make_float2(0, 0);
        o[0] = v.x; o[V > 1 ? 1 : 0] = v.y;
    }
}
template <int V>
static __device__ __forceinline__ void stv(float *p, const float (&v)[V]) {
    if (V == 4) *(float4 *)p = make_float4(v[0], v[1], v[V > 2 ? 2 : 0], v[V > 3 ? 3 : 0]);
    else *(float2 *)p = make_float2(v[0], v[V > 1 ? 1 : 0]);
}

/* The training conv forward over channel pairs (the default since S7; ZB_CONV=rows k_conv_fwd_rows,
 * ZB_CONV=old k_conv_fwd): as k_conv_bwd_vec, K a template argument, a thread owns V channels (V-wide
 * loads and stores), a warp walks CF_ROWS rows with the last K-1 inputs in registers (each input row
 * loaded once, where k_conv_fwd_rows loads 8 + K-1 rows for 8), CF_G rows' loads issued together.
 * pre[t,c] = b_c + sum_k w[c,k] in[t-K+1+k, c] with k_conv_fwd_rows's terms in its order (the same bits). */
#define CF_W 4      /* warps per block */
#define CF_ROWS 32  /* rows per warp */
#define CF_G 4      /* rows per load group */
template <int K, int V>
static __global__ void __launch_bounds__(CF_W * 32) k_conv_fwd_vec(int cd, int P, int di, int T, int R,
                                                                   const float *__restrict__ w,
                                                                   const float *__restrict__ bias,
                                                                   const float *__restrict__ proj, float *pre,
                                                                   float *post) {
    int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    int c = (blockIdx.x * 32 + lane) * V;
    if (c >= cd) return;
    int r0 = (blockIdx.y * CF_W + wp) * CF_ROWS, r1 = min(R, r0 + CF_ROWS);
    if (r0 >= r1) return;
    float wk[V][K], b0[V], inw[K - 1][V];
#pragma unroll
    for (int j = 0; j < V; j++) {
        b0[j] = bias ? bias[c + j] : 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++) wk[j][k] = w[(size_t)(c + j) * K + k];
    }
    const float *in = proj + di + c;
#pragma unroll
    for (int q = 0; q < K - 1; q++) {
        long s = (long)r0 - (K - 1) + q;
        ldv<V>(inw[q], in + (s >= 0 ? (size_t)s * P : 0), s >= 0);
    }
    int t = r0 % T;   /* row r's position in its sequence, stepped with r (no division per row) */
    for (int rb = r0; rb < r1; rb += CF_G) {
        float iv[CF_G][V];
#pragma unroll
        for (int u = 0; u < CF_G; u++) ldv<V>(iv[u], in + (size_t)(rb + u < r1 ? rb + u : r0) * P, rb + u < r1);
#pragma unroll
        for (int u = 0; u < CF_G; u++) {
            int r = rb + u;
            if (r >= r1) break;
            float a[V], s[V];
#pragma unroll
            for (int j = 0; j < V; j++) {
                float acc = b0[j];
#pragma unroll
                for (int k = 0; k < K; k++)
                    if (t - (K - 1) + k >= 0) acc += wk[j][k] * (k < K - 1 ? inw[k < K - 1 ? k : 0][j] : iv[u][j]);
                a[j] = acc;
                s[j] = silu_dev(acc);
            }
            if (pre) stv<V>(pre + (size_t)r * cd + c, a);
            stv<V>(post + (size_t)r * cd + c, s);
#pragma unroll
            for (int j = 0; j < V; j++) {
#pragma unroll
                for (int q = 0; q + 1 < K - 1; q++) inw[q][j] = inw[q + 1][j];
                inw[K - 2][j] = iv[u][j];
            }
            t = t + 1 == T ? 0 : t + 1;
        }
    }
}

/* 2: the training conv forward over channel pairs (k_conv_fwd_vec, the default where K = 4, the widths
 * are multiples of 4 and the buffers 16-byte aligned), 1: over groups of 8 rows (k_conv_fwd_rows;
 * ZB_CONV=rows), 0: a block per row (ZB_CONV=old); -1 the environment's */
static int g_conv_fwd_kind = -1;
extern "C" void zb_cuda_m2_conv_fwd_kind(int k) { g_conv_fwd_kind = k < 0 ? -1 : k > 2 ? 2 : k; }
static int conv_fwd_kind(void) {
    if (g_conv_fwd_kind < 0) {
        const char *e = getenv("ZB_CONV");
        g_conv_fwd_kind = e && !strcmp(e, "old") ? 0 : e && !strcmp(e, "rows") ? 1 : 2;
    }
    return g_conv_fwd_kind;
}

static void conv_fwd(const zb_mamba2_dims *m, const float *conv_w, const float *conv_b, const float *proj,
                     const float *hist, size_t hist_stride, const int *seqs, float *pre, float *post,
                     int B, int T) {
    size_t N = (size_t)B * T;
    int cd = zb_mamba2_conv_dim(m);
    if (N == 0) return;
    int P = zb_mamba2_in_proj_rows(m), cr = cdiv((int)N, CF_W * CF_ROWS);
    if (!hist && m->conv_k == 4 && m2_fused_path() && conv_rows() && conv_fwd_kind() == 2 && cd % 4 == 0 &&
        m->d_inner % 4 == 0 && P % 4 == 0 && ((uintptr_t)proj | (uintptr_t)pre | (uintptr_t)post) % 16 == 0 &&
        cr <= 65535) {
        k_conv_fwd_vec<4, 2><<<dim3(cdiv(cd, 64), cr), CF_W * 32, 0, s_stream>>>(cd, P, m->d_inner, T, (int)N, conv_w,
                                                                              conv_b, proj, pre, post);
        zb_cuda_m2_check_launch("k_conv_fwd_vec");
        return;
    }
    if (!hist && m->conv_k <= M2_KMAX && m2_fused_path() && conv_rows() && cdiv((int)N, M2_WROWS) <= 65535) {
        k_conv_fwd_rows<<<dim3(cdiv(cd, 128), (unsigned)cdiv((int)N, M2_WROWS)), 128, 0, s_stream>>>(
            cd, m->conv_k, zb_mamba2_in_proj_rows(m), m->d_inner, T, (int)N, conv_w, conv_b, proj, pre, post);
        zb_cuda_m2_check_launch("k_conv_fwd_rows");
        return;
    }
    k_conv_fwd<<<dim3((unsigned)N, cdiv(cd, 256)), 256, 0, s_stream>>>(cd, m->conv_k, zb_mamba2_in_proj_rows(m),
                                                                      m->d_inner, T, conv_w, conv_b, proj, hist,
                                                                      hist_stride, seqs, pre, post);
    zb_cuda_m2_check_launch("k_conv_fwd");
}

extern "C" void zb_cuda_m2_conv_forward(const zb_mamba2_dims *m, const float *conv_w, const float *conv_b,
                                        const float *proj, const float *hist, size_t hist_stride, float *pre,
                                        float *post, int B, int T) {
    conv_fwd(m, conv_w, conv_b, proj, hist, hist_stride, NULL, pre, post, B, T);
}

/* the conv state moves on to the last K-1 inputs (core/mamba2.c step_pre) */
static __global__ void k_conv_state_update(int cd, int K, int P, int di, int B, int n, const float *__restrict__ proj,
                                    float *hist, size_t hist_stride, const int *__restrict__ seqs) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)B * cd) return;
    int b = (int)(e / cd), c = (int)(e % cd);
    float *hc = hist + (size_t)(seqs ? seqs[b] : b) * hist_stride + (size_t)c * (K - 1);
    for (int k = 0; k < K - 1; k++) {
        int s = n - (K - 1) + k;   /* index into the new rows; < 0: the old state */
        hc[k] = s >= 0 ? proj[((size_t)b * n + s) * P + di + c] : hc[k + n];
    }
}

static void conv_state_update(const zb_mamba2_dims *m, const float *proj, float *hist, size_t hist_stride,
                              const int *seqs, int B, int n) {
    int cd = zb_mamba2_conv_dim(m);
    if (B <= 0 || m->conv_k <= 1) return;
    k_conv_state_update<<<blocks_for((size_t)B * cd, 256), 256, 0, s_stream>>>(
        cd, m->conv_k, zb_mamba2_in_proj_rows(m), m->d_inner, B, n, proj, hist, hist_stride, seqs);
    zb_cuda_m2_check_launch("k_conv_state_update");
}

extern "C" void zb_cuda_m2_conv_state_update(const zb_mamba2_dims *m, const float *proj, float *hist,
                                             size_t hist_stride, int B, int n) {
    conv_state_update(m, proj, hist, hist_stride, NULL, B, n);
}

/* ---- gated RMSNorm ------------------------------------------------------------------------------ */

static __device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* o = w g rs, g = y silu(z), rs = (mean_group g^2 + eps)^-1/2. One warp per (row, group). */
static __global__ void k_gnorm_fwd(int N, int di, int G, int ng, const float *__restrict__ nw, float eps,
                            const float *__restrict__ y, const float *__restrict__ z, int zs, float *o,
                            __nv_bfloat16 *o16, float *rstd) {
    size_t gw = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (gw >= (size_t)N * ng) return;
    size_t r = gw / ng;
    int c0 = (int)(gw % ng) * G;
    const float *yr = y + r * di, *zr = z + r * zs;
    float ss = 0.0f;
    for (int c = c0 + lane; c < c0 + G; c += 32) {
        float g = yr[c] * silu_dev(zr[c]);
        ss += g * g;
    }
    ss = warp_sum(ss);
    float rs = 1.0f / sqrtf(ss / G + eps);
    if (rstd && lane == 0) rstd[gw] = rs;
    for (int c = c0 + lane; c < c0 + G; c += 32) {
        float v = yr[c] * silu_dev(zr[c]) * (rs * nw[c]);
        if (o16) o16[r * di + c] = __float2bfloat16_rn(v);   /* o's only reader: out_proj (o_bf16) */
        else o[r * di + c] = v;
    }
}

/* k_gnorm_fwd for groups of 32 NPL channels over GN_U rows per warp, every load of the U rows issued before
 * the first sum (k_gnorm_fwd: a warp per (row, group), its loads, sum and stores one after another,
 * 524k warps per Zebra-1B layer at 8 x 2048: S6R2's gated norm forward 3.5 ms per step, ~3.5x its
 * ~0.08 ms a layer of traffic). Block (group, 8 GN_U rows), lane l on channels c0 + l + 32 q as
 * k_gnorm_fwd: the same sums in the same order, the same bits. */
#define GN_U 4
template <int NPL>
static __global__ void __launch_bounds__(256) k_gnorm_fwd_rows(int N, int di, int ng, const float *__restrict__ nw,
                                                               float eps, const float *__restrict__ y,
                                                               const float *__restrict__ z, int zs, float *o,
                                                               __nv_bfloat16 *o16, float *rstd) {
    constexpr int G = 32 * NPL;
    int grp = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c0 = grp * G + lane;
    int rb = (blockIdx.y * 8 + warp) * GN_U;
    float yv[GN_U][NPL], zv[GN_U][NPL], wv[NPL];
#pragma unroll
    for (int q = 0; q < NPL; q++) wv[q] = nw[c0 + 32 * q];
#pragma unroll
    for (int u = 0; u < GN_U; u++) {
        size_t r = (size_t)(rb + u < N ? rb + u : 0);
#pragma unroll
        for (int q = 0; q < NPL; q++) {
            yv[u][q] = rb + u < N ? y[r * di + c0 + 32 * q] : 0.0f;
            zv[u][q] = rb + u < N ? z[r * zs + c0 + 32 * q] : 0.0f;
        }
    }
#pragma unroll
    for (int u = 0; u < GN_U; u++) {
        if (rb + u >= N) break;
        size_t r = (size_t)(rb + u);
        float ss = 0.0f;
#pragma unroll
        for (int q = 0; q < NPL; q++) {
            float g = yv[u][q] * silu_dev(zv[u][q]);
            ss += g * g;
        }
        ss = warp_sum(ss);
        float rs = 1.0f / sqrtf(ss / G + eps);
        if (rstd && lane == 0) rstd[r * ng + grp] = rs;
#pragma unroll
        for (int q = 0; q < NPL; q++) {
            float v = yv[u][q] * silu_dev(zv[u][q]) * (rs * wv[q]);
            if (o16) o16[r * di + c0 + 32 * q] = __float2bfloat16_rn(v);   /* o's only reader: out_proj */
            else o[r * di + c0 + 32 * q] = v;
        }
    }
}

/* 1: the gated norm's forward over GN_U rows per warp (k_gnorm_fwd_rows) and its backward's rows in
 * groups of GN_U with their loads together (the same bits), the default since S7 where the groups
 * are 32-128 channels; 0 (ZB_GNORM=old): a warp per (row, group) and the backward row by row. */
M2_SWITCH(g_gnorm_rows, zb_cuda_m2_gnorm_rows)
static bool gnorm_rows(void) { return zb_cuda_env_switch(&g_gnorm_rows, "ZB_GNORM", "old"); }

/* o16 (may be NULL): o written there in bf16 instead of into o */
static void gated_norm_forward(const zb_mamba2_dims *m, const float *norm_w, float eps, const float *y, const float *z,
                               int z_stride, float *o, __nv_bfloat16 *o16, float *rstd, int N) {
    if (N <= 0) return;
    int ng = norm_groups(m), di = m->d_inner, G = di / ng;
    if (m2_fused_path() && gnorm_rows() && G % 32 == 0 && G <= 128 && cdiv(N, 8 * GN_U) <= 65535) {
        dim3 grid(ng, cdiv(N, 8 * GN_U));
        if (G == 32) k_gnorm_fwd_rows<1><<<grid, 256, 0, s_stream>>>(N, di, ng, norm_w, eps, y, z, z_stride, o, o16, rstd);
        else if (G == 64) k_gnorm_fwd_rows<2><<<grid, 256, 0, s_stream>>>(N, di, ng, norm_w, eps, y, z, z_stride, o, o16, rstd);
        else if (G == 96) k_gnorm_fwd_rows<3><<<grid, 256, 0, s_stream>>>(N, di, ng, norm_w, eps, y, z, z_stride, o, o16, rstd);
        else k_gnorm_fwd_rows<4><<<grid, 256, 0, s_stream>>>(N, di, ng, norm_w, eps, y, z, z_stride, o, o16, rstd);
        zb_cuda_m2_check_launch("k_gnorm_fwd_rows");
        return;
    }
    k_gnorm_fwd<<<blocks_for((size_t)N * ng * 32, 256), 256, 0, s_stream>>>(N, di, di / ng, ng, norm_w, eps,
                                                                             y, z, z_stride, o, o16, rstd);
    zb_cuda_m2_check_launch("k_gnorm_fwd");
}

extern "C" void zb_cuda_m2_gated_norm_forward(const zb_mamba2_dims *m, const float *norm_w, float eps,
                                              const float *y, const float *z, int z_stride, float *o,
                                              float *rstd, int N) {
    gated_norm_forward(m, norm_w, eps, y, z, z_stride, o, NULL, rstd, N);
}

/* dg = rs w do - rs^3 g mean(w do g); dy = dg silu(z); dz = dg y silu'(z). dy holds do on entry. */
static __global__ void k_gnorm_bwd(int N, int di, int G, int ng, const float *__restrict__ nw,
                            const float *__restrict__ y, const float *__restrict__ z, int zs,
                            const float *__restrict__ rstd, float *dy, float *dz, int dzs) {
    size_t gw = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (gw >= (size_t)N * ng) return;
    size_t r = gw / ng;
    int c0 = (int)(gw % ng) * G;
    const float *yr = y + r * di, *zr = z + r * zs;
    float *dyr = dy + r * di, *dzr = dz + r * dzs;
    float rs = rstd[gw], sum = 0.0f;
    for (int c = c0 + lane; c < c0 + G; c += 32) sum += dyr[c] * nw[c] * (yr[c] * silu_dev(zr[c]));
    sum = warp_sum(sum);   /* every read of the group's dy precedes the writes below */
    float f = sum / G * rs * rs * rs;
    for (int c = c0 + lane; c < c0 + G; c += 32) {
        float sg = sigmoid_dev(zr[c]), sz = zr[c] * sg, gc = yr[c] * sz;
        float dg = rs * nw[c] * dyr[c] - f * gc;
        dzr[c] = dg * yr[c] * sg * (1.0f + zr[c] * (1.0f - sg));
        dyr[c] = dg * sz;
    }
}

struct f_norm_w {   /* do[r,c] g[r,c] rs[r, group] */
    const float *dO, *y, *z, *rstd;
    int di, zs, G, ng;
    __device__ float operator()(int r, int c) const {
        size_t rr = (size_t)r;
        return dO[rr * di + c] * (y[rr * di + c] * silu_dev(z[rr * zs + c])) * rstd[rr * ng + c / G];
    }
};

/* k_gnorm_bwd and the norm weight's column sum in one pass (the fused path, groups of 32 NPL
 * channels, NPL <= 4): block (group, slice of rows), a warp per row as k_gnorm_bwd with lane l on
 * channels c0 + l + 32 q; each lane keeps its channels' sums of do g rs over the warp's rows, the
 * 8 warps' sums are added in order into part[slice][c] for k_colsum_fin (deterministic). */
template <int NPL, int U>
static __global__ void __launch_bounds__(256)
k_gnorm_bwd_fused(int N, int di, int ng, const float *__restrict__ nw, const float *__restrict__ y,
                  const float *__restrict__ z, int zs, const float *__restrict__ rstd, float *dy, float *dz,
                  __nv_bfloat16 *dz16, int rows_per, float *part) {
    const int G = 32 * NPL;
    __shared__ float red[8][32 * NPL];
    int grp = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c0 = grp * G;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float wacc[NPL], wv[NPL];
#pragma unroll
    for (int q = 0; q < NPL; q++) { wacc[q] = 0.0f; wv[q] = nw[c0 + lane + 32 * q]; }
    /* the warp's rows r0 + warp + 8 i in order, U at a time with their loads issued together (U = GN_U
     * where gnorm_rows: one memory latency per U rows; U = 1 the S6 kernel) */
    for (int rb = r0 + warp; rb < r1; rb += 8 * U) {
        float yv[U][NPL], zv[U][NPL], dov[U][NPL], rsv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int r = rb + 8 * u;
            bool ok = r < r1;
            size_t rr = (size_t)(ok ? r : r0);
            const float *yr = y + rr * di + c0, *zr = z + rr * zs + c0, *dyr = dy + rr * di + c0;
            rsv[u] = ok ? rstd[rr * ng + grp] : 0.0f;
#pragma unroll
            for (int q = 0; q < NPL; q++) {
                int c = lane + 32 * q;
                yv[u][q] = ok ? yr[c] : 0.0f;
                zv[u][q] = ok ? zr[c] : 0.0f;
                dov[u][q] = ok ? dyr[c] : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int r = rb + 8 * u;
            if (r >= r1) break;
            float *dyr = dy + (size_t)r * di + c0, *dzr = dz + (size_t)r * zs + c0;
            float rs = rsv[u], sg[NPL], sum = 0.0f;
#pragma unroll
            for (int q = 0; q < NPL; q++) {
                sg[q] = sigmoid_dev(zv[u][q]);
                float gc = yv[u][q] * silu_dev(zv[u][q]);
                sum += dov[u][q] * wv[q] * gc;
                wacc[q] += dov[u][q] * gc * rs;
            }
            sum = warp_sum(sum);
            float f = sum / G * rs * rs * rs;
#pragma unroll
            for (int q = 0; q < NPL; q++) {
                int c = lane + 32 * q;
                float sz = zv[u][q] * sg[q], gc = yv[u][q] * sz, dg = rs * wv[q] * dov[u][q] - f * gc;
                float dzv = dg * yv[u][q] * sg[q] * (1.0f + zv[u][q] * (1.0f - sg[q]));
                if (dz16) dz16[(size_t)r * zs + c0 + c] = __float2bfloat16_rn(dzv);   /* dz's only reader: in_proj */
                else dzr[c] = dzv;
                dyr[c] = dg * sz;
            }
        }
    }
#pragma unroll
    for (int q = 0; q < NPL; q++) red[warp][lane + 32 * q] = wacc[q];
    __syncthreads();
    for (int c = threadIdx.x; c < G; c += blockDim.x) {
        float s = 0.0f;
        for (int w = 0; w < 8; w++) s += red[w][c];
        part[(size_t)blockIdx.y * di + c0 + c] = s;
    }
}

/* the one-pass norm backward (k_gnorm_bwd_fused) runs for this shape */
static bool gnorm_bwd_fused_ok(const zb_mamba2_dims *m) {
    int G = m->d_inner / norm_groups(m);
    return m2_fused_path() && G % 32 == 0 && G <= 128;
}

/* dz16 (not NULL: needs gnorm_bwd_fused_ok): dz written there in bf16 instead of into dz */
static void gated_norm_backward(const zb_mamba2_dims *m, const float *norm_w, const float *y, const float *z,
                                int z_stride, const float *rstd, float *dy, float *dz, __nv_bfloat16 *dz16,
                                float *g_norm_w, float *work, int N) {
    if (N <= 0) return;
    int ng = norm_groups(m), di = m->d_inner, G = di / ng;
    if (gnorm_bwd_fused_ok(m)) {
        int ns = cdiv(N, 64) < CS_SPLIT_MAX ? cdiv(N, 64) : CS_SPLIT_MAX, rows_per = cdiv(N, ns);
        ns = cdiv(N, rows_per);
        dim3 grid(ng, ns);
#define GN_BWD(NPL, U) k_gnorm_bwd_fused<NPL, U><<<grid, 256, 0, s_stream>>>(N, di, ng, norm_w, y, z, z_stride, rstd, dy, dz, dz16, rows_per, work)
        bool rows = gnorm_rows();
        if (G == 32) rows ? GN_BWD(1, GN_U) : GN_BWD(1, 1);
        else if (G == 64) rows ? GN_BWD(2, GN_U) : GN_BWD(2, 1);
        else if (G == 96) rows ? GN_BWD(3, GN_U) : GN_BWD(3, 1);
        else rows ? GN_BWD(4, GN_U) : GN_BWD(4, 1);
#undef GN_BWD
        zb_cuda_m2_check_launch("k_gnorm_bwd_fused");
        if (g_norm_w) {
            k_colsum_fin<<<cdiv(di, 256), 256, 0, s_stream>>>(work, ns, di, g_norm_w);
            zb_cuda_m2_check_launch("norm weight gradient");
        }
        return;
    }
    /* the weight's gradient first: the kernel below overwrites do */
    f_norm_w f = {dy, y, z, rstd, di, z_stride, G, ng};
    colsum(f, N, di, work, g_norm_w, "norm weight gradient");
    k_gnorm_bwd<<<blocks_for((size_t)N * ng * 32, 256), 256, 0, s_stream>>>(N, di, G, ng, norm_w, y, z, z_stride,
                                                                             rstd, dy, dz, z_stride);
    zb_cuda_m2_check_launch("k_gnorm_bwd");
}

extern "C" void zb_cuda_m2_gated_norm_backward(const zb_mamba2_dims *m, const float *norm_w, const float *y,
                                               const float *z, int z_stride, const float *rstd, float *dy,
                                               float *dz, float *g_norm_w, float *work, int N) {
    gated_norm_backward(m, norm_w, y, z, z_stride, rstd, dy, dz, NULL, g_norm_w, work, N);
}

/* ---- dt backward --------------------------------------------------------------------------------- */

/* dproj16 (may be NULL): the same value in bf16 too (the float32 one feeds the dt bias's sum) */
static __global__ void k_dt_bwd(int N, int nh, int P, const float *__restrict__ dt_bias, const float *__restrict__ proj,
                         const float *__restrict__ ddt, float *dproj, __nv_bfloat16 *dproj16, float lo, float hi) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)N * nh) return;
    size_t r = e / nh;
    int h = (int)(e % nh);
    float v = proj[r * P + P - nh + h] + dt_bias[h], sp = softplus_dev(v);
    float g = (sp < lo || sp > hi) ? 0.0f : ddt[e] * sigmoid_dev(v);
    dproj[r * P + P - nh + h] = g;
    if (dproj16) dproj16[r * P + P - nh + h] = __float2bfloat16_rn(g);
}

struct f_cols {   /* a[r * stride + off + c] */
    const float *a;
    int stride, off;
    __device__ float operator()(int r, int c) const { return a[(size_t)r * stride + off + c]; }
};

static void dt_backward(const zb_mamba2_dims *m, const float *dt_bias, const float *proj, const float *ddt, float *dproj,
                        __nv_bfloat16 *dproj16, float *g_dt_bias, float *work, int N) {
    if (N <= 0) return;
    int nh = m->nheads, P = zb_mamba2_in_proj_rows(m);
    k_dt_bwd<<<blocks_for((size_t)N * nh, 256), 256, 0, s_stream>>>(N, nh, P, dt_bias, proj, ddt, dproj, dproj16,
                                                                      m->dt_min, m->dt_max);
    zb_cuda_m2_check_launch("k_dt_bwd");
    f_cols f = {dproj, P, P - nh};
    colsum(f, N, nh, work, g_dt_bias, "dt bias gradient");
}

extern "C" void zb_cuda_m2_dt_backward(const zb_mamba2_dims *m, const float *dt_bias, const float *proj,
                                       const float *ddt, float *dproj, float *g_dt_bias, float *work, int N) {
    dt_backward(m, dt_bias, proj, ddt, dproj, NULL, g_dt_bias, work, N);
}

/* ---- conv backward -------------------------------------------------------------------------------- */

static __global__ void k_conv_bwd_pre(size_t n, const float *__restrict__ pre, const float *__restrict__ dpost,
                               float *dpre) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    float p = pre[e], sg = sigmoid_dev(p);
    dpre[e] = dpost[e] * sg * (1.0f + p * (1.0f - sg));
}

/* din[t, c] = sum_k w[c,k] dpre[t + K-1-k, c] over t + K-1-k < T (the same sequence). */
static __global__ void k_conv_bwd_in(int cd, int K, int P, int di, int T, const float *__restrict__ w,
                              const float *__restrict__ dpre, float *dproj) {
    size_t r = blockIdx.x;   /* grid (rows, column blocks) as k_conv_fwd */
    int c = blockIdx.y * blockDim.x + threadIdx.x, t = (int)blockIdx.x % T;
    if (c >= cd) return;
    float acc = 0.0f;
    for (int k = 0; k < K; k++)
        if (t + K - 1 - k < T) acc += w[(size_t)c * K + k] * dpre[(r + K - 1 - k) * cd + c];
    dproj[r * P + di + c] = acc;
}

/* k_conv_bwd_pre and k_conv_bwd_in in one pass (the fused path): the thread of (r, c) writes dpre
 * of its own row and recomputes the K-1 later rows' dpre it needs (neighbouring rows' loads hit the
 * caches) instead of a pass writing dpre and another reading it back. */
static __global__ void k_conv_bwd_fused(int cd, int K, int P, int di, int T, const float *__restrict__ w,
                                        const float *__restrict__ pre, const float *__restrict__ dpost,
                                        float *dpre, float *dproj, __nv_bfloat16 *dproj16) {
    size_t r = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x, t = (int)blockIdx.x % T;
    if (c >= cd) return;
    float acc = 0.0f;
    for (int k = 0; k < K; k++)
        if (t + K - 1 - k < T) {
            size_t e = (r + K - 1 - k) * cd + c;
            float p = pre[e], sg = sigmoid_dev(p), dp = dpost[e] * sg * (1.0f + p * (1.0f - sg));
            if (k == K - 1) dpre[e] = dp;   /* row r itself */
            acc += w[(size_t)c * K + k] * dp;
        }
    if (dproj16) dproj16[r * P + di + c] = __float2bfloat16_rn(acc);   /* din's only reader: in_proj */
    else dproj[r * P + di + c] = acc;
}

struct f_conv_w {   /* column c K + k: dpre[r, c] in[r - K+1+k, c] inside the sequence */
    const float *dpre, *proj;
    int cd, K, P, di, T;
    __device__ float operator()(int r, int q) const {
        int c = q / K, k = q % K, s = r % T - (K - 1) + k;
        if (s < 0) return 0.0f;
        return dpre[(size_t)r * cd + c] * proj[((size_t)r - (K - 1) + k) * P + di + c];
    }
};

/* The conv weight's gradient in one coalesced pass (the column sum above reads the K shifted
 * inputs of 8 channels per warp from K rows: uncoalesced): a thread per channel c over a slice of
 * rows, part[slice][c K + k] = sum_r dpre[r, c] in[r - K+1+k, c] inside the sequence; then
 * k_colsum_fin sums the slices in order (deterministic, no atomics). */
/* one row's terms of the conv weight / bias sums: acc[k] += g in[t - K+1+k] inside the sequence (iv[k]
 * the input K-1-k rows before), bs += g */
static __device__ __forceinline__ void conv_wsum_row(float (&acc)[M2_KMAX], float &bs, float g, const float *iv, int t,
                                                     int K) {
    bs += g;
#pragma unroll
    for (int k = 0; k < M2_KMAX; k++)
        if (k < K && t - (K - 1) + k >= 0) acc[k] = fmaf(g, iv[k], acc[k]);
}
/* a slice's sums: part[slice][c K + k], bpart[slice][c] (bpart may be NULL) */
static __device__ __forceinline__ void conv_wsum_store(const float (&acc)[M2_KMAX], float bs, float *part, float *bpart,
                                                       int cd, int K, int c) {
    float *o = part + (size_t)blockIdx.y * cd * K + (size_t)c * K;
#pragma unroll
    for (int k = 0; k < M2_KMAX; k++)
        if (k < K) o[k] = acc[k];
    if (bpart) bpart[(size_t)blockIdx.y * cd + c] = bs;
}

static __global__ void k_conv_wgrad_part(int cd, int K, int P, int di, int T, int R, int rows_per,
                                         const float *__restrict__ dpre, const float *__restrict__ proj, float *part,
                                         float *bpart) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    int r0 = blockIdx.y * rows_per, r1 = min(R, r0 + rows_per);
    float acc[M2_KMAX], bs = 0.0f;
#pragma unroll
    for (int k = 0; k < M2_KMAX; k++) acc[k] = 0.0f;
    const float *in = proj + di + c;
    /* M2_WROWS rows at a time, their loads (dpre, and the inputs of rows r - K+1 .. r + M2_WROWS - 1,
     * each once) issued before the sums: one memory latency per M2_WROWS rows, not per row (S5R1:
     * the row-by-row loop left the conv backward at ~1 ms per layer) */
    for (int r = r0; r < r1; r += M2_WROWS) {
        float gv[M2_WROWS], iv[M2_WROWS + M2_KMAX - 1];
#pragma unroll
        for (int u = 0; u < M2_WROWS; u++) gv[u] = r + u < r1 ? dpre[(size_t)(r + u) * cd + c] : 0.0f;
#pragma unroll
        for (int q = 0; q < M2_WROWS + M2_KMAX - 1; q++) {
            long s = (long)r - (K - 1) + q;   /* input row */
            iv[q] = q < M2_WROWS + K - 1 && s >= 0 && s < r1 ? in[(size_t)s * P] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < M2_WROWS; u++) {
            if (r + u >= r1) break;
            conv_wsum_row(acc, bs, gv[u], iv + u, (r + u) % T, K);
        }
    }
    /* the bias's slice sums after all ns weight slices (bpart non-NULL: the fused path) */
    conv_wsum_store(acc, bs, part, bpart, cd, K, c);
}

/* The whole conv backward in one pass (the default; ZB_CONV=old: k_conv_bwd_fused, then
 * k_conv_wgrad_part): a thread per channel c over a slice of rows, M2_WROWS rows at a time with the
 * loads of the group issued together (pre and dpost of its rows and the K-1 after them, the inputs
 * of the K-1 before): dpre = dpost silu'(pre) in registers (not stored), din[r] = sum_k w[c,k]
 * dpre[r + K-1-k] inside the sequence into dproj, and the slice's weight and bias sums as
 * k_conv_wgrad_part (the same terms in the same order). Per Zebra-1B layer at 8 x 2048 this reads
 * pre, dpost and the input once each (~200 MB each) and writes dproj's columns, where the two
 * kernels also wrote and re-read dpre, and read each dpost / pre row K times from the caches in
 * blocks of one row (S5R2: conv bwd 11.2 ms per step, ~0.9 ms a layer). */
static __global__ void k_conv_bwd_one(int cd, int K, int P, int di, int T, int R, int rows_per,
                                      const float *__restrict__ w, const float *__restrict__ pre,
                                      const float *__restrict__ dpost, const float *__restrict__ proj,
                                      float *dproj, __nv_bfloat16 *dproj16, float *part, float *bpart) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    int r0 = blockIdx.y * rows_per, r1 = min(R, r0 + rows_per);
    float wk[M2_KMAX], acc[M2_KMAX], bs = 0.0f;
#pragma unroll
    for (int k = 0; k < M2_KMAX; k++) {
        wk[k] = k < K ? w[(size_t)c * K + k] : 0.0f;
        acc[k] = 0.0f;
    }
    const float *in = proj + di + c;
    for (int r = r0; r < r1; r += M2_WROWS) {
        float pv[M2_WROWS + M2_KMAX - 1], gv[M2_WROWS + M2_KMAX - 1], iv[M2_WROWS + M2_KMAX - 1];
#pragma unroll
        for (int q = 0; q < M2_WROWS + M2_KMAX - 1; q++) {
            long s = (long)r + q;   /* rows r .. r + M2_WROWS + K - 2 (past the sequence's end: unused) */
            bool ok = q < M2_WROWS + K - 1 && s < R;
            pv[q] = ok ? pre[(size_t)s * cd + c] : 0.0f;
            gv[q] = ok ? dpost[(size_t)s * cd + c] : 0.0f;
            long si = (long)r - (K - 1) + q;   /* input rows, as k_conv_wgrad_part */
            iv[q] = q < M2_WROWS + K - 1 && si >= 0 && si < r1 ? in[(size_t)si * P] : 0.0f;
        }
        float dp[M2_WROWS + M2_KMAX - 1];
#pragma unroll
        for (int q = 0; q < M2_WROWS + M2_KMAX - 1; q++) {
            float p = pv[q], sg = sigmoid_dev(p);
            dp[q] = gv[q] * sg * (1.0f + p * (1.0f - sg));   /* k_conv_bwd_pre's */
        }
#pragma unroll
        for (int u = 0; u < M2_WROWS; u++) {
            if (r + u >= r1) break;
            int t = (r + u) % T;
            float a = 0.0f;
#pragma unroll
            for (int k = 0; k < M2_KMAX; k++)
                if (k < K && t + K - 1 - k < T) a += wk[k] * dp[u + K - 1 - k];
            if (dproj16) dproj16[(size_t)(r + u) * P + di + c] = __float2bfloat16_rn(a);   /* din's only reader */
            else dproj[(size_t)(r + u) * P + di + c] = a;
            conv_wsum_row(acc, bs, dp[u], iv + u, t, K);
        }
    }
    conv_wsum_store(acc, bs, part, bpart, cd, K, c);
}

/* The conv backward in one pass over channel quads / pairs (the default since S7; ZB_CONV_BWD=old the
 * two kernels above, ZB_CONV_BWD=one k_conv_bwd_one). S6R2's conv bwd took 11.9 ms per Zebra-1B step
 * (~1 ms a layer) where one pass must move ~0.7 GB a layer (pre, dpost and the input read once in
 * float32, din written in bf16: ~0.18 ms at 4 TB/s): the two kernels write and re-read dpre,
 * k_conv_bwd_fused runs a block per row (196k short blocks, each thread's taps a loop on a run-time K)
 * and k_conv_bwd_one indexes its registers by the run-time K (a 64-byte stack frame: local memory).
 * Here K is a template argument (every index a constant), a thread owns V channels (one V-wide load
 * a row: a warp reads 32 V contiguous floats), a warp walks its run of rows once with the last K-1
 * rows' dp and inputs in registers (every row loaded once, G rows' loads issued together), and the
 * block's CB_W warps split a slice of rows, their weight / bias sums added in shared memory in warp
 * order, then the slices' sums in order by k_colsum_fin (deterministic). din[r] = sum_k w[c,k]
 * dp[r + K-1-k] with k_conv_bwd_fused's terms in its order (the same bits); the weight sums in
 * another order. V = 4, G = 2 the default; V = 2, G = 4 with ZB_CONV_BWD=pair (both fit 128
 * registers, 4 blocks an SM). */
#define CB_W 4   /* warps per block: a slice's rows in CB_W runs */
template <int K, int V, int G>
static __global__ void __launch_bounds__(CB_W * 32, 4) k_conv_bwd_vec(int cd, int P, int di, int T, int R, int rows_per,
                                                            const float *__restrict__ w, const float *__restrict__ bias,
                                                            const float *__restrict__ pre,
                                                            const float *__restrict__ dpost,
                                                            const float *__restrict__ proj, float *dproj,
                                                            __nv_bfloat16 *dproj16, float *part, float *bpart) {
    constexpr int BC = 32 * V;   /* the block's channels */
    __shared__ float wred[CB_W][BC * K], bred[CB_W][BC];
    int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    int c = (blockIdx.x * 32 + lane) * V;   /* the thread's first channel (cd % V == 0) */
    bool on = c < cd;
    int s0 = blockIdx.y * rows_per, s1 = min(R, s0 + rows_per), sub = (rows_per + CB_W - 1) / CB_W;
    int r0 = min(s1, s0 + wp * sub), r1 = min(s1, r0 + sub);
    float wk[V][K], acc[V][K], bs[V], b0[V];
    float dpw[K - 1][V], inw[K - 1][V];   /* dp and inputs of rows r-K+1 .. r-1 */
    bool rc = pre == NULL;   /* pre recomputed from the inputs (conv_pre_recompute) */
#pragma unroll
    for (int j = 0; j < V; j++) {
        bs[j] = 0.0f;
        b0[j] = on && bias ? bias[c + j] : 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            wk[j][k] = on ? w[(size_t)(c + j) * K + k] : 0.0f;
            acc[j][k] = 0.0f;
        }
    }
    const float *in = proj + di + c;
#pragma unroll
    for (int q = 0; q < K - 1; q++) {
        long s = (long)r0 - (K - 1) + q;
        ldv<V>(inw[q], in + (s >= 0 ? (size_t)s * P : 0), on && r0 < r1 && s >= 0);
#pragma unroll
        for (int j = 0; j < V; j++) dpw[q][j] = 0.0f;
    }
    /* dp rows r0 .. r1 + K-2 (the last K-1 only for din of the run's last rows); inputs to r1 - 1 */
    int re = on && r0 < r1 ? r1 + K - 1 : r0, rl = min(R, re);   /* rows past R: dp 0, never used */
    /* the positions in their sequences of row r and of din's row d = r - (K-1) (its first: r0), stepped
     * with the rows (S7R1's ncu: the kernel issue-bound, two divisions per row for r % T) */
    int tr = r0 % T, td = tr;
    for (int rb = r0; rb < re; rb += G) {
        float pv[G][V], gv[G][V], iv[G][V];
#pragma unroll
        for (int u = 0; u < G; u++) {
            int r = rb + u;
            if (!rc) ldv<V>(pv[u], pre + (size_t)(r < rl ? r : 0) * cd + c, r < rl);
            ldv<V>(gv[u], dpost + (size_t)(r < rl ? r : 0) * cd + c, r < rl);
            ldv<V>(iv[u], in + (size_t)(r < rl ? r : 0) * P, r < rl);   /* rows from r1: pre's taps only */
        }
#pragma unroll
        for (int u = 0; u < G; u++) {
            int r = rb + u;
            if (r >= re) break;
            float dp[V];
#pragma unroll
            for (int j = 0; j < V; j++) {
                float p;
                if (rc) {   /* k_conv_fwd_rows's sum: its terms in its order, the same bits */
                    float a = b0[j];
#pragma unroll
                    for (int k = 0; k < K; k++)
                        if (tr - (K - 1) + k >= 0) a += wk[j][k] * (k < K - 1 ? inw[k < K - 1 ? k : 0][j] : iv[u][j]);
                    p = a;
                } else
                    p = pv[u][j];
                float sg = sigmoid_dev(p);
                dp[j] = gv[u][j] * sg * (1.0f + p * (1.0f - sg));   /* k_conv_bwd_fused's dp */
            }
            if (r < r1) {   /* the weight and bias sums: acc[k] += dp[r] in[r - K+1+k] inside the sequence */
                int t = tr;
#pragma unroll
                for (int j = 0; j < V; j++) {
                    bs[j] += dp[j];
#pragma unroll
                    for (int k = 0; k < K; k++)
                        if (t - (K - 1) + k >= 0)
                            acc[j][k] = fmaf(dp[j], k < K - 1 ? inw[k < K - 1 ? k : 0][j] : iv[u][j], acc[j][k]);
                }
            }
            int d = r - (K - 1);   /* din of row d: its last tap's dp (row r) has arrived */
            if (d >= r0) {
                int t = td;
                td = td + 1 == T ? 0 : td + 1;
                float o[V];
#pragma unroll
                for (int j = 0; j < V; j++) {
                    float a = 0.0f;
#pragma unroll
                    for (int k = 0; k < K; k++)   /* dp[d + K-1-k] = dp of row r - k */
                        if (t + K - 1 - k < T) a += wk[j][k] * (k == 0 ? dp[j] : dpw[k == 0 ? 0 : K - 1 - k][j]);
                    o[j] = a;
                }
                size_t e = (size_t)d * P + di + c;
                if (dproj16) {   /* din's only reader: in_proj */
                    __nv_bfloat162 pk[V / 2];
#pragma unroll
                    for (int j = 0; j < V / 2; j++) pk[j] = __floats2bfloat162_rn(o[2 * j], o[2 * j + 1]);
                    if (V == 4) *(uint2 *)(dproj16 + e) = *(const uint2 *)pk;
                    else *(__nv_bfloat162 *)(dproj16 + e) = pk[0];
                } else if (V == 4)
                    *(float4 *)(dproj + e) = make_float4(o[0], o[1], o[V > 2 ? 2 : 0], o[V > 3 ? 3 : 0]);
                else
                    *(float2 *)(dproj + e) = make_float2(o[0], o[V > 1 ? 1 : 0]);
            }
#pragma unroll
            for (int j = 0; j < V; j++) {
#pragma unroll
                for (int q = 0; q + 1 < K - 1; q++) {
                    dpw[q][j] = dpw[q + 1][j];
                    inw[q][j] = inw[q + 1][j];
                }
                dpw[K - 2][j] = dp[j];
                inw[K - 2][j] = iv[u][j];
            }
            tr = tr + 1 == T ? 0 : tr + 1;
        }
    }
    /* the runs' sums in warp order, then the block's slice sums: part[slice][c K + k], bpart[slice][c] */
#pragma unroll
    for (int j = 0; j < V; j++) {
        bred[wp][lane * V + j] = bs[j];
#pragma unroll
        for (int k = 0; k < K; k++) wred[wp][(lane * V + j) * K + k] = acc[j][k];
    }
    __syncthreads();
    int cb = blockIdx.x * BC;   /* the block's first channel */
    for (int e = threadIdx.x; e < BC * K; e += CB_W * 32) {
        if (cb * K + e >= cd * K) break;
        float s = wred[0][e];
#pragma unroll
        for (int q = 1; q < CB_W; q++) s += wred[q][e];
        part[(size_t)blockIdx.y * cd * K + (size_t)cb * K + e] = s;
    }
    if (bpart)
        for (int e = threadIdx.x; e < BC; e += CB_W * 32) {
            if (cb + e >= cd) break;
            float s = bred[0][e];
#pragma unroll
            for (int q = 1; q < CB_W; q++) s += bred[q][e];
            bpart[(size_t)blockIdx.y * cd + cb + e] = s;
        }
}

/* the conv weight sums' slices of rows: their count, *rows_per rows each (at most CS_SPLIT_MAX) */
static int conv_slices(int R, int *rows_per) {
    int ns = cdiv(R, 64) < CS_SPLIT_MAX ? cdiv(R, 64) : CS_SPLIT_MAX;
    *rows_per = cdiv(R, ns);
    return cdiv(R, *rows_per);
}
/* the slices' sums in order into the weight's (and, bpart not NULL, the bias's) gradient */
static void conv_wsum_fin(const float *part, const float *bpart, int ns, int cd, int K, float *g_conv_w, float *g_conv_b) {
    k_colsum_fin<<<cdiv(cd * K, 256), 256, 0, s_stream>>>(part, ns, cd * K, g_conv_w);
    zb_cuda_m2_check_launch("conv weight gradient");
    if (bpart) {
        k_colsum_fin<<<cdiv(cd, 256), 256, 0, s_stream>>>(bpart, ns, cd, g_conv_b);
        zb_cuda_m2_check_launch("conv bias gradient");
    }
}

/* the conv backward over channel vectors (k_conv_bwd_vec): its V for this shape, 0 where it does not run
 * (K = 4 only, the template's; cd, di, P multiples of 4 and the buffers 16-byte aligned) */
static int conv_bwd_vec_for(const zb_mamba2_dims *m, const float *g_conv_w, const float *proj, const float *xbc_pre,
                            const float *dxbc, const float *dproj, const __nv_bfloat16 *dproj16) {
    int cd = zb_mamba2_conv_dim(m), P = zb_mamba2_in_proj_rows(m);
    bool al = ((uintptr_t)proj | (uintptr_t)xbc_pre | (uintptr_t)dxbc) % 16 == 0 &&
              (dproj16 ? (uintptr_t)dproj16 % 8 == 0 : (uintptr_t)dproj % 16 == 0);
    bool ok = m2_fused_path() && g_conv_w && m->conv_k == 4 && cd % 4 == 0 && m->d_inner % 4 == 0 && P % 4 == 0 && al;
    return ok ? conv_bwd_vec() : 0;
}

/* the one-pass conv backward (k_conv_bwd_one) runs for this shape */
static bool conv_bwd_one_ok(const zb_mamba2_dims *m, const float *g_conv_w) {
    return m2_fused_path() && conv_bwd_one() && g_conv_w && m->conv_k <= M2_KMAX;
}

/* dproj16 (not NULL: needs m2_fused_path, the one-pass or the fused din kernel): din written there in
 * bf16 instead of into dproj. pre_stored false: the forward left xbc_pre unwritten (conv_pre_recompute):
 * k_conv_bwd_vec recomputes it, or (where that kernel does not run) the conv forward writes it first. */
static void conv_backward(const zb_mamba2_dims *m, const float *conv_w, const float *conv_b, const float *proj,
                          float *xbc_pre, bool pre_stored, const float *dxbc, float *dpre, float *dproj,
                          __nv_bfloat16 *dproj16, float *g_conv_w, float *g_conv_b, float *work, int B, int T) {
    size_t N = (size_t)B * T;
    if (N == 0) return;
    int cd = zb_mamba2_conv_dim(m), K = m->conv_k, P = zb_mamba2_in_proj_rows(m), di = m->d_inner;
    bool fused = m2_fused_path();
    if (int V = conv_bwd_vec_for(m, g_conv_w, proj, xbc_pre, dxbc, dproj, dproj16)) {
        int R = (int)N, rows_per, ns = conv_slices(R, &rows_per);
        float *bpart = g_conv_b ? work + (size_t)ns * cd * K : NULL;   /* as the fused path below */
        if (V == 4)
            k_conv_bwd_vec<4, 4, 2><<<dim3(cdiv(cd, 128), ns), CB_W * 32, 0, s_stream>>>(
                cd, P, di, T, R, rows_per, conv_w, conv_b, pre_stored ? xbc_pre : NULL, dxbc, proj, dproj, dproj16,
                work, bpart);
        else
            k_conv_bwd_vec<4, 2, 4><<<dim3(cdiv(cd, 64), ns), CB_W * 32, 0, s_stream>>>(
                cd, P, di, T, R, rows_per, conv_w, conv_b, pre_stored ? xbc_pre : NULL, dxbc, proj, dproj, dproj16,
                work, bpart);
        zb_cuda_m2_check_launch("k_conv_bwd_vec");
        conv_wsum_fin(work, bpart, ns, cd, K, g_conv_w, g_conv_b);
        return;
    }
    if (!pre_stored)   /* the kernels below read pre (post into dpre: overwritten or unused below) */
        conv_fwd(m, conv_w, conv_b, proj, NULL, 0, NULL, xbc_pre, dpre, B, T);
    if (conv_bwd_one_ok(m, g_conv_w)) {
        int R = (int)N, rows_per, ns = conv_slices(R, &rows_per);
        float *bpart = g_conv_b ? work + (size_t)ns * cd * K : NULL;   /* as the fused path below */
        k_conv_bwd_one<<<dim3(cdiv(cd, 128), ns), 128, 0, s_stream>>>(cd, K, P, di, T, R, rows_per, conv_w, xbc_pre,
                                                                      dxbc, proj, dproj, dproj16, work, bpart);
        zb_cuda_m2_check_launch("k_conv_bwd_one");
        conv_wsum_fin(work, bpart, ns, cd, K, g_conv_w, g_conv_b);
        return;
    }
    if (fused) {
        k_conv_bwd_fused<<<dim3((unsigned)N, cdiv(cd, 256)), 256, 0, s_stream>>>(cd, K, P, di, T, conv_w, xbc_pre,
                                                                                dxbc, dpre, dproj, dproj16);
        zb_cuda_m2_check_launch("k_conv_bwd_fused");
    } else {
        k_conv_bwd_pre<<<blocks_for(N * cd, 256), 256, 0, s_stream>>>(N * cd, xbc_pre, dxbc, dpre);
        zb_cuda_m2_check_launch("k_conv_bwd_pre");
        k_conv_bwd_in<<<dim3((unsigned)N, cdiv(cd, 256)), 256, 0, s_stream>>>(cd, K, P, di, T, conv_w, dpre, dproj);
        zb_cuda_m2_check_launch("k_conv_bwd_in");
    }
    bool bias_done = false;
    if (g_conv_w && zb_cuda_m2_new_path() && K <= M2_KMAX) {
        int R = (int)N, rows_per, ns = conv_slices(R, &rows_per);
        /* the fused path: the bias's slices too, after the weight's in work (conv_work_cols) */
        float *bpart = fused && g_conv_b ? work + (size_t)ns * cd * K : NULL;
        k_conv_wgrad_part<<<dim3(cdiv(cd, 128), ns), 128, 0, s_stream>>>(cd, K, P, di, T, R, rows_per, dpre, proj,
                                                                         work, bpart);
        zb_cuda_m2_check_launch("k_conv_wgrad_part");
        conv_wsum_fin(work, bpart, ns, cd, K, g_conv_w, g_conv_b);
        bias_done = bpart != NULL;
    } else {
        f_conv_w fw = {dpre, proj, cd, K, P, di, T};
        colsum(fw, (int)N, cd * K, work, g_conv_w, "conv weight gradient");
    }
    if (!bias_done) {
        f_cols fb = {dpre, cd, 0};
        colsum(fb, (int)N, cd, work, g_conv_b, "conv bias gradient");
    }
}

extern "C" void zb_cuda_m2_conv_backward(const zb_mamba2_dims *m, const float *conv_w, const float *proj,
                                         const float *xbc_pre, const float *dxbc, float *dpre, float *dproj,
                                         float *g_conv_w, float *g_conv_b, float *work, int B, int T) {
    conv_backward(m, conv_w, NULL, proj, (float *)xbc_pre, true, dxbc, dpre, dproj, NULL, g_conv_w, g_conv_b, work, B,
                  T);
}

/* ---- sizes and layouts ------------------------------------------------------------------------- */

typedef struct {
    float *proj, *xbc_pre, *xbc, *dt, *y, *rstd, *o, *states, *coef;
} m2_acts;

static size_t n_chunks(const zb_mamba2_dims *m, int T) { return (size_t)((T + m->chunk - 1) / m->chunk); }
static size_t state_block(const zb_mamba2_dims *m, int B, int T) {
    return (size_t)B * n_chunks(m, T) * m->nheads * m->headdim * m->d_state;
}

/* the CPU's layout (core/mamba2.c acts_layout), then the SSD coefficients */
static m2_acts acts_of(const zb_mamba2_dims *m, float *a, int B, int T) {
    size_t N = (size_t)B * T, P = (size_t)zb_mamba2_in_proj_rows(m), cd = (size_t)zb_mamba2_conv_dim(m),
           di = (size_t)m->d_inner;
    m2_acts s;
    s.proj = a; a += N * P;
    s.xbc_pre = a; a += N * cd;
    s.xbc = a; a += N * cd;
    s.dt = a; a += N * m->nheads;
    s.y = a; a += N * di;
    s.rstd = a; a += N * norm_groups(m);
    s.o = a; a += N * di;
    s.states = a; a += state_block(m, B, T);
    s.coef = a;
    return s;
}

/* The SSD's chunk length in training (the mixer's forward / backward and their buffers). Any
 * length computes the same recurrence (SPEC.md §4; the HF fixture test runs chunks 1, 5 and 64),
 * so it is the kernels' choice: with the scan's 64-row tiles a 64-row chunk does the least work.
 * Per 256 tokens, in 64^3 tile products: chunk 256 forward 28, backward 104 (the causal L x L
 * part grows with L: 10 tile pairs per chunk, each recomputed by the dx, dC, dB and scalar
 * kernels); chunk 64 forward 16, backward 56, the states 4x more (B T/64 nh hd ds floats, 134 MB
 * per Zebra-1B layer at 8 x 2048). ZB_M2_CHUNK=n caps it at n instead (0: the config's);
 * ZB_SSD=old keeps the config's. Generation (step_rows) keeps the config's chunk. */
static zb_mamba2_dims run_dims(const zb_mamba2_dims *m) {
    static int cap = -1;
    if (cap < 0) {
        const char *e = getenv("ZB_M2_CHUNK");
        cap = e ? atoi(e) : M2_TB;
        if (cap < 0) cap = 0;
    }
    zb_mamba2_dims r = *m;
    if (zb_cuda_m2_new_path() && cap > 0 && r.chunk > cap) r.chunk = cap;
    return r;
}

extern "C" size_t zb_cuda_mamba2_act_floats(const zb_mamba2_dims *m_cfg, int d, int B, int T) {
    (void)d;
    zb_mamba2_dims md = run_dims(m_cfg);
    const zb_mamba2_dims *m = &md;
    size_t N = (size_t)B * T, P = (size_t)zb_mamba2_in_proj_rows(m), cd = (size_t)zb_mamba2_conv_dim(m),
           di = (size_t)m->d_inner, nh = (size_t)m->nheads;
    return N * (P + 2 * cd + nh + 2 * di + (size_t)norm_groups(m)) + state_block(m, B, T) + 4 * N * nh;
}

static size_t colsum_cols(const zb_mamba2_dims *m) {
    /* the conv weight's K columns per channel and the bias's one (k_conv_wgrad_part) */
    size_t c = (size_t)m->d_inner, k = (size_t)zb_mamba2_conv_dim(m) * (m->conv_k + 1);
    if (k > c) c = k;
    if ((size_t)m->nheads > c) c = (size_t)m->nheads;
    return c;
}

/* dproj [N,P] | dxbc [N,cd] | dy [N,di] | ddt [N,nh] (the CPU's prefix) | dpre [N,cd] |
 * column-sum work | SSD backward work */
extern "C" size_t zb_cuda_mamba2_scratch_floats(const zb_mamba2_dims *m_cfg, int d, int B, int T) {
    (void)d;
    zb_mamba2_dims md = run_dims(m_cfg);
    const zb_mamba2_dims *m = &md;
    size_t N = (size_t)B * T, P = (size_t)zb_mamba2_in_proj_rows(m), cd = (size_t)zb_mamba2_conv_dim(m);
    return N * (P + 2 * cd + (size_t)m->d_inner + (size_t)m->nheads) +
           zb_cuda_m2_colsum_floats((int)colsum_cols(m)) + zb_cuda_m2_ssd_bwd_floats(m, B, T);
}

/* Chunk start states a step of R rows keeps: one sequence of R rows, and 64 more so that a
 * prefill of many short sequences runs in few groups (step_rows); none for the recurrence. */
static size_t step_state_chunks(const zb_mamba2_dims *m, size_t R) { return (R + m->chunk - 1) / m->chunk + 64; }

/* proj [R,P] | o [R,di] | xbc [R,cd] | dt [R,nh] | y [R,di] | rstd [R,ng] | coef [4 R nh] |
 * chunk start states [step_state_chunks, nh, hd, ds] (n > 1), R = B n */
extern "C" size_t zb_cuda_mamba2_step_scratch_floats(const zb_mamba2_dims *m, int d, int n, int B) {
    (void)d;
    size_t R = (size_t)B * n, P = (size_t)zb_mamba2_in_proj_rows(m), cd = (size_t)zb_mamba2_conv_dim(m),
           di = (size_t)m->d_inner, nh = (size_t)m->nheads;
    size_t st = n > 1 ? step_state_chunks(m, R) * nh * m->headdim * m->d_state : 0;
    return R * (P + 2 * di + cd + 5 * nh + (size_t)norm_groups(m)) + st;
}

/* 1: the mixer backward's dproj in bf16 (the default), 0: float32 (ZB_M2_DPROJ16=0), -1: the environment */
M2_SWITCH(g_dproj16, zb_cuda_m2_dproj16)
static bool dproj16_on(void) { return zb_cuda_env_switch(&g_dproj16, "ZB_M2_DPROJ16", "0"); }

/* The training mixer's gated-norm output o (acts) stored in bf16 (the first half of its float32
 * region), the only form out_proj's products take in the bf16 CONVERT mode (each value the float32
 * one rounded once, as their conversion did: the same bits); ZB_M2_O16=0 float32. The forward and
 * its backward decide alike (the mode, the environment). zb_cuda_m2_o16: the tests' switch. */
M2_SWITCH(g_o16, zb_cuda_m2_o16)
static bool o_bf16(void) {
    return zb_cuda_env_switch(&g_o16, "ZB_M2_O16", "0") && backend_products() && zb_cuda_precision() == ZB_PREC_BF16 &&
           zb_cuda_bf16_gemm_impl() == ZB_BF16_GEMM_CONVERT;
}

/* ---- the mixer ------------------------------------------------------------------------------------ */

extern "C" void zb_cuda_mamba2_forward(const zb_mamba2_dims *m_cfg, int d, float eps, const zb_mamba2_weights *w,
                                       const float *x, float *out, float *acts, int B, int T) {
    zb_mamba2_dims md = run_dims(m_cfg);
    const zb_mamba2_dims *m = &md;
    int N = B * T, P = zb_mamba2_in_proj_rows(m), di = m->d_inner;
    if (N <= 0) return;
    m2_acts a = acts_of(m, acts, B, T);
    zb_cuda_m2_prof(-1);
    proj_forward(a.proj, x, w->in_proj, N, d, P);
    zb_cuda_m2_prof(ZB_MIXP_M2_IN_PROJ);
    zb_cuda_m2_dt_forward(m, w->dt_bias, a.proj, a.dt, N);
    conv_fwd(m, w->conv_w, w->conv_b, a.proj, NULL, 0, NULL, conv_pre_recompute(m, a.proj) ? NULL : a.xbc_pre, a.xbc,
             B, T);
    zb_cuda_m2_prof(ZB_MIXP_M2_CONV);
    zb_cuda_m2_ssd_coef(m, w->A_log, a.dt, a.coef, B, T);
    zb_cuda_m2_prof(ZB_MIXP_M2_COEF);
    zb_cuda_m2_ssd_forward(m, w->D, a.xbc, a.coef, a.y, a.states, NULL, NULL, 0, B, T);   /* marks its own */
    bool o16 = o_bf16();
    gated_norm_forward(m, w->norm_w, eps, a.y, a.proj, P, a.o, o16 ? (__nv_bfloat16 *)a.o : NULL, a.rstd, N);
    zb_cuda_m2_prof(ZB_MIXP_M2_NORM);
    if (o16) zb_cuda_matmul_forward_in16(out, (const uint16_t *)a.o, w->out_proj, N, di, d);
    else proj_forward(out, a.o, w->out_proj, N, di, d);
    zb_cuda_m2_prof(ZB_MIXP_M2_OUT_PROJ);
}

extern "C" void zb_cuda_mamba2_backward(const zb_mamba2_dims *m_cfg, int d, float eps, const zb_mamba2_weights *w,
                                        zb_mamba2_weights *g, const float *x, const float *dout, float *dx,
                                        float *acts, float *scratch, int B, int T) {
    zb_mamba2_dims md = run_dims(m_cfg);
    const zb_mamba2_dims *m = &md;
    (void)eps;
    int N = B * T, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner,
        nh = m->nheads;
    if (N <= 0) return;
    m2_acts a = acts_of(m, acts, B, T);
    float *dproj = scratch, *dxbc = dproj + (size_t)N * P, *dy = dxbc + (size_t)N * cd,
          *ddt = dy + (size_t)N * di, *dpre = ddt + (size_t)N * nh, *cwork = dpre + (size_t)N * cd,
          *swork = cwork + zb_cuda_m2_colsum_floats((int)colsum_cols(m));
    zb_cuda_m2_prof(-1);
    /* out = o out_proj^T (dy overwritten: zeroed, then the accumulating product) */
    cudaMemsetAsync(dy, 0, (size_t)N * di * sizeof(float), s_stream);
    if (o_bf16()) zb_cuda_matmul_backward_in16(dy, g->out_proj, dout, (const uint16_t *)a.o, w->out_proj, N, di, d);
    else proj_backward(dy, g->out_proj, dout, a.o, w->out_proj, N, di, d);
    zb_cuda_m2_prof(ZB_MIXP_M2_OUT_PROJ_B);
    /* dproj's only reader is in_proj's backward: in the bf16 mode its producers (the norm, dt and conv
     * backward) write it in bf16 straight into that product's operand (zb_cuda_dout16; each value
     * the float32 one rounded once, as the product's conversion did: the same bits), where the
     * one-pass kernels run; ZB_M2_DPROJ16=0 float32 and the conversion. */
    __nv_bfloat16 *dp16 = dproj16_on() && backend_products() && gnorm_bwd_fused_ok(m) && m2_fused_path()
                              ? (__nv_bfloat16 *)zb_cuda_dout16(dproj, N, P)
                              : NULL;
    /* gated norm: dy <- dL/dy, dz into dproj's z columns */
    gated_norm_backward(m, w->norm_w, a.y, a.proj, P, a.rstd, dy, dproj, dp16, g->norm_w, cwork, N);
    zb_cuda_m2_prof(ZB_MIXP_M2_NORM_B);
    zb_cuda_m2_ssd_backward(m, w->A_log, w->D, a.xbc, a.coef, a.states, dy, dxbc, ddt, g->A_log, g->D, swork,
                            B, T);   /* marks its own pieces */
    dt_backward(m, w->dt_bias, a.proj, ddt, dproj, dp16, g->dt_bias, cwork, N);
    zb_cuda_m2_prof(ZB_MIXP_M2_DT_B);
    conv_backward(m, w->conv_w, w->conv_b, a.proj, a.xbc_pre, !conv_pre_recompute(m, a.proj), dxbc, dpre, dproj, dp16,
                  g->conv_w, g->conv_b, cwork, B, T);
    zb_cuda_m2_prof(ZB_MIXP_M2_CONV_B);
    /* proj = x in_proj^T */
    proj_backward(dx, g->in_proj, dproj, x, w->in_proj, N, d, P);
    zb_cuda_m2_prof(ZB_MIXP_M2_IN_PROJ_B);
}

/* Everything between in_proj and out_proj for B sequences of n rows with their states:
 * n == 1 the recurrent step (row i's state: seqs[i], or i), else the chunked form from the
 * cached state (seqs must be NULL). */
static void step_rows(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                      const zb_mamba2_lin *lin, const float *x, float *out, float *state, const int *seqs,
                      int n, int B, float *scratch, int sbf) {
    int R = B * n, P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m), di = m->d_inner,
        nh = m->nheads;
    if (R <= 0) return;
    size_t sf = zb_mamba2_state_floats(m), conv = (size_t)cd * (m->conv_k - 1);
    float *proj = scratch, *o = proj + (size_t)R * P, *xbc = o + (size_t)R * di, *dt = xbc + (size_t)R * cd,
          *y = dt + (size_t)R * nh, *rstd = y + (size_t)R * di, *coef = rstd + (size_t)R * norm_groups(m),
          *states = coef + 4 * (size_t)R * nh;
    linear(proj, x, lin->in_proj, R, d, P);
    if (n == 1 && zb_cuda_dec_fuse()) {
        /* decode: conv + dt + conv state in one kernel, the recurrence + gated norm in another
         * where the shapes allow (mamba2_decode.cu; the same values as the path below) */
        zb_cuda_m2_decode_conv(m, w->dt_bias, w->conv_w, w->conv_b, proj, state, seqs, xbc, dt, B);
        if (zb_cuda_m2_decode_ssd_norm_ok(m, xbc, state + conv, sf))
            zb_cuda_m2_decode_ssd_norm(m, w->A_log, w->D, w->norm_w, eps, xbc, dt, proj, P, state + conv, sf, seqs, o,
                                       B, sbf);
        else {
            zb_cuda_m2_ssd_step_st(m, w->A_log, w->D, xbc, dt, state + conv, sf, seqs, y, B, sbf);
            zb_cuda_m2_gated_norm_forward(m, w->norm_w, eps, y, proj, P, o, rstd, R);
        }
        linear(out, o, lin->out_proj, R, di, d);
        return;
    }
    zb_cuda_m2_dt_forward(m, w->dt_bias, proj, dt, R);
    conv_fwd(m, w->conv_w, w->conv_b, proj, state, sf, seqs, NULL, xbc, B, n);
    conv_state_update(m, proj, state, sf, seqs, B, n);
    if (n == 1)
        zb_cuda_m2_ssd_step_st(m, w->A_log, w->D, xbc, dt, state + conv, sf, seqs, y, B, sbf);
    else {   /* the chunked scan, in groups of sequences whose chunk states fit the scratch */
        int per = (n + m->chunk - 1) / m->chunk, grp = (int)(step_state_chunks(m, (size_t)R) / per);
        for (int i0 = 0; i0 < B; i0 += grp) {
            int g = B - i0 < grp ? B - i0 : grp;
            size_t r0 = (size_t)i0 * n;
            zb_cuda_m2_ssd_coef(m, w->A_log, dt + r0 * nh, coef, g, n);
            zb_cuda_m2_ssd_forward_st(m, w->D, xbc + r0 * cd, coef, y + r0 * di, states,
                                      state + (size_t)i0 * sf + conv, state + (size_t)i0 * sf + conv, sf, g, n, sbf);
        }
    }
    zb_cuda_m2_gated_norm_forward(m, w->norm_w, eps, y, proj, P, o, rstd, R);
    linear(out, o, lin->out_proj, R, di, d);
}

extern "C" void zb_cuda_mamba2_step_lin(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                                        const zb_mamba2_lin *lin, const float *x, float *out, float *state,
                                        int n, int B, float *scratch, int state_bf16) {
    step_rows(m, d, eps, w, lin, x, out, state, NULL, n, B, scratch, state_bf16);
}

extern "C" void zb_cuda_mamba2_step(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                                    const float *x, float *out, float *state, int n, int B, float *scratch) {
    zb_mamba2_lin lin = {zb_wt_of_f32(w->in_proj), zb_wt_of_f32(w->out_proj)};
    step_rows(m, d, eps, w, &lin, x, out, state, NULL, n, B, scratch, 0);
}

extern "C" void zb_cuda_mamba2_decode_seqs(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                                           const zb_mamba2_lin *lin, const float *x, float *out, float *state,
                                           const int *seqs, int nb, float *scratch, int state_bf16) {
    step_rows(m, d, eps, w, lin, x, out, state, seqs, 1, nb, scratch, state_bf16);
}
