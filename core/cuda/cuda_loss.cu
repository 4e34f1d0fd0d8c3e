/* cuda_loss.cu — cross-entropy, KL and MSE over device rows, AdamW and the gradient sum of
 * squares; see cuda_ops.h. One block per row for the vocabulary losses (maxima, then sums in
 * double, as ops.c); the per-row results are summed on the device and one double comes back. */
#include <limits.h>

#include "cuda_ops.h"
#include "cuda_reduce.cuh"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static unsigned vthreads(int V) { return V >= 1024 ? 512 : (V >= 256 ? 256 : 64); }

/* sum of x[0..n) (double) into *out, one block */
__global__ void k_sum_d(double *out, const double *x, size_t n) {
    double s = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) *out = s;
}

/* the sum of a device array of n doubles, on the host (waits for the stream) */
static double sum_to_host(const double *x, size_t n) {
    double *acc = (double *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double));
    if (!acc) return NAN;
    k_sum_d<<<1, 512, 0, zb_cuda_stream()>>>(acc, x, n);
    ZB_CUDA_LAUNCHED("sum");
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h;
}

/* ---- the fused row losses (the default) --------------------------------------------------------
 * Cross-entropy and KL read each row twice instead of three times: pass 1 keeps a running maximum
 * and a sum of exponentials rescaled when the maximum grows (online softmax; Milakov & Gimelshein,
 * "Online normalizer calculation for softmax", 2018), pass 2 writes the gradient (in place when d
 * aliases the logits: each thread reads, then writes, its own elements) and, for KL, sums
 * pt (log pt - log ps). Rows of a multiple of 4 floats on 16-byte boundaries go 4 at a time
 * (float4 loads and stores). Arithmetic as the per-statistic kernels below: float exps of float
 * differences, sums in double (each group of G exponentials added in float first: 3 more roundings
 * of terms <= 1), the rescalings in double. ZB_CUDA_LOSS=rows in the environment: those kernels. */

static int g_loss_rows = -1;   /* -1: from the environment at the first use */
static int use_row_kernels(void) {
    if (g_loss_rows < 0) {
        const char *e = getenv("ZB_CUDA_LOSS");
        g_loss_rows = e && !strcmp(e, "rows");
    }
    return g_loss_rows;
}
extern "C" void zb_cuda_loss_use_rows(int on) { g_loss_rows = on; }

#define LOSS_THREADS 512

template <int G> __device__ static inline void ld_g(const float *p, int g, float (&x)[4]) {
    if (G == 4) {
        float4 v = __ldg((const float4 *)p + g);
        x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
    } else x[0] = p[g];
}
/* the same without the read-only path: rows the kernel also writes (in place) */
template <int G> __device__ static inline void ld_gw(const float *p, int g, float (&x)[4]) {
    if (G == 4) {
        float4 v = ((const float4 *)p)[g];
        x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
    } else x[0] = p[g];
}
template <int G> __device__ static inline void st_g(float *p, int g, const float (&x)[4]) {
    if (G == 4) ((float4 *)p)[g] = make_float4(x[0], x[1], x[2], x[3]);
    else p[g] = x[0];
}
template <int G> __device__ static inline void zero_row(float *p, int V) {
    const float z[4] = {0, 0, 0, 0};
    for (int g = threadIdx.x; g < V / G; g += blockDim.x) st_g<G>(p, g, z);
}

/* running (max m, sum z of exp(x - m)) of G values; m starts at -inf, z at 0 */
template <int G> __device__ static inline void online_add(float &m, double &z, const float (&x)[4]) {
    float mx = x[0];
    for (int k = 1; k < G; k++) mx = fmaxf(mx, x[k]);
    if (mx > m) {   /* rare after the first few: the rescaling in double */
        z *= exp((double)m - (double)mx);
        m = mx;
    }
    float e = 0;
    for (int k = 0; k < G; k++) e += expf(x[k] - m);
    z += (double)e;
}

__device__ static inline void online_merge(float &m, double &z, float m2, double z2) {
    float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return;   /* both empty */
    z = (m == mn ? z : z * exp((double)m - (double)mn)) + (m2 == mn ? z2 : z2 * exp((double)m2 - (double)mn));
    m = mn;
}

/* (m, z) over the block: every thread gets it (calls __syncthreads: every thread must call it) */
__device__ static inline void block_online(float &m, double &z) {
    __shared__ float sm[32];
    __shared__ double sz[32];
    for (int o = 16; o > 0; o >>= 1)
        online_merge(m, z, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, z, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();   /* the slots may still be read by a previous call */
    if (lane == 0) { sm[w] = m; sz[w] = z; }
    __syncthreads();
    m = lane < nw ? sm[lane] : -INFINITY;
    z = lane < nw ? sz[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1)
        online_merge(m, z, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, z, o));
}

/* G values rounded to bf16 (round to nearest even, as k_f32_to_bf16) at group g of a bf16 row */
template <int G> __device__ static inline void st_g16(__nv_bfloat16 *p, int g, const float (&x)[4]) {
    if (G == 4) {
        __nv_bfloat162 a = __floats2bfloat162_rn(x[0], x[1]), b = __floats2bfloat162_rn(x[2], x[3]);
        uint2 u;
        u.x = *(const unsigned *)&a;
        u.y = *(const unsigned *)&b;
        ((uint2 *)p)[g] = u;
    } else p[g] = __float2bfloat16_rn(x[0]);
}

/* cross-entropy, one block per row: see k_ce. d16 (not NULL: then d is NULL): the gradient written
 * only in bf16, each value the float32 one rounded once (zb_cuda_cross_entropy_head). */
template <int G>
__global__ void __launch_bounds__(LOSS_THREADS, 2)
k_ce_fused(double *loss, float *d, const float *logits, const int *targets, int V, float scale,
           __nv_bfloat16 *d16 = NULL) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float *dr = d ? d + r * V : NULL;
    __nv_bfloat16 *dr16 = d16 ? d16 + r * V : NULL;
    int y = targets[r], ng = V / G;
    if (y < 0 || y >= V) {
        if (dr) zero_row<G>(dr, V);
        if (dr16) {
            const float z[4] = {0, 0, 0, 0};
            for (int g = threadIdx.x; g < ng; g += blockDim.x) st_g16<G>(dr16, g, z);
        }
        if (threadIdx.x == 0) loss[r] = 0;
        return;
    }
    float m = -INFINITY, x[4];
    double z = 0;
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
        ld_gw<G>(row, g, x);
        online_add<G>(m, z, x);
    }
    block_online(m, z);
    double lse = (double)m + log(z);
    float ry = row[y];   /* read before the gradient may overwrite it */
    if (threadIdx.x == 0) loss[r] = lse - ry;
    if (!dr && !dr16) return;
    __syncthreads();   /* every thread has read row[y] */
    float l = (float)lse;
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
        ld_gw<G>(row, g, x);
        for (int k = 0; k < G; k++) {
            float p = scale * expf(x[k] - l);
            x[k] = g * G + k == y ? p - scale : p;
        }
        if (dr16) st_g16<G>(dr16, g, x);
        else st_g<G>(dr, g, x);
    }
}

/* KL(teacher || student) at tau, one block per row: see k_kl. Pass 2 takes log p = x/tau - log Z
 * in float with log Z split in two floats (hi + lo: the difference rounded once more at most). */
template <int G>
__global__ void __launch_bounds__(LOSS_THREADS, 2)
k_kl_fused(double *kl, float *d, const float *student, const float *teacher, const int *mask, int V, float tau,
           float gscale) {
    size_t r = blockIdx.x;
    const float *s = student + r * V, *t = teacher + r * V;
    float *dr = d ? d + r * V : NULL;
    int ng = V / G;
    if (mask && !mask[r]) {
        if (dr) zero_row<G>(dr, V);
        if (threadIdx.x == 0) kl[r] = 0;
        return;
    }
    const bool div = tau != 1.0f;   /* x / tau as the CPU (an IEEE division; none at tau 1) */
    float ms = -INFINITY, mt = -INFINITY, xs[4], xt[4];
    double zs = 0, zt = 0;
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
        ld_gw<G>(s, g, xs);
        ld_g<G>(t, g, xt);
        if (div)
            for (int k = 0; k < G; k++) { xs[k] = xs[k] / tau; xt[k] = xt[k] / tau; }
        online_add<G>(ms, zs, xs);
        online_add<G>(mt, zt, xt);
    }
    block_online(ms, zs);
    block_online(mt, zt);
    double lzs = (double)ms + log(zs), lzt = (double)mt + log(zt);
    float shi = (float)lzs, slo = (float)(lzs - (double)shi), thi = (float)lzt, tlo = (float)(lzt - (double)thi);
    double acc = 0;
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
        ld_gw<G>(s, g, xs);
        ld_g<G>(t, g, xt);
        float a = 0;
        for (int k = 0; k < G; k++) {
            float sv = div ? xs[k] / tau : xs[k], tv = div ? xt[k] / tau : xt[k];
            float lps = (sv - shi) - slo, lpt = (tv - thi) - tlo;
            float ps = expf(lps), pt = expf(lpt);
            a += pt * (lpt - lps);
            xs[k] = gscale * (ps - pt);
        }
        acc += (double)a;
        if (dr) st_g<G>(dr, g, xs);
    }
    acc = zb_block_sum_d(acc);
    if (threadIdx.x == 0) kl[r] = acc;
}

/* rows of V floats go 4 at a time when V % 4 == 0 and every row pointer is 16-byte aligned */
static int vec4(int V, const void *a, const void *b, const void *c) {
    return V % 4 == 0 && !((uintptr_t)a & 15) && !((uintptr_t)b & 15) && !((uintptr_t)c & 15);
}

/* ---- cross-entropy ------------------------------------------------------------------------- */

/* row r: loss[r] = logsumexp(row) - row[y] (0 for y outside [0, V)); d (may alias logits) =
 * scale * (softmax - onehot), zero rows where ignored. */
__global__ void k_ce(double *loss, float *d, const float *logits, const int *targets, int V, float scale) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float *dr = d ? d + r * V : NULL;
    int y = targets[r];
    if (y < 0 || y >= V) {
        if (dr) for (int v = threadIdx.x; v < V; v += blockDim.x) dr[v] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0;
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
    mx = zb_block_max_f(mx);
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(row[v] - mx);
    sum = zb_block_sum_d(sum);
    double lse = mx + log(sum);
    float ry = row[y];   /* read before the gradient may overwrite it */
    if (threadIdx.x == 0) loss[r] = lse - ry;
    if (dr) {
        __syncthreads();   /* every thread has read row[y] */
        float l = (float)lse;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float p = scale * expf(row[v] - l);
            dr[v] = v == y ? p - scale : p;
        }
    }
}

__global__ void k_count_valid(int *count, const int *targets, int N, int V) {
    int c = 0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) c += targets[i] >= 0 && targets[i] < V;
    double s = zb_block_sum_d((double)c);
    if (threadIdx.x == 0) *count = (int)s;
}

extern "C" double zb_cuda_cross_entropy_n(float *dlogits, const float *logits, const int *targets, int N, int V,
                                          float scale, int *n_valid) {
    if (n_valid) *n_valid = 0;
    if (N <= 0) return 0;
    double *loss = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!loss) return NAN;
    if (use_row_kernels())
        k_ce<<<N, vthreads(V), 0, zb_cuda_stream()>>>(loss, dlogits, logits, targets, V, scale);
    else if (vec4(V, logits, dlogits, NULL))
        k_ce_fused<4><<<N, LOSS_THREADS, 0, zb_cuda_stream()>>>(loss, dlogits, logits, targets, V, scale);
    else
        k_ce_fused<1><<<N, LOSS_THREADS, 0, zb_cuda_stream()>>>(loss, dlogits, logits, targets, V, scale);
    ZB_CUDA_LAUNCHED("cross_entropy");
    if (n_valid) {
        int *cnt = (int *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double) + sizeof(int));
        if (cnt) {
            cnt += 2;   /* after the double of sum_to_host */
            k_count_valid<<<1, 512, 0, zb_cuda_stream()>>>(cnt, targets, N, V);
            ZB_CUDA_LAUNCHED("count_valid");
            zb_cuda_download(n_valid, cnt, sizeof(int));
        }
    }
    return sum_to_host(loss, (size_t)N);
}

extern "C" double zb_cuda_cross_entropy(float *dlogits, const float *logits, const int *targets, int N, int V,
                                        float scale) {
    return zb_cuda_cross_entropy_n(dlogits, logits, targets, N, V, scale, NULL);
}

/* The training step's cross-entropy whose gradient only feeds the head's backward (cuda_ops.h): in
 * the bf16 CONVERT mode the fused kernel writes the gradient in bf16 straight into the buffer that
 * zb_cuda_matmul_backward's shared path rounds dout into (zb_cuda_dout16), so that the [N, V]
 * float32 gradient is neither written nor read back and converted (Zebra-1B at 8 x 2048: 4.2 GB
 * written instead of 8.4, and a 12.6 GB conversion pass gone). The same float32 values rounded once
 * each, as that conversion did: the products get the same bits. Else (another mode, ZB_CUDA_LOSS=rows,
 * ZB_CUDA_DLOGITS16=0, no bf16 backward to hand it to) zb_cuda_cross_entropy in place. */
extern "C" double zb_cuda_cross_entropy_head(float *logits, const int *targets, int N, int V, float scale) {
    if (N <= 0) return 0;
    uint16_t *d16 = use_row_kernels() || !zb_cuda_dlogits16_on() ? NULL : zb_cuda_dout16(logits, N, V);
    if (!d16) return zb_cuda_cross_entropy_n(logits, logits, targets, N, V, scale, NULL);
    double *loss = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!loss) return NAN;
    if (vec4(V, logits, d16, NULL))
        k_ce_fused<4><<<N, LOSS_THREADS, 0, zb_cuda_stream()>>>(loss, NULL, logits, targets, V, scale,
                                                                (__nv_bfloat16 *)d16);
    else
        k_ce_fused<1><<<N, LOSS_THREADS, 0, zb_cuda_stream()>>>(loss, NULL, logits, targets, V, scale,
                                                                (__nv_bfloat16 *)d16);
    ZB_CUDA_LAUNCHED("cross_entropy (bf16 gradient)");
    return sum_to_host(loss, (size_t)N);
}

__global__ void k_target_logp(double *logp, const float *logits, const int *targets, int V) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    int y = targets[r];
    if (y < 0 || y >= V) {
        if (threadIdx.x == 0) logp[r] = 0;
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
    mx = zb_block_max_f(mx);
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(row[v] - mx);
    sum = zb_block_sum_d(sum);
    if (threadIdx.x == 0) logp[r] = (double)row[y] - (mx + log(sum));
}

extern "C" void zb_cuda_target_logprobs(double *logp_dev, const float *logits, const int *targets, int N, int V) {
    if (N <= 0) return;
    k_target_logp<<<N, vthreads(V), 0, zb_cuda_stream()>>>(logp_dev, logits, targets, V);
    ZB_CUDA_LAUNCHED("target_logprobs");
}

/* ---- the vocabulary-parallel cross-entropy's passes (backend.h vp_*): one block per row ------- */

__global__ void k_vp_max(float *mx, const float *logits, int V) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, row[v]);
    m = zb_block_max_f(m);
    if (threadIdx.x == 0) mx[r] = m;
}

__global__ void k_vp_sums(double *st, const float *logits, const float *mx, const int *targets, int V, long long v0) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float m = mx[r];
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(row[v] - m);
    sum = zb_block_sum_d(sum);
    if (threadIdx.x == 0) {
        long long y = (long long)targets[r] - v0;
        st[2 * r] = sum;
        st[2 * r + 1] = (y >= 0 && y < V) ? (double)row[y] : 0.0;   /* the target logit lives on one rank */
    }
}

__global__ void k_vp_grad(double *loss, float *d, const float *logits, const float *mx, const double *st,
                          const int *targets, int V, long long v0, long long Vfull, float scale) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float *dr = d ? d + r * V : NULL;
    long long y = targets[r];
    if (y < 0 || y >= Vfull) {
        if (dr) for (int v = threadIdx.x; v < V; v += blockDim.x) dr[v] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0;
        return;
    }
    double lse = (double)mx[r] + log(st[2 * r]);
    if (threadIdx.x == 0) loss[r] = lse - st[2 * r + 1];
    if (dr) {
        float l = (float)lse;
        long long yl = y - v0;   /* each thread reads and writes its own entries only: aliasing is safe */
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float p = scale * expf(row[v] - l);
            dr[v] = v == yl ? p - scale : p;
        }
    }
}

extern "C" void zb_cuda_vp_row_max(float *mx, const float *logits, int N, int V) {
    if (N <= 0) return;
    k_vp_max<<<N, vthreads(V), 0, zb_cuda_stream()>>>(mx, logits, V);
    ZB_CUDA_LAUNCHED("vp_row_max");
}

extern "C" void zb_cuda_vp_row_sums(double *st, const float *logits, const float *mx, const int *targets, int N, int V,
                                    long long v0) {
    if (N <= 0) return;
    k_vp_sums<<<N, vthreads(V), 0, zb_cuda_stream()>>>(st, logits, mx, targets, V, v0);
    ZB_CUDA_LAUNCHED("vp_row_sums");
}

extern "C" double zb_cuda_vp_ce_grad(float *dlogits, const float *logits, const float *mx, const double *st,
                                     const int *targets, int N, int V, long long v0, long long Vfull, float scale) {
    if (N <= 0) return 0;
    double *loss = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!loss) return NAN;
    k_vp_grad<<<N, vthreads(V), 0, zb_cuda_stream()>>>(loss, dlogits, logits, mx, st, targets, V, v0, Vfull, scale);
    ZB_CUDA_LAUNCHED("vp_ce_grad");
    return sum_to_host(loss, (size_t)N);
}

/* ---- greedy decoding: the argmax of each row ------------------------------------------------- */

/* (value, index) b beats a: larger, or equal at a lower index; a NaN is never a candidate
 * (index INT_MAX = none), so the order of the combinations does not change the pick */
__device__ static inline bool am_better(float bv, int bi, float av, int ai) {
    return bi != INT_MAX && (ai == INT_MAX || bv > av || (bv == av && bi < ai));
}

/* one block per row: each thread scans its stride (increasing indices: the first of equal values
 * stays), then the warps and the block combine; zb_sample's scan gives 0 when row[0] is NaN */
/* pairs (v0 >= 0): argmax_pairs' (value bits, v0 + index) of a vocabulary slice instead of the pick */
__global__ void k_argmax_rows(int *out, const float *x, int V, long long v0) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *r = x + (size_t)blockIdx.x * V;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float a = r[v];
        if (!isnan(a) && (bi == INT_MAX || a > bv)) { bv = a; bi = v; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w != 0) return;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : INT_MAX;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (lane != 0) return;
    if (v0 < 0) out[blockIdx.x] = (isnan(r[0]) || bi == INT_MAX) ? 0 : bi;
    else {
        out[2 * blockIdx.x] = __float_as_int(bv);
        out[2 * blockIdx.x + 1] = v0 == 0 && isnan(r[0]) ? -1 : bi == INT_MAX ? INT_MAX : (int)(v0 + bi);
    }
}

/* A row over many blocks (one block of 1024 over Llama's 128256 logits took 29.7 us of a decode
 * step, S6R2's ncu): block p of row n scans columns [p S, p S + S) (AM_HELD values per thread,
 * all loaded before the scan; the scan in increasing indices), writes its (value, index) pair and
 * takes a ticket; the row's last block combines the P pairs (am_better: the same pick in any
 * order: the largest value, the lowest index among equal ones, NaN never) and resets the ticket
 * for the next call (graph replays). The tickets and pairs are this file's: one such call at a
 * time on the device (the one stream). */
#define AM_THREADS 256
#define AM_HELD 16
#define AM_S (AM_THREADS * AM_HELD)
#define AM_ROWS 64
#define AM_P 64
__device__ unsigned g_am_ticket[AM_ROWS];
__device__ int g_am_pairs[AM_ROWS * AM_P * 2];

__device__ static inline void am_warp(float &bv, int &bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
}

__global__ void __launch_bounds__(AM_THREADS) k_argmax_split(int *out, const float *__restrict__ x, int V) {
    __shared__ float sv[AM_THREADS / 32];
    __shared__ int si[AM_THREADS / 32];
    __shared__ bool last;
    const int P = gridDim.x, p = blockIdx.x, n = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const float *r = x + (size_t)n * V;
    float a[AM_HELD];
#pragma unroll
    for (int k = 0; k < AM_HELD; k++) {
        int v = p * AM_S + k * AM_THREADS + threadIdx.x;
        a[k] = v < V ? r[v] : NAN;
    }
    float bv = -INFINITY;
    int bi = INT_MAX;
#pragma unroll
    for (int k = 0; k < AM_HELD; k++)
        if (!isnan(a[k]) && (bi == INT_MAX || a[k] > bv)) { bv = a[k]; bi = p * AM_S + k * AM_THREADS + threadIdx.x; }
    am_warp(bv, bi);
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    int *pr = g_am_pairs + ((size_t)n * AM_P) * 2;
    if (threadIdx.x == 0) {
        for (int k = 1; k < AM_THREADS / 32; k++)
            if (am_better(sv[k], si[k], bv, bi)) { bv = sv[k]; bi = si[k]; }
        pr[2 * p] = __float_as_int(bv);
        pr[2 * p + 1] = bi;
        __threadfence();   /* the pair visible before the ticket */
        last = atomicAdd(&g_am_ticket[n], 1u) == (unsigned)P - 1;
    }
    __syncthreads();
    if (!last || w != 0) return;
    __threadfence();
    bv = -INFINITY;
    bi = INT_MAX;
    for (int q = lane; q < P; q += 32) {
        float qv = __int_as_float(__ldcg(pr + 2 * q));
        int qi = __ldcg(pr + 2 * q + 1);
        if (am_better(qv, qi, bv, bi)) { bv = qv; bi = qi; }
    }
    am_warp(bv, bi);
    if (lane == 0) {
        out[n] = (isnan(r[0]) || bi == INT_MAX) ? 0 : bi;
        g_am_ticket[n] = 0;
    }
}

/* the split kernel unless ZB_ARGMAX_SPLIT=0 (one block per row, k_argmax_rows, as before);
 * _set(1 / 0) forces, (-1) reads the environment again */
static int g_am_split = -1;
extern "C" void zb_cuda_argmax_set_split(int on) { g_am_split = on < 0 ? -1 : on != 0; }

extern "C" void zb_cuda_argmax_rows(int *out, const float *x, int N, int V) {
    if (N <= 0 || V <= 0) return;
    zb_cuda_env_switch(&g_am_split, "ZB_ARGMAX_SPLIT", "0");
    int P = (V + AM_S - 1) / AM_S;
    if (g_am_split && N <= AM_ROWS && P >= 2 && P <= AM_P) {
        k_argmax_split<<<dim3(P, N), AM_THREADS, 0, zb_cuda_stream()>>>(out, x, V);
        ZB_CUDA_LAUNCHED("argmax_rows split");
        return;
    }
    k_argmax_rows<<<N, V >= 1024 ? 1024 : 64, 0, zb_cuda_stream()>>>(out, x, V, -1);
    ZB_CUDA_LAUNCHED("argmax_rows");
}

extern "C" void zb_cuda_argmax_pairs(int *pairs, const float *x, int N, int V, long long v0) {
    if (N <= 0 || V <= 0) return;
    k_argmax_rows<<<N, V >= 1024 ? 1024 : 64, 0, zb_cuda_stream()>>>(pairs, x, V, v0 < 0 ? 0 : v0);
    ZB_CUDA_LAUNCHED("argmax_pairs");
}

/* a thread per row: the slices' pairs in slice order, combined as the block's candidates above */
__global__ void k_argmax_pick(int *out, const int *pairs, int N, int P) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float bv = -INFINITY;
    int bi = INT_MAX, nan0 = 0;
    for (int p = 0; p < P; p++) {
        const int *q = pairs + ((size_t)p * N + n) * 2;
        float v = __int_as_float(q[0]);
        nan0 |= q[1] == -1;
        if (q[1] != -1 && am_better(v, q[1], bv, bi)) { bv = v; bi = q[1]; }
    }
    out[n] = nan0 || bi == INT_MAX ? 0 : bi;
}

extern "C" void zb_cuda_argmax_pick(int *out, const int *pairs, int N, int P) {
    if (N <= 0 || P <= 0) return;
    k_argmax_pick<<<(N + 127) / 128, 128, 0, zb_cuda_stream()>>>(out, pairs, N, P);
    ZB_CUDA_LAUNCHED("argmax_pick");
}

/* the next decode step's inputs from this one's picks (backend.h decode_advance): one thread per
 * sequence (the sequences are distinct: no two threads touch one position) */
__global__ void k_decode_advance(int *ids, int *pos, const int *next, const int *seqs, int nb, long long v0, int V) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nb) return;
    long long v = (long long)next[i] - v0;
    pos[seqs[i]] += 1;
    ids[i] = v >= 0 && v < V ? (int)v : -1;
}

extern "C" void zb_cuda_decode_advance(int *ids, int *pos, const int *next, const int *seqs, int nb, long long v0,
                                       int V) {
    if (nb <= 0) return;
    k_decode_advance<<<zb_cuda_blocks((size_t)nb, 128), 128, 0, zb_cuda_stream()>>>(ids, pos, next, seqs, nb, v0, V);
    ZB_CUDA_LAUNCHED("decode_advance");
}

/* ---- KL(teacher || student) at temperature tau ----------------------------------------------- */

__global__ void k_kl(double *kl, float *d, const float *student, const float *teacher, const int *mask, int V,
                     float tau, float scale) {
    size_t r = blockIdx.x;
    const float *s = student + r * V, *t = teacher + r * V;
    float *dr = d ? d + r * V : NULL;
    if (mask && !mask[r]) {
        if (dr) for (int v = threadIdx.x; v < V; v += blockDim.x) dr[v] = 0.0f;
        if (threadIdx.x == 0) kl[r] = 0;
        return;
    }
    float ms = -INFINITY, mt = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        ms = fmaxf(ms, s[v] / tau);
        mt = fmaxf(mt, t[v] / tau);
    }
    ms = zb_block_max_f(ms);
    mt = zb_block_max_f(mt);
    double zs = 0, zt = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        zs += (double)expf(s[v] / tau - ms);
        zt += (double)expf(t[v] / tau - mt);
    }
    zs = zb_block_sum_d(zs);
    zt = zb_block_sum_d(zt);
    double lzs = ms + log(zs), lzt = mt + log(zt), acc = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        double lpt = t[v] / tau - lzt, lps = s[v] / tau - lzs, pt = exp(lpt);
        acc += pt * (lpt - lps);
        if (dr) dr[v] = (float)(scale * (exp(lps) - pt) / tau);
    }
    acc = zb_block_sum_d(acc);
    if (threadIdx.x == 0) kl[r] = acc;
}

extern "C" double zb_cuda_kl_div(float *dstudent, const float *student, const float *teacher, const int *mask,
                                 int N, int V, float tau, float scale) {
    if (N <= 0) return 0;
    double *kl = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!kl) return NAN;
    if (use_row_kernels())
        k_kl<<<N, vthreads(V), 0, zb_cuda_stream()>>>(kl, dstudent, student, teacher, mask, V, tau, scale);
    else if (vec4(V, student, teacher, dstudent))
        k_kl_fused<4><<<N, LOSS_THREADS, 0, zb_cuda_stream()>>>(kl, dstudent, student, teacher, mask, V, tau,
                                                                  scale / tau);
    else
        k_kl_fused<1><<<N, LOSS_THREADS, 0, zb_cuda_stream()>>>(kl, dstudent, student, teacher, mask, V, tau,
                                                                  scale / tau);
    ZB_CUDA_LAUNCHED("kl_div");
    return sum_to_host(kl, (size_t)N);
}

/* ---- mean row distance (ILD as the release) ------------------------------------------------- */

__global__ void k_row_dist(double *dist, float *g, const float *s, const float *t, int d, float gscale) {
    size_t r = blockIdx.x;
    const float *sr = s + r * d, *tr = t + r * d;
    double ss = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        double e = (double)sr[i] - tr[i];
        ss += e * e;
    }
    ss = zb_block_sum_d(ss);
    double n = sqrt(ss);
    if (threadIdx.x == 0) dist[r] = n;
    if (g) {
        float *gr = g + r * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            gr[i] = n > 0 ? (float)(gscale * ((double)sr[i] - tr[i]) / n) : 0.0f;
    }
}

/* mean over N rows of ||s_n - t_n|| (double); g (may be NULL) OVERWRITTEN with
 * scale (s_n - t_n) / (||s_n - t_n|| N), 0 where the rows are equal */
extern "C" double zb_cuda_mean_row_dist(float *g, const float *s, const float *t, int N, int d, float scale) {
    if (N <= 0) return 0;
    double *dist = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!dist) return NAN;
    k_row_dist<<<N, vthreads(d), 0, zb_cuda_stream()>>>(dist, g, s, t, d, scale / N);
    ZB_CUDA_LAUNCHED("mean_row_dist");
    return sum_to_host(dist, (size_t)N) / N;
}

/* ---- MSE -------------------------------------------------------------------------------------- */

__global__ void k_mse(double *acc, float *da, const float *a, const float *b, size_t n, float scale) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double e = (double)a[i] - b[i];
        s += e * e;
        if (da) da[i] = (float)(scale * 2.0 * e / n);
    }
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" double zb_cuda_mse(float *da, const float *a, const float *b, size_t n, float scale) {
    if (!n) return 0;
    double *acc = (double *)zb_cuda_scratch(ZB_WS_LOSS, sizeof(double));
    if (!acc) return NAN;
    zb_cuda_zero(acc, sizeof(double));
    unsigned blocks = zb_cuda_blocks(n, 256);
    if (blocks > 4096) blocks = 4096;
    k_mse<<<blocks, 256, 0, zb_cuda_stream()>>>(acc, da, a, b, n, scale);
    ZB_CUDA_LAUNCHED("mse");
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h / n;
}

__global__ void k_adamw_range(float *w, const float *g, float *m, float *v, size_t n, float b1, float b2, float eps,
                              float decay, float step, float bc2s, float gs) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gj = g[i] * gs;
        float mj = b1 * m[i] + (1.0f - b1) * gj;
        float vj = b2 * v[i] + (1.0f - b2) * gj * gj;
        m[i] = mj;
        v[i] = vj;
        w[i] = w[i] * decay - step * mj / (sqrtf(vj) / bc2s + eps);
    }
}

extern "C" void zb_cuda_adamw_range(float *w, const float *g, float *m, float *v, size_t n, float beta1, float beta2,
                                    float eps, float decay, float step_size, float bc2s, float grad_scale) {
    if (!n) return;
    zb_cuda_weights_changed();
    k_adamw_range<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(w, g, m, v, n, beta1, beta2, eps, decay,
                                                                       step_size, bc2s, grad_scale);
    ZB_CUDA_LAUNCHED("adamw_range");
}

__global__ void k_sumsq_range(double *acc, const float *x, size_t n) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" double zb_cuda_sumsq_range(const float *x, size_t n) {
    if (!n) return 0;
    double *acc = (double *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double) + sizeof(int) * 4);
    if (!acc) return NAN;
    zb_cuda_zero(acc, sizeof(double));
    unsigned blocks = zb_cuda_blocks(n, 256);
    if (blocks > 2048) blocks = 2048;
    k_sumsq_range<<<blocks, 256, 0, zb_cuda_stream()>>>(acc, x, n);
    ZB_CUDA_LAUNCHED("sumsq_range");
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h;
}

/* ---- parameter segments, AdamW, sum of squares ------------------------------------------------- */

#define SEG_CHUNK 8192   /* floats per block */

struct zb_cuda_segs {
    int n;
    long long total_blocks;
    /* device arrays: off, len [n]; first block of each segment [n + 1]; lr_mult, wd [n] */
    long long *off, *len, *first;
    float *lr_mult, *wd;
};

extern "C" int zb_cuda_segs_create(zb_cuda_segs **out, int n, const size_t *off, const size_t *len,
                                   const float *lr_mult, const float *wd) {
    *out = NULL;
    zb_cuda_segs *s = (zb_cuda_segs *)calloc(1, sizeof *s);
    long long *h = (long long *)malloc(sizeof(long long) * (3 * (size_t)n + 1));
    if (!s || !h) { free(s); free(h); return zb_fail(ZB_ENOMEM, "optimizer segments"); }
    s->n = n;
    long long *ho = h, *hl = h + n, *hf = h + 2 * n, b = 0;
    for (int i = 0; i < n; i++) {
        ho[i] = (long long)off[i];
        hl[i] = (long long)len[i];
        hf[i] = b;
        b += (hl[i] + SEG_CHUNK - 1) / SEG_CHUNK;
    }
    hf[n] = b;
    s->total_blocks = b;
    int rc = zb_cuda_alloc((void **)&s->off, sizeof(long long) * (3 * (size_t)n + 1), "optimizer segments");
    if (!rc) rc = zb_cuda_alloc((void **)&s->lr_mult, sizeof(float) * (2 * (size_t)n + 1), "optimizer segments");
    if (!rc) {
        s->len = s->off + n;
        s->first = s->off + 2 * n;
        s->wd = s->lr_mult + n;
        rc = zb_cuda_upload(s->off, h, sizeof(long long) * (3 * (size_t)n + 1));
    }
    if (!rc && n) rc = zb_cuda_upload(s->lr_mult, lr_mult, sizeof(float) * n);
    if (!rc && n) rc = zb_cuda_upload(s->wd, wd, sizeof(float) * n);
    free(h);
    if (rc) { zb_cuda_segs_free(s); return rc; }
    *out = s;
    return ZB_OK;
}

extern "C" void zb_cuda_segs_free(zb_cuda_segs *s) {
    if (!s) return;
    zb_cuda_free(s->off);
    zb_cuda_free(s->lr_mult);
    free(s);
}

/* the segment of block b: the last i with first[i] <= b */
__device__ static int seg_of(const long long *first, int n, long long b) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (first[mid] <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__global__ void k_sumsq(double *acc, const long long *off, const long long *len, const long long *first, int n,
                        const float *g) {
    long long b = blockIdx.x;
    int sgi = seg_of(first, n, b);
    long long a = off[sgi] + (b - first[sgi]) * SEG_CHUNK, e = off[sgi] + len[sgi];
    if (a + SEG_CHUNK < e) e = a + SEG_CHUNK;
    double s = 0;
    for (long long i = a + threadIdx.x; i < e; i += blockDim.x) s += (double)g[i] * g[i];
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" double zb_cuda_sumsq(const zb_cuda_segs *s, const float *g) {
    double *acc = (double *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double));
    if (!acc) return NAN;
    zb_cuda_zero(acc, sizeof(double));
    if (s->total_blocks > 0) {
        k_sumsq<<<(unsigned)s->total_blocks, 256, 0, zb_cuda_stream()>>>(acc, s->off, s->len, s->first, s->n, g);
        ZB_CUDA_LAUNCHED("grad sumsq");
    }
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h;
}

/* optim.h: p <- p (1 - lr_i wd_i); m, v moments; p <- p - (lr_i / bc1) m / (sqrt(v) / bc2s + eps) */
__global__ void k_adamw(const long long *off, const long long *len, const long long *first, const float *lr_mult,
                        const float *wd, int n, float *w, const float *g, float *m, float *v, float lr, float b1,
                        float b2, float eps, float gs, float bc1, float bc2s) {
    long long b = blockIdx.x;
    int sgi = seg_of(first, n, b);
    long long a = off[sgi] + (b - first[sgi]) * SEG_CHUNK, e = off[sgi] + len[sgi];
    if (a + SEG_CHUNK < e) e = a + SEG_CHUNK;
    float lri = lr * lr_mult[sgi], decay = 1.0f - lri * wd[sgi], step = lri / bc1;
    for (long long i = a + threadIdx.x; i < e; i += blockDim.x) {
        float gj = g[i] * gs;
        float mj = b1 * m[i] + (1.0f - b1) * gj;
        float vj = b2 * v[i] + (1.0f - b2) * gj * gj;
        m[i] = mj;
        v[i] = vj;
        w[i] = w[i] * decay - step * mj / (sqrtf(vj) / bc2s + eps);
    }
}

extern "C" void zb_cuda_adamw(const zb_cuda_segs *s, float *w, const float *g, float *m, float *v, float lr,
                              float beta1, float beta2, float eps, float grad_scale, long long t) {
    if (s->total_blocks <= 0) return;
    zb_cuda_weights_changed();
    /* the bias corrections as optim.c computes them (double, then float) */
    float bc1 = (float)(1.0 - pow(beta1, (double)t)), bc2s = (float)sqrt(1.0 - pow(beta2, (double)t));
    k_adamw<<<(unsigned)s->total_blocks, 256, 0, zb_cuda_stream()>>>(s->off, s->len, s->first, s->lr_mult, s->wd,
                                                                    s->n, w, g, m, v, lr, beta1, beta2, eps,
                                                                    grad_scale, bc1, bc2s);
    ZB_CUDA_LAUNCHED("adamw");
}

/* ---- many ranges in one launch (backend.h adamw_ranges / sumsq_ranges) ----------------------------
 * The ranges' table (offset, length, first block, decay, step) goes to the device with each call
 * (a few KB); each block takes RANGE_CHUNK floats of one range (found by a binary search over the
 * first blocks), 4 at a time where the base pointers are 16-byte aligned (the unaligned head and
 * tail of a range one at a time). The sum of squares writes one double per block and one block adds
 * them in a fixed order: the same bits every call. */

#define RANGE_CHUNK 16384
#define RANGE_THREADS 256

struct zb_rseg {
    long long off, n, first;
    float decay, step;
};

__device__ static int rseg_of(const zb_rseg *t, int n, long long b) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (t[mid].first <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/* block b's floats [a, e) and the 4-aligned part [a4, e4) inside them */
__device__ static inline void rseg_span(const zb_rseg *t, int n, long long b, int *si, long long *a, long long *e,
                                        long long *a4, long long *e4) {
    int i = rseg_of(t, n, b);
    *si = i;
    *a = t[i].off + (b - t[i].first) * RANGE_CHUNK;
    *e = t[i].off + t[i].n;
    if (*a + RANGE_CHUNK < *e) *e = *a + RANGE_CHUNK;
    *a4 = (*a + 3) & ~3ll;
    *e4 = *e & ~3ll;
    if (*a4 > *e) *a4 = *e;
    if (*e4 < *a4) *e4 = *a4;
}

template <bool VEC>
__global__ void __launch_bounds__(RANGE_THREADS) k_sumsq_ranges(double *part, const zb_rseg *t, int n, const float *x) {
    int si;
    long long a, e, a4, e4;
    rseg_span(t, n, blockIdx.x, &si, &a, &e, &a4, &e4);
    if (!VEC) a4 = e4 = e;
    double s = 0;
    for (long long j = a + threadIdx.x; j < a4; j += blockDim.x) s += (double)x[j] * x[j];
    for (long long j = e4 + threadIdx.x; j < e; j += blockDim.x) s += (double)x[j] * x[j];
    for (long long q = a4 / 4 + threadIdx.x; q < e4 / 4; q += blockDim.x) {
        float4 v = __ldg((const float4 *)x + q);
        s += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__device__ static inline void adamw_one(float &w, float g, float &m, float &v, float b1, float b2, float eps,
                                        float decay, float step, float bc2s, float gs) {
    float gj = g * gs;
    float mj = b1 * m + (1.0f - b1) * gj;
    float vj = b2 * v + (1.0f - b2) * gj * gj;
    m = mj;
    v = vj;
    w = w * decay - step * mj / (sqrtf(vj) / bc2s + eps);
}

template <bool VEC>
__global__ void __launch_bounds__(RANGE_THREADS) k_adamw_ranges(const zb_rseg *t, int n, float *w, const float *g,
                                                                float *m, float *v, float b1, float b2, float eps,
                                                                float bc2s, float gs) {
    int si;
    long long a, e, a4, e4;
    rseg_span(t, n, blockIdx.x, &si, &a, &e, &a4, &e4);
    if (!VEC) a4 = e4 = e;
    const float decay = t[si].decay, step = t[si].step;
    for (long long j = a + threadIdx.x; j < a4; j += blockDim.x)
        adamw_one(w[j], g[j], m[j], v[j], b1, b2, eps, decay, step, bc2s, gs);
    for (long long j = e4 + threadIdx.x; j < e; j += blockDim.x)
        adamw_one(w[j], g[j], m[j], v[j], b1, b2, eps, decay, step, bc2s, gs);
    for (long long q = a4 / 4 + threadIdx.x; q < e4 / 4; q += blockDim.x) {
        float4 W = ((float4 *)w)[q], M = ((float4 *)m)[q], Vv = ((float4 *)v)[q];
        float4 G = __ldg((const float4 *)g + q);
        adamw_one(W.x, G.x, M.x, Vv.x, b1, b2, eps, decay, step, bc2s, gs);
        adamw_one(W.y, G.y, M.y, Vv.y, b1, b2, eps, decay, step, bc2s, gs);
        adamw_one(W.z, G.z, M.z, Vv.z, b1, b2, eps, decay, step, bc2s, gs);
        adamw_one(W.w, G.w, M.w, Vv.w, b1, b2, eps, decay, step, bc2s, gs);
        ((float4 *)w)[q] = W;
        ((float4 *)m)[q] = M;
        ((float4 *)v)[q] = Vv;
    }
}

/* the ranges' table on the device (scratch ZB_WS_OPT); *blocks: RANGE_CHUNK blocks over them */
static const zb_rseg *upload_ranges(int n, const zb_range *r, long long *blocks) {
    *blocks = 0;
    zb_rseg *h = (zb_rseg *)malloc(sizeof(zb_rseg) * (size_t)(n > 0 ? n : 1));
    if (!h) { zb_cuda_note_error2("optimizer ranges", "out of host memory", __FILE__, __LINE__); return NULL; }
    long long b = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!r[i].n) continue;
        h[k].off = (long long)r[i].off;
        h[k].n = (long long)r[i].n;
        h[k].first = b;
        h[k].decay = r[i].decay;
        h[k].step = r[i].step_size;
        b += (h[k].n + RANGE_CHUNK - 1) / RANGE_CHUNK;
        k++;
    }
    zb_rseg *d = k ? (zb_rseg *)zb_cuda_scratch(ZB_WS_OPT, sizeof(zb_rseg) * (size_t)k) : NULL;
    if (d && zb_cuda_upload(d, h, sizeof(zb_rseg) * (size_t)k) != ZB_OK) d = NULL;
    free(h);
    *blocks = d ? b : 0;
    return d;
}

static int aligned16(const void *p) { return !((uintptr_t)p & 15); }

extern "C" double zb_cuda_sumsq_ranges(const float *x, int n, const zb_range *r) {
    long long blocks = 0;
    int nn = 0;
    for (int i = 0; i < n; i++) nn += r[i].n > 0;
    if (!nn) return 0;
    const zb_rseg *t = upload_ranges(n, r, &blocks);
    if (!t || blocks <= 0 || blocks > INT_MAX) return NAN;
    double *part = (double *)zb_cuda_scratch(ZB_WS_LOSS, sizeof(double) * (size_t)blocks);
    if (!part) return NAN;
    if (aligned16(x)) k_sumsq_ranges<true><<<(unsigned)blocks, RANGE_THREADS, 0, zb_cuda_stream()>>>(part, t, nn, x);
    else k_sumsq_ranges<false><<<(unsigned)blocks, RANGE_THREADS, 0, zb_cuda_stream()>>>(part, t, nn, x);
    ZB_CUDA_LAUNCHED("sumsq_ranges");
    return sum_to_host(part, (size_t)blocks);
}

extern "C" void zb_cuda_adamw_ranges(float *w, const float *g, float *m, float *v, int n, const zb_range *r,
                                     float beta1, float beta2, float eps, float bc2s, float grad_scale) {
    int nn = 0;
    for (int i = 0; i < n; i++) nn += r[i].n > 0;
    if (!nn) return;
    zb_cuda_weights_changed();
    long long blocks = 0;
    const zb_rseg *t = upload_ranges(n, r, &blocks);
    if (!t || blocks <= 0) return;
    if (blocks > INT_MAX) { zb_cuda_note_error2("adamw_ranges", "too many blocks", __FILE__, __LINE__); return; }
    if (aligned16(w) && aligned16(g) && aligned16(m) && aligned16(v))
        k_adamw_ranges<true><<<(unsigned)blocks, RANGE_THREADS, 0, zb_cuda_stream()>>>(t, nn, w, g, m, v, beta1, beta2,
                                                                                     eps, bc2s, grad_scale);
    else
        k_adamw_ranges<false><<<(unsigned)blocks, RANGE_THREADS, 0, zb_cuda_stream()>>>(t, nn, w, g, m, v, beta1, beta2,
                                                                                      eps, bc2s, grad_scale);
    ZB_CUDA_LAUNCHED("adamw_ranges");
}
