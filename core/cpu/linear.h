/* linear.h — the CPU backend's linear layers whose weights are stored in float32 or bfloat16
 * (inference).
 *
 * A weight matrix is passed as a tagged view zb_wt (backend.h): exactly one of f32 / bf16 is set. The
 * float32 path is zb_matmul_forward (OpenBLAS). The bf16 path halves the bytes read per
 * decode step (decode is bound by memory bandwidth: every weight is read once per token)
 * and accumulates in float32:
 *   N <= ZB_BF16_DIRECT_MAX_N (decode, batched decode, short prefill)  the weights are widened
 *        to f32 in registers (a 16-bit shift, exact) and multiplied with FMAs by a 4-row x
 *        4-input register-blocked micro-kernel; each weight row comes from memory once for
 *        all N inputs, blocks of output rows run on OpenMP threads (no BLAS call, so no
 *        second thread pool wakes up). Kernels: AVX-512F, AVX2+FMA, plain C; chosen at run
 *        time. The result is an f32 dot product up to the order of the f32 additions.
 *   N > ZB_BF16_DIRECT_MAX_N (long prefill)  tiles of rows are converted to f32 (OpenMP), then
 *        OpenBLAS sgemm runs on each tile (BLAS is never called inside an OpenMP region). */
#ifndef ZB_LINEAR_H
#define ZB_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"   /* zb_wt */
#include "zb_common.h"

#define ZB_BF16_DIRECT_MAX_N 64

/* out[N,OC] = inp[N,C] @ W[OC,C]^T, float32 accumulation. Overwrites out. */
void zb_linear_forward(float *out, const float *inp, zb_wt W, int N, int C, int OC);

/* The bf16 kernels, selectable (tests compare each to sgemm). */
typedef enum { ZB_BF16_AUTO = 0, ZB_BF16_SCALAR, ZB_BF16_AVX2, ZB_BF16_AVX512 } zb_bf16_impl;
/* 1 if this CPU (and this build) can run impl. */
int zb_bf16_impl_available(zb_bf16_impl impl);
/* The kernel AUTO picks here ("avx512", "avx2", "scalar"). */
const char *zb_bf16_impl_name(zb_bf16_impl impl);
void zb_linear_bf16(float *out, const float *inp, const uint16_t *W, int N, int C, int OC, zb_bf16_impl impl);

/* 1 when OpenBLAS is its OpenMP build (CMakeLists.txt prefers it): BLAS calls then run on
 * the same libgomp threads as our kernels (one pool), and inside our parallel regions on one
 * thread; 0 for the pthreads build (a second pool, which must not run beside OpenMP regions). */
int zb_blas_uses_openmp(void);

/* OpenMP threads used by the bf16 kernels (1 without OpenMP). */
int zb_linear_threads(void);
void zb_linear_set_threads(int n);

#endif
