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
 * the outputs and states are the same; tests/test_cuda_mamba2.c compares the two paths.
 * The unfused recurrence is here too (zb_cuda_m2_ssd_step_st): k_ssd_step, one block per (row,
 * head), a warp per state row p, lanes over d_state; k_ssd_step_vec, the same with float4 pieces
 * of the state (the body k_m2_dec_ssd_norm shares). */
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

/* The recurrent state as kept between calls: float32, or bf16 (generation with bf16 weights, as
 * mamba_ssm's inference cache takes the in_proj weight's dtype; the arithmetic stays float32, the
 * value is rounded once when stored). Slots are strided in floats either way (a bf16 state uses
 * the first half of its float32 slot), so the element stride is s_stride * 4 / sizeof(TS). */
__device__ inline float dec_ld(const float *p) { return *p; }
__device__ inline float dec_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ inline void dec_st(float *p, float v) { *p = v; }
__device__ inline void dec_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }
/* 4 consecutive elements (16-byte aligned float32, 8-byte aligned bf16) */
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

/* The scalar form: a warp per state row p, lanes over d_state (B and C rows in shared memory). */
template <typename TS>
__global__ void k_ssd_step(dec_geo g, const float *__restrict__ A_log, const float *__restrict__ Dp,
                           const float *__restrict__ xbc, const float *__restrict__ dt, TS *Sst, size_t s_stride,
                           const int *__restrict__ seqs, float *y) {
    extern __shared__ float sh[];   /* B row | C row, ds each */
    int i = blockIdx.x / g.nh, h = blockIdx.x % g.nh, tid = threadIdx.x;
    int lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const float *row = xbc + (size_t)i * g.cd;
    const float *X = row + (h / g.xrep) * g.hd, *Bv = row + g.bo + (h / g.brep) * g.ds,
                *Cv = row + g.co + (h / g.crep) * g.ds;
    for (int s = tid; s < g.ds; s += blockDim.x) { sh[s] = Bv[s]; sh[g.ds + s] = Cv[s]; }
    __syncthreads();
    int seq = seqs ? seqs[i] : i;
    TS *S = Sst + (size_t)seq * (s_stride * (4 / sizeof(TS))) + (size_t)h * g.hs;
    float dth = dt[(size_t)i * g.nh + h], e = expf(dth * -expf(A_log[h])), Dh = Dp[h];
    for (int p = warp; p < g.hd; p += nw) {
        TS *Sr = S + (size_t)p * g.ds;
        float xp = dth * X[p], acc = 0.0f;
        for (int s = lane; s < g.ds; s += 32) {
            float v = e * dec_ld(Sr + s) + xp * sh[s];
            dec_st(Sr + s, v);   /* y takes the float32 value (a bf16 state: rounded only as kept) */
            acc += v * sh[g.ds + s];
        }
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) y[(size_t)i * g.di + (size_t)h * g.hd + p] = acc + Dh * X[p];
    }
}

/* The same recurrence with the state streamed at the memory's rate (d_state 128 or 256, 16-byte
 * aligned states): a lane holds 4 consecutive columns (float4), so a warp covers 128 columns per
 * load, and each warp loads SR rows before it updates them (SR = 16 at d_state 128: a head of 128
 * rows in one round of loads per warp; S6/S7R1 loaded 4 rows a round, 4 dependent rounds: 10.3 us
 * per Zebra-8B layer). Each element's update is k_ssd_step's (e S + (dt x) B); y sums a row's
 * products per lane, then over the warp: yh[p] (the head's y) for the block (i, h). The PDL wait
 * (cuda_pdl.cuh; a no-op without PDL) is here: pre (a recorded decode step: this kernel alone
 * reads and writes the state in a step) issues the first round of state loads before it. */
#define DEC_SROWS(NQ) ((NQ) == 1 ? 16 : 8)
template <int NQ, typename TS>
__device__ inline void ssd_load_rows(float4 (*v)[NQ], const TS *S, const dec_geo &g, int p0, int lane) {
    constexpr int SR = DEC_SROWS(NQ);
#pragma unroll
    for (int r = 0; r < SR; r++)
#pragma unroll
        for (int q = 0; q < NQ; q++)
            if (p0 + r < g.hd) v[r][q] = dec_ld4(S + (size_t)(p0 + r) * g.ds + 128 * q + 4 * lane);
}

template <int NQ, typename TS>   /* float4 columns per lane: d_state / 128 */
__device__ inline void step_head_vec(const dec_geo &g, int i, int h, const float *__restrict__ A_log,
                                     const float *__restrict__ Dp, const float *__restrict__ xbc,
                                     const float *__restrict__ dt, TS *Sst, size_t s_stride,
                                     const int *__restrict__ seqs, float *yh, bool pre = false) {
    constexpr int SR = DEC_SROWS(NQ);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float4 v[SR][NQ];
    int p0 = warp * SR;
    TS *S = NULL;
    if (pre) {   /* the slots and the state: no kernel of the step writes them */
        S = Sst + (size_t)(seqs ? seqs[i] : i) * (s_stride * (4 / sizeof(TS))) + (size_t)h * g.hs;
        if (p0 < g.hd) ssd_load_rows<NQ, TS>(v, S, g, p0, lane);
    }
    pdl_wait();   /* xbc and dt of the conv kernel */
    if (!pre) S = Sst + (size_t)(seqs ? seqs[i] : i) * (s_stride * (4 / sizeof(TS))) + (size_t)h * g.hs;
    const float *row = xbc + (size_t)i * g.cd;
    const float *X = row + (h / g.xrep) * g.hd, *Bv = row + g.bo + (h / g.brep) * g.ds,
                *Cv = row + g.co + (h / g.crep) * g.ds;
    float4 b4[NQ], c4[NQ];
#pragma unroll
    for (int q = 0; q < NQ; q++) {
        b4[q] = *(const float4 *)(Bv + 128 * q + 4 * lane);
        c4[q] = *(const float4 *)(Cv + 128 * q + 4 * lane);
    }
    float dth = dt[(size_t)i * g.nh + h], e = expf(dth * -expf(A_log[h])), Dh = Dp[h];
    for (bool held = pre; p0 < g.hd; p0 += nw * SR, held = false) {
        if (!held) ssd_load_rows<NQ, TS>(v, S, g, p0, lane);
#pragma unroll
        for (int r = 0; r < SR; r++) {
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
            if (lane == 0) yh[p] = acc + Dh * X[p];
        }
    }
}

template <int NQ, typename TS>
__global__ void __launch_bounds__(256) k_ssd_step_vec(dec_geo g, const float *__restrict__ A_log,
                                                      const float *__restrict__ Dp, const float *__restrict__ xbc,
                                                      const float *__restrict__ dt, TS *Sst, size_t s_stride,
                                                      const int *__restrict__ seqs, float *y) {
    const int i = blockIdx.x / g.nh, h = blockIdx.x % g.nh;
    step_head_vec<NQ, TS>(g, i, h, A_log, Dp, xbc, dt, Sst, s_stride, seqs, y + (size_t)i * g.di + (size_t)h * g.hd);
}

#define DEC_MAXHD 256    /* the head's y in shared memory */
template <int NQ, typename TS>
__global__ void __launch_bounds__(256) k_m2_dec_ssd_norm(dec_geo g, const float *__restrict__ A_log,
                                                         const float *__restrict__ Dp, const float *__restrict__ nw,
                                                         float eps, const float *__restrict__ xbc,
                                                         const float *__restrict__ dt, const float *__restrict__ z,
                                                         int zs, TS *Sst, size_t s_stride, const int *__restrict__ seqs,
                                                         float *o, int pre) {
    __shared__ float ys[DEC_MAXHD];
    pdl_launch();   /* out_proj's GEMV may start streaming its weights */
    const int i = blockIdx.x / g.nh, h = blockIdx.x % g.nh, lane = threadIdx.x & 31, warp = threadIdx.x >> 5,
              nw_ = blockDim.x >> 5;
    step_head_vec<NQ, TS>(g, i, h, A_log, Dp, xbc, dt, Sst, s_stride, seqs, ys, pre != 0);   /* waits (PDL) */
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

/* the vector form where it applies: B and C columns as float4, the state rows as 4-element pieces
 * (16-byte aligned slots) */
bool vec_ok(const dec_geo &g, const float *xbc, const float *S, size_t s_stride) {
    return (g.ds == 128 || g.ds == 256) && g.bo % 4 == 0 && g.co % 4 == 0 && g.cd % 4 == 0 && s_stride % 4 == 0 &&
           !(((uintptr_t)S | (uintptr_t)xbc) & 15);
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

/* the state's first loads before the PDL wait (k_m2_dec_ssd_norm's pre): while a decode step is
 * recorded (zb_cuda_recording; in a step only this kernel reads and writes a layer's state) with
 * PDL, unless ZB_M2_PRELOAD=0 */
static int m2_preload(void) {
    static int env = -1;
    return zb_cuda_env_switch(&env, "ZB_M2_PRELOAD", "0") && zb_cuda_recording() && zb_cuda_dec_pdl();
}

extern "C" int zb_cuda_m2_decode_ssd_norm_ok(const zb_mamba2_dims *m, const float *xbc, const float *S,
                                             size_t s_stride) {
    dec_geo g = dec_geo_of(m);
    return vec_ok(g, xbc, S, s_stride) && g.hd <= DEC_MAXHD && g.G > 0 && g.hd % g.G == 0 && g.di % g.G == 0;
}

extern "C" void zb_cuda_m2_decode_ssd_norm(const zb_mamba2_dims *m, const float *A_log, const float *D,
                                           const float *norm_w, float eps, const float *xbc, const float *dt,
                                           const float *z, int z_stride, float *S, size_t s_stride, const int *seqs,
                                           float *o, int nb, int s_bf16) {
    if (nb <= 0) return;
    dec_geo g = dec_geo_of(m);
    cudaStream_t st = zb_cuda_m2_stream();
    __nv_bfloat16 *S16 = (__nv_bfloat16 *)S;
    int pre = m2_preload();
#define ZB_M2D(NQ, TS, SP)                                                                                    \
    pdl_go(k_m2_dec_ssd_norm<NQ, TS>, dim3(nb * g.nh), dim3(256), 0, st, g, A_log, D, norm_w, eps, xbc, dt, z,     \
           z_stride, SP, s_stride, seqs, o, pre)
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

/* ---- the unfused recurrence (zb_cuda_m2_ssd_step_st) ------------------------------------------- */

static int g_m2_step_vec = 1;   /* 0: the scalar step kernel (tests compare the two) */
extern "C" void zb_cuda_m2_step_vec(int on) { g_m2_step_vec = on != 0; }

extern "C" void zb_cuda_m2_ssd_step(const zb_mamba2_dims *m, const float *A_log, const float *D,
                                    const float *xbc, const float *dt, float *S, size_t s_stride,
                                    const int *seqs, float *y, int nb) {
    zb_cuda_m2_ssd_step_st(m, A_log, D, xbc, dt, S, s_stride, seqs, y, nb, 0);
}

template <typename TS>
static void ssd_step_launch(const dec_geo &g, bool vec, const float *A_log, const float *D, const float *xbc,
                            const float *dt, TS *S, size_t s_stride, const int *seqs, float *y, int nb) {
    cudaStream_t st = zb_cuda_m2_stream();
    if (vec) {
        if (g.ds == 128) k_ssd_step_vec<1, TS><<<nb * g.nh, 256, 0, st>>>(g, A_log, D, xbc, dt, S, s_stride, seqs, y);
        else k_ssd_step_vec<2, TS><<<nb * g.nh, 256, 0, st>>>(g, A_log, D, xbc, dt, S, s_stride, seqs, y);
        zb_cuda_m2_check_launch("k_ssd_step_vec");
        return;
    }
    int threads = g.hd >= 8 ? 256 : 32 * g.hd;
    k_ssd_step<TS><<<nb * g.nh, threads, 2 * (size_t)g.ds * sizeof(float), st>>>(g, A_log, D, xbc, dt, S, s_stride,
                                                                                 seqs, y);
    zb_cuda_m2_check_launch("k_ssd_step");
}

extern "C" void zb_cuda_m2_ssd_step_st(const zb_mamba2_dims *m, const float *A_log, const float *D,
                                       const float *xbc, const float *dt, float *S, size_t s_stride,
                                       const int *seqs, float *y, int nb, int s_bf16) {
    if (nb <= 0) return;
    dec_geo g = dec_geo_of(m);
    bool vec = vec_ok(g, xbc, S, s_stride) && g_m2_step_vec;
    if (s_bf16) ssd_step_launch<__nv_bfloat16>(g, vec, A_log, D, xbc, dt, (__nv_bfloat16 *)S, s_stride, seqs, y, nb);
    else ssd_step_launch<float>(g, vec, A_log, D, xbc, dt, S, s_stride, seqs, y, nb);
}
