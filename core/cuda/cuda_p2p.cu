/* cuda_p2p.cu — the one-shot peer-memory all-reduce and the fused TP decode sum + residual +
 * RMSNorm; see cuda_common.h (the peer all-reduce).
 *
 * Why this shape (the earlier versions measured slower than NCCL, 16.4 us per fused call against
 * 13.6 for NCCL + add_rmsnorm on 2 H200s, S5R2): a 16 KB sum between two GPUs is pure latency, so
 *   - no fence and no separate flag: NCCL's low-latency lines (16 bytes: two floats, each beside
 *     the call's tag in one 8-byte half; an 8-byte store arrives whole), pushed into the peer's
 *     memory with one 16-byte store per line (posted writes: one NVLink crossing, no round trip),
 *     and polled in this rank's own memory;
 *   - many lines in flight per thread and many threads per row (one line per 1-2 threads, not 16
 *     dependent polls per thread of one 256-thread block, nor remote loads);
 *   - launched with programmatic dependent launch: the kernel is resident before the GEMV ahead of
 *     it ends, and the GEMV after it starts (its weight prefetch) while this one waits for the peer;
 *   - one call counter for all of a rank's calls (a graph replay advances it on the device), so
 *     any shape of call follows any other (no per-row counters, no fixed row length). */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "cuda_ops.h"
#include "cuda_pdl.cuh"
#include "cuda_reduce.cuh"

/* One rank's buffer: [header: P2P_HDR bytes]
 *                    [lines: parity (2) x source rank (size) x lines per slot, 16 bytes each] */
#define P2P_HDR 256
typedef struct {
    unsigned long long calls;   /* calls this rank has finished (all kernels of the group share it) */
    unsigned arrived;           /* blocks of the running call that are done (the last one advances calls) */
} p2p_hdr;

struct zb_cuda_p2p {
    int rank, size;
    size_t max;     /* floats of one all-reduce */
    size_t lines;   /* 16-byte lines per slot: max / 2 plus one per row for odd rows */
    char *base[ZB_P2P_MAX_RANKS];   /* every rank's buffer (this rank's own, the peers' opened) */
    int opened[ZB_P2P_MAX_RANKS];
};

/* every rank's buffer, a kernel parameter read in place (__grid_constant__: indexed by rank
 * without a copy to local memory) */
typedef struct { char *base[ZB_P2P_MAX_RANKS]; } p2p_ptrs;

/* the GPU's nanosecond clock */
__device__ static inline unsigned long long now_ns(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define P2P_WAIT_NS 20000000000ull   /* 20 s: far beyond any skew between the ranks' steps */

__device__ static inline void st_line(uint4 *p, uint4 v) {
    asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
__device__ static inline uint4 ld_line(const uint4 *p) {
    uint4 v;
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

/* the tag of call e: never 0 (the zeroed buffer), and consecutive calls differ */
__device__ static inline unsigned call_tag(unsigned long long e) { return (unsigned)(e % 0xFFFFFFFFull) + 1u; }

/* The call's number, read by every thread after pdl_wait (the call before, on this stream, has
 * finished: its count is visible); the same for every thread of the call: it only moves in
 * p2p_done, after every thread has read it (no barrier here: the loads that follow overlap). */
__device__ static inline unsigned long long p2p_call(const char *mine) {
    return ((volatile const p2p_hdr *)mine)->calls + 1ull;
}

/* the last block of the call to finish advances this rank's count (every thread has read it) */
__device__ static inline void p2p_done(char *mine, unsigned long long e) {
    __syncthreads();
    if (threadIdx.x == 0) {
        p2p_hdr *h = (p2p_hdr *)mine;
        if (gridDim.x == 1 || atomicAdd(&h->arrived, 1u) == gridDim.x - 1) {   /* one block: no atomic */
            h->arrived = 0;
            ((volatile p2p_hdr *)h)->calls = e;
        }
    }
}

/* rank q's slot (parity of e, source rank src) in q's buffer */
__device__ static inline uint4 *p2p_slot(const p2p_ptrs &p, int q, int size, size_t lines, unsigned long long e,
                                         int src) {
    return (uint4 *)(p.base[q] + P2P_HDR) + ((size_t)(e & 1ull) * size + src) * lines;
}

/* line j of the values v0 (and v1 when it exists), tagged, into every peer's slot of this rank */
__device__ static inline void push_line(const p2p_ptrs &p, int rank, int size, size_t lines, unsigned long long e,
                                        size_t j, float v0, float v1) {
    unsigned tag = call_tag(e);
    uint4 w = make_uint4(__float_as_uint(v0), tag, __float_as_uint(v1), tag);
    for (int q = 0; q < size; q++)
        if (q != rank) st_line(p2p_slot(p, q, size, lines, e, rank) + j, w);
}

/* wait until line *l carries call e's tag in both halves (a peer that never comes: a message and
 * a device error after 20 s, not a hang) */
__device__ static inline float2 poll_line(const uint4 *l, unsigned long long e, int rank, int src) {
    unsigned tag = call_tag(e);
    uint4 v = ld_line(l);
    for (unsigned spin = 0; v.y != tag || v.w != tag; spin++) {
        if (spin == 4096u) {
            unsigned long long t0 = now_ns();
            while ((v = ld_line(l)).y != tag || v.w != tag)
                if (now_ns() - t0 > P2P_WAIT_NS) {
                    printf("zebra: peer sum: rank %d waited %d s for rank %d (call %llu): stopping\n", rank,
                           (int)(P2P_WAIT_NS / 1000000000ull), src, e);
                    __trap();
                }
            break;
        }
        v = ld_line(l);
    }
    return make_float2(__uint_as_float(v.x), __uint_as_float(v.z));
}

/* the sum of line j over the ranks, in rank order (the same bits on every rank); (a0, a1) this rank's */
__device__ static inline float2 sum_line(const p2p_ptrs &p, int rank, int size, size_t lines, unsigned long long e,
                                         size_t j, float a0, float a1) {
    float2 s = make_float2(0.0f, 0.0f);
    for (int r = 0; r < size; r++) {
        float2 v = r == rank ? make_float2(a0, a1) : poll_line(p2p_slot(p, rank, size, lines, e, r) + j, e, rank, r);
        if (r == 0) s = v;
        else { s.x += v.x; s.y += v.y; }
    }
    return s;
}

/* x[n] = the sum over the group, in place: line j holds x[2j], x[2j + 1]; a grid-stride loop */
__global__ void __launch_bounds__(256) k_p2p_allreduce(float *x, size_t n, int rank, int size,
                                                       const __grid_constant__ p2p_ptrs p, size_t lines) {
    pdl_launch();
    pdl_wait();
    char *mine = p.base[rank];
    const unsigned long long e = p2p_call(mine);
    const size_t L = (n + 1) / 2, step = (size_t)gridDim.x * blockDim.x;
    const size_t j0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t j = j0; j < L; j += step) {
        size_t i = 2 * j;
        push_line(p, rank, size, lines, e, j, x[i], i + 1 < n ? x[i + 1] : 0.0f);
    }
    for (size_t j = j0; j < L; j += step) {
        size_t i = 2 * j;
        float a0 = x[i], a1 = i + 1 < n ? x[i + 1] : 0.0f;   /* loaded before the poll waits */
        float2 s = sum_line(p, rank, size, lines, e, j, a0, a1);
        x[i] = s.x;
        if (i + 1 < n) x[i + 1] = s.y;
    }
    p2p_done(mine, e);
}

/* The fused TP decode step (cuda_common.h, zb_cuda_p2p_add_rmsnorm): block b = row b, its lines at
 * b * ceil(C / 2) of the slots. The arithmetic after the sum is k_add_rmsnorm's / k_rmsnorm_fwd's
 * (cuda_ops.cu): x = x + s, the sum of squares in double over the block, rs rounded once, then
 * w * (x * rs). part may be x (no residual): each thread reads its part values before it writes
 * the same places of x. */
__global__ void __launch_bounds__(1024) k_p2p_add_rmsnorm(const float *part, float *x, float *out, const float *w, int C,
                                                          float eps, int residual, int rank, int size,
                                                          const __grid_constant__ p2p_ptrs p, size_t lines) {
    pdl_launch();
    pdl_wait();
    char *mine = p.base[rank];
    const unsigned long long e = p2p_call(mine);
    const int b = blockIdx.x, LR = (C + 1) / 2;
    const size_t row = (size_t)b * C, l0 = (size_t)b * LR;
    const float *pr = part + row;
    float *xr = x + row, *o = out + row;
    for (int j = threadIdx.x; j < LR; j += blockDim.x) {
        int i = 2 * j;
        push_line(p, rank, size, lines, e, l0 + j, pr[i], i + 1 < C ? pr[i + 1] : 0.0f);
    }
    double ss = 0;
    for (int j = threadIdx.x; j < LR; j += blockDim.x) {
        int i = 2 * j;
        const bool two = i + 1 < C;
        float a0 = pr[i], a1 = two ? pr[i + 1] : 0.0f;   /* loaded before the poll waits */
        float r0 = residual ? xr[i] : 0.0f, r1 = residual && two ? xr[i + 1] : 0.0f;
        float2 s = sum_line(p, rank, size, lines, e, l0 + j, a0, a1);
        float v0 = residual ? r0 + s.x : s.x;
        xr[i] = v0;
        ss += (double)v0 * v0;
        if (two) {
            float v1 = residual ? r1 + s.y : s.y;
            xr[i + 1] = v1;
            ss += (double)v1 * v1;
        }
    }
    ss = zb_block_sum_d(ss);
    float rs = (float)(1.0 / sqrt(ss / C + eps));
    for (int j = threadIdx.x; j < LR; j += blockDim.x) {   /* this thread's own x values: no barrier needed */
        int i = 2 * j;
        o[i] = w[i] * (xr[i] * rs);
        if (i + 1 < C) o[i + 1] = w[i + 1] * (xr[i + 1] * rs);
    }
    p2p_done(mine, e);
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
    p->lines = (max_floats + 1) / 2 + ZB_P2P_ROWS;
    size_t bytes = P2P_HDR + 2 * (size_t)size * p->lines * sizeof(uint4);
    cudaError_t e = cudaMalloc((void **)&p->base[rank], bytes);
    if (e == cudaSuccess) e = cudaMemset(p->base[rank], 0, bytes);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();   /* zeroed before any peer's line can come */
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
    size_t L = (n + 1) / 2, blocks = (L + 255) / 256;   /* a line per thread, at most 128 blocks */
    if (blocks > 128) blocks = 128;
    pdl_go(k_p2p_allreduce, dim3((unsigned)blocks), dim3(256), 0, zb_cuda_stream(), x, n, p->rank, p->size, ptrs,
           p->lines);
    ZB_CUDA_LAUNCHED("peer all-reduce");
}

/* threads for a row of C: a line (two values) per thread up to 1024 threads */
static unsigned line_threads(int C) {
    unsigned lr = (unsigned)(C + 1) / 2, t = 32;
    while (t < 1024 && t < lr) t *= 2;
    return t;
}

extern "C" int zb_cuda_p2p_add_rmsnorm(zb_cuda_p2p *p, const float *part, float *x, float *out, const float *w, int N,
                                       int C, float eps, int residual) {
    if (!p || N < 1 || C < 1 || N > ZB_P2P_ROWS || (size_t)N * (size_t)((C + 1) / 2) > p->lines) return 0;
    p2p_ptrs ptrs;
    memcpy(ptrs.base, p->base, sizeof ptrs.base);
    pdl_go(k_p2p_add_rmsnorm, dim3(N), dim3(line_threads(C)), 0, zb_cuda_stream(), part, x, out, w, C, eps, residual,
           p->rank, p->size, ptrs, p->lines);
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
