/* cuda_p2p.cu — the one-shot peer-memory all-reduce and the fused TP decode sum + residual +
 * RMSNorm; see cuda_common.h (the peer all-reduce). */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "cuda_reduce.cuh"

/* One rank's buffer: [P2P_HDR: the all-reduce's flags and counter]
 *                    [the fused call's counters u32 [ZB_P2P_ROWS]]
 *                    [the fused call's two x size slots of max 8-byte words: slot (parity, source rank)]
 *                    [the all-reduce's two slots of max floats] */
#define P2P_HDR 256                      /* bytes before the fused header */
#define P2P_COUNTER (ZB_P2P_MAX_RANKS)   /* header word: this rank's last call */
#define P2P_FHDR ((size_t)ZB_P2P_ROWS * 4)
#define P2P_DATA (P2P_HDR + P2P_FHDR)    /* bytes before the fused slots */
/* bytes before the all-reduce's slots */
__host__ __device__ static inline size_t ar_off(int size, size_t maxf) { return P2P_DATA + 2 * (size_t)size * maxf * 8; }

struct zb_cuda_p2p {
    int rank, size;
    size_t max;
    char *base[ZB_P2P_MAX_RANKS];   /* every rank's buffer (this rank's own, the peers' opened) */
    int opened[ZB_P2P_MAX_RANKS];
    int fused_c;   /* the row length of the fused calls (the first call's): block b's words are always
                    * [b C, (b + 1) C) of a slot, so no two blocks' words (and call counters) overlap */
};

typedef struct { char *base[ZB_P2P_MAX_RANKS]; } p2p_ptrs;

__global__ void k_p2p_allreduce(float *x, int n, int rank, int size, p2p_ptrs p, size_t maxf) {
    __shared__ unsigned e_s;
    volatile unsigned *hdr = (volatile unsigned *)p.base[rank];
    if (threadIdx.x == 0) e_s = hdr[P2P_COUNTER] + 1u;
    __syncthreads();
    unsigned e = e_s;
    size_t off = (e & 1u) ? maxf : 0;
    float *mine = (float *)(p.base[rank] + ar_off(size, maxf)) + off;
    for (int i = threadIdx.x; i < n; i += blockDim.x) mine[i] = x[i];
    __threadfence_system();   /* the slot before the flags (every writer fences, then the barrier) */
    __syncthreads();
    int t = threadIdx.x;
    if (t < size && t != rank) {
        ((volatile unsigned *)p.base[t])[rank] = e;   /* peer t: this rank entered call e */
        while ((int)(hdr[t] - e) < 0) {}              /* peer t entered call e */
    }
    __syncthreads();
    __threadfence_system();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < size; r++) {   /* rank order: the same sum on every rank */
            float v = r == rank ? x[i] : ((volatile const float *)(p.base[r] + ar_off(size, maxf)))[off + i];
            s = r == 0 ? v : s + v;
        }
        x[i] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) hdr[P2P_COUNTER] = e;
}

/* the GPU's nanosecond clock */
__device__ static inline unsigned long long now_ns(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define P2P_WAIT_NS 20000000000ull   /* 20 s: far beyond any skew between the ranks' steps */

__device__ static inline void st_word(unsigned long long *p, unsigned long long v) {
    asm volatile("st.volatile.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ static inline unsigned long long ld_word(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.volatile.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

/* The fused TP decode step, one block per row b (cuda_common.h, zb_cuda_p2p_add_rmsnorm), in the
 * way of NCCL's low-latency protocol: every value travels with the call's number in one 8-byte
 * word (call << 32 | the float's bits), stored into the peer's slot in one store, which a reader
 * sees whole or not at all; a reader polls each word of its own slot until it carries call e.
 * No fence, no separate flag: the data is its own signal. Block b's call counter e (this rank's
 * counters[b], device memory: a graph replay reads and advances it) picks the slot parity (two
 * suffice: a peer writes slot e + 2 only after it read this rank's words of call e + 1, which
 * this rank writes after it finished reading call e). The arithmetic after the sum is
 * k_add_rmsnorm's / k_rmsnorm_fwd's (cuda_ops.cu): the same threads, the same double sum of
 * squares, so with 2 ranks (a + b is the all-reduce's sum whatever the order) the result has the
 * bits of the all-reduce followed by add_rmsnorm. */
__global__ void k_p2p_add_rmsnorm(const float *part, float *x, float *out, const float *w, int C, float eps,
                                  int residual, int rank, int size, p2p_ptrs p, size_t maxf) {
    __shared__ unsigned e_s;
    const int b = blockIdx.x;
    volatile unsigned *count = (volatile unsigned *)(p.base[rank] + P2P_HDR);   /* [row] */
    if (threadIdx.x == 0) e_s = count[b] + 1u;
    __syncthreads();
    const unsigned e = e_s;
    const size_t par = e & 1u, row = (size_t)b * C;
    const unsigned long long tag = (unsigned long long)e << 32;
    const float *pr = part + row;
    /* this rank's row, tagged, into every peer's slot (parity, rank): remote stores, posted */
    for (int q = 0; q < size; q++) {
        if (q == rank) continue;
        unsigned long long *dst = (unsigned long long *)(p.base[q] + P2P_DATA) + (par * size + rank) * maxf + row;
        for (int i = threadIdx.x; i < C; i += blockDim.x) st_word(dst + i, tag | __float_as_uint(pr[i]));
    }
    const unsigned long long *slots = (const unsigned long long *)(p.base[rank] + P2P_DATA) + par * size * maxf + row;
    float *xr = x + row, *o = out + row;
    double ss = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < size; r++) {   /* rank order: the same sum on every rank */
            float v;
            if (r == rank) v = pr[i];
            else {
                const unsigned long long *wp = slots + (size_t)r * maxf + i;
                unsigned long long wv = ld_word(wp);
                for (unsigned spin = 0; (unsigned)(wv >> 32) != e; spin++) {
                    if ((spin & 1023u) == 1023u) {
                        unsigned long long t0 = now_ns();   /* a peer that never comes (a bug): an error, not a hang */
                        while ((unsigned)((wv = ld_word(wp)) >> 32) != e)
                            if (now_ns() - t0 > P2P_WAIT_NS) {
                                printf("zebra: peer sum: rank %d waited %d s for rank %d (row %d, call %u): stopping\n",
                                       rank, (int)(P2P_WAIT_NS / 1000000000ull), r, b, e);
                                __trap();
                            }
                        break;
                    }
                    wv = ld_word(wp);
                }
                v = __uint_as_float((unsigned)wv);
            }
            s = r == 0 ? v : s + v;
        }
        float v = residual ? xr[i] + s : s;
        xr[i] = v;
        ss += (double)v * v;
    }
    ss = zb_block_sum_d(ss);
    float rs = (float)(1.0 / sqrt(ss / C + eps));
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = w[i] * (xr[i] * rs);
    if (threadIdx.x == 0) count[b] = e;
}

extern "C" size_t zb_cuda_p2p_handle_bytes(void) { return sizeof(cudaIpcMemHandle_t); }

#define P2P_CU(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { (void)cudaGetLastError(); \
    return zb_fail(ZB_EDEVICE, "peer all-reduce: %s: %s", #call, cudaGetErrorString(e_)); } } while (0)

extern "C" int zb_cuda_p2p_new(zb_cuda_p2p **out, int rank, int size, size_t max_floats, void *handle) {
    *out = NULL;
    if (size < 2 || size > ZB_P2P_MAX_RANKS || rank < 0 || rank >= size)
        return zb_fail(ZB_EARG, "peer all-reduce: %d ranks (2..%d)", size, ZB_P2P_MAX_RANKS);
    zb_cuda_p2p *p = (zb_cuda_p2p *)calloc(1, sizeof *p);
    if (!p) return ZB_ENOMEM;
    p->rank = rank;
    p->size = size;
    p->max = max_floats;
    size_t bytes = ar_off(size, max_floats) + 2 * max_floats * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&p->base[rank], bytes);
    if (e == cudaSuccess) e = cudaMemset(p->base[rank], 0, bytes);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();   /* zeroed before any peer's flag can come */
    if (e == cudaSuccess) e = cudaIpcGetMemHandle((cudaIpcMemHandle_t *)handle, p->base[rank]);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        zb_cuda_p2p_free(p);
        return zb_fail(ZB_EDEVICE, "peer all-reduce: buffer of %zu bytes: %s", bytes, cudaGetErrorString(e));
    }
    *out = p;
    return ZB_OK;
}

extern "C" int zb_cuda_p2p_open(zb_cuda_p2p *p, const void *handles) {
    for (int r = 0; r < p->size; r++) {
        if (r == p->rank) continue;
        cudaIpcMemHandle_t h;
        memcpy(&h, (const char *)handles + (size_t)r * sizeof h, sizeof h);
        P2P_CU(cudaIpcOpenMemHandle((void **)&p->base[r], h, cudaIpcMemLazyEnablePeerAccess));
        p->opened[r] = 1;
    }
    return ZB_OK;
}

extern "C" size_t zb_cuda_p2p_max(const zb_cuda_p2p *p) { return p ? p->max : 0; }

extern "C" void zb_cuda_p2p_allreduce(zb_cuda_p2p *p, float *x, size_t n) {
    if (n == 0) return;
    p2p_ptrs ptrs;
    memcpy(ptrs.base, p->base, sizeof ptrs.base);
    k_p2p_allreduce<<<1, 1024, 0, zb_cuda_stream()>>>(x, (int)n, p->rank, p->size, ptrs, p->max);
    ZB_CUDA_LAUNCHED("peer all-reduce");
}

/* threads for a row of C: k_add_rmsnorm's count (cuda_ops.cu row_threads), at least 32 */
static unsigned row_threads(int C) {
    unsigned t = 32;
    while (t < 256 && t < (unsigned)C) t *= 2;
    return t;
}

extern "C" int zb_cuda_p2p_add_rmsnorm(zb_cuda_p2p *p, const float *part, float *x, float *out, const float *w, int N,
                                       int C, float eps, int residual) {
    if (!p || N < 1 || C < 1 || N > ZB_P2P_ROWS || (size_t)N * C > p->max || (p->fused_c && C != p->fused_c)) return 0;
    p->fused_c = C;
    p2p_ptrs ptrs;
    memcpy(ptrs.base, p->base, sizeof ptrs.base);
    k_p2p_add_rmsnorm<<<N, row_threads(C), 0, zb_cuda_stream()>>>(part, x, out, w, C, eps, residual, p->rank, p->size,
                                                                   ptrs, p->max);
    ZB_CUDA_LAUNCHED("peer sum + add_rmsnorm");
    return 1;
}

extern "C" void zb_cuda_p2p_free(zb_cuda_p2p *p) {
    if (!p) return;
    cudaStreamSynchronize(zb_cuda_stream());
    for (int r = 0; r < p->size; r++)
        if (r != p->rank && p->opened[r]) cudaIpcCloseMemHandle(p->base[r]);
    if (p->base[p->rank]) cudaFree(p->base[p->rank]);
    free(p);
}
