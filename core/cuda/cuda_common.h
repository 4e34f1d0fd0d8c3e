/* cuda_common.h — the device layer of the CUDA backend: one GPU per process (the local rank
 * picks it), one stream, the cuBLAS / cuBLASLt handles, device memory, growable scratch and
 * the precision mode. C interface (the .cu files compile as CUDA C; host code stays C11).
 *
 * Errors: functions returning int give ZB_OK or ZB_EDEVICE with a zb_fail message naming the
 * call. Kernel launchers return void like the CPU kernels of ops.h; a failed launch or library
 * call is recorded (the first one wins) and reported by the next zb_cuda_sync / download, so
 * that a step fails with one clear line instead of computing on garbage.
 *
 * The device state (stream, handles, scratch) is one struct per process, like the cuBLAS
 * handle of llm.c: a process drives exactly one GPU. */
#ifndef ZB_CUDA_COMMON_H
#define ZB_CUDA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "zb_common.h"

/* Arithmetic of the matrix products (and of the attention's products, which run on cuBLAS):
 *   F32   plain float32 (CUBLAS_COMPUTE_32F_PEDANTIC: no TF32, no reduced-precision path);
 *         the exactness mode, compared with the CPU kernels in the tests;
 *   BF16  mixed: float32 storage of weights (the master copy) and activations, bf16 operands
 *         on the tensor cores with float32 accumulation; every reduction outside the
 *         products (norms, softmax, losses, optimizer) stays float32 / double. */
typedef enum { ZB_PREC_F32 = 0, ZB_PREC_BF16 = 1 } zb_cuda_prec;

/* How BF16 feeds the tensor cores (both give bf16 operands, f32 sums):
 *   FAST    cuBLAS converts the float32 operands itself (CUBLAS_COMPUTE_32F_FAST_16BF);
 *   CONVERT (the default) the operands are rounded to bf16 by our kernel, then a bf16 GEMM; the
 *           weight operand of the linear layers is converted once and reused until the weights
 *           change (zb_cuda_weights_changed). Measured on an H200 (cluster/bench_cuda, 8192^3):
 *           FAST 397 TFLOP/s, CONVERT 582 with both conversions, bf16 inputs 761. */
typedef enum { ZB_BF16_GEMM_FAST = 0, ZB_BF16_GEMM_CONVERT = 1 } zb_cuda_bf16_gemm;

/* Devices visible to this process; 0 with the reason in why (no driver, no device). */
int zb_cuda_device_count(char *why, size_t why_len);
/* The local rank of this process on its node from the launcher's environment
 * (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, MV2_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
 * LOCAL_RANK), 0 when none is set. */
int zb_cuda_env_local_rank(void);
/* An on/off switch of a fast path: *cache (-1: not yet decided) set from the environment at the first
 * call, on unless variable `name` equals `off`; a test sets *cache itself (-1: back to the
 * environment). Returns *cache. */
int zb_cuda_env_switch(int *cache, const char *name, const char *off);
/* the opposite default: on only where NAME is "1" (a switch that is off unless asked for) */
int zb_cuda_env_opt_in(int *cache, const char *name);
/* Select device (local_rank % devices; local_rank < 0: from the environment), create the
 * stream and the handles. Idempotent. ZB_EDEVICE when there is no usable GPU. */
int zb_cuda_init(int local_rank);
void zb_cuda_shutdown(void);
int zb_cuda_ready(void);          /* 1 after a successful zb_cuda_init */
int zb_cuda_device(void);         /* the device index chosen */
const char *zb_cuda_device_name(void);
/* Multiprocessors and total memory of the device (after init). */
int zb_cuda_sm_count(void);
size_t zb_cuda_mem_total(void);
/* cudaMemGetInfo: free and total bytes of the device now. */
int zb_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);

void zb_cuda_set_precision(zb_cuda_prec p);
zb_cuda_prec zb_cuda_precision(void);
void zb_cuda_set_bf16_gemm(zb_cuda_bf16_gemm g);
zb_cuda_bf16_gemm zb_cuda_bf16_gemm_impl(void);

/* Device memory. zb_cuda_alloc zero-fills. */
int zb_cuda_alloc(void **p, size_t bytes, const char *what);
void zb_cuda_free(void *p);
/* Host <-> device (synchronous with respect to the stream: downloads wait for it). */
int zb_cuda_upload(void *dst_dev, const void *src_host, size_t bytes);
int zb_cuda_download(void *dst_host, const void *src_dev, size_t bytes);
/* Device-side, ordered on the stream. */
void zb_cuda_copy(void *dst_dev, const void *src_dev, size_t bytes);
void zb_cuda_zero(void *p_dev, size_t bytes);
/* rows x width bytes, rows dpitch / spitch bytes apart, device -> device. */
void zb_cuda_copy_2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t rows);
/* Zero `width` bytes at the start of each of `rows` rows `pitch` bytes apart. */
void zb_cuda_zero_2d(void *p_dev, size_t pitch, size_t width, size_t rows);
/* Wait for the stream; ZB_EDEVICE with the first recorded or pending error. */
int zb_cuda_sync(void);
/* The first recorded error since the last sync (ZB_OK if none); does not wait. */
int zb_cuda_status(void);

/* Scratch slots: device buffers that grow to the largest request (a free + alloc, which waits
 * for the device) and are reused; a slot's contents are valid until the next request of the
 * same slot. Distinct users take distinct slots so that nested calls never share one. */
enum { ZB_WS_GEMM_A = 0, ZB_WS_GEMM_B, ZB_WS_ATTN, ZB_WS_ATTN2, ZB_WS_LOSS, ZB_WS_PTRS, ZB_WS_MLA,
       ZB_WS_MISC, ZB_WS_SSM, ZB_WS_OPT, ZB_WS_TICKET, ZB_WS_N };
void *zb_cuda_scratch(int slot, size_t bytes);
/* the same, a new buffer set to zero (counters that the kernels using them leave at zero) */
void *zb_cuda_scratch_zeroed(int slot, size_t bytes);

/* The stream (cudaStream_t) and cuBLAS handle (cublasHandle_t) as plain pointers, for C code
 * that hands them to another module. */
void *zb_cuda_stream_handle(void);
void *zb_cuda_cublas_handle(void);

/* The weights may have changed (an optimizer step, an upload): the cached bf16 copies of weight
 * matrices are converted again at their next use. Uploads, device copies and frees call it. */
void zb_cuda_weights_changed(void);
unsigned long long zb_cuda_weights_version(void);

/* CUDA Graphs of a repeated step on the stream (backend.h step_graph): replay returns 1 when it
 * launched the graph recorded under key (and no device memory was freed or regrown since); begin
 * starts capturing (*g created); end stops, instantiates and launches it (1), or returns 0 with
 * the errors of the failed capture cleared, nothing run. */
int zb_cuda_graph_replay(void *g, long long key);
int zb_cuda_graph_begin(void **g, long long key);
int zb_cuda_graph_end(void *g, int launch);   /* launch 0: instantiated, not launched */
void zb_cuda_graph_free(void *g);
/* 1 between a graph_begin that started capturing and its graph_end: the kernels launched now are
 * a recorded decode step's (generation, the benchmark's chain), during which the weights do not
 * change (cuda_decode.cu: the GEMVs may then load their first weights before the PDL wait) */
int zb_cuda_recording(void);

/* The host reading queued results while later work runs, and step times (backend.h step_queue;
 * *q created at the first call): mark (stop 0 / 1) records an event before / after a step; time
 * waits for the marks and gives the summed seconds between each pair; fetch queues a copy of bytes
 * from src (device) into a pinned buffer and an event (at most 4 pending); wait waits for the
 * oldest fetch's event and copies its bytes to dst. */
int zb_cuda_stepq_mark(void **q, int stop);
int zb_cuda_stepq_time(void **q, double *sec);
int zb_cuda_stepq_fetch(void **q, const void *src, size_t bytes);
int zb_cuda_stepq_wait(void **q, void *dst);
void zb_cuda_stepq_free(void *q);

/* Record an error (kernel launch, library status); the first one is kept. */
void zb_cuda_note_error(const char *what, const char *file, int line);

/* The peer all-reduce (cuda_p2p.cu): a one-shot all-reduce (float32 sum) of small vectors between the GPUs of one
 * node, through CUDA IPC peer memory (NVLink): for the latency-bound all-reduces of a TP decode
 * step (2 per layer of d_model floats per token), where a NCCL call costs more than the bytes.
 *
 * Each rank owns one device buffer: a header (this rank's count of finished calls) and two sets
 * of slots (one per source rank), used by alternate calls. A call is one kernel on the stream
 * (so it can be recorded in a CUDA graph), launched with programmatic dependent launch: every
 * rank pushes its values into each peer's slot of its rank in NCCL's low-latency lines (16
 * bytes: two floats, each beside the call's tag in one 8-byte half, stored at once; no fence, no
 * flag), polls its own slots until every line carries the call's tag, and sums every rank's
 * values in rank order (the same bits on every rank). The count lives in device memory, so a
 * graph replay advances it itself. Two sets suffice: a rank entering call e + 2 has received
 * every peer's lines of call e + 1, which a peer pushes only after it finished reading call e.
 *
 * Setup in two steps, the handles exchanged by the caller (parallel/comm_nccl.c over MPI):
 * new (this rank's buffer, zeroed, and its IPC handle), then open (the peers' buffers). Every
 * rank of the group must make the same calls in the same order (like a collective). */
#define ZB_P2P_MAX_RANKS 8
#define ZB_P2P_ROWS 256   /* rows of one fused call (zb_cuda_p2p_add_rmsnorm) */

typedef struct zb_cuda_p2p zb_cuda_p2p;

/* bytes of one rank's IPC handle (what new writes into handle, what open reads per rank) */
size_t zb_cuda_p2p_handle_bytes(void);
/* rank of size (<= ZB_P2P_MAX_RANKS) in the group; vectors of up to max_floats */
int zb_cuda_p2p_new(zb_cuda_p2p **out, int rank, int size, size_t max_floats, void *handle);
/* handles: size * zb_cuda_p2p_handle_bytes(), rank r's at r */
int zb_cuda_p2p_open(zb_cuda_p2p *p, const void *handles);
size_t zb_cuda_p2p_max(const zb_cuda_p2p *p);
/* x[n] (device, n <= max) = the sum over the group, in place, on the stream */
void zb_cuda_p2p_allreduce(zb_cuda_p2p *p, float *x, size_t n);
/* The TP decode step's sum fused with the residual step and the next norm (the all-reduce then
 * add_rmsnorm, cuda_ops.h, in one kernel): for each of the N rows of C,
 *     x = (residual ? x : 0) + the sum over the group of every rank's part (in rank order),
 *     out = RMSNorm(x) * w,
 * part left as it was (part may be x when residual is 0). One block per row (a line per thread,
 * up to 1024 threads), the exchange as the all-reduce's above. A peer that never comes stops the
 * kernel after 20 s (a message and a device error), not a hang. Returns 1 when launched, 0 when
 * the call does not fit (more than ZB_P2P_ROWS rows, or N ceil(C / 2) lines beyond max_floats / 2
 * + ZB_P2P_ROWS; nothing done: the caller sums another way). Every rank must make the same calls
 * with the same N and C, like a collective; calls of any shape may follow each other. */
int zb_cuda_p2p_add_rmsnorm(zb_cuda_p2p *p, const float *part, float *x, float *out, const float *w, int N, int C,
                            float eps, int residual);
void zb_cuda_p2p_free(zb_cuda_p2p *p);

#ifdef __cplusplus
}
#endif

/* ---- for the .cu files only ------------------------------------------------------------ */
#ifdef __CUDACC__
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" cudaStream_t zb_cuda_stream(void);
extern "C" cublasHandle_t zb_cuda_cublas(void);
extern "C" cublasLtHandle_t zb_cuda_cublaslt(void);
/* the cuBLAS workspace (one buffer, set once; cuBLASLt calls on the stream share it) */
extern "C" void *zb_cuda_cublas_workspace(size_t *bytes);

/* In an int-returning function: a failed CUDA runtime call returns ZB_EDEVICE with its text. */
#define ZB_CUDA(call) do { cudaError_t zb_e_ = (call); if (zb_e_ != cudaSuccess) \
    return zb_fail(ZB_EDEVICE, "CUDA error '%s' in %s (%s:%d)", cudaGetErrorString(zb_e_), #call, __FILE__, __LINE__); } while (0)
/* After a kernel launch in a void launcher: record a launch error. */
#define ZB_CUDA_LAUNCHED(name) do { cudaError_t zb_e_ = cudaGetLastError(); if (zb_e_ != cudaSuccess) \
    zb_cuda_note_error2(name, cudaGetErrorString(zb_e_), __FILE__, __LINE__); } while (0)
/* A cuBLAS call in a void function: record a failure. */
#define ZB_CUBLAS(call) do { cublasStatus_t zb_s_ = (call); if (zb_s_ != CUBLAS_STATUS_SUCCESS) \
    zb_cuda_note_error2(#call, cublasGetStatusString(zb_s_), __FILE__, __LINE__); } while (0)
extern "C" void zb_cuda_note_error2(const char *what, const char *why, const char *file, int line);

/* Blocks of `threads` covering n items. */
static inline unsigned zb_cuda_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 1048576u ? 1048576u : b));
}
#endif

#endif
