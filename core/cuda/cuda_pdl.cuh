/* cuda_pdl.cuh — programmatic dependent launch (sm_90) inside kernels. A kernel launched with
 * cudaLaunchAttributeProgrammaticStreamSerialization (the decode GEMVs, cuda_decode.cu) may start
 * while the kernel before it still runs, once every block of that kernel has called pdl_launch()
 * (or exited); it must call pdl_wait() before it reads anything the kernel before wrote (or writes
 * anything that kernel reads): that waits for the kernel to finish and its writes to be visible.
 * Both are no-ops for a kernel launched without the attribute, and below sm_90. */
#ifndef ZB_CUDA_PDL_CUH
#define ZB_CUDA_PDL_CUH

__device__ static inline void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ static inline void pdl_launch(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* launch kernel<<<grid, block, smem, st>>>(args...) with the PDL attribute while zb_cuda_dec_pdl()
 * (cuda_ops.h; ZB_DEC_PDL=0 turns it off) on a created stream, plainly otherwise (the legacy and
 * per-thread default streams, where the attribute is not meant). The kernel must call pdl_wait()
 * before it touches what the kernel before it writes or reads. A launch the runtime refuses with
 * the attribute is made again without it, and PDL is off from then on (one line on stderr). */
#include <stdio.h>
#include <utility>
template <typename... KArgs, typename... Args>
static inline cudaError_t pdl_go(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                                 Args &&...args) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1] = {};
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = st && st != cudaStreamLegacy && st != cudaStreamPerThread && zb_cuda_dec_pdl() ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
    if (e != cudaSuccess && cfg.numAttrs) {
        (void)cudaGetLastError();
        fprintf(stderr, "zebra: a launch with programmatic dependent launch failed (%s): PDL off (ZB_DEC_PDL=0)\n",
                cudaGetErrorString(e));
        zb_cuda_dec_pdl_set(0);
        cfg.numAttrs = 0;
        e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    }
    return e;
}

#endif
