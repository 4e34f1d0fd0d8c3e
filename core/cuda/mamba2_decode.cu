/* mamba2_decode.cu — the Mamba2 mixer's one-token decode step between in_proj and out_proj in two
 * kernels instead of five (ZB_DEC_FUSE=0 keeps the five of mamba2.cu / mamba2_ssd.cu):
 *
 *  k_m2_dec_conv      one thread per (row, conv channel) and per (row, head): the depthwise conv
 *                     over the conv state and the new input, silu, the state moved on by one input
 *                     (each channel's state is read and written by its own thread), and dt =
 *                     clamp(softplus(dt_raw + dt_bias)): k_conv_fwd + k_conv_state_update + k_dt_fwd.
 *  k_m2_dec_ssd_norm  one block per (row, head): the recurrence S = e^{dt A} S + dt x B^T,
 *                     y = S C + D x as k_ssd_step_vec (state rows streamed as float4 pieces), y kept
 *                     in shared memory, then the gated RMSNorm of the head's norm groups (a warp per
 *                     group, o = y silu(z) w / rms) as k_gnorm_fwd: k_ssd_step_vec + k_gnorm_fwd.
 *
 * The arithmetic of each value is the replaced kernels' (same operations in the same order), so
 * the outputs and states are the same; tests/test_cuda_mamba2.c compares the two paths. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_common.h"
#include "cuda_ops.h"
#include "cuda_pdl.cuh"
#include "mamba2_cuda.h"

extern "C" cudaStream_t zb_cuda_m2_stream(void);
void zb_cuda_m2_check_launch(const char *what);

namespace {

__device__ __forceinline__ float dec_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float dec_silu(float x) { return x / (1.0f + expf(-x)); }

struct dec_geo {
    int nh, hd, ds, cd, di, P, K, xrep, brep, crep, bo, co, G;
    size_t sf, hs;   /* a slot's floats; hd * ds */
};

dec_geo dec_geo_of(const zb_mamba2_dims *m) {
    dec_geo g;
    g.nh = m->nheads; g.hd = m->headdim; g.ds = m->d_state; g.di = m->d_inner;
    g.cd = zb_mamba2_conv_dim(m); g.P = zb_mamba2_in_proj_rows(m); g.K = m->conv_k;
    g.xrep = m->nheads / m->x_groups; g.brep = m->nheads / m->b_groups; g.crep = m->nheads / m->c_groups;
    g.bo = m->x_groups * m->headdim; g.co = g.bo + m->b_groups * m->d_state;
    g.G = m->norm_group > 0 ? m->norm_group : m->d_inner;
    g.sf = zb_mamba2_state_floats(m); g.hs = (size_t)m->headdim * m->d_state;
    return g;
}

/* row i (slot seq[i]): columns c < cd the conv channels of xbc, cd..cd+nh-1 the heads' dt */
__global__ void k_m2_dec_conv(dec_geo g, const float *__restrict__ w, const float *__restrict__ bias,
                              const float *__restrict__ dt_bias, const float *__restrict__ proj, float *state,
                              const int *__restrict__ seqs, float *xbc, float *dt, float lo, float hi) {
    pdl_launch();
    pdl_wait();   /* proj of in_proj's GEMV (cuda_pdl.cuh) */
    const int i = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    const float *pr = proj + (size_t)i * g.P;
    if (c >= g.cd) {
        int h = c - g.cd;
        if (h >= g.nh) return;
        float v = dec_softplus(pr[g.P - g.nh + h] + dt_bias[h]);
        if (v < lo) v = lo;
        if (v > hi) v = hi;
        dt[(size_t)i * g.nh + h] = v;
        return;
    }
    const int K = g.K;
    float *hc = state + (size_t)(seqs ? seqs[i] : i) * g.sf + (size_t)c * (K - 1);
    const float xin = pr[g.di + c];
    float acc = bias ? bias[c] : 0.0f;
    for (int k = 0; k < K - 1; k++) acc += w[(size_t)c * K + k] * hc[k];
    acc += w[(size_t)c * K + K - 1] * xin;
    xbc[(size_t)i * g.cd + c] = dec_silu(acc);
    for (int k = 0; k + 1 < K - 1; k++) hc[k] = hc[k + 1];   /* the state moves on by one input */
    if (K > 1) hc[K - 2] = xin;
}

/* the state as kept: float32, or bf16 in the first half of each float32 slot (mamba2_ssd.cu) */
__device__ inline float4 dec_ld4(const float *p) { return *(const float4 *)p; }
__device__ inline float4 dec_ld4(const __nv_bfloat16 *p) {
    uint2 r = *(const uint2 *)p;
    __nv_bfloat162 a, b;
    memcpy(&a, &r.x, 4);
    memcpy(&b, &r.y, 4);
    float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
    return make_float4(fa.x, fa.y, fb.x, fb.y);
}
__device__ inline void dec_st4(float *p, float4 v) { *(float4 *)p = v; }
__device__ inline void dec_st4(__nv_bfloat16 *p, float4 v) {
    __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    uint2 r;
    memcpy(&r.x, &a, 4);
    memcpy(&r.y, &b, 4);
    *(uint2 *)p = r;
}

#define DEC_SROWS 4      /* state rows in flight per warp (k_ssd_step_vec's M2_SROWS) */
#define DEC_MAXHD 256    /* the head's y in shared memory */
template <int NQ, typename TS>   /* float4 columns per lane: d_state / 128 */
__global__ void __launch_bounds__(256) k_m2_dec_ssd_norm(dec_geo g, const float *__restrict__ A_log,
                                                         const float *__restrict__ Dp, const float *__restrict__ nw,
                                                         float eps, const float *__restrict__ xbc,
                                                         const float *__restrict__ dt, const float *__restrict__ z,
                                                         int zs, TS *Sst, size_t s_stride, const int *__restrict__ seqs,
                                                         float *o) {
    __shared__ float ys[DEC_MAXHD];
    pdl_launch();   /* out_proj's GEMV may start streaming its weights */
    pdl_wait();     /* xbc and dt of the conv kernel */
    int i = blockIdx.x / g.nh, h = blockIdx.x % g.nh, lane = threadIdx.x & 31, warp = threadIdx.x >> 5,
        nw_ = blockDim.x >> 5;
    const float *row = xbc + (size_t)i * g.cd;
    const float *X = row + (h / g.xrep) * g.hd, *Bv = row + g.bo + (h / g.brep) * g.ds,
                *Cv = row + g.co + (h / g.crep) * g.ds;
    float4 b4[NQ], c4[NQ];
#pragma unroll
    for (int q = 0; q < NQ; q++) {
        b4[q] = *(const float4 *)(Bv + 128 * q + 4 * lane);
        c4[q] = *(const float4 *)(Cv + 128 * q + 4 * lane);
    }
    int seq = seqs ? seqs[i] : i;
    TS *S = Sst + (size_t)seq * (s_stride * (4 / sizeof(TS))) + (size_t)h * g.hs;
    float dth = dt[(size_t)i * g.nh + h], e = expf(dth * -expf(A_log[h])), Dh = Dp[h];
    for (int p0 = warp * DEC_SROWS; p0 < g.hd; p0 += nw_ * DEC_SROWS) {
        float4 v[DEC_SROWS][NQ];
#pragma unroll
        for (int r = 0; r < DEC_SROWS; r++)
#pragma unroll
            for (int q = 0; q < NQ; q++)
                if (p0 + r < g.hd) v[r][q] = dec_ld4(S + (size_t)(p0 + r) * g.ds + 128 * q + 4 * lane);
#pragma unroll
        for (int r = 0; r < DEC_SROWS; r++) {
            int p = p0 + r;
            if (p >= g.hd) break;   /* warp-uniform */
            float xp = dth * X[p], acc = 0.0f;
#pragma unroll
            for (int q = 0; q < NQ; q++) {
                float4 a = v[r][q];
                a.x = e * a.x + xp * b4[q].x;
                a.y = e * a.y + xp * b4[q].y;
                a.z = e * a.z + xp * b4[q].z;
                a.w = e * a.w + xp * b4[q].w;
                dec_st4(S + (size_t)p * g.ds + 128 * q + 4 * lane, a);   /* y: the float32 a */
                acc += a.x * c4[q].x + a.y * c4[q].y + a.z * c4[q].z + a.w * c4[q].w;
            }
            for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
            if (lane == 0) ys[p] = acc + Dh * X[p];
        }
    }
    __syncthreads();
    /* the gated norm of the head's groups (G divides hd): a warp per group */
    const float *zr = z + (size_t)i * zs + (size_t)h * g.hd;
    float *orow = o + (size_t)i * g.di + (size_t)h * g.hd;
    for (int c0 = warp * g.G; c0 < g.hd; c0 += nw_ * g.G) {
        float ss = 0.0f;
        for (int c = c0 + lane; c < c0 + g.G; c += 32) {
            float gv = ys[c] * dec_silu(zr[c]);
            ss += gv * gv;
        }
        for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
        float rs = 1.0f / sqrtf(ss / g.G + eps);
        for (int c = c0 + lane; c < c0 + g.G; c += 32)
            orow[c] = ys[c] * dec_silu(zr[c]) * (rs * nw[h * g.hd + c]);
    }
}

}   // namespace

extern "C" void zb_cuda_m2_decode_conv(const zb_mamba2_dims *m, const float *dt_bias, const float *conv_w,
                                       const float *conv_b, const float *proj, float *state, const int *seqs,
                                       float *xbc, float *dt, int nb) {
    if (nb <= 0) return;
    dec_geo g = dec_geo_of(m);
    dim3 grid((g.cd + g.nh + 255) / 256, nb);
    pdl_go(k_m2_dec_conv, grid, dim3(256), 0, zb_cuda_m2_stream(), g, conv_w, conv_b, dt_bias, proj, state, seqs, xbc,
           dt, m->dt_min, m->dt_max);
    zb_cuda_m2_check_launch("k_m2_dec_conv");
}

extern "C" int zb_cuda_m2_decode_ssd_norm_ok(const zb_mamba2_dims *m, const float *xbc, const float *S,
                                             size_t s_stride) {
    dec_geo g = dec_geo_of(m);
    return (g.ds == 128 || g.ds == 256) && g.bo % 4 == 0 && g.co % 4 == 0 && g.cd % 4 == 0 && s_stride % 4 == 0 &&
           !(((uintptr_t)S | (uintptr_t)xbc) & 15) && g.hd <= DEC_MAXHD && g.G > 0 && g.hd % g.G == 0 &&
           g.di % g.G == 0;
}

extern "C" void zb_cuda_m2_decode_ssd_norm(const zb_mamba2_dims *m, const float *A_log, const float *D,
                                           const float *norm_w, float eps, const float *xbc, const float *dt,
                                           const float *z, int z_stride, float *S, size_t s_stride, const int *seqs,
                                           float *o, int nb, int s_bf16) {
    if (nb <= 0) return;
    dec_geo g = dec_geo_of(m);
    cudaStream_t st = zb_cuda_m2_stream();
    __nv_bfloat16 *S16 = (__nv_bfloat16 *)S;
#define ZB_M2D(NQ, TS, SP)                                                                                    \
    pdl_go(k_m2_dec_ssd_norm<NQ, TS>, dim3(nb * g.nh), dim3(256), 0, st, g, A_log, D, norm_w, eps, xbc, dt, z,     \
           z_stride, SP, s_stride, seqs, o)
    if (g.ds == 128) {
        if (s_bf16) ZB_M2D(1, __nv_bfloat16, S16);
        else ZB_M2D(1, float, S);
    } else {
        if (s_bf16) ZB_M2D(2, __nv_bfloat16, S16);
        else ZB_M2D(2, float, S);
    }
#undef ZB_M2D
    zb_cuda_m2_check_launch("k_m2_dec_ssd_norm");
}
