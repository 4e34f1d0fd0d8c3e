/* mamba2_ssd.cu — the chunked SSD scan of the Mamba2 mixer on CUDA, forward, backward and the
 * one-token recurrence (SPEC.md §4; the same algebra as ssd_forward / ssd_backward in
 * core/mamba2.c, whose header comment gives the formulas; chunk length m->chunk, ragged last
 * chunk). Per head h, chunk of L rows, cs = cumsum(dt A) restarted per chunk, E_ij = e^{cs_i-cs_j}:
 *   y_i   = sum_{j<=i} (C_i.B_j) E_ij dt_j x_j + e^{cs_i} S_prev C_i + D x_i
 *   S_end = e^{cs_L} S_prev + sum_j e^{cs_L-cs_j} dt_j x_j B_j^T
 * Rows of xbc are [x (x_groups*hd) | B (b_groups*ds) | C (c_groups*ds)]; head h reads x group
 * h / (nh / x_groups), likewise B and C.
 *
 * Parallelisation (every launch on the stream of zb_cuda_mamba2_set_blas):
 *  k_ssd_coef     one warp per (b, h, chunk): warp-scan of dt A -> cs, exp(cs), the end weight
 *                 w_j = e^{cs_L-cs_j} dt_j and dt itself, each [B, nh, T] (head-contiguous).
 *  k_ssd_outer    one block per (b, h, chunk, 64x64 tile of hd x ds): the chunk's own state
 *                 sum_j w_j x_j B_j^T (forward) or sum_i e^{cs_i} dy_i C_i^T (backward, the state
 *                 gradient the chunk sends back), a tile product with inner dimension L.
 *  k_ssd_pass_*   one thread per (b, h, state element): the sequential pass over chunks, forward
 *                 (start state of each chunk, from the initial state, final state out) and
 *                 backward (gradient of each chunk's end state).
 *  k_ssd_scan     one block per (b, h, chunk, 64-row tile, 64-column tile of hd): the output tile,
 *                 e^{cs_i} C_i S_prev^T, then for each 64-column block j <= i of the causal
 *                 L x L matrix: (C_i B_j^T) o E o dt_j into shared memory, times x_j.
 *  k_ssd_bwd_dx / _dc / _db  same grid shape over the gradient of x (rows j), C (rows i), B
 *                 (rows j): each recomputes the L x L tiles it needs (C B^T or dy x^T) instead of
 *                 storing them; with x / B / C groups shared by several heads the per-head
 *                 gradients go to per-head buffers summed in a fixed order by k_ssd_group_sum
 *                 (deterministic, no atomics), else straight into dxbc.
 *  k_ssd_bwd_scal one block per (b, h, chunk): the scalar gradients (dcs from every exponent, ddt,
 *                 then da = reverse cumsum of dcs by a warp scan; dA, dD partials per chunk,
 *                 summed per head by k_ssd_param_fin).
 *  k_ssd_*_fused  where the chunk, hd and ds fit 64 (the training chunk; ZB_SSD=tiles: the tile kernels
 *                 above): one block per (b, h, chunk) with the chunk's operands in shared memory,
 *                 for the chunk states, the forward output, and the whole backward after the state
 *                 gradients' pass (dx, dB, dC and the scalar terms in one pass).
 *  (every tile product of the forward and the backward in the bf16 precision mode: on the tensor
 *  cores, TF32 operands and float32 sums, m2_mma_tc of mamba2_tile.cuh; ZB_M2_TC=0 keeps the
 *  float32 CUDA-core tiles, ZB_SSD=old keeps them in the backward.)
 *  Launch bounds: the tensor-core forms keep every register they ask for (~230, one block of 256
 *  threads per SM; capped at 128 for two blocks they spilled 150-450 bytes); the float32 forms fit
 *  two blocks per SM in 128.
 *  (the one-token recurrence of decode, k_ssd_step / k_ssd_step_vec: mamba2_decode.cu)
 * Saved by the forward for the backward (in the mixer's acts): xbc, dt, the coefficients above and
 * the state at the start of every chunk [B, nc, nh, hd, ds]; the backward recomputes the L x L
 * products. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "cuda_common.h"
#include "mamba2_cuda.h"
#include "mamba2_tile.cuh"

namespace {

/* The recurrent state as kept between calls: float32, or bf16 (generation with bf16 weights, as
 * mamba_ssm's inference cache takes the in_proj weight's dtype; the arithmetic stays float32, the
 * value is rounded once when stored). Slots are strided in floats either way (a bf16 state uses
 * the first half of its float32 slot), so the element stride is s_stride * 4 / sizeof(TS). */
__device__ inline float st_ld(const float *p) { return *p; }
__device__ inline float st_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ inline void st_st(float *p, float v) { *p = v; }
__device__ inline void st_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }
template <typename TS> __host__ __device__ inline size_t st_stride(size_t s_stride) { return s_stride * (4 / sizeof(TS)); }

struct m2_geo {
    int B, T, nc, Lc, nh, hd, ds, cd, di;
    int xrep, brep, crep;   /* heads per x / B / C group */
    int bo, co;             /* columns of B and C in an xbc row (x starts at 0) */
    size_t hs;              /* hd * ds */
};

m2_geo geo_of(const zb_mamba2_dims *m, int B, int T) {
    m2_geo g;
    g.B = B; g.T = T; g.Lc = m->chunk; g.nc = (T + m->chunk - 1) / m->chunk;
    g.nh = m->nheads; g.hd = m->headdim; g.ds = m->d_state; g.di = m->d_inner;
    g.cd = zb_mamba2_conv_dim(m);
    g.xrep = m->nheads / m->x_groups; g.brep = m->nheads / m->b_groups; g.crep = m->nheads / m->c_groups;
    g.bo = m->x_groups * m->headdim; g.co = g.bo + m->b_groups * m->d_state;
    g.hs = (size_t)m->headdim * m->d_state;
    return g;
}

struct m2_chunk {
    int b, h, c, t0, L;
    size_t r0;               /* first row, b T + t0 */
    size_t ci;               /* (b nh + h) T + t0: into the [B, nh, T] coefficient arrays */
    size_t si;               /* ((b nc + c) nh + h) hs: into [B, nc, nh, hd, ds] */
    int xcol, bcol, ccol;    /* this head's x, B, C columns in an xbc row */
};

__device__ m2_chunk chunk_of(const m2_geo &g, int bhc) {
    m2_chunk k;
    k.c = bhc % g.nc;
    int bh = bhc / g.nc;
    k.h = bh % g.nh;
    k.b = bh / g.nh;
    k.t0 = k.c * g.Lc;
    k.L = min(g.Lc, g.T - k.t0);
    k.r0 = (size_t)k.b * g.T + k.t0;
    k.ci = ((size_t)k.b * g.nh + k.h) * g.T + k.t0;
    k.si = (((size_t)k.b * g.nc + k.c) * g.nh + k.h) * g.hs;
    k.xcol = (k.h / g.xrep) * g.hd;
    k.bcol = g.bo + (k.h / g.brep) * g.ds;
    k.ccol = g.co + (k.h / g.crep) * g.ds;
    return k;
}

struct m2_coef {
    const float *cs, *ecs, *wend, *dtT;
};
m2_coef coef_of(const float *coef, int B, int nh, int T) {
    size_t n = (size_t)B * nh * T;
    m2_coef c = {coef, coef + n, coef + 2 * n, coef + 3 * n};
    return c;
}

int cdiv(int a, int b) { return (a + b - 1) / b; }

/* The scan backward's dA terms, one warp: da_k = sum_{i>=k} dc_i (inclusive suffix sums over 32-row
 * segments from the end), ddt_k = dd_k + A da_k (row stride `stride`), returns this lane's part of
 * sum_k da_k dt_k. Shared by the tile and the fused backward kernels. */
__device__ __forceinline__ float ssd_da_scan(const float *dc, const float *dd, const float *dt, int L, float A,
                                             float *ddt, int stride, int lane) {
    float carry = 0.0f, dA = 0.0f;
    for (int base = ((L - 1) / 32) * 32; base >= 0; base -= 32) {
        int kk = base + lane;
        float v = kk < L ? dc[kk] : 0.0f;
        for (int off = 1; off < 32; off <<= 1) {
            float t = __shfl_down_sync(0xffffffffu, v, off);
            if (lane + off < 32) v += t;
        }
        float da = v + carry;
        carry += __shfl_sync(0xffffffffu, v, 0);
        if (kk < L) {
            ddt[(size_t)kk * stride] = dd[kk] + da * A;
            dA += da * dt[kk];
        }
    }
    return dA;
}

/* ---- coefficients ------------------------------------------------------------------------ */

__global__ void k_ssd_coef(m2_geo g, const float *__restrict__ A_log, const float *__restrict__ dt,
                           float *cs, float *ecs, float *wend, float *dtT) {
    int warp = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (warp >= g.B * g.nh * g.nc) return;   /* whole warps leave together */
    m2_chunk k = chunk_of(g, warp);
    float A = -expf(A_log[k.h]), carry = 0.0f;
    for (int base = 0; base < k.L; base += 32) {
        int i = base + lane;
        float dti = i < k.L ? dt[(k.r0 + i) * g.nh + k.h] : 0.0f;
        float v = dti * A;
        for (int off = 1; off < 32; off <<= 1) {   /* inclusive prefix sum over the warp */
            float t = __shfl_up_sync(0xffffffffu, v, off);
            if (lane >= off) v += t;
        }
        v += carry;
        if (i < k.L) {
            cs[k.ci + i] = v;
            ecs[k.ci + i] = expf(v);
            dtT[k.ci + i] = dti;
        }
        carry = __shfl_sync(0xffffffffu, v, 31);
    }
    /* carry = cs at the chunk's last row (lanes past L added 0) */
    for (int i = lane; i < k.L; i += 32) wend[k.ci + i] = expf(carry - cs[k.ci + i]) * dtT[k.ci + i];
}

/* ---- chunk states: out[p, s] = sum_j U[j, p] coef_j V[j, s] ----------------------------------- */

/* Forward: U = x (xbc rows), V = B, coef = wend, out = states. Backward: U = dy (rows of di,
 * head columns), V = C, coef = ecs, out = dstates. grid (nbhc, hd tiles, ds tiles). */
template <bool TC>
__global__ void __launch_bounds__(M2_NT, TC ? 1 : 2)
k_ssd_outer(m2_geo g, const float *__restrict__ U, int u_stride, int u_is_x,
            const float *__restrict__ xbc, int v_is_c, const float *__restrict__ coef, float *out) {
    __shared__ m2_tile_any sm;
    m2_chunk k = chunk_of(g, blockIdx.x);
    int p0 = blockIdx.y * M2_TB, s0 = blockIdx.z * M2_TB;
    const float *Ub = U + k.r0 * u_stride + (u_is_x ? k.xcol : k.h * g.hd);
    const float *Vb = xbc + k.r0 * g.cd + (v_is_c ? k.ccol : k.bcol);
    const float *cf = coef + k.ci;
    int hd = g.hd, ds = g.ds, cd = g.cd;
    float acc[4][4];
    m2_zero(acc);
    auto la = [&](int m, int j) { return p0 + m < hd ? Ub[(size_t)j * u_stride + p0 + m] : 0.0f; };
    auto lb = [&](int j, int n) { return s0 + n < ds ? cf[j] * Vb[(size_t)j * cd + s0 + n] : 0.0f; };
    m2_mma_sel<TC, false, false>(acc, la, lb, k.L, sm);
    float *o = out + k.si;
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int p = p0 + m2_row(q), s = s0 + m2_col(r);
            if (p < hd && s < ds) o[(size_t)p * ds + s] = acc[q][r];
        }
}

/* ---- the passes over chunks ---------------------------------------------------------------- */

#define M2_PASS 8
/* states holds each chunk's own end state on entry, the state at its start on exit. */
template <typename TS>
__global__ void k_ssd_pass_fwd(m2_geo g, const float *__restrict__ ecs, float *states,
                               const TS *S0, TS *Sfin, size_t s_stride) {
    size_t q = (size_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (q >= g.hs) return;
    int b = blockIdx.x / g.nh, h = blockIdx.x % g.nh;
    size_t so = (size_t)b * st_stride<TS>(s_stride) + (size_t)h * g.hs + q;
    float S = S0 ? st_ld(S0 + so) : 0.0f;
    const float *e = ecs + ((size_t)b * g.nh + h) * g.T;
    /* chunk c's element at p + c nh hs; M2_PASS chunks' loads issued before their stores (each
     * element is read, then written: the loads ahead touch only elements not yet written), so
     * the dependent chain waits on one load latency per M2_PASS chunks, not per chunk */
    float *p = states + ((size_t)b * g.nc * g.nh + h) * g.hs + q;
    size_t cs = (size_t)g.nh * g.hs;
    for (int c0 = 0; c0 < g.nc; c0 += M2_PASS) {
        float loc[M2_PASS];
#pragma unroll
        for (int k = 0; k < M2_PASS; k++)
            if (c0 + k < g.nc) loc[k] = p[(size_t)(c0 + k) * cs];
#pragma unroll
        for (int k = 0; k < M2_PASS; k++)
            if (c0 + k < g.nc) {
                int c = c0 + k, tl = min(g.T, (c + 1) * g.Lc) - 1;
                p[(size_t)c * cs] = S;
                S = e[tl] * S + loc[k];
            }
    }
    if (Sfin) st_st(Sfin + so, S);
}

/* dstates holds each chunk's sum_i e^{cs_i} dy_i C_i^T on entry, dL/d(end state) on exit. */
__global__ void k_ssd_pass_bwd(m2_geo g, const float *__restrict__ ecs, float *dstates) {
    size_t q = (size_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (q >= g.hs) return;
    int b = blockIdx.x / g.nh, h = blockIdx.x % g.nh;
    const float *e = ecs + ((size_t)b * g.nh + h) * g.T;
    float acc = 0.0f;
    float *p = dstates + ((size_t)b * g.nc * g.nh + h) * g.hs + q;   /* as k_ssd_pass_fwd, from the end */
    size_t cs = (size_t)g.nh * g.hs;
    for (int c0 = g.nc - 1; c0 >= 0; c0 -= M2_PASS) {
        float loc[M2_PASS];
#pragma unroll
        for (int k = 0; k < M2_PASS; k++)
            if (c0 - k >= 0) loc[k] = p[(size_t)(c0 - k) * cs];
#pragma unroll
        for (int k = 0; k < M2_PASS; k++)
            if (c0 - k >= 0) {
                int c = c0 - k, tl = min(g.T, (c + 1) * g.Lc) - 1;
                p[(size_t)c * cs] = acc;
                acc = e[tl] * acc + loc[k];
            }
    }
}

/* ---- forward output ------------------------------------------------------------------------ */

template <bool TC>
__global__ void __launch_bounds__(M2_NT, TC ? 1 : 2)
k_ssd_scan(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ states,
           const float *__restrict__ Dp, float *y) {
    __shared__ m2_tile_any sm;
    __shared__ float Ms[M2_TB][M2_TB + 1];
    __shared__ float csi[M2_TB], csj[M2_TB], dtj[M2_TB];
    m2_chunk k = chunk_of(g, blockIdx.x);
    int i0 = blockIdx.y * M2_TB, p0 = blockIdx.z * M2_TB, L = k.L;
    if (i0 >= L) return;   /* uniform over the block */
    int hd = g.hd, ds = g.ds, cd = g.cd, tid = threadIdx.x;
    const float *X = xbc + k.r0 * cd + k.xcol, *Bm = xbc + k.r0 * cd + k.bcol,
                *Cm = xbc + k.r0 * cd + k.ccol, *S = states + k.si;
    if (tid < M2_TB) csi[tid] = i0 + tid < L ? cf.cs[k.ci + i0 + tid] : 0.0f;
    __syncthreads();
    float acc[4][4];
    m2_zero(acc);
    /* e^{cs_i} C_i S_prev^T */
    auto lc = [&](int m, int s) { return i0 + m < L ? Cm[(size_t)(i0 + m) * cd + s] : 0.0f; };
    auto ls = [&](int s, int n) { return p0 + n < hd ? S[(size_t)(p0 + n) * ds + s] : 0.0f; };
    m2_mma_sel<TC, true, true>(acc, lc, ls, ds, sm);
#pragma unroll
    for (int q = 0; q < 4; q++) {
        float e = expf(csi[m2_row(q)]);
#pragma unroll
        for (int r = 0; r < 4; r++) acc[q][r] *= e;
    }
    /* causal blocks j0 <= i0 of (C B^T o E o dt_j) x */
    for (int j0 = 0; j0 <= i0; j0 += M2_TB) {
        if (tid < M2_TB) {
            bool v = j0 + tid < L;
            csj[tid] = v ? cf.cs[k.ci + j0 + tid] : 0.0f;
            dtj[tid] = v ? cf.dtT[k.ci + j0 + tid] : 0.0f;
        }
        __syncthreads();
        float gt[4][4];
        m2_zero(gt);
        auto lbj = [&](int s, int n) { return j0 + n < L ? Bm[(size_t)(j0 + n) * cd + s] : 0.0f; };
        m2_mma_sel<TC, true, true>(gt, lc, lbj, ds, sm);
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int ii = m2_row(q), jj = m2_col(r), i = i0 + ii, j = j0 + jj;
                Ms[ii][jj] = (i < L && j <= i) ? gt[q][r] * expf(csi[ii] - csj[jj]) * dtj[jj] : 0.0f;
            }
        __syncthreads();
        auto lm = [&](int m, int jj) { return Ms[m][jj]; };
        auto lx = [&](int jj, int n) { return p0 + n < hd ? X[(size_t)(j0 + jj) * cd + p0 + n] : 0.0f; };
        m2_mma_sel<TC, true, false>(acc, lm, lx, min(M2_TB, L - j0), sm);
    }
    float Dh = Dp[k.h];
    float *Y = y + k.r0 * g.di + (size_t)k.h * hd;
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = i0 + m2_row(q), p = p0 + m2_col(r);
            if (i < L && p < hd) Y[(size_t)i * g.di + p] = acc[q][r] + Dh * X[(size_t)i * cd + p];
        }
}

/* ---- backward: gradients of x, C, B ------------------------------------------------------------ */

/* dX_j = D dy_j + sum_{i>=j} W_ij dy_i + w_j B_j dS^T,  W_ij = (C_i.B_j) E_ij dt_j.
 * grid (nbhc, row tiles j, hd tiles). dst row stride dst_stride; direct: columns of the x group in
 * dxbc, else this head's columns h hd of a per-head buffer. */
template <bool TC>
__global__ void __launch_bounds__(M2_NT, TC ? 1 : 2)
k_ssd_bwd_dx(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ dstates,
             const float *__restrict__ dy, const float *__restrict__ Dp, float *dst, int dst_stride,
             int direct) {
    __shared__ m2_tile_any sm;
    __shared__ float Ms[M2_TB][M2_TB + 1];
    __shared__ float csi[M2_TB], csj[M2_TB], dtj[M2_TB];
    m2_chunk k = chunk_of(g, blockIdx.x);
    int j0 = blockIdx.y * M2_TB, p0 = blockIdx.z * M2_TB, L = k.L;
    if (j0 >= L) return;
    int hd = g.hd, ds = g.ds, cd = g.cd, di = g.di, tid = threadIdx.x;
    const float *Bm = xbc + k.r0 * cd + k.bcol, *Cm = xbc + k.r0 * cd + k.ccol,
                *dS = dstates + k.si, *dY = dy + k.r0 * di + (size_t)k.h * hd;
    if (tid < M2_TB) {
        bool v = j0 + tid < L;
        csj[tid] = v ? cf.cs[k.ci + j0 + tid] : 0.0f;
        dtj[tid] = v ? cf.dtT[k.ci + j0 + tid] : 0.0f;
    }
    __syncthreads();
    float acc[4][4];
    m2_zero(acc);
    auto lbr = [&](int m, int s) { return j0 + m < L ? Bm[(size_t)(j0 + m) * cd + s] : 0.0f; };
    auto lds = [&](int s, int n) { return p0 + n < hd ? dS[(size_t)(p0 + n) * ds + s] : 0.0f; };
    m2_mma_sel<TC, true, true>(acc, lbr, lds, ds, sm);
#pragma unroll
    for (int q = 0; q < 4; q++) {
        int j = j0 + m2_row(q);
        float w = j < L ? cf.wend[k.ci + j] : 0.0f;
#pragma unroll
        for (int r = 0; r < 4; r++) acc[q][r] *= w;
    }
    for (int i0 = j0; i0 < L; i0 += M2_TB) {
        if (tid < M2_TB) csi[tid] = i0 + tid < L ? cf.cs[k.ci + i0 + tid] : 0.0f;
        __syncthreads();
        float gt[4][4];   /* gt[j][i] = B_j . C_i */
        m2_zero(gt);
        auto lci = [&](int s, int n) { return i0 + n < L ? Cm[(size_t)(i0 + n) * cd + s] : 0.0f; };
        m2_mma_sel<TC, true, true>(gt, lbr, lci, ds, sm);
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int jj = m2_row(q), ii = m2_col(r), j = j0 + jj, i = i0 + ii;
                Ms[jj][ii] = (i < L && j <= i) ? gt[q][r] * expf(csi[ii] - csj[jj]) * dtj[jj] : 0.0f;
            }
        __syncthreads();
        auto lm = [&](int m, int ii) { return Ms[m][ii]; };
        auto ldy = [&](int ii, int n) { return p0 + n < hd ? dY[(size_t)(i0 + ii) * di + p0 + n] : 0.0f; };
        m2_mma_sel<TC, true, false>(acc, lm, ldy, min(M2_TB, L - i0), sm);
    }
    float Dh = Dp[k.h];
    float *o = dst + k.r0 * dst_stride + (direct ? k.xcol : k.h * hd);
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int j = j0 + m2_row(q), p = p0 + m2_col(r);
            if (j < L && p < hd) o[(size_t)j * dst_stride + p] = acc[q][r] + Dh * dY[(size_t)j * di + p];
        }
}

/* dC_i = e^{cs_i} (dy_i S_prev) + sum_{j<=i} dG_ij B_j,  dG_ij = (dy_i.x_j) E_ij dt_j.
 * grid (nbhc, row tiles i, ds tiles). */
template <bool TC>
__global__ void __launch_bounds__(M2_NT, TC ? 1 : 2)
k_ssd_bwd_dc(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ states,
             const float *__restrict__ dy, float *dst, int dst_stride, int direct) {
    __shared__ m2_tile_any sm;
    __shared__ float Ms[M2_TB][M2_TB + 1];
    __shared__ float csi[M2_TB], csj[M2_TB], dtj[M2_TB];
    m2_chunk k = chunk_of(g, blockIdx.x);
    int i0 = blockIdx.y * M2_TB, s0 = blockIdx.z * M2_TB, L = k.L;
    if (i0 >= L) return;
    int hd = g.hd, ds = g.ds, cd = g.cd, di = g.di, tid = threadIdx.x;
    const float *X = xbc + k.r0 * cd + k.xcol, *Bm = xbc + k.r0 * cd + k.bcol, *S = states + k.si,
                *dY = dy + k.r0 * di + (size_t)k.h * hd;
    if (tid < M2_TB) csi[tid] = i0 + tid < L ? cf.cs[k.ci + i0 + tid] : 0.0f;
    __syncthreads();
    float acc[4][4];
    m2_zero(acc);
    auto ldy = [&](int m, int p) { return i0 + m < L ? dY[(size_t)(i0 + m) * di + p] : 0.0f; };
    auto lS = [&](int p, int n) { return s0 + n < ds ? S[(size_t)p * ds + s0 + n] : 0.0f; };
    m2_mma_sel<TC, true, false>(acc, ldy, lS, hd, sm);
#pragma unroll
    for (int q = 0; q < 4; q++) {
        float e = expf(csi[m2_row(q)]);
#pragma unroll
        for (int r = 0; r < 4; r++) acc[q][r] *= e;
    }
    for (int j0 = 0; j0 <= i0; j0 += M2_TB) {
        if (tid < M2_TB) {
            bool v = j0 + tid < L;
            csj[tid] = v ? cf.cs[k.ci + j0 + tid] : 0.0f;
            dtj[tid] = v ? cf.dtT[k.ci + j0 + tid] : 0.0f;
        }
        __syncthreads();
        float gt[4][4];   /* gt[i][j] = dy_i . x_j */
        m2_zero(gt);
        auto lx = [&](int p, int n) { return j0 + n < L ? X[(size_t)(j0 + n) * cd + p] : 0.0f; };
        m2_mma_sel<TC, true, true>(gt, ldy, lx, hd, sm);
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int ii = m2_row(q), jj = m2_col(r), i = i0 + ii, j = j0 + jj;
                Ms[ii][jj] = (i < L && j <= i) ? gt[q][r] * expf(csi[ii] - csj[jj]) * dtj[jj] : 0.0f;
            }
        __syncthreads();
        auto lm = [&](int m, int jj) { return Ms[m][jj]; };
        auto lb = [&](int jj, int n) { return s0 + n < ds ? Bm[(size_t)(j0 + jj) * cd + s0 + n] : 0.0f; };
        m2_mma_sel<TC, true, false>(acc, lm, lb, min(M2_TB, L - j0), sm);
    }
    float *o = dst + k.r0 * dst_stride + (direct ? k.ccol : k.h * ds);
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = i0 + m2_row(q), s = s0 + m2_col(r);
            if (i < L && s < ds) o[(size_t)i * dst_stride + s] = acc[q][r];
        }
}

/* dB_j = w_j (x_j dS) + sum_{i>=j} dG_ij C_i. grid (nbhc, row tiles j, ds tiles). */
template <bool TC>
__global__ void __launch_bounds__(M2_NT, TC ? 1 : 2)
k_ssd_bwd_db(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ dstates,
             const float *__restrict__ dy, float *dst, int dst_stride, int direct) {
    __shared__ m2_tile_any sm;
    __shared__ float Ms[M2_TB][M2_TB + 1];
    __shared__ float csi[M2_TB], csj[M2_TB], dtj[M2_TB];
    m2_chunk k = chunk_of(g, blockIdx.x);
    int j0 = blockIdx.y * M2_TB, s0 = blockIdx.z * M2_TB, L = k.L;
    if (j0 >= L) return;
    int hd = g.hd, ds = g.ds, cd = g.cd, di = g.di, tid = threadIdx.x;
    const float *X = xbc + k.r0 * cd + k.xcol, *Cm = xbc + k.r0 * cd + k.ccol, *dS = dstates + k.si,
                *dY = dy + k.r0 * di + (size_t)k.h * hd;
    if (tid < M2_TB) {
        bool v = j0 + tid < L;
        csj[tid] = v ? cf.cs[k.ci + j0 + tid] : 0.0f;
        dtj[tid] = v ? cf.dtT[k.ci + j0 + tid] : 0.0f;
    }
    __syncthreads();
    float acc[4][4];
    m2_zero(acc);
    auto lx = [&](int m, int p) { return j0 + m < L ? X[(size_t)(j0 + m) * cd + p] : 0.0f; };
    auto lds = [&](int p, int n) { return s0 + n < ds ? dS[(size_t)p * ds + s0 + n] : 0.0f; };
    m2_mma_sel<TC, true, false>(acc, lx, lds, hd, sm);
#pragma unroll
    for (int q = 0; q < 4; q++) {
        int j = j0 + m2_row(q);
        float w = j < L ? cf.wend[k.ci + j] : 0.0f;
#pragma unroll
        for (int r = 0; r < 4; r++) acc[q][r] *= w;
    }
    for (int i0 = j0; i0 < L; i0 += M2_TB) {
        if (tid < M2_TB) csi[tid] = i0 + tid < L ? cf.cs[k.ci + i0 + tid] : 0.0f;
        __syncthreads();
        float gt[4][4];   /* gt[j][i] = x_j . dy_i */
        m2_zero(gt);
        auto ldy = [&](int p, int n) { return i0 + n < L ? dY[(size_t)(i0 + n) * di + p] : 0.0f; };
        m2_mma_sel<TC, true, true>(gt, lx, ldy, hd, sm);
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int jj = m2_row(q), ii = m2_col(r), j = j0 + jj, i = i0 + ii;
                Ms[jj][ii] = (i < L && j <= i) ? gt[q][r] * expf(csi[ii] - csj[jj]) * dtj[jj] : 0.0f;
            }
        __syncthreads();
        auto lm = [&](int m, int ii) { return Ms[m][ii]; };
        auto lc = [&](int ii, int n) { return s0 + n < ds ? Cm[(size_t)(i0 + ii) * cd + s0 + n] : 0.0f; };
        m2_mma_sel<TC, true, false>(acc, lm, lc, min(M2_TB, L - i0), sm);
    }
    float *o = dst + k.r0 * dst_stride + (direct ? k.bcol : k.h * ds);
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int j = j0 + m2_row(q), s = s0 + m2_col(r);
            if (j < L && s < ds) o[(size_t)j * dst_stride + s] = acc[q][r];
        }
}

/* ---- backward: scalar gradients -------------------------------------------------------------- */

/* Sum of v over the block (256 threads); every thread gets the result. red: 256 floats. */
__device__ float block_sum(float v, float *red) {
    int tid = threadIdx.x;
    __syncthreads();   /* red may still be read by an earlier call */
    red[tid] = v;
    __syncthreads();
    for (int s = M2_NT / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    return red[0];
}

#define M2_SCAL_L 256
/* One block per (b, h, chunk). dcs, ddtl: [B, nh, T] work (chunks longer than M2_SCAL_L) (this chunk's rows owned by the
 * block); ddt [B*T, nh] OVERWRITTEN for this head's rows; part[bhc] = sum_k da_k dt_k,
 * part[nbhc + bhc] = sum dy . x over the chunk. The terms (core/mamba2.c ssd_backward):
 *   Q'_ij = (dy_i.x_j) E_ij (C_i.B_j), Q_ij = Q'_ij dt_j:  ddt_j += sum_i Q'_ij, dcs_i += sum_j Q_ij,
 *   dcs_j -= sum_i Q_ij;  dcs_i += e^{cs_i} (dy_i S_prev).C_i;  dcs_{L-1} += e^{cs_L} <dS, S_prev>;
 *   u_j = (x_j dS).B_j: ddt_j += u_j e^{cs_L-cs_j}, dcs_{L-1} += u_j w_j, dcs_j -= u_j w_j;
 *   da_k = sum_{i>=k} dcs_i: ddt_k += da_k A, dA += da_k dt_k. */
template <bool TC>
__global__ void __launch_bounds__(M2_NT, TC ? 1 : 2)
k_ssd_bwd_scal(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ states,
               const float *__restrict__ dstates, const float *__restrict__ dy,
               const float *__restrict__ A_log, float *dcs, float *ddtl, float *ddt, float *part) {
    __shared__ m2_tile_any sm;
    __shared__ float Q1[M2_TB][M2_TB + 1];   /* Q' (then the other terms' products); Q = Q' dt_j on the fly */
    __shared__ float csi[M2_TB], csj[M2_TB], dtj[M2_TB], red[M2_NT];
    m2_chunk k = chunk_of(g, blockIdx.x);
    int L = k.L, hd = g.hd, ds = g.ds, cd = g.cd, di = g.di, tid = threadIdx.x;
    const float *X = xbc + k.r0 * cd + k.xcol, *Bm = xbc + k.r0 * cd + k.bcol,
                *Cm = xbc + k.r0 * cd + k.ccol, *S = states + k.si, *dS = dstates + k.si,
                *dY = dy + k.r0 * di + (size_t)k.h * hd;
    /* the chunk's dcs / ddt sums in shared memory where the chunk fits (each is updated several
     * times between barriers: global read-modify-writes waited a memory latency each) */
    __shared__ float dc_s[M2_SCAL_L], dd_s[M2_SCAL_L];
    float *dc = g.Lc <= M2_SCAL_L ? dc_s : dcs + k.ci, *dd = g.Lc <= M2_SCAL_L ? dd_s : ddtl + k.ci;
    for (int i = tid; i < L; i += M2_NT) { dc[i] = 0.0f; dd[i] = 0.0f; }
    __syncthreads();
    /* the causal L x L terms, tile pair by tile pair (i0 >= j0) */
    for (int i0 = 0; i0 < L; i0 += M2_TB) {
        auto lc = [&](int m, int s) { return i0 + m < L ? Cm[(size_t)(i0 + m) * cd + s] : 0.0f; };
        auto ldy = [&](int m, int p) { return i0 + m < L ? dY[(size_t)(i0 + m) * di + p] : 0.0f; };
        for (int j0 = 0; j0 <= i0; j0 += M2_TB) {
            if (tid < M2_TB) {
                csi[tid] = i0 + tid < L ? cf.cs[k.ci + i0 + tid] : 0.0f;
                bool v = j0 + tid < L;
                csj[tid] = v ? cf.cs[k.ci + j0 + tid] : 0.0f;
                dtj[tid] = v ? cf.dtT[k.ci + j0 + tid] : 0.0f;
            }
            __syncthreads();
            float G[4][4], W[4][4];
            m2_zero(G);
            m2_zero(W);
            auto lb = [&](int s, int n) { return j0 + n < L ? Bm[(size_t)(j0 + n) * cd + s] : 0.0f; };
            auto lx = [&](int p, int n) { return j0 + n < L ? X[(size_t)(j0 + n) * cd + p] : 0.0f; };
            m2_mma_sel<TC, true, true>(G, lc, lb, ds, sm);
            m2_mma_sel<TC, true, true>(W, ldy, lx, hd, sm);
#pragma unroll
            for (int q = 0; q < 4; q++)
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    int ii = m2_row(q), jj = m2_col(r), i = i0 + ii, j = j0 + jj;
                    float qp = (i < L && j <= i) ? W[q][r] * expf(csi[ii] - csj[jj]) * G[q][r] : 0.0f;
                    Q1[ii][jj] = qp;
                }
            __syncthreads();
            if (tid < M2_TB) {
                float rs = 0.0f, cq = 0.0f, cqp = 0.0f, dtt = dtj[tid];
                for (int t = 0; t < M2_TB; t++) {
                    rs += Q1[tid][t] * dtj[t];
                    cq += Q1[t][tid] * dtt;
                    cqp += Q1[t][tid];
                }
                /* rows i0+tid and columns j0+tid: the same thread, or disjoint when i0 > j0 */
                if (i0 + tid < L) dc[i0 + tid] += rs;
                if (j0 + tid < L) { dc[j0 + tid] -= cq; dd[j0 + tid] += cqp; }
            }
            __syncthreads();
        }
    }
    /* inter-chunk output: dcs_i += e^{cs_i} sum_s (dy_i S_prev)_s C_is */
    for (int i0 = 0; i0 < L; i0 += M2_TB)
        for (int s0 = 0; s0 < ds; s0 += M2_TB) {
            float T1[4][4];
            m2_zero(T1);
            auto ldy = [&](int m, int p) { return i0 + m < L ? dY[(size_t)(i0 + m) * di + p] : 0.0f; };
            auto lS = [&](int p, int n) { return s0 + n < ds ? S[(size_t)p * ds + s0 + n] : 0.0f; };
            m2_mma_sel<TC, true, false>(T1, ldy, lS, hd, sm);
#pragma unroll
            for (int q = 0; q < 4; q++)
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    int ii = m2_row(q), ss = m2_col(r), i = i0 + ii, s = s0 + ss;
                    Q1[ii][ss] = (i < L && s < ds) ? T1[q][r] * Cm[(size_t)i * cd + s] : 0.0f;
                }
            __syncthreads();
            if (tid < M2_TB && i0 + tid < L) {
                float rs = 0.0f;
                for (int t = 0; t < M2_TB; t++) rs += Q1[tid][t];
                dc[i0 + tid] += cf.ecs[k.ci + i0 + tid] * rs;
            }
            __syncthreads();
        }
    /* state passing: u_j = sum_s (x_j dS)_s B_js */
    float cl = cf.cs[k.ci + L - 1], el = cf.ecs[k.ci + L - 1];
    for (int j0 = 0; j0 < L; j0 += M2_TB)
        for (int s0 = 0; s0 < ds; s0 += M2_TB) {
            float T2[4][4];
            m2_zero(T2);
            auto lx = [&](int m, int p) { return j0 + m < L ? X[(size_t)(j0 + m) * cd + p] : 0.0f; };
            auto lds = [&](int p, int n) { return s0 + n < ds ? dS[(size_t)p * ds + s0 + n] : 0.0f; };
            m2_mma_sel<TC, true, false>(T2, lx, lds, hd, sm);
#pragma unroll
            for (int q = 0; q < 4; q++)
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    int jj = m2_row(q), ss = m2_col(r), j = j0 + jj, s = s0 + ss;
                    Q1[jj][ss] = (j < L && s < ds) ? T2[q][r] * Bm[(size_t)j * cd + s] : 0.0f;
                }
            __syncthreads();
            float uw = 0.0f;
            if (tid < M2_TB && j0 + tid < L) {
                int j = j0 + tid;
                float u = 0.0f;
                for (int t = 0; t < M2_TB; t++) u += Q1[tid][t];
                float e = expf(cl - cf.cs[k.ci + j]), w = cf.wend[k.ci + j];
                dd[j] += u * e;
                dc[j] -= u * w;
                uw = u * w;
            }
            float tot = block_sum(uw, red);   /* its barriers order the dc[j] writes before this one */
            if (tid == 0) dc[L - 1] += tot;
            __syncthreads();
        }
    /* dcs_{L-1} += e^{cs_L} <dS, S_prev> */
    float dot = 0.0f;
    for (size_t q = tid; q < g.hs; q += M2_NT) dot += dS[q] * S[q];
    dot = block_sum(dot, red);
    if (tid == 0) dc[L - 1] += el * dot;
    /* dD partial: sum dy . x */
    float sd = 0.0f;
    for (int e = tid; e < L * hd; e += M2_NT) {
        int i = e / hd, p = e % hd;
        sd += dY[(size_t)i * di + p] * X[(size_t)i * cd + p];
    }
    sd = block_sum(sd, red);   /* also orders the dc writes above before the scan */
    /* da_k = sum_{i>=k} dcs_i, one warp, 32-row segments from the end */
    if (tid < 32) {
        int lane = tid;
        float A = -expf(A_log[k.h]);
        float dA = ssd_da_scan(dc, dd, cf.dtT + k.ci, L, A, ddt + (size_t)k.r0 * g.nh + k.h, g.nh, lane);
        for (int off = 16; off > 0; off >>= 1) dA += __shfl_down_sync(0xffffffffu, dA, off);
        if (lane == 0) {
            int nbhc = g.B * g.nh * g.nc;
            part[blockIdx.x] = dA;
            part[nbhc + blockIdx.x] = sd;
        }
    }
}

/* gA_log[h] += A sum over (b, chunk) of the dA partials; gD[h] += the dD partials. */
__global__ void k_ssd_param_fin(m2_geo g, const float *__restrict__ A_log, const float *__restrict__ part,
                                float *gA_log, float *gD) {
    int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= g.nh) return;
    int nbhc = g.B * g.nh * g.nc;
    float sa = 0.0f, sd = 0.0f;
    for (int b = 0; b < g.B; b++)
        for (int c = 0; c < g.nc; c++) {
            size_t i = ((size_t)b * g.nh + h) * g.nc + c;
            sa += part[i];
            sd += part[nbhc + i];
        }
    gA_log[h] += sa * -expf(A_log[h]);
    gD[h] += sd;
}

/* dxbc columns of groups shared by several heads: the sum of the heads' buffers, in head order. */
__global__ void k_ssd_group_sum(m2_geo g, const float *__restrict__ dXh, const float *__restrict__ dBh,
                                const float *__restrict__ dCh, float *dxbc) {
    /* grid (rows, column blocks): no 64-bit division per element */
    size_t r = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x, rep, w, h0, col;
    if (c >= g.cd) return;
    size_t e = r * g.cd + c;
    const float *src;
    if (c < g.bo) { rep = g.xrep; w = g.hd; col = c; src = dXh; }
    else if (c < g.co) { rep = g.brep; w = g.ds; col = c - g.bo; src = dBh; }
    else { rep = g.crep; w = g.ds; col = c - g.co; src = dCh; }
    if (rep == 1 || !src) return;   /* written directly (by the kernels, or the fused one's head groups) */
    h0 = (col / w) * rep;
    const float *p = src + r * (size_t)g.nh * w + (size_t)h0 * w + col % w;
    float s = 0.0f;
    for (int t = 0; t < rep; t++) s += p[(size_t)t * w];
    dxbc[e] = s;
}

/* ---- fused per-chunk kernels (chunk, hd, ds <= 64: the training chunk of zb_cuda_mamba2_*) --------
 * One block per (b, h, chunk) loads the chunk's operands into shared memory once (x, B, C, dy rows,
 * the start state and its gradient; padded with zeros to 64 x 64) and does every product of the
 * chunk from there: the backward computes C B^T and dy x^T once and produces dx, dB, dC and the
 * scalar terms (ddt, dA, dD partials) in one pass, where the tile kernels above ran four passes
 * that each recomputed the L x L matrices from global memory (S4R2: 70 ms of the 1B step). The
 * same algebra and sums as those kernels (terms in another order; the same roundings: every
 * product operand rounded at most once to TF32 in the bf16 mode). Products on shared tiles of row
 * stride F_LD: tensor cores (wmma TF32, float32 sums) or float32 CUDA cores (exact mode). */
#define F_N 64
#define F_LD 68               /* 32-byte aligned wmma pointers; rows 4 banks apart */
#define F_MAT (F_N * F_LD)

/* the accumulators of a 64 x 64 product on the tensor cores: its 16 fragments of 16 x 16 (4 x 4),
 * NF per warp, warp w owning fragments f = w NF + t (rows 16 (f / 4), columns 16 (f % 4)); NT threads
 * in the block (8 warps with NF = 2, 16 with NF = 1) */
template <int NF>
struct f_acc_tcn {
    static constexpr int NT = 32 * 16 / NF;
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> c[NF];
};
typedef f_acc_tcn<2> f_acc_tc;     /* 8 warps */
typedef f_acc_tcn<1> f_acc_tc16;   /* 16 warps */
/* thread (tx, ty) owns rows ty + 16 q, columns tx + 16 r (m2_row / m2_col) */
struct f_acc_f {
    static constexpr int NT = M2_NT;
    float a[4][4];
};

template <int NF>
__device__ __forceinline__ void f_zero(f_acc_tcn<NF> &a) {
#pragma unroll
    for (int u = 0; u < NF; u++) nvcuda::wmma::fill_fragment(a.c[u], 0.0f);
}
__device__ __forceinline__ void f_zero(f_acc_f &a) { m2_zero(a.a); }

/* acc += op(A) op(B) over k < K (a multiple of 8): A(m, k) = TA ? A[k F_LD + m] : A[m F_LD + k],
 * B(k, n) = TB ? B[n F_LD + k] : B[k F_LD + n]. Reads only shared memory (no barrier inside). */
/* one k step of 8 of f_mm */
template <bool TA, bool TB, int NF>
__device__ __forceinline__ void f_mm_step(f_acc_tcn<NF> &acc, const float *A, const float *B, int k) {
    namespace wm = nvcuda::wmma;
    typedef typename std::conditional<TA, wm::col_major, wm::row_major>::type la_t;
    typedef typename std::conditional<TB, wm::col_major, wm::row_major>::type lb_t;
    /* the warp's NF fragments share their row block (NF <= 4) */
    int f0 = (threadIdx.x >> 5) * NF, mi = f0 >> 2, nj = f0 & 3;
    {
        wm::fragment<wm::matrix_a, 16, 16, 8, wm::precision::tf32, la_t> fa;
        wm::load_matrix_sync(fa, TA ? A + (size_t)k * F_LD + mi * 16 : A + (size_t)mi * 16 * F_LD + k, F_LD);
#pragma unroll
        for (int t = 0; t < fa.num_elements; t++) fa.x[t] = wm::__float_to_tf32(fa.x[t]);
#pragma unroll
        for (int u = 0; u < NF; u++) {
            int n0 = (nj + u) * 16;
            wm::fragment<wm::matrix_b, 16, 16, 8, wm::precision::tf32, lb_t> fb;
            wm::load_matrix_sync(fb, TB ? B + (size_t)n0 * F_LD + k : B + (size_t)k * F_LD + n0, F_LD);
#pragma unroll
            for (int t = 0; t < fb.num_elements; t++) fb.x[t] = wm::__float_to_tf32(fb.x[t]);
            wm::mma_sync(acc.c[u], fa, fb, acc.c[u]);
        }
    }
}
template <bool TA, bool TB, int NF>
__device__ __forceinline__ void f_mm(f_acc_tcn<NF> &acc, const float *A, const float *B, int K) {
    for (int k = 0; k < K; k += 8) f_mm_step<TA, TB>(acc, A, B, k);
}
/* a2 += op(A2) op(B2) over k < K2 and a += op(A) op(B) over k < K, their k steps interleaved: two
 * independent chains of loads and products per warp instead of one after the other (each product's
 * steps in f_mm's order: the same sums) */
template <bool TA2, bool TB2, bool TA, bool TB, int NF>
__device__ __forceinline__ void f_mm2(f_acc_tcn<NF> &a2, const float *A2, const float *B2, int K2, f_acc_tcn<NF> &a,
                                      const float *A, const float *B, int K) {
    int Kc = min(K, K2), k = 0;
    for (; k < Kc; k += 8) {
        f_mm_step<TA2, TB2>(a2, A2, B2, k);
        f_mm_step<TA, TB>(a, A, B, k);
    }
    for (int k2 = k; k2 < K2; k2 += 8) f_mm_step<TA2, TB2>(a2, A2, B2, k2);
    for (; k < K; k += 8) f_mm_step<TA, TB>(a, A, B, k);
}
template <bool TA, bool TB>
__device__ __forceinline__ void f_mm(f_acc_f &acc, const float *A, const float *B, int K);
template <bool TA2, bool TB2, bool TA, bool TB>
__device__ __forceinline__ void f_mm2(f_acc_f &a2, const float *A2, const float *B2, int K2, f_acc_f &a, const float *A,
                                      const float *B, int K) {
    f_mm<TA2, TB2>(a2, A2, B2, K2);
    f_mm<TA, TB>(a, A, B, K);
}
template <bool TA, bool TB>
__device__ __forceinline__ void f_mm(f_acc_f &acc, const float *A, const float *B, int K) {
    for (int k = 0; k < K; k++) {
        float av[4], bv[4];
#pragma unroll
        for (int q = 0; q < 4; q++) av[q] = TA ? A[(size_t)k * F_LD + m2_row(q)] : A[(size_t)m2_row(q) * F_LD + k];
#pragma unroll
        for (int r = 0; r < 4; r++) bv[r] = TB ? B[(size_t)m2_col(r) * F_LD + k] : B[(size_t)k * F_LD + m2_col(r)];
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc.a[q][r] = fmaf(av[q], bv[r], acc.a[q][r]);
    }
}

/* O[64 x 64] (row stride F_LD) = acc */
template <int NF>
__device__ __forceinline__ void f_store(f_acc_tcn<NF> &a, float *O) {
    int f0 = (threadIdx.x >> 5) * NF, mi = f0 >> 2, nj = f0 & 3;
#pragma unroll
    for (int u = 0; u < NF; u++)
        nvcuda::wmma::store_matrix_sync(O + (size_t)mi * 16 * F_LD + (nj + u) * 16, a.c[u], F_LD,
                                        nvcuda::wmma::mem_row_major);
}
__device__ __forceinline__ void f_store(f_acc_f &a, float *O) {
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) O[(size_t)m2_row(q) * F_LD + m2_col(r)] = a.a[q][r];
}

/* P2 = op(A2) op(B2), then P = op(A) op(B) (each over k < its K), then a barrier: the two
 * products of one output of the fused backward (its chunk-state term and its causal term). */
template <bool TA2, bool TB2, bool TA, bool TB, class ACC>
__device__ __forceinline__ void f_mm_pair(ACC &a, const float *A2, const float *B2, int K2, float *P2, const float *A,
                                          const float *B, int K, float *P) {
    f_zero(a);
    f_mm<TA2, TB2>(a, A2, B2, K2);
    f_store(a, P2);
    f_zero(a);
    f_mm<TA, TB>(a, A, B, K);
    f_store(a, P);
    __syncthreads();
}
/* f_mm_pair with the two products' steps interleaved (f_mm2; b: a second accumulator) */
template <bool TA2, bool TB2, bool TA, bool TB, class ACC>
__device__ __forceinline__ void f_mm_pair2(ACC &a, ACC &b, const float *A2, const float *B2, int K2, float *P2,
                                           const float *A, const float *B, int K, float *P) {
    f_zero(b);
    f_zero(a);
    f_mm2<TA2, TB2, TA, TB>(b, A2, B2, K2, a, A, B, K);
    f_store(b, P2);
    f_store(a, P);
    __syncthreads();
}

/* S[64 x 64] (row stride F_LD) = src[r stride + c] (times sc[r] where sc is not NULL) for r < rows,
 * c < cols, else 0. */
struct f_src {
    float *S;
    const float *src;
    size_t stride;
    int rows, cols;
    const float *sc;
};
/* Several matrices at once: every thread's global loads issued before its shared stores (a float4
 * per load where every row start is 16-byte aligned, 4 per thread per matrix), so that the block
 * waits about one memory latency per group instead of one per load. f_fetch4 / f_put4: the two
 * halves of the float4 form, for loads kept in flight across other work (f_vec_ok first). */
template <int NM>
__device__ __forceinline__ bool f_vec_ok(const f_src (&m)[NM]) {
    bool vec = true;
#pragma unroll
    for (int i = 0; i < NM; i++)
        vec = vec && !(((uintptr_t)m[i].src | (m[i].stride * sizeof(float))) & 15) && (m[i].cols & 3) == 0;
    return vec;
}
#define F_Q(NT) (F_N * F_N / 4 / (NT))   /* float4 per thread per matrix, NT threads */
template <int NM, int NT = M2_NT>
__device__ __forceinline__ void f_fetch4(float4 (&v)[NM][F_Q(NT)], const f_src (&m)[NM]) {
#pragma unroll
    for (int i = 0; i < NM; i++)
#pragma unroll
        for (int q = 0; q < F_Q(NT); q++) {
            int e = threadIdx.x + q * NT, r = e >> 4, c = (e & 15) * 4;
            v[i][q] = r < m[i].rows && c < m[i].cols ? __ldg((const float4 *)(m[i].src + (size_t)r * m[i].stride + c))
                                                     : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
}
template <int NM, int NT = M2_NT>
__device__ __forceinline__ void f_put4(const float4 (&v)[NM][F_Q(NT)], const f_src (&m)[NM]) {
#pragma unroll
    for (int i = 0; i < NM; i++)
#pragma unroll
        for (int q = 0; q < F_Q(NT); q++) {
            int e = threadIdx.x + q * NT, r = e >> 4, c = (e & 15) * 4;
            float4 w = v[i][q];
            if (m[i].sc) {
                float s = m[i].sc[r];
                w.x *= s; w.y *= s; w.z *= s; w.w *= s;
            }
            *(float4 *)(m[i].S + (size_t)r * F_LD + c) = w;
        }
}
template <int NM, int NT = M2_NT>
__device__ __forceinline__ void f_load_n(const f_src (&m)[NM]) {
    if (f_vec_ok(m)) {
        float4 v[NM][F_Q(NT)];
        f_fetch4<NM, NT>(v, m);
        f_put4<NM, NT>(v, m);
        return;
    }
    /* other shapes: 4 scalar loads in flight per thread (few registers: the kernels' budget goes
     * to the float4 form) */
#pragma unroll
    for (int i = 0; i < NM; i++)
        for (int q0 = 0; q0 < F_N * F_N / NT; q0 += 4) {
            float v[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int e = threadIdx.x + (q0 + q) * NT, r = e >> 6, c = e & 63;
                v[q] = r < m[i].rows && c < m[i].cols ? m[i].src[(size_t)r * m[i].stride + c] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int e = threadIdx.x + (q0 + q) * NT, r = e >> 6, c = e & 63;
                m[i].S[(size_t)r * F_LD + c] = m[i].sc ? m[i].sc[r] * v[q] : v[q];
            }
        }
}

__device__ __forceinline__ float f_warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
/* the block's sum (NT threads), every thread gets it; red: NT / 32 floats, free on entry (a barrier
 * inside) */
template <int NT = M2_NT>
__device__ __forceinline__ float f_block_sum(float v, float *red) {
    v = f_warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < NT / 32; w++) s += red[w];
    __syncthreads();   /* red reusable */
    return s;
}
/* out[r] = sum_c P[r][c] Q[r][c] (c < 64), one warp per row, r < 64 (NT threads) */
template <int NT = M2_NT>
__device__ __forceinline__ void f_row_dots(const float *P, const float *Q, float *out) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int r = warp; r < F_N; r += NT / 32) {
        const float *p = P + (size_t)r * F_LD, *q = Q + (size_t)r * F_LD;
        float s = f_warp_sum(p[lane] * q[lane] + p[lane + 32] * q[lane + 32]);
        if (lane == 0) out[r] = s;
    }
}

__device__ __forceinline__ int f_r8(int n) { return (n + 7) & ~7; }

/* shared floats of the kernels: matrices, then 8 vectors of 64 and 16 reduction slots (one per warp) */
#define F_VEC (8 * F_N + 16)
#define F_SCAN_MATS 6
#define F_OUTER_MATS 2

/* Chunk states (k_ssd_outer's job): out[p, s] = sum_j U[j, p] coef_j V[j, s]. */
template <class ACC>
__global__ void __launch_bounds__(M2_NT)
k_ssd_outer_fused(m2_geo g, const float *__restrict__ U, int u_stride, int u_is_x, const float *__restrict__ xbc,
                  int v_is_c, const float *__restrict__ coef, float *out) {
    extern __shared__ __align__(32) float fsm[];
    float *Us = fsm, *Vs = Us + F_MAT, *cv = Vs + F_MAT;
    m2_chunk k = chunk_of(g, blockIdx.x);
    int L = k.L, hd = g.hd, ds = g.ds, tid = threadIdx.x;
    if (tid < F_N) cv[tid] = tid < L ? coef[k.ci + tid] : 0.0f;
    __syncthreads();
    f_src ld[2] = {{Us, U + k.r0 * u_stride + (u_is_x ? k.xcol : k.h * hd), (size_t)u_stride, L, hd, NULL},
                   {Vs, xbc + k.r0 * g.cd + (v_is_c ? k.ccol : k.bcol), (size_t)g.cd, L, ds, cv}};
    f_load_n(ld);
    __syncthreads();
    ACC a;
    f_zero(a);
    f_mm<true, false>(a, Us, Vs, f_r8(L));
    __syncthreads();
    f_store(a, Us);   /* [p][s] */
    __syncthreads();
    float *o = out + k.si;
    for (int e = tid; e < F_N * F_N; e += M2_NT) {
        int p = e >> 6, s = e & 63;
        if (p < hd && s < ds) o[(size_t)p * ds + s] = Us[(size_t)p * F_LD + s];
    }
}

/* Forward output: y_i = sum_{j<=i} (C_i.B_j) E_ij dt_j x_j + e^{cs_i} C_i S_prev^T + D x_i.
 * One block per (b, head group, chunk) as k_ssd_bwd_fused (rep heads sharing x and B: those loaded
 * once; 2 blocks per SM overlap one's loads with the other's products). */
template <class ACC>
__global__ void __launch_bounds__(ACC::NT, ACC::NT == M2_NT ? 2 : 1)   /* 2 blocks of 6 matrices per SM (8 warps) */
k_ssd_scan_fused(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ states,
                 const float *__restrict__ Dp, float *y, int rep) {
    extern __shared__ __align__(32) float fsm[];
    float *X = fsm, *Bm = X + F_MAT, *Cm = Bm + F_MAT, *S = Cm + F_MAT, *MG = S + F_MAT, *T2 = MG + F_MAT,
          *vec = T2 + F_MAT, *csv = vec, *ecv = vec + F_N, *dtv = vec + 2 * F_N;
    int ngr = g.nh / rep, c = blockIdx.x % g.nc, bg = blockIdx.x / g.nc, grp = bg % ngr, b = bg / ngr;
    int hd = g.hd, ds = g.ds, cd = g.cd, tid = threadIdx.x, Ks = f_r8(ds);
    constexpr int NT = ACC::NT;
    m2_chunk k0 = chunk_of(g, (b * g.nh + grp * rep) * g.nc + c);
    int L = k0.L;
    const float *row = xbc + k0.r0 * cd;
    f_src ldg[2] = {{X, row + k0.xcol, (size_t)cd, L, hd, NULL}, {Bm, row + k0.bcol, (size_t)cd, L, ds, NULL}};
    f_load_n<2, NT>(ldg);
    for (int hh = 0; hh < rep; hh++) {
        m2_chunk k = chunk_of(g, (b * g.nh + grp * rep + hh) * g.nc + c);
        f_src ld[2] = {{Cm, row + k.ccol, (size_t)cd, L, ds, NULL}, {S, states + k.si, (size_t)ds, hd, ds, NULL}};
        f_load_n<2, NT>(ld);
        if (tid < F_N) {
            bool v = tid < L;
            csv[tid] = v ? cf.cs[k.ci + tid] : 0.0f;
            ecv[tid] = v ? cf.ecs[k.ci + tid] : 0.0f;
            dtv[tid] = v ? cf.dtT[k.ci + tid] : 0.0f;
        }
        __syncthreads();
        ACC a;
        f_zero(a);
        f_mm<false, true>(a, Cm, Bm, Ks);   /* G = C B^T */
        f_store(a, MG);
        f_zero(a);
        f_mm<false, true>(a, Cm, S, Ks);    /* C S^T [i][p] */
        f_store(a, T2);
        __syncthreads();
        for (int e = tid; e < F_N * F_N; e += NT) {
            int i = e >> 6, j = e & 63;
            float *p = MG + (size_t)i * F_LD + j;
            *p = (i < L && j <= i) ? *p * expf(csv[i] - csv[j]) * dtv[j] : 0.0f;
        }
        __syncthreads();
        f_zero(a);
        f_mm<false, false>(a, MG, X, f_r8(L));   /* M x */
        f_store(a, Cm);                         /* C no longer read by this head */
        __syncthreads();
        float Dh = Dp[k.h];
        float *Y = y + k.r0 * g.di + (size_t)k.h * hd;
        for (int e = tid; e < F_N * F_N; e += NT) {
            int i = e >> 6, p = e & 63;
            if (i < L && p < hd) {
                size_t o = (size_t)i * F_LD + p;
                Y[(size_t)i * g.di + p] = Cm[o] + ecv[i] * T2[o] + Dh * X[o];
            }
        }
        __syncthreads();   /* the next head overwrites C, S and the vectors */
    }
}

/* The whole chunk backward after the state gradients (k_ssd_outer + k_ssd_pass_bwd): with
 * G = C B^T, W = dy x^T, E_ij = e^{cs_i - cs_j} (j <= i), M = G o E dt_j, dG = W o E dt_j:
 *   dx = M^T dy + w_j B dS^T + D dy,   dC = dG B + e^{cs_i} dy S_prev,   dB = dG^T C + w_j x dS,
 * and k_ssd_bwd_scal's scalar terms (its comment): Q' = W o E o G row / column sums, the
 * inter-chunk dcs_i e^{cs_i} (dy S_prev).C_i, u_j = (x dS).B_j, e^{cs_L} <dS, S_prev>, the dD sum;
 * then da = the reverse cumsum of dcs, ddt = dd + da A, the dA and dD partials per chunk.
 * One block per (b, head group, chunk): a group is the `rep` heads that share one x group and one
 * B group (x_groups == b_groups, Zebra's KV groups; else rep = 1), which the block runs one after
 * another, summing their dx and dB in shared memory in head order (deterministic) and writing
 * them once into dxbc (no per-head buffers, no group sum). dC: direct into dxbc where C is per
 * head, else per-head buffers as k_ssd_bwd_dc. With rep = 1, dx and dB go as k_ssd_bwd_dx / _db. */
struct f_bwd_out {
    float *ox, *ob, *oc;
    int sx, sb, sc, dx_direct, db_direct, dc_direct;
    int rep;   /* heads per block (1: ox / ob as k_ssd_bwd_dx / _db) */
    int prefetch;   /* f_bwd_prefetch() */
};
#define F_BWD_MATS 12
template <class ACC, bool ILP>
__global__ void __launch_bounds__(ACC::NT, 1)
k_ssd_bwd_fused(m2_geo g, const float *__restrict__ xbc, m2_coef cf, const float *__restrict__ states,
                const float *__restrict__ dstates, const float *__restrict__ dy, const float *__restrict__ Dp,
                const float *__restrict__ A_log, f_bwd_out fo, float *ddt, float *part) {
    extern __shared__ __align__(32) float fsm[];
    float *X = fsm, *Bm = X + F_MAT, *Cm = Bm + F_MAT, *dY = Cm + F_MAT, *S = dY + F_MAT, *dS = S + F_MAT,
          *MG = dS + F_MAT, *MW = MG + F_MAT, *T = MW + F_MAT, *T2 = T + F_MAT, *dXa = T2 + F_MAT,
          *dBa = dXa + F_MAT, *vec = dBa + F_MAT;
    float *csv = vec, *ecv = vec + F_N, *dtv = vec + 2 * F_N, *wv = vec + 3 * F_N, *dc = vec + 4 * F_N,
          *dd = vec + 5 * F_N, *rv = vec + 6 * F_N, *cv = vec + 7 * F_N, *red = vec + 8 * F_N;
    int rep = fo.rep, ngr = g.nh / rep;
    int c = blockIdx.x % g.nc, bg = blockIdx.x / g.nc, grp = bg % ngr, b = bg / ngr;
    int hd = g.hd, ds = g.ds, cd = g.cd, di = g.di, tid = threadIdx.x, lane = tid & 31;
    int Kh = f_r8(hd), Ks = f_r8(ds);
    constexpr int NT = ACC::NT, NW = NT / 32, NQ = NT / F_N, RQ = F_N / NQ;   /* NQ groups of RQ rows */
    m2_chunk k0 = chunk_of(g, (b * g.nh + grp * rep) * g.nc + c);
    int L = k0.L, Kl = f_r8(L);
    const float *row = xbc + k0.r0 * cd;
    /* a head's own operands; the next head's are loaded into registers while this one computes */
    auto head_src = [&](int hh, f_src (&ld)[4]) {
        m2_chunk k = chunk_of(g, (b * g.nh + grp * rep + hh) * g.nc + c);
        ld[0] = {Cm, row + k.ccol, (size_t)cd, L, ds, NULL};
        ld[1] = {dY, dy + k.r0 * di + (size_t)k.h * hd, (size_t)di, L, hd, NULL};
        ld[2] = {S, states + k.si, (size_t)ds, hd, ds, NULL};
        ld[3] = {dS, dstates + k.si, (size_t)ds, hd, ds, NULL};
    };
    /* a head's coefficients (cs, e^cs, dt, w_end; threads < F_N), fetched with its operands where
     * f_bwd_prefetch (ZB_SSD_BWD_PREFETCH=0: loaded at the head's start, one memory latency a head) */
    float cq[4];
    auto coef_fetch = [&](int hh) {
        m2_chunk k = chunk_of(g, (b * g.nh + grp * rep + hh) * g.nc + c);
        bool v = tid < L;
        cq[0] = v ? cf.cs[k.ci + tid] : 0.0f;
        cq[1] = v ? cf.ecs[k.ci + tid] : 0.0f;
        cq[2] = v ? cf.dtT[k.ci + tid] : 0.0f;
        cq[3] = v ? cf.wend[k.ci + tid] : 0.0f;
    };
    float4 pv[4][F_Q(NT)];
    bool have = false, pre = fo.prefetch;
    /* x and B: the group's, loaded once (f_bwd_prefetch: with the first head's operands and coefficients,
     * one memory latency at the block's start instead of three) */
    f_src ldg[2] = {{X, row + k0.xcol, (size_t)cd, L, hd, NULL}, {Bm, row + k0.bcol, (size_t)cd, L, ds, NULL}};
    if (pre) {
        f_src l0[4];
        head_src(0, l0);
        if (tid < F_N) coef_fetch(0);
        if (f_vec_ok(ldg) && f_vec_ok(l0)) {
            float4 v2[2][F_Q(NT)];
            f_fetch4<2, NT>(v2, ldg);
            f_fetch4<4, NT>(pv, l0);
            f_put4<2, NT>(v2, ldg);
            have = true;
        } else
            f_load_n<2, NT>(ldg);
    } else
        f_load_n<2, NT>(ldg);
    if (rep > 1)
        for (int e = tid; e < F_N * F_LD; e += NT) { dXa[e] = 0.0f; dBa[e] = 0.0f; }
    for (int hh = 0; hh < rep; hh++) {
        int bhc = (b * g.nh + grp * rep + hh) * g.nc + c;
        m2_chunk k = chunk_of(g, bhc);
        f_src ld[4];
        head_src(hh, ld);
        if (have) f_put4<4, NT>(pv, ld);
        else f_load_n<4, NT>(ld);
        if (tid < F_N) {
            if (!pre) coef_fetch(hh);
            csv[tid] = cq[0];
            ecv[tid] = cq[1];
            dtv[tid] = cq[2];
            wv[tid] = cq[3];
            dc[tid] = 0.0f;
            dd[tid] = 0.0f;
        }
        __syncthreads();
        have = false;
        if (hh + 1 < rep) {
            f_src nx[4];
            head_src(hh + 1, nx);
            if (pre && tid < F_N) coef_fetch(hh + 1);   /* stored at the next head's start */
            if (f_vec_ok(nx)) {
                f_fetch4<4, NT>(pv, nx);   /* stored at the next head's start */
                have = true;
            }
        }
        ACC a, a2;   /* a2: the second chain of the interleaved products (ILP, f_mm2) */
        if (ILP) {
            f_zero(a2);
            f_zero(a);
            f_mm2<false, true, false, true>(a2, Cm, Bm, Ks, a, dY, X, Kh);   /* G = C B^T, W = dy x^T */
            f_store(a2, MG);
            f_store(a, MW);
        } else {
            f_zero(a);
            f_mm<false, true>(a, Cm, Bm, Ks);   /* G[i][j] = C_i . B_j */
            f_store(a, MG);
            f_zero(a);
            f_mm<false, true>(a, dY, X, Kh);    /* W[i][j] = dy_i . x_j */
            f_store(a, MW);
        }
        __syncthreads();
        for (int e = tid; e < F_N * F_N; e += NT) {
            int i = e >> 6, j = e & 63;
            size_t o = (size_t)i * F_LD + j;
            float E = (i < L && j <= i) ? expf(csv[i] - csv[j]) : 0.0f, G = MG[o], W = MW[o];
            T[o] = W * E * G;          /* Q' */
            MG[o] = G * E * dtv[j];    /* M */
            MW[o] = W * E * dtv[j];    /* dG */
        }
        __syncthreads();
        /* Q' sums: rs_i = sum_j Q'_ij dt_j (warp per row), cqp_j = sum_i Q'_ij (NQ groups of rows) */
        {
            int warp = tid >> 5;
            for (int r = warp; r < F_N; r += NW) {
                const float *p = T + (size_t)r * F_LD;
                float s = f_warp_sum(p[lane] * dtv[lane] + p[lane + 32] * dtv[lane + 32]);
                if (lane == 0) rv[r] = s;
            }
            int j = tid & 63, q4 = tid >> 6;
            float s = 0.0f;
            for (int i = q4 * RQ; i < q4 * RQ + RQ; i++) s += T[(size_t)i * F_LD + j];
            T2[(size_t)q4 * F_LD + j] = s;   /* T2 is free until the next products */
        }
        __syncthreads();
        if (tid < F_N) {
            float cqp = 0.0f;
#pragma unroll
            for (int q = 0; q < NQ; q++) cqp += T2[(size_t)q * F_LD + tid];
            dc[tid] += rv[tid] - dtv[tid] * cqp;
            dd[tid] += cqp;
        }
        __syncthreads();   /* T and T2 free */
        /* dx = M^T dy + w_j (B dS^T) + D dy */
        if (ILP) f_mm_pair2<false, true, true, false>(a, a2, Bm, dS, Ks, T2, MG, dY, Kl, T);
        else f_mm_pair<false, true, true, false>(a, Bm, dS, Ks, T2, MG, dY, Kl, T);
        {
            float Dh = Dp[k.h];
            float *o = fo.ox + k.r0 * fo.sx + (fo.dx_direct ? k.xcol : k.h * hd);
            for (int e = tid; e < F_N * F_N; e += NT) {
                int j = e >> 6, p = e & 63;
                size_t s = (size_t)j * F_LD + p;
                float v = T[s] + wv[j] * T2[s] + Dh * dY[s];
                if (rep > 1) dXa[s] += v;   /* the same thread owns s for every head */
                else if (j < L && p < hd) o[(size_t)j * fo.sx + p] = v;
            }
        }
        __syncthreads();
        /* dC = dG B + e^{cs_i} (dy S_prev); dcs_i += e^{cs_i} (dy S_prev)_i . C_i */
        if (ILP) f_mm_pair2<false, false, false, false>(a, a2, dY, S, Kh, T2, MW, Bm, Kl, T);
        else f_mm_pair<false, false, false, false>(a, dY, S, Kh, T2, MW, Bm, Kl, T);
        {
            float *o = fo.oc + k.r0 * fo.sc + (fo.dc_direct ? k.ccol : k.h * ds);
            for (int e = tid; e < F_N * F_N; e += NT) {
                int i = e >> 6, s = e & 63;
                if (i < L && s < ds) {
                    size_t q = (size_t)i * F_LD + s;
                    o[(size_t)i * fo.sc + s] = T[q] + ecv[i] * T2[q];
                }
            }
            f_row_dots<NT>(T2, Cm, rv);
        }
        __syncthreads();
        if (tid < F_N) dc[tid] += ecv[tid] * rv[tid];
        /* dB = dG^T C + w_j (x dS); u_j = (x dS)_j . B_j */
        if (ILP) f_mm_pair2<false, false, true, false>(a, a2, X, dS, Kh, T2, MW, Cm, Kl, T);
        else f_mm_pair<false, false, true, false>(a, X, dS, Kh, T2, MW, Cm, Kl, T);
        {
            float *o = fo.ob + k.r0 * fo.sb + (fo.db_direct ? k.bcol : k.h * ds);
            for (int e = tid; e < F_N * F_N; e += NT) {
                int j = e >> 6, s = e & 63;
                size_t q = (size_t)j * F_LD + s;
                float v = T[q] + wv[j] * T2[q];
                if (rep > 1) dBa[q] += v;
                else if (j < L && s < ds) o[(size_t)j * fo.sb + s] = v;
            }
            f_row_dots<NT>(T2, Bm, cv);
        }
        /* e^{cs_L} <dS, S_prev> and the dD sum dy . x (padding is zero) */
        float dot = 0.0f, sd = 0.0f;
        for (int e = tid; e < F_N * F_N; e += NT) {
            size_t q = (size_t)(e >> 6) * F_LD + (e & 63);
            dot += dS[q] * S[q];
            sd += dY[q] * X[q];
        }
        dot = f_block_sum<NT>(dot, red);   /* its barriers also order cv before the reads below */
        sd = f_block_sum<NT>(sd, red);
        if (tid < 32) {
            /* u terms: ddt_j += u_j e^{cs_L - cs_j}, dcs_j -= u_j w_j, dcs_{L-1} += sum u_j w_j */
            float cl = csv[L - 1], uws = 0.0f;
            for (int j = lane; j < L; j += 32) {
                float u = cv[j], uw = u * wv[j];
                dd[j] += u * expf(cl - csv[j]);
                dc[j] -= uw;
                uws += uw;
            }
            uws = f_warp_sum(uws);
            __syncwarp();
            if (lane == 0) dc[L - 1] += uws + ecv[L - 1] * dot;
            __syncwarp();
            /* da_k = sum_{i>=k} dcs_i, 32-row segments from the end (as k_ssd_bwd_scal) */
            float A = -expf(A_log[k.h]);
            float dA = ssd_da_scan(dc, dd, dtv, L, A, ddt + (size_t)k.r0 * g.nh + k.h, g.nh, lane);
            dA = f_warp_sum(dA);
            if (lane == 0) {
                int nbhc = g.B * g.nh * g.nc;
                part[bhc] = dA;
                part[nbhc + bhc] = sd;
            }
        }
        __syncthreads();   /* the next head overwrites C, dy, S, dS and the vectors */
    }
    if (rep > 1) {
        float *ox = fo.ox + k0.r0 * fo.sx + k0.xcol, *ob = fo.ob + k0.r0 * fo.sb + k0.bcol;
        for (int e = tid; e < F_N * F_N; e += NT) {
            int j = e >> 6, p = e & 63;
            size_t q = (size_t)j * F_LD + p;
            if (j < L && p < hd) ox[(size_t)j * fo.sx + p] = dXa[q];
            if (j < L && p < ds) ob[(size_t)j * fo.sb + p] = dBa[q];
        }
    }
}

}   // namespace

/* ---- host entries ---------------------------------------------------------------------------- */

extern "C" cudaStream_t zb_cuda_m2_stream(void);

static bool m2_tc_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("ZB_M2_TC");
        on = !(e && !strcmp(e, "0"));
    }
    return on;
}

/* The fused per-chunk kernels where the chunk fits one 64 x 64 tile (the training chunk): on unless
 * ZB_SSD=old or ZB_SSD=tiles (the tile kernels of S4, k_ssd_outer / _scan / _bwd_*), or a test set
 * it (zb_cuda_m2_ssd_fused). */
static int g_m2_fused = -1;
extern "C" void zb_cuda_m2_ssd_fused(int on) { g_m2_fused = on < 0 ? -1 : on != 0; }
static bool m2_fused(const m2_geo &g) {
    if (g_m2_fused < 0) {
        const char *e = getenv("ZB_SSD");
        g_m2_fused = !(e && (!strcmp(e, "old") || !strcmp(e, "tiles")));
    }
    return g_m2_fused && g.Lc <= F_N && g.hd <= F_N && g.ds <= F_N;
}
/* The fused backward's block in the bf16 mode (tensor cores): 16 warps (one 16 x 16 fragment of each
 * 64 x 64 product per warp), or 8 (two each; ZB_SSD_BWD_WARPS=8, the kernel of S5R2). One block per SM
 * either way (its 12 matrices take ~210 KB of shared memory): twice the warps to hide the latency
 * of its barrier-separated phases. zb_cuda_m2_ssd_bwd_warps: the tests' switch (-1: the environment). */
/* *w (8 or 16; -1: not yet read) from the environment variable `name` (8 or 16), else dflt */
static int env_warps(int *w, const char *name, int dflt) {
    if (*w < 0) {
        const char *e = getenv(name);
        *w = e && (atoi(e) == 8 || atoi(e) == 16) ? atoi(e) : dflt;
    }
    return *w;
}
static int g_m2_bwd_warps = -1;
extern "C" void zb_cuda_m2_ssd_bwd_warps(int w) { g_m2_bwd_warps = w == 8 || w == 16 ? w : -1; }
static int m2_bwd_warps(void) { return env_warps(&g_m2_bwd_warps, "ZB_SSD_BWD_WARPS", 16); }

/* The fused backward's block fetches each head's coefficients with its operands (the next head's while
 * this one computes) and the first head's with the group's x and B: 1, the default since S7 (the
 * same values; S6's block waited one memory latency at each head's start for its coefficients and
 * three at its own start), 0 (ZB_SSD_BWD_PREFETCH=0) as S6. zb_cuda_m2_ssd_bwd_prefetch: the tests'
 * switch (-1: the environment). */
static int g_m2_bwd_prefetch = -1;
extern "C" void zb_cuda_m2_ssd_bwd_prefetch(int on) { g_m2_bwd_prefetch = on < 0 ? -1 : on != 0; }
static bool m2_bwd_prefetch(void) { return zb_cuda_env_switch(&g_m2_bwd_prefetch, "ZB_SSD_BWD_PREFETCH", "0"); }

/* The fused backward's tensor-core products two at a time with their k steps interleaved (f_mm2: two
 * independent chains of loads and products per warp; S7R1's ncu: the kernel latency-bound, 4 warps per
 * scheduler issuing every 8 cycles): 1, the default since S7 (each product's sums in the same order,
 * the same bits), 0 (ZB_SSD_BWD_ILP=0) one after the other. zb_cuda_m2_ssd_bwd_ilp: the tests'
 * switch (-1: the environment). */
static int g_m2_bwd_ilp = -1;
extern "C" void zb_cuda_m2_ssd_bwd_ilp(int on) { g_m2_bwd_ilp = on < 0 ? -1 : on != 0; }
static bool m2_bwd_ilp(void) { return zb_cuda_env_switch(&g_m2_bwd_ilp, "ZB_SSD_BWD_ILP", "0"); }

/* The fused forward output's block in the bf16 mode: 8 warps, two blocks per SM (the default; their
 * 128 registers spill ~350 bytes), or 16 warps, one block (ZB_SSD_FWD_WARPS=16: 128 registers for
 * half the loads per thread, no spill). zb_cuda_m2_ssd_fwd_warps: the tests' switch (-1: the
 * environment). */
static int g_m2_fwd_warps = -1;
extern "C" void zb_cuda_m2_ssd_fwd_warps(int w) { g_m2_fwd_warps = w == 8 || w == 16 ? w : -1; }
static int m2_fwd_warps(void) { return env_warps(&g_m2_fwd_warps, "ZB_SSD_FWD_WARPS", 8); }

/* the fused kernels' dynamic shared memory (above the 48 KB default: opted in per launch, cheap,
 * and right whichever device is current) */
template <class KF> static void f_launch_smem(KF kern, size_t mats) {
    cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         (int)((mats * F_MAT + F_VEC) * sizeof(float)));
}
static size_t f_bytes(size_t mats) { return (mats * F_MAT + F_VEC) * sizeof(float); }

template <class ACC>
static void f_outer(const m2_geo &g, cudaStream_t st, const float *U, int u_stride, int u_is_x, const float *xbc,
                    int v_is_c, const float *coef, float *out) {
    f_launch_smem(k_ssd_outer_fused<ACC>, F_OUTER_MATS);
    k_ssd_outer_fused<ACC><<<g.B * g.nh * g.nc, M2_NT, f_bytes(F_OUTER_MATS), st>>>(g, U, u_stride, u_is_x, xbc,
                                                                                  v_is_c, coef, out);
    zb_cuda_m2_check_launch("k_ssd_outer_fused");
}
template <class ACC>
static void f_scan(const m2_geo &g, cudaStream_t st, const float *xbc, m2_coef cf, const float *states,
                   const float *D, float *y) {
    f_launch_smem(k_ssd_scan_fused<ACC>, F_SCAN_MATS);
    int rep = g.xrep == g.brep ? g.xrep : 1;
    k_ssd_scan_fused<ACC><<<g.B * (g.nh / rep) * g.nc, ACC::NT, f_bytes(F_SCAN_MATS), st>>>(g, xbc, cf, states, D, y,
                                                                                        rep);
    zb_cuda_m2_check_launch("k_ssd_scan_fused");
}
template <class ACC, bool ILP>
static void f_bwd(const m2_geo &g, cudaStream_t st, const float *xbc, m2_coef cf, const float *states,
                  const float *dstates, const float *dy, const float *D, const float *A_log, f_bwd_out fo, float *ddt,
                  float *part) {
    f_launch_smem(k_ssd_bwd_fused<ACC, ILP>, F_BWD_MATS);
    k_ssd_bwd_fused<ACC, ILP><<<g.B * (g.nh / fo.rep) * g.nc, ACC::NT, f_bytes(F_BWD_MATS), st>>>(g, xbc, cf, states, dstates, dy, D,
                                                                              A_log, fo, ddt, part);
    zb_cuda_m2_check_launch("k_ssd_bwd_fused");
}

extern "C" void zb_cuda_m2_ssd_coef(const zb_mamba2_dims *m, const float *A_log, const float *dt,
                                    float *coef, int B, int T) {
    if (B <= 0 || T <= 0) return;
    m2_geo g = geo_of(m, B, T);
    size_t n = (size_t)B * g.nh * T;
    int warps = B * g.nh * g.nc;
    k_ssd_coef<<<cdiv(warps, 8), 256, 0, zb_cuda_m2_stream()>>>(g, A_log, dt, coef, coef + n,
                                                                coef + 2 * n, coef + 3 * n);
    zb_cuda_m2_check_launch("k_ssd_coef");
}

extern "C" void zb_cuda_m2_ssd_forward(const zb_mamba2_dims *m, const float *D, const float *xbc,
                                       const float *coef, float *y, float *states, const float *S0,
                                       float *Sfin, size_t s_stride, int B, int T) {
    zb_cuda_m2_ssd_forward_st(m, D, xbc, coef, y, states, S0, Sfin, s_stride, B, T, 0);
}

extern "C" void zb_cuda_m2_ssd_forward_st(const zb_mamba2_dims *m, const float *D, const float *xbc,
                                          const float *coef, float *y, float *states, const float *S0,
                                          float *Sfin, size_t s_stride, int B, int T, int s_bf16) {
    if (B <= 0 || T <= 0) return;
    m2_geo g = geo_of(m, B, T);
    m2_coef cf = coef_of(coef, B, g.nh, T);
    cudaStream_t st = zb_cuda_m2_stream();
    int nbhc = B * g.nh * g.nc, rt = cdiv(min(g.Lc, T), M2_TB);
    /* the bf16 precision mode: the tile products on the tensor cores (TF32), unless ZB_M2_TC=0 */
    bool tc = zb_cuda_precision() == ZB_PREC_BF16 && m2_tc_on();
    dim3 go(nbhc, cdiv(g.hd, M2_TB), cdiv(g.ds, M2_TB)), gs(nbhc, rt, cdiv(g.hd, M2_TB));
    bool fz = m2_fused(g);
    if (fz && tc) f_outer<f_acc_tc>(g, st, xbc, g.cd, 1, xbc, 0, cf.wend, states);
    else if (fz) f_outer<f_acc_f>(g, st, xbc, g.cd, 1, xbc, 0, cf.wend, states);
    else if (tc) k_ssd_outer<true><<<go, M2_NT, 0, st>>>(g, xbc, g.cd, 1, xbc, 0, cf.wend, states);
    else k_ssd_outer<false><<<go, M2_NT, 0, st>>>(g, xbc, g.cd, 1, xbc, 0, cf.wend, states);
    zb_cuda_m2_check_launch("k_ssd_outer (chunk states)");
    zb_cuda_m2_prof(ZB_MIXP_M2_STATES);
    dim3 gp(B * g.nh, cdiv((int)g.hs, 256));
    if (s_bf16)
        k_ssd_pass_fwd<__nv_bfloat16><<<gp, 256, 0, st>>>(g, cf.ecs, states, (const __nv_bfloat16 *)S0,
                                                           (__nv_bfloat16 *)Sfin, s_stride);
    else
        k_ssd_pass_fwd<float><<<gp, 256, 0, st>>>(g, cf.ecs, states, S0, Sfin, s_stride);
    zb_cuda_m2_check_launch("k_ssd_pass_fwd");
    zb_cuda_m2_prof(ZB_MIXP_M2_PASS);
    if (fz && tc && m2_fwd_warps() == 16) f_scan<f_acc_tc16>(g, st, xbc, cf, states, D, y);
    else if (fz && tc) f_scan<f_acc_tc>(g, st, xbc, cf, states, D, y);
    else if (fz) f_scan<f_acc_f>(g, st, xbc, cf, states, D, y);
    else if (tc) k_ssd_scan<true><<<gs, M2_NT, 0, st>>>(g, xbc, cf, states, D, y);
    else k_ssd_scan<false><<<gs, M2_NT, 0, st>>>(g, xbc, cf, states, D, y);
    zb_cuda_m2_check_launch("k_ssd_scan");
    zb_cuda_m2_prof(ZB_MIXP_M2_SCAN);
}

/* work: dstates [B nc nh hs] | dcs, ddtl [B nh T] | part [2 nbhc] | per-head dx / dB / dC
 * buffers [B T, nh hd] / [B T, nh ds] where their groups are shared. */
extern "C" size_t zb_cuda_m2_ssd_bwd_floats(const zb_mamba2_dims *m, int B, int T) {
    size_t N = (size_t)B * T, nh = (size_t)m->nheads, nc = (size_t)((T + m->chunk - 1) / m->chunk);
    size_t n = (size_t)B * nc * nh * m->headdim * m->d_state + 2 * N * nh + 2 * (size_t)B * nh * nc;
    if (m->x_groups < m->nheads) n += N * nh * m->headdim;
    if (m->b_groups < m->nheads) n += N * nh * m->d_state;
    if (m->c_groups < m->nheads) n += N * nh * m->d_state;
    return n;
}

extern "C" void zb_cuda_m2_ssd_backward(const zb_mamba2_dims *m, const float *A_log, const float *D,
                                        const float *xbc, const float *coef, const float *states,
                                        const float *dy, float *dxbc, float *ddt, float *gA_log,
                                        float *gD, float *work, int B, int T) {
    if (B <= 0 || T <= 0) return;
    m2_geo g = geo_of(m, B, T);
    m2_coef cf = coef_of(coef, B, g.nh, T);
    cudaStream_t st = zb_cuda_m2_stream();
    size_t N = (size_t)B * T;
    int nbhc = B * g.nh * g.nc, rt = cdiv(min(g.Lc, T), M2_TB);
    float *dstates = work, *dcs = dstates + (size_t)nbhc * g.hs, *ddtl = dcs + N * g.nh,
          *part = ddtl + N * g.nh, *next = part + 2 * (size_t)nbhc;
    float *dXh = NULL, *dBh = NULL, *dCh = NULL;
    if (g.xrep > 1) { dXh = next; next += N * g.nh * g.hd; }
    if (g.brep > 1) { dBh = next; next += N * g.nh * g.ds; }
    if (g.crep > 1) { dCh = next; next += N * g.nh * g.ds; }
    /* the bf16 precision mode: the tile products on the tensor cores (TF32 operands, float32 sums)
     * as in the forward, unless ZB_M2_TC=0 or ZB_SSD=old */
    bool tc = zb_cuda_precision() == ZB_PREC_BF16 && m2_tc_on() && zb_cuda_m2_new_path();
    dim3 go(nbhc, cdiv(g.hd, M2_TB), cdiv(g.ds, M2_TB)), gx(nbhc, rt, cdiv(g.hd, M2_TB)), gc(nbhc, rt, cdiv(g.ds, M2_TB));
    float *ox = dXh ? dXh : dxbc, *oc = dCh ? dCh : dxbc, *ob = dBh ? dBh : dxbc;
    int sx = dXh ? g.nh * g.hd : g.cd, sc = dCh ? g.nh * g.ds : g.cd, sb = dBh ? g.nh * g.ds : g.cd;
    /* the fused per-chunk kernels (not with ZB_SSD=old: the path before issue 17's speed work) */
    bool fz = m2_fused(g) && zb_cuda_m2_new_path();
    /* gradient of each chunk's end state */
    if (fz && tc) f_outer<f_acc_tc>(g, st, dy, g.di, 0, xbc, 1, cf.ecs, dstates);
    else if (fz) f_outer<f_acc_f>(g, st, dy, g.di, 0, xbc, 1, cf.ecs, dstates);
    else if (tc) k_ssd_outer<true><<<go, M2_NT, 0, st>>>(g, dy, g.di, 0, xbc, 1, cf.ecs, dstates);
    else k_ssd_outer<false><<<go, M2_NT, 0, st>>>(g, dy, g.di, 0, xbc, 1, cf.ecs, dstates);
    zb_cuda_m2_check_launch("k_ssd_outer (state gradients)");
    zb_cuda_m2_prof(ZB_MIXP_M2_DSTATES_B);
    k_ssd_pass_bwd<<<dim3(B * g.nh, cdiv((int)g.hs, 256)), 256, 0, st>>>(g, cf.ecs, dstates);
    zb_cuda_m2_check_launch("k_ssd_pass_bwd");
    zb_cuda_m2_prof(ZB_MIXP_M2_PASS_B);
    if (fz) {
        /* dx, dB, dC and the scalar terms in one pass; timed as the "scan dx" piece (dC, dB, ddt:
         * 0 in the breakdown). Heads sharing x and B in one block: dx and dB straight into dxbc. */
        f_bwd_out fo = {ox, ob, oc, sx, sb, sc, dXh == NULL, dBh == NULL, dCh == NULL, 1,
                        m2_bwd_prefetch()};
        if (g.xrep == g.brep && g.xrep > 1) {
            fo.rep = g.xrep;
            fo.ox = fo.ob = dxbc;
            fo.sx = fo.sb = g.cd;
            dXh = dBh = NULL;   /* the group sum: C's columns only (if any) */
        }
        bool ilp = m2_bwd_ilp();
        if (tc && m2_bwd_warps() == 16) {
            if (ilp) f_bwd<f_acc_tc16, true>(g, st, xbc, cf, states, dstates, dy, D, A_log, fo, ddt, part);
            else f_bwd<f_acc_tc16, false>(g, st, xbc, cf, states, dstates, dy, D, A_log, fo, ddt, part);
        } else if (tc) {
            if (ilp) f_bwd<f_acc_tc, true>(g, st, xbc, cf, states, dstates, dy, D, A_log, fo, ddt, part);
            else f_bwd<f_acc_tc, false>(g, st, xbc, cf, states, dstates, dy, D, A_log, fo, ddt, part);
        } else
            f_bwd<f_acc_f, false>(g, st, xbc, cf, states, dstates, dy, D, A_log, fo, ddt, part);
        zb_cuda_m2_prof(ZB_MIXP_M2_DX_B);
        zb_cuda_m2_prof(ZB_MIXP_M2_DC_B);
        zb_cuda_m2_prof(ZB_MIXP_M2_DB_B);
        zb_cuda_m2_prof(ZB_MIXP_M2_SCAL_B);
    } else {
        if (tc) k_ssd_bwd_dx<true><<<gx, M2_NT, 0, st>>>(g, xbc, cf, dstates, dy, D, ox, sx, dXh == NULL);
        else k_ssd_bwd_dx<false><<<gx, M2_NT, 0, st>>>(g, xbc, cf, dstates, dy, D, ox, sx, dXh == NULL);
        zb_cuda_m2_check_launch("k_ssd_bwd_dx");
        zb_cuda_m2_prof(ZB_MIXP_M2_DX_B);
        if (tc) k_ssd_bwd_dc<true><<<gc, M2_NT, 0, st>>>(g, xbc, cf, states, dy, oc, sc, dCh == NULL);
        else k_ssd_bwd_dc<false><<<gc, M2_NT, 0, st>>>(g, xbc, cf, states, dy, oc, sc, dCh == NULL);
        zb_cuda_m2_check_launch("k_ssd_bwd_dc");
        zb_cuda_m2_prof(ZB_MIXP_M2_DC_B);
        if (tc) k_ssd_bwd_db<true><<<gc, M2_NT, 0, st>>>(g, xbc, cf, dstates, dy, ob, sb, dBh == NULL);
        else k_ssd_bwd_db<false><<<gc, M2_NT, 0, st>>>(g, xbc, cf, dstates, dy, ob, sb, dBh == NULL);
        zb_cuda_m2_check_launch("k_ssd_bwd_db");
        zb_cuda_m2_prof(ZB_MIXP_M2_DB_B);
        if (tc) k_ssd_bwd_scal<true><<<nbhc, M2_NT, 0, st>>>(g, xbc, cf, states, dstates, dy, A_log, dcs, ddtl, ddt, part);
        else k_ssd_bwd_scal<false><<<nbhc, M2_NT, 0, st>>>(g, xbc, cf, states, dstates, dy, A_log, dcs, ddtl, ddt, part);
        zb_cuda_m2_check_launch("k_ssd_bwd_scal");
        zb_cuda_m2_prof(ZB_MIXP_M2_SCAL_B);
    }
    if (dXh || dBh || dCh) {
        k_ssd_group_sum<<<dim3((unsigned)N, cdiv(g.cd, 256)), 256, 0, st>>>(g, dXh, dBh, dCh, dxbc);
        zb_cuda_m2_check_launch("k_ssd_group_sum");
    }
    k_ssd_param_fin<<<cdiv(g.nh, 128), 128, 0, st>>>(g, A_log, part, gA_log, gD);
    zb_cuda_m2_check_launch("k_ssd_param_fin");
    zb_cuda_m2_prof(ZB_MIXP_M2_SUMS_B);
}
