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

#endif
