/* cuda_p2p.cu — the one-shot peer-memory all-reduce; see cuda_common.h (the peer all-reduce). */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"

#define P2P_HDR 256                      /* bytes before the data slots */
#define P2P_COUNTER (ZB_P2P_MAX_RANKS)   /* header word: this rank's last call */

struct zb_cuda_p2p {
    int rank, size;
    size_t max;
    char *base[ZB_P2P_MAX_RANKS];   /* every rank's buffer (this rank's own, the peers' opened) */
    int opened[ZB_P2P_MAX_RANKS];
};

typedef struct { char *base[ZB_P2P_MAX_RANKS]; } p2p_ptrs;

__global__ void k_p2p_allreduce(float *x, int n, int rank, int size, p2p_ptrs p, size_t maxf) {
    __shared__ unsigned e_s;
    volatile unsigned *hdr = (volatile unsigned *)p.base[rank];
    if (threadIdx.x == 0) e_s = hdr[P2P_COUNTER] + 1u;
    __syncthreads();
    unsigned e = e_s;
    size_t off = (e & 1u) ? maxf : 0;
    float *mine = (float *)(p.base[rank] + P2P_HDR) + off;
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
            float v = r == rank ? x[i] : ((volatile const float *)(p.base[r] + P2P_HDR))[off + i];
            s = r == 0 ? v : s + v;
        }
        x[i] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) hdr[P2P_COUNTER] = e;
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
    size_t bytes = P2P_HDR + 2 * max_floats * sizeof(float);
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

extern "C" void zb_cuda_p2p_free(zb_cuda_p2p *p) {
    if (!p) return;
    cudaStreamSynchronize(zb_cuda_stream());
    for (int r = 0; r < p->size; r++)
        if (r != p->rank && p->opened[r]) cudaIpcCloseMemHandle(p->base[r]);
    if (p->base[p->rank]) cudaFree(p->base[p->rank]);
    free(p);
}
