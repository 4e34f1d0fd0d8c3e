/* cuda_ops.cu — RMSNorm, RoPE, SwiGLU, embedding and small elementwise kernels; see cuda_ops.h.
 * Row kernels accumulate their sums in double, as the CPU kernels do, so the two agree to a few
 * float32 roundings of the result. */
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "cuda_pdl.cuh"
#include "cuda_reduce.cuh"

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
                               i += (size_t)gridDim.x * blockDim.x)

/* threads for a row kernel over C columns: a multiple of 32, 32..256 */
static unsigned row_threads(int C) {
    unsigned t = 32;
    while (t < 256 && t < (unsigned)C) t *= 2;
    return t;
}

/* ---- RMSNorm --------------------------------------------------------------------------- */

/* the output as float32, or rounded to bf16 (the operand of the next products only) */
__device__ static inline void store_out(float *o, float v) { *o = v; }
__device__ static inline void store_out(__nv_bfloat16 *o, float v) { *o = __float2bfloat16_rn(v); }

/* rows up to ROW_HELD x 256 wide are held in registers by the row kernels below: every load issued
 * before the first use (a loop that loads, sums and stores waits for memory at each step: S6R2's
 * ncu had k_add_rmsnorm at 10 us and k_rmsnorm_fwd at 9.3 us per 4096-wide decode row). The same
 * sums in the same order as the loops: the same bits. pre (a recorded decode step, where the norm
 * weights do not change: zb_cuda_gemv_preload): w loaded before the PDL wait. */
#define ROW_HELD 16
__device__ static inline void row_held(float (&v)[ROW_HELD], const float *p, int C) {
#pragma unroll
    for (int k = 0; k < ROW_HELD; k++) {
        int i = threadIdx.x + k * blockDim.x;
        v[k] = i < C ? p[i] : 0.f;
    }
}

template <typename T>
__global__ void k_rmsnorm_fwd(T *out, float *rstd, const float *x, const float *w, int C, float eps, int pre) {
    pdl_launch();   /* a decode GEMV after the norm may start streaming its weights (cuda_pdl.cuh) */
    size_t row = blockIdx.x;
    const float *xr = x + row * C;
    T *o = out + row * C;
    double ss = 0;
    if (C <= ROW_HELD * (int)blockDim.x) {
        float v[ROW_HELD], wv[ROW_HELD];
        if (pre) row_held(wv, w, C);
        pdl_wait();   /* launched with PDL (zb_cuda_rmsnorm_forward): x of the kernel before */
        row_held(v, xr, C);
        if (!pre) row_held(wv, w, C);
#pragma unroll
        for (int k = 0; k < ROW_HELD; k++)
            if (threadIdx.x + k * blockDim.x < C) ss += (double)v[k] * v[k];
        ss = zb_block_sum_d(ss);
        float r = (float)(1.0 / sqrt(ss / C + eps));
        if (rstd && threadIdx.x == 0) rstd[row] = r;
#pragma unroll
        for (int k = 0; k < ROW_HELD; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < C) store_out(o + i, wv[k] * (v[k] * r));
        }
        return;
    }
    pdl_wait();
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = zb_block_sum_d(ss);
    float r = (float)(1.0 / sqrt(ss / C + eps));
    if (rstd && threadIdx.x == 0) rstd[row] = r;
    for (int i = threadIdx.x; i < C; i += blockDim.x) store_out(o + i, w[i] * (xr[i] * r));
}

extern "C" void zb_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C,
                                        float eps) {
    if (N <= 0) return;
    pdl_go(k_rmsnorm_fwd<float>, dim3(N), dim3(row_threads(C)), 0, zb_cuda_stream(), out, rstd, x, w, C, eps,
           zb_cuda_gemv_preload());
    ZB_CUDA_LAUNCHED("rmsnorm_forward");
}

extern "C" void zb_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const float *w, int N, int C,
                                             float eps) {
    if (N <= 0) return;
    k_rmsnorm_fwd<__nv_bfloat16><<<N, row_threads(C), 0, zb_cuda_stream()>>>((__nv_bfloat16 *)out, rstd, x, w, C, eps,
                                                                            0);
    ZB_CUDA_LAUNCHED("rmsnorm_forward_bf16");
}

/* x += a, then out = rmsnorm(x) (generation's residual step and the next norm in one pass) */
__global__ void k_add_rmsnorm(float *x, const float *a, float *out, const float *w, int C, float eps, int pre) {
    pdl_launch();   /* as k_rmsnorm_fwd */
    size_t row = blockIdx.x;
    float *xr = x + row * C, *o = out + row * C;
    const float *ar = a + row * C;
    double ss = 0;
    if (C <= ROW_HELD * (int)blockDim.x) {   /* held in registers, as k_rmsnorm_fwd */
        float v[ROW_HELD], wv[ROW_HELD];
        if (pre) row_held(wv, w, C);
        pdl_wait();
#pragma unroll
        for (int k = 0; k < ROW_HELD; k++) {
            int i = threadIdx.x + k * blockDim.x;
            v[k] = i < C ? xr[i] + ar[i] : 0.f;
        }
        if (!pre) row_held(wv, w, C);
#pragma unroll
        for (int k = 0; k < ROW_HELD; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < C) {
                xr[i] = v[k];
                ss += (double)v[k] * v[k];
            }
        }
        ss = zb_block_sum_d(ss);
        float r = (float)(1.0 / sqrt(ss / C + eps));
#pragma unroll
        for (int k = 0; k < ROW_HELD; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < C) o[i] = wv[k] * (v[k] * r);
        }
        return;
    }
    pdl_wait();
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = xr[i] + ar[i];
        xr[i] = v;
        ss += (double)v * v;
    }
    ss = zb_block_sum_d(ss);
    float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = w[i] * (xr[i] * r);
}

extern "C" void zb_cuda_add_rmsnorm(float *x, const float *a, float *out, const float *w, int N, int C, float eps) {
    if (N <= 0) return;
    pdl_go(k_add_rmsnorm, dim3(N), dim3(row_threads(C)), 0, zb_cuda_stream(), x, a, out, w, C, eps,
           zb_cuda_gemv_preload());
    ZB_CUDA_LAUNCHED("add_rmsnorm");
}

/* dx_i += r w_i dy_i - (r^3 / C) x_i sum_j w_j dy_j x_j (ops.c) */
__global__ void k_rmsnorm_bwd_dx(float *dx, const float *dout, const float *x, const float *w, const float *rstd,
                                 int C) {
    size_t row = blockIdx.x;
    const float *xr = x + row * C, *dy = dout + row * C;
    float r = rstd[row];
    double dot = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dot += (double)w[i] * dy[i] * xr[i];
    dot = zb_block_sum_d(dot);
    float k = (float)(dot * r * r * r / C);
    float *d = dx + row * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) d[i] += r * w[i] * dy[i] - k * xr[i];
}

/* dw_i += sum_n dy_ni x_ni r_n: 256 columns x a slice of rows per block, atomics across slices */
__global__ void k_rmsnorm_bwd_dw(float *dw, const float *dout, const float *x, const float *rstd, int N, int C,
                                 int rows_per) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C) return;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float s = 0;
    for (int n = r0; n < r1; n++) s += dout[(size_t)n * C + i] * x[(size_t)n * C + i] * rstd[n];
    atomicAdd(&dw[i], s);
}

/* Both at once (one read of dout and x instead of two): a block takes RB rows one after the
 * other (dx as k_rmsnorm_bwd_dx), each thread keeping its columns' dw sums (at most BWD_COLS per
 * thread) over them, then one atomic add per column and block. */
#define BWD_COLS 16
#define BWD_ROWS 16
__global__ void k_rmsnorm_bwd_fused(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                    const float *rstd, int N, int C) {
    float acc[BWD_COLS];
#pragma unroll
    for (int k = 0; k < BWD_COLS; k++) acc[k] = 0.0f;
    int r0 = blockIdx.x * BWD_ROWS, r1 = min(N, r0 + BWD_ROWS);
    for (int row = r0; row < r1; row++) {
        const float *xr = x + (size_t)row * C, *dy = dout + (size_t)row * C;
        float r = rstd[row];
        double dot = 0;
        for (int i = threadIdx.x; i < C; i += blockDim.x) dot += (double)w[i] * dy[i] * xr[i];
        dot = zb_block_sum_d(dot);
        float kk = (float)(dot * r * r * r / C);
        float *d = dx + (size_t)row * C;
#pragma unroll
        for (int k = 0; k < BWD_COLS; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < C) {
                d[i] += r * w[i] * dy[i] - kk * xr[i];
                acc[k] += dy[i] * xr[i] * r;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < BWD_COLS; k++) {
        int i = threadIdx.x + k * blockDim.x;
        if (i < C) atomicAdd(&dw[i], acc[k]);
    }
}

/* ZB_CUDA_NORM_BWD=fused takes it; the default stays the two kernels: in the 1B step (S5R2) the
 * fused one was slower (block backward 90.3 -> 99.1 ms: 16 rows one after the other per block
 * keep too few loads in flight) */
static int g_norm_fused = -1;
extern "C" void zb_cuda_rmsnorm_bwd_fused(int on) { g_norm_fused = on < 0 ? -1 : on != 0; }

extern "C" void zb_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                         const float *rstd, int N, int C) {
    if (N <= 0) return;
    if (g_norm_fused < 0) {
        const char *e = getenv("ZB_CUDA_NORM_BWD");
        g_norm_fused = e && !strcmp(e, "fused");
    }
    unsigned th = row_threads(C);
    if (g_norm_fused && dx && dw && (size_t)C <= (size_t)BWD_COLS * th) {
        k_rmsnorm_bwd_fused<<<(N + BWD_ROWS - 1) / BWD_ROWS, th, 0, zb_cuda_stream()>>>(dx, dw, dout, x, w, rstd, N, C);
        ZB_CUDA_LAUNCHED("rmsnorm_backward");
        return;
    }
    if (dx) {
        k_rmsnorm_bwd_dx<<<N, row_threads(C), 0, zb_cuda_stream()>>>(dx, dout, x, w, rstd, C);
        ZB_CUDA_LAUNCHED("rmsnorm_backward dx");
    }
    if (dw) {
        int rows_per = 64;
        dim3 grid((C + 255) / 256, (N + rows_per - 1) / rows_per);
        k_rmsnorm_bwd_dw<<<grid, 256, 0, zb_cuda_stream()>>>(dw, dout, x, rstd, N, C, rows_per);
        ZB_CUDA_LAUNCHED("rmsnorm_backward dw");
    }
}

/* ---- RoPE -------------------------------------------------------------------------------- */

/* The table travels by value (dim + inv_freq: about 1 KB of kernel arguments). */
typedef struct { int dim; float inv_freq[ZB_ROPE_MAX_DIM / 2]; float mscale; } rope_arg;

static rope_arg rope_arg_of(const zb_rope *r) {
    rope_arg a;
    a.dim = r->dim;
    for (int i = 0; i < r->dim / 2; i++) a.inv_freq[i] = r->inv_freq[i];
    a.mscale = r->mscale;   /* YaRN (SPEC §3); 1 otherwise */
    return a;
}

#define ROPE_WARPS 8
/* One warp per (row, head): the head's rotary values staged in shared memory (the interleaved
 * layout reads and writes different places), then each lane rotates pairs. Row i is at position
 * pos0 + i % T (pos == NULL) or pos[i / T] + i % T. Same arithmetic as zb_rope_apply: a float32
 * angle pos * inv_freq, cosf / sinf. */
__global__ void k_rope(rope_arg r, float *x, int nrows, int T, int pos0, const int *pos, int row_stride,
                       int n_heads, int head_stride, int offset, int interleave, int inverse) {
    __shared__ float st[ROPE_WARPS][ZB_ROPE_MAX_DIM];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, D = r.dim, half = D / 2;
    float *buf = st[warp];
    size_t items = (size_t)nrows * n_heads;
    for (size_t it = (size_t)blockIdx.x * ROPE_WARPS + warp; it < items; it += (size_t)gridDim.x * ROPE_WARPS) {
        int row = (int)(it / n_heads), h = (int)(it % n_heads);
        int p = (pos ? pos[row / T] : pos0) + row % T;
        float *v = x + (size_t)row * row_stride + (size_t)h * head_stride + offset;
        for (int j = lane; j < D; j += 32) buf[j] = v[j];
        __syncwarp();
        for (int i = lane; i < half; i += 32) {
            float a = (float)p * r.inv_freq[i];
            float c = cosf(a) * r.mscale, s = sinf(a) * r.mscale;
            if (inverse) s = -s;
            float x1, x2;
            if (interleave && !inverse) { x1 = buf[2 * i]; x2 = buf[2 * i + 1]; }
            else { x1 = buf[i]; x2 = buf[i + half]; }
            float y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s;
            if (interleave && inverse) { v[2 * i] = y1; v[2 * i + 1] = y2; }
            else { v[i] = y1; v[i + half] = y2; }
        }
        __syncwarp();
    }
}

static void rope_launch(const zb_rope *r, float *x, int nrows, int T, int pos0, const int *pos, int row_stride,
                        int n_heads, int head_stride, int offset, int interleave, int inverse) {
    size_t items = (size_t)nrows * n_heads;
    if (!items || r->dim <= 0) return;
    rope_arg a = rope_arg_of(r);
    k_rope<<<zb_cuda_blocks(items, ROPE_WARPS), ROPE_WARPS * 32, 0, zb_cuda_stream()>>>(
        a, x, nrows, T, pos0, pos, row_stride, n_heads, head_stride, offset, interleave, inverse);
    ZB_CUDA_LAUNCHED("rope");
}

extern "C" void zb_cuda_rope_apply_seq(const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                                       int head_stride, int offset, int pos0, int interleave, int inverse) {
    rope_launch(r, x, B * T, T, pos0, NULL, row_stride, n_heads, head_stride, offset, interleave, inverse);
}

extern "C" void zb_cuda_rope_apply_rows(const zb_rope *r, float *x, int nrows, int per_seq, const int *pos_dev,
                                        int row_stride, int n_heads, int head_stride, int offset, int interleave,
                                        int inverse) {
    rope_launch(r, x, nrows, per_seq, 0, pos_dev, row_stride, n_heads, head_stride, offset, interleave, inverse);
}

/* ---- SwiGLU ------------------------------------------------------------------------------- */

__global__ void k_swiglu_fwd(float *h, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) {
        float x = g[i];
        h[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

/* silu'(g) = s (1 + g (1 - s)), s = sigmoid(g) */
__global__ void k_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) {
        float x = g[i], s = 1.0f / (1.0f + expf(-x)), d = dh[i], uu = u[i];
        du[i] = d * x * s;
        dg[i] = d * uu * s * (1.0f + x * (1.0f - s));
    }
}

extern "C" void zb_cuda_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
    if (!n) return;
    k_swiglu_fwd<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(h, g, u, n);
    ZB_CUDA_LAUNCHED("swiglu_forward");
}

extern "C" void zb_cuda_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                                        size_t n) {
    if (!n) return;
    k_swiglu_bwd<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(dg, du, dh, g, u, n);
    ZB_CUDA_LAUNCHED("swiglu_backward");
}

/* bf16 storage, float32 arithmetic (the same formulas). gu [N, 2F]: row r is [g_r | u_r] (one
 * product makes both); h [N, F], dh [N, F], dgu [N, 2F] as gu. 8 elements per thread where F and
 * the pointers allow 16-byte accesses, else one. */
__device__ static inline void swiglu_fwd1(__nv_bfloat16 *h, const __nv_bfloat16 *g, const __nv_bfloat16 *u, int i) {
    float x = __bfloat162float(g[i]);
    h[i] = __float2bfloat16_rn(x / (1.0f + expf(-x)) * __bfloat162float(u[i]));
}
__device__ static inline void swiglu_bwd1(__nv_bfloat16 *dg, __nv_bfloat16 *du, const __nv_bfloat16 *dh,
                                          const __nv_bfloat16 *g, const __nv_bfloat16 *u, int i) {
    float x = __bfloat162float(g[i]), s = 1.0f / (1.0f + expf(-x)), d = __bfloat162float(dh[i]);
    float uu = __bfloat162float(u[i]);
    du[i] = __float2bfloat16_rn(d * x * s);
    dg[i] = __float2bfloat16_rn(d * uu * s * (1.0f + x * (1.0f - s)));
}

/* items of V elements: item e is row e / (F / V), columns V (e % (F / V)) .. + V */
__global__ void k_swiglu_fwd_bf16(__nv_bfloat16 *h, const __nv_bfloat16 *gu, size_t N, int F, int vec) {
    int per = vec ? F / 8 : F;
    GRID_STRIDE(e, N * per) {
        size_t r = e / per;
        int c = (int)(e - r * per);
        const __nv_bfloat16 *g = gu + r * 2 * F, *u = g + F;
        __nv_bfloat16 *hr = h + r * F;
        if (!vec) { swiglu_fwd1(hr, g, u, c); continue; }
        uint4 gv = ((const uint4 *)g)[c], uv = ((const uint4 *)u)[c], hv;
#pragma unroll
        for (int k = 0; k < 8; k++)
            swiglu_fwd1((__nv_bfloat16 *)&hv, (const __nv_bfloat16 *)&gv, (const __nv_bfloat16 *)&uv, k);
        ((uint4 *)hr)[c] = hv;
    }
}

__global__ void k_swiglu_bwd_bf16(__nv_bfloat16 *dgu, const __nv_bfloat16 *dh, const __nv_bfloat16 *gu, size_t N,
                                  int F, int vec) {
    int per = vec ? F / 8 : F;
    GRID_STRIDE(e, N * per) {
        size_t r = e / per;
        int c = (int)(e - r * per);
        const __nv_bfloat16 *g = gu + r * 2 * F, *u = g + F, *d = dh + r * F;
        __nv_bfloat16 *dg = dgu + r * 2 * F, *du = dg + F;
        if (!vec) { swiglu_bwd1(dg, du, d, g, u, c); continue; }
        uint4 gv = ((const uint4 *)g)[c], uv = ((const uint4 *)u)[c], dv = ((const uint4 *)d)[c], gov, uov;
#pragma unroll
        for (int k = 0; k < 8; k++)
            swiglu_bwd1((__nv_bfloat16 *)&gov, (__nv_bfloat16 *)&uov, (const __nv_bfloat16 *)&dv,
                        (const __nv_bfloat16 *)&gv, (const __nv_bfloat16 *)&uv, k);
        ((uint4 *)dg)[c] = gov;
        ((uint4 *)du)[c] = uov;
    }
}

static int vec8(const void *a, const void *b, const void *c, int F) {
    return F % 8 == 0 && (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0;
}

extern "C" void zb_cuda_swiglu_forward_bf16(uint16_t *h, const uint16_t *gu, int N, int F) {
    if (N <= 0 || F <= 0) return;
    int vec = vec8(h, gu, gu, F);
    k_swiglu_fwd_bf16<<<zb_cuda_blocks((size_t)N * (vec ? F / 8 : F), 256), 256, 0, zb_cuda_stream()>>>(
        (__nv_bfloat16 *)h, (const __nv_bfloat16 *)gu, (size_t)N, F, vec);
    ZB_CUDA_LAUNCHED("swiglu_forward_bf16");
}

extern "C" void zb_cuda_swiglu_backward_bf16(uint16_t *dgu, const uint16_t *dh, const uint16_t *gu, int N, int F) {
    if (N <= 0 || F <= 0) return;
    int vec = vec8(dgu, dh, gu, F);
    k_swiglu_bwd_bf16<<<zb_cuda_blocks((size_t)N * (vec ? F / 8 : F), 256), 256, 0, zb_cuda_stream()>>>(
        (__nv_bfloat16 *)dgu, (const __nv_bfloat16 *)dh, (const __nv_bfloat16 *)gu, (size_t)N, F, vec);
    ZB_CUDA_LAUNCHED("swiglu_backward_bf16");
}

/* ---- embedding ---------------------------------------------------------------------------- */

/* an id < 0 gives a row of zeros (a vocabulary-parallel shard: another rank's token) */
/* a block per EMB_COLS columns of a row (a decode step's one 4096-wide row was one block of 16
 * loads, each after the store before: 8.8 us in S6R2's ncu): each thread's loads all issued
 * before its stores */
#define EMB_COLS 1024
__device__ static inline float emb_val(const float *t, size_t i) { return t[i]; }
__device__ static inline float emb_val(const __nv_bfloat16 *t, size_t i) { return __bfloat162float(t[i]); }
template <typename T>
__global__ void __launch_bounds__(256) k_embed_fwd(float *__restrict__ out, const int *ids, const T *__restrict__ table,
                                                   int C, int chunks) {
    size_t n = blockIdx.x / chunks;
    int c0 = (blockIdx.x % chunks) * EMB_COLS;
    int id = ids[n];
    const T *src = table + (size_t)(id < 0 ? 0 : id) * C;
    float v[EMB_COLS / 256];
#pragma unroll
    for (int k = 0; k < EMB_COLS / 256; k++) {
        int i = c0 + threadIdx.x + k * 256;
        v[k] = i < C && id >= 0 ? emb_val(src, i) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < EMB_COLS / 256; k++) {
        int i = c0 + threadIdx.x + k * 256;
        if (i < C) out[n * C + i] = v[k];
    }
}

template <typename T>
static void embed_go(float *out, const int *ids, const T *table, int N, int C) {
    int chunks = (C + EMB_COLS - 1) / EMB_COLS;
    k_embed_fwd<T><<<(unsigned)((size_t)N * chunks), 256, 0, zb_cuda_stream()>>>(out, ids, table, C, chunks);
}

__global__ void k_embed_bwd(float *dtable, const float *dout, const int *ids, int C) {
    size_t n = blockIdx.x;
    float *d = dtable + (size_t)ids[n] * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) atomicAdd(&d[i], dout[n * C + i]);
}

extern "C" void zb_cuda_embedding_forward(float *out, const int *ids, const float *table, int N, int C) {
    if (N <= 0) return;
    embed_go(out, ids, table, N, C);
    ZB_CUDA_LAUNCHED("embedding_forward");
}

extern "C" void zb_cuda_embedding_forward_bf16(float *out, const int *ids, const uint16_t *table, int N, int C) {
    if (N <= 0) return;
    embed_go(out, ids, (const __nv_bfloat16 *)table, N, C);
    ZB_CUDA_LAUNCHED("embedding_forward_bf16");
}

extern "C" void zb_cuda_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int C) {
    if (N <= 0) return;
    k_embed_bwd<<<N, row_threads(C), 0, zb_cuda_stream()>>>(dtable, dout, ids, C);
    ZB_CUDA_LAUNCHED("embedding_backward");
}

/* ---- synthetic fills (benchmarks) --------------------------------------------------------------- */

/* zb_hash_uniform's value i of stream seed (zb_common.c), the same bits as on the host */
__device__ static inline float hash_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((z >> 40) * (1.0 / 16777216.0));
}

__global__ void k_fill_uniform(float *x, __nv_bfloat16 *x16, size_t n, unsigned long long seed, float a) {
    GRID_STRIDE(i, n) {
        float v = a * (2.0f * hash_uniform(seed, i) - 1.0f);
        if (x16) x16[i] = __float2bfloat16_rn(v);
        else x[i] = v;
    }
}

extern "C" void zb_cuda_fill_uniform(void *x, int bf16, size_t n, uint64_t seed, float a) {
    if (!n) return;
    zb_cuda_weights_changed();
    k_fill_uniform<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(
        bf16 ? NULL : (float *)x, bf16 ? (__nv_bfloat16 *)x : NULL, n, seed, a);
    ZB_CUDA_LAUNCHED("fill_uniform");
}

/* ---- elementwise -------------------------------------------------------------------------- */

__global__ void k_add(float *out, const float *a, const float *b, size_t n) { GRID_STRIDE(i, n) out[i] = a[i] + b[i]; }
__global__ void k_sub(float *out, const float *a, const float *b, size_t n) { GRID_STRIDE(i, n) out[i] = a[i] - b[i]; }
__global__ void k_axpy(float *y, float a, const float *x, size_t n) { GRID_STRIDE(i, n) y[i] += a * x[i]; }
__global__ void k_scale(float *x, float a, size_t n) { GRID_STRIDE(i, n) x[i] *= a; }

extern "C" void zb_cuda_add(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    k_add<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(out, a, b, n);
    ZB_CUDA_LAUNCHED("add");
}

extern "C" void zb_cuda_sub(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    k_sub<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(out, a, b, n);
    ZB_CUDA_LAUNCHED("sub");
}

__global__ void k_gather_i(int *out, const int *src, const int *idx, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = src[idx ? idx[i] : i];
}

extern "C" void zb_cuda_gather_int(int *out, const int *src, const int *idx, int n) {
    if (n <= 0) return;
    k_gather_i<<<zb_cuda_blocks((size_t)n, 128), 128, 0, zb_cuda_stream()>>>(out, src, idx, n);
    ZB_CUDA_LAUNCHED("gather_int");
}

__global__ void k_iota(int *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = i;
}

extern "C" void zb_cuda_iota(int *out, int n) {
    if (n <= 0) return;
    k_iota<<<zb_cuda_blocks((size_t)n, 128), 128, 0, zb_cuda_stream()>>>(out, n);
    ZB_CUDA_LAUNCHED("iota");
}

extern "C" void zb_cuda_axpy(float *y, float a, const float *x, size_t n) {
    if (!n) return;
    k_axpy<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(y, a, x, n);
    ZB_CUDA_LAUNCHED("axpy");
}

extern "C" void zb_cuda_scale(float *x, float a, size_t n) {
    if (!n) return;
    k_scale<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(x, a, n);
    ZB_CUDA_LAUNCHED("scale");
}

__global__ void k_copy_cols(float *dst, int ds, const float *src, int ss, int rows, int cols, int add) {
    size_t n = (size_t)rows * cols;
    GRID_STRIDE(i, n) {
        size_t r = i / cols, c = i % cols;
        if (add) dst[r * ds + c] += src[r * ss + c];
        else dst[r * ds + c] = src[r * ss + c];
    }
}

extern "C" void zb_cuda_copy_cols(float *dst, int dst_stride, const float *src, int src_stride, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    k_copy_cols<<<zb_cuda_blocks((size_t)rows * cols, 256), 256, 0, zb_cuda_stream()>>>(dst, dst_stride, src,
                                                                                      src_stride, rows, cols, 0);
    ZB_CUDA_LAUNCHED("copy_cols");
}

extern "C" void zb_cuda_add_cols(float *dst, int dst_stride, const float *src, int src_stride, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    k_copy_cols<<<zb_cuda_blocks((size_t)rows * cols, 256), 256, 0, zb_cuda_stream()>>>(dst, dst_stride, src,
                                                                                      src_stride, rows, cols, 1);
    ZB_CUDA_LAUNCHED("add_cols");
}
