/* cuda_decode.cu — the memory-bound kernels of a decode step, where one token per sequence
 * meets weights and caches that are read once per step:
 *
 *   zb_cuda_gemv_bf16   out[N, OC] = x[N, C] @ W^T for a bf16 W and N <= 8 rows: one warp per
 *                       output row streams its weight row in 16-byte loads (8 bf16 per lane) and
 *                       multiplies the N float32 inputs (read through L1), float32 sums; no
 *                       input conversion, no library call.
 *   zb_cuda_decode_attn flash-decoding (split-K over the cache): for each (sequence, KV group,
 *                       chunk of positions) one block scores the group's query heads against the
 *                       chunk (its length read from the device positions, so no host round trip),
 *                       keeps the chunk's max, sum and weighted values; a second kernel merges the
 *                       chunks exactly: out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c. Float32
 *                       or bf16 caches; the values may be the first dv columns of the key rows
 *                       (MLA's latent cache: one group of all the heads). */
#include "cuda_ops.h"
#include "cuda_reduce.cuh"

typedef __nv_bfloat16 bf16;

/* ---- small-N GEMV on bf16 weights ------------------------------------------------------------- */

#define GEMV_MAXN 8

__global__ void __launch_bounds__(256) k_gemv_bf16(float *__restrict__ out, const float *__restrict__ x,
                                                   const bf16 *__restrict__ W, int N, int C, int OC) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (row >= OC) return;
    const bf16 *w = W + (size_t)row * C;
    float acc[GEMV_MAXN];
#pragma unroll
    for (int n = 0; n < GEMV_MAXN; n++) acc[n] = 0.0f;
    int c8 = (C / 256) * 256;   /* whole warp sweeps of 8 values per lane */
#pragma unroll 2
    for (int c = lane * 8; c < c8; c += 256) {
        uint4 raw = __ldg((const uint4 *)(w + c));
        const __nv_bfloat162 *p2 = (const __nv_bfloat162 *)&raw;
        float2 f0 = __bfloat1622float2(p2[0]), f1 = __bfloat1622float2(p2[1]);
        float2 f2 = __bfloat1622float2(p2[2]), f3 = __bfloat1622float2(p2[3]);
#pragma unroll
        for (int n = 0; n < GEMV_MAXN; n++) {
            if (n < N) {
                const float4 *xr = (const float4 *)(x + (size_t)n * C + c);
                float4 a = __ldg(xr), b = __ldg(xr + 1);
                acc[n] += f0.x * a.x + f0.y * a.y + f1.x * a.z + f1.y * a.w + f2.x * b.x + f2.y * b.y + f3.x * b.z +
                          f3.y * b.w;
            }
        }
    }
    for (int c = c8 + lane; c < C; c += 32) {   /* the ragged tail, one value per lane */
        float wf = __bfloat162float(w[c]);
#pragma unroll
        for (int n = 0; n < GEMV_MAXN; n++)
            if (n < N) acc[n] += wf * x[(size_t)n * C + c];
    }
#pragma unroll
    for (int n = 0; n < GEMV_MAXN; n++) {
        if (n >= N) break;
        float v = acc[n];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) out[(size_t)n * OC + row] = v;
    }
}

extern "C" int zb_cuda_gemv_ok(const void *x, const void *W, int N, int C) {
    return N >= 1 && N <= GEMV_MAXN && C % 8 == 0 && !(((uintptr_t)x | (uintptr_t)W) & 15);
}

extern "C" void zb_cuda_gemv_bf16(float *out, const float *x, const uint16_t *W, int N, int C, int OC) {
    if (OC <= 0) return;
    k_gemv_bf16<<<zb_cuda_blocks((size_t)OC * 32, 256), 256, 0, zb_cuda_stream()>>>(out, x, (const bf16 *)W, N, C, OC);
    ZB_CUDA_LAUNCHED("gemv_bf16");
}

/* ---- flash-decoding -------------------------------------------------------------------------------- */

#define DEC_THREADS 128
#define DEC_MAXREP 64

__device__ static inline float ldc(const void *c, int bf, long long i) {
    return bf ? __bfloat162float(((const bf16 *)c)[i]) : ((const float *)c)[i];
}

/* One block: sequence i (slot seq[i], key positions 0..pos[i]), KV group g, positions
 * [sp*CH, sp*CH + CH). part row (i, g, sp, j) of dv + 2 floats: weighted values, max, sum. */
__global__ void __launch_bounds__(DEC_THREADS) k_decode_part(
    float *__restrict__ part, const float *__restrict__ q, const void *kc, const void *vc, const int *seq,
    const int *pos, int H, int Hkv, int dqk, int dv, long long seq_stride, long long group_stride,
    long long row_stride, float scale, int bf, int CH, int nsplit) {
    extern __shared__ float dsm[];
    const int sp = blockIdx.x, g = blockIdx.y, i = blockIdx.z, rep = H / Hkv;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    float *qs = dsm, *sc = dsm + rep * dqk, *ml = sc + rep * CH;   /* q [rep][dqk], scores [rep][CH], m / l */
    const int L = pos[i] + 1, u0 = sp * CH, u1 = min(L, u0 + CH), n = u1 - u0;
    float *pr = part + ((((size_t)i * Hkv + g) * nsplit + sp) * rep) * (dv + 2);
    if (n <= 0) {   /* past this sequence's length: an empty chunk */
        for (int j = tid; j < rep; j += DEC_THREADS) { pr[(size_t)j * (dv + 2) + dv] = -INFINITY; pr[(size_t)j * (dv + 2) + dv + 1] = 0.0f; }
        return;
    }
    const float *qi = q + (size_t)i * H * dqk + (size_t)g * rep * dqk;
    for (int e = tid; e < rep * dqk; e += DEC_THREADS) qs[e] = qi[e] * scale;
    __syncthreads();
    const long long base = (long long)seq[i] * seq_stride + (long long)g * group_stride;
    /* scores: a warp per position, the heads of the group in registers, 8 at a time */
    for (int u = u0 + warp; u < u1; u += DEC_THREADS / 32) {
        long long ro = base + (long long)u * row_stride;
        for (int j0 = 0; j0 < rep; j0 += 8) {
            float acc[8];
#pragma unroll
            for (int j = 0; j < 8; j++) acc[j] = 0.0f;
            for (int d = lane; d < dqk; d += 32) {
                float kv = ldc(kc, bf, ro + d);
#pragma unroll
                for (int j = 0; j < 8; j++)
                    if (j0 + j < rep) acc[j] += qs[(j0 + j) * dqk + d] * kv;
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float v = acc[j];
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == 0 && j0 + j < rep) sc[(j0 + j) * CH + (u - u0)] = v;
            }
        }
    }
    __syncthreads();
    /* the chunk's softmax per head: a warp per head */
    for (int j = warp; j < rep; j += DEC_THREADS / 32) {
        float *s = sc + j * CH, mx = -INFINITY;
        for (int u = lane; u < n; u += 32) mx = fmaxf(mx, s[u]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float l = 0;
        for (int u = lane; u < n; u += 32) { float p = expf(s[u] - mx); s[u] = p; l += p; }
        for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
        if (lane == 0) { ml[2 * j] = mx; ml[2 * j + 1] = l; }
    }
    __syncthreads();
    /* values: a thread per output column, 4 heads of the group at a time in registers (the
     * chunk's value column is re-read from L1 for the next 4) */
    for (int d = tid; d < dv; d += DEC_THREADS)
        for (int j0 = 0; j0 < rep; j0 += 4) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const float *s0 = sc + j0 * CH;
            int nj = rep - j0 < 4 ? rep - j0 : 4;
            if (nj == 4) {
                for (int u = 0; u < n; u++) {
                    float vv = ldc(vc, bf, base + (long long)(u0 + u) * row_stride + d);
                    acc[0] += s0[u] * vv;
                    acc[1] += s0[CH + u] * vv;
                    acc[2] += s0[2 * CH + u] * vv;
                    acc[3] += s0[3 * CH + u] * vv;
                }
            } else {
                for (int u = 0; u < n; u++) {
                    float vv = ldc(vc, bf, base + (long long)(u0 + u) * row_stride + d);
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        if (j < nj) acc[j] += s0[j * CH + u] * vv;
                }
            }
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (j < nj) pr[(size_t)(j0 + j) * (dv + 2) + d] = acc[j];
        }
    for (int j = tid; j < rep; j += DEC_THREADS) {
        pr[(size_t)j * (dv + 2) + dv] = ml[2 * j];
        pr[(size_t)j * (dv + 2) + dv + 1] = ml[2 * j + 1];
    }
}

/* merge the chunks of (sequence i, head h): one block per row, threads over the columns */
__global__ void k_decode_merge(float *out, const float *part, int H, int Hkv, int dv, int nsplit) {
    int row = blockIdx.x, i = row / H, h = row % H, rep = H / Hkv, g = h / rep, j = h % rep;
    const float *p0 = part + (((size_t)i * Hkv + g) * nsplit * rep + j) * (dv + 2);
    size_t st = (size_t)rep * (dv + 2);   /* from one chunk to the next */
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, p0[s * st + dv]);
    float den = 0;
    for (int s = 0; s < nsplit; s++) {
        float l = p0[s * st + dv + 1];
        if (l > 0) den += expf(p0[s * st + dv] - M) * l;
    }
    for (int d = threadIdx.x; d < dv; d += blockDim.x) {
        float num = 0;
        for (int s = 0; s < nsplit; s++)
            if (p0[s * st + dv + 1] > 0) num += expf(p0[s * st + dv] - M) * p0[s * st + d];
        out[(size_t)row * dv + d] = num / den;
    }
}

/* the kernel's limits: heads per group, and the queries and 32 scores per head in 96 KB */
extern "C" int zb_cuda_decode_attn_ok(int H, int Hkv, int dqk) {
    return Hkv > 0 && H % Hkv == 0 && H / Hkv <= DEC_MAXREP && (size_t)(H / Hkv) * (dqk + 32 + 2) * 4 <= 96 * 1024;
}

/* out [nb, H*dv] for one new token per sequence (position pos[i], already in the cache); the
 * caches as in zb_cuda_cache_attn; max_T bounds the positions (the number of chunks). */
extern "C" void zb_cuda_decode_attn(float *out, const float *q, const void *kc, const void *vc, const int *seq_dev,
                                    const int *pos_dev, int nb, int max_T, const zb_cuda_cache_attn *a) {
    if (nb <= 0 || max_T <= 0) return;
    int rep = a->H / a->Hkv, dqk = a->dqk;
    int CH = 256;   /* positions per block, fewer when the heads' scores and queries would not fit */
    while (CH > 32 && (size_t)rep * (dqk + CH) * 4 > 96 * 1024) CH /= 2;
    size_t smem = ((size_t)rep * (dqk + CH) + 2 * rep) * sizeof(float);
    static int attr = 0;
    if (!attr) {
        cudaFuncSetAttribute(k_decode_part, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
        attr = 1;
    }
    int nsplit = (max_T + CH - 1) / CH;
    float *part = (float *)zb_cuda_scratch(ZB_WS_ATTN2, (size_t)nb * a->H * nsplit * (a->dv + 2) * sizeof(float));
    if (!part) return;
    dim3 grid(nsplit, a->Hkv, nb);
    k_decode_part<<<grid, DEC_THREADS, smem, zb_cuda_stream()>>>(part, q, kc, vc, seq_dev, pos_dev, a->H, a->Hkv, dqk,
                                                                  a->dv, a->seq_stride, a->group_stride, a->row_stride,
                                                                  a->scale, a->cache_bf16, CH, nsplit);
    ZB_CUDA_LAUNCHED("decode attention");
    k_decode_merge<<<nb * a->H, a->dv < 128 ? 64 : 128, 0, zb_cuda_stream()>>>(out, part, a->H, a->Hkv, a->dv, nsplit);
    ZB_CUDA_LAUNCHED("decode attention merge");
}
