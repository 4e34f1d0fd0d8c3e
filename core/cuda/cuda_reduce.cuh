/* cuda_reduce.cuh — block-wide sums and maxima shared by the row kernels (CUDA C). */
#ifndef ZB_CUDA_REDUCE_CUH
#define ZB_CUDA_REDUCE_CUH

#include <math.h>

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it. Uses
 * 32 slots of shared memory; calls __syncthreads, so every thread of the block must call it. */
__device__ static inline double zb_block_sum_d(double v) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();   /* the slots may still be read by a previous call */
    if (lane == 0) part[w] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline float zb_block_max_f(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) part[w] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
