/* cuda_common.cu — device selection, stream, handles, memory, scratch; see cuda_common.h. */
#include "cuda_common.h"

extern "C" void zb_cuda_gemm_tune_reset(void);   /* cuda_gemm.cu */

#include <cuda_profiler_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int ready, device, sm_count;
    size_t mem_total;
    char name[256];
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t cublaslt;
    void *cublas_ws;              /* cuBLAS workspace (set once, so that no call allocates) */
    zb_cuda_prec prec;
    zb_cuda_bf16_gemm bf16_gemm;
    void *ws[ZB_WS_N];
    size_t ws_bytes[ZB_WS_N];
    int err;                      /* a recorded error is pending */
    char errmsg[512];
    unsigned long long wversion;  /* bumped whenever device memory may have changed outside a kernel
                                   * that writes activations (optimizer, uploads, copies): the bf16
                                   * weight copies of cuda_gemm.cu convert again after it */
} zb_cuda_state;

/* The process's one device context (see the header: one GPU per process). */
static zb_cuda_state g_dev = {0, 0, 0, 0, {0}, 0, 0, 0, 0, ZB_PREC_F32, ZB_BF16_GEMM_CONVERT, {0}, {0}, 0, {0}, 1};

/* bumped when device memory is freed or a scratch slot moves: a recorded graph may point there */
static unsigned long long g_mem_gen = 1;

extern "C" void zb_cuda_weights_changed(void) { g_dev.wversion++; }
extern "C" unsigned long long zb_cuda_weights_version(void) { return g_dev.wversion; }

#define ZB_CUBLAS_WS_BYTES ((size_t)64 << 20)

extern "C" void zb_cuda_note_error2(const char *what, const char *why, const char *file, int line) {
    if (g_dev.err) return;
    g_dev.err = 1;
    snprintf(g_dev.errmsg, sizeof g_dev.errmsg, "%s failed: %s (%s:%d)", what, why, file, line);
}

extern "C" void zb_cuda_note_error(const char *what, const char *file, int line) {
    zb_cuda_note_error2(what, "error", file, line);
}

extern "C" int zb_cuda_device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why) snprintf(why, why_len, "no usable CUDA device (%s)", cudaGetErrorString(e));
        cudaGetLastError();   /* clear it */
        return 0;
    }
    if (n == 0 && why) snprintf(why, why_len, "no CUDA device visible");
    return n;
}

extern "C" int zb_cuda_env_switch(int *cache, const char *name, const char *off) {
    if (*cache < 0) {
        const char *e = getenv(name);
        *cache = !(e && !strcmp(e, off));
    }
    return *cache;
}

extern "C" int zb_cuda_env_opt_in(int *cache, const char *name) {
    if (*cache < 0) {
        const char *e = getenv(name);
        *cache = e && !strcmp(e, "1");
    }
    return *cache;
}

extern "C" int zb_cuda_env_local_rank(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                                 "SLURM_LOCALID", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

extern "C" int zb_cuda_init(int local_rank) {
    if (g_dev.ready) return ZB_OK;
    char why[256];
    int n = zb_cuda_device_count(why, sizeof why);
    if (n <= 0) return zb_fail(ZB_EDEVICE, "--device cuda: %s", why);
    if (local_rank < 0) local_rank = zb_cuda_env_local_rank();
    g_dev.device = local_rank % n;
    ZB_CUDA(cudaSetDevice(g_dev.device));
    /* bf16 products: CONVERT (bf16 copies of the weights, kept until they change) ran faster
     * than FAST on the H200 for the 1B training shapes (cluster/bench_cuda); ZB_CUDA_BF16_GEMM=fast
     * picks the other */
    const char *gi = getenv("ZB_CUDA_BF16_GEMM");
    g_dev.bf16_gemm = gi && !strcmp(gi, "fast") ? ZB_BF16_GEMM_FAST : ZB_BF16_GEMM_CONVERT;
    cudaDeviceProp p;
    ZB_CUDA(cudaGetDeviceProperties(&p, g_dev.device));
    snprintf(g_dev.name, sizeof g_dev.name, "%s", p.name);
    g_dev.sm_count = p.multiProcessorCount;
    g_dev.mem_total = p.totalGlobalMem;
    ZB_CUDA(cudaStreamCreateWithFlags(&g_dev.stream, cudaStreamNonBlocking));
    if (cublasCreate(&g_dev.cublas) != CUBLAS_STATUS_SUCCESS) return zb_fail(ZB_EDEVICE, "cublasCreate failed");
    if (cublasLtCreate(&g_dev.cublaslt) != CUBLAS_STATUS_SUCCESS) return zb_fail(ZB_EDEVICE, "cublasLtCreate failed");
    cublasSetStream(g_dev.cublas, g_dev.stream);
    /* exact float32 unless a call asks otherwise: no TF32 (CUBLAS_DEFAULT_MATH) */
    cublasSetMathMode(g_dev.cublas, CUBLAS_DEFAULT_MATH);
    ZB_CUDA(cudaMalloc(&g_dev.cublas_ws, ZB_CUBLAS_WS_BYTES));
    cublasSetWorkspace(g_dev.cublas, g_dev.cublas_ws, ZB_CUBLAS_WS_BYTES);
    g_dev.ready = 1;
    return ZB_OK;
}

extern "C" void zb_cuda_shutdown(void) {
    if (!g_dev.ready) return;
    cudaStreamSynchronize(g_dev.stream);
    zb_cuda_gemm_tune_reset();
    for (int i = 0; i < ZB_WS_N; i++) cudaFree(g_dev.ws[i]);
    cudaFree(g_dev.cublas_ws);
    cublasLtDestroy(g_dev.cublaslt);
    cublasDestroy(g_dev.cublas);
    cudaStreamDestroy(g_dev.stream);
    memset(&g_dev, 0, sizeof g_dev);
}

extern "C" int zb_cuda_ready(void) { return g_dev.ready; }
extern "C" int zb_cuda_device(void) { return g_dev.device; }
extern "C" const char *zb_cuda_device_name(void) { return g_dev.name; }
extern "C" int zb_cuda_sm_count(void) { return g_dev.sm_count; }
extern "C" size_t zb_cuda_mem_total(void) { return g_dev.mem_total; }
extern "C" int zb_cuda_mem_info(size_t *fr, size_t *tot) {
    *fr = *tot = 0;
    ZB_CUDA(cudaMemGetInfo(fr, tot));
    return ZB_OK;
}
extern "C" cudaStream_t zb_cuda_stream(void) { return g_dev.stream; }
extern "C" cublasHandle_t zb_cuda_cublas(void) { return g_dev.cublas; }
extern "C" cublasLtHandle_t zb_cuda_cublaslt(void) { return g_dev.cublaslt; }
extern "C" void *zb_cuda_cublas_workspace(size_t *bytes) {
    if (bytes) *bytes = g_dev.cublas_ws ? ZB_CUBLAS_WS_BYTES : 0;
    return g_dev.cublas_ws;
}
extern "C" void *zb_cuda_stream_handle(void) { return (void *)g_dev.stream; }
extern "C" void *zb_cuda_cublas_handle(void) { return (void *)g_dev.cublas; }
extern "C" void zb_cuda_set_precision(zb_cuda_prec p) { g_dev.prec = p; }
extern "C" zb_cuda_prec zb_cuda_precision(void) { return g_dev.prec; }
extern "C" void zb_cuda_set_bf16_gemm(zb_cuda_bf16_gemm g) { g_dev.bf16_gemm = g; }
extern "C" zb_cuda_bf16_gemm zb_cuda_bf16_gemm_impl(void) { return g_dev.bf16_gemm; }

extern "C" int zb_cuda_alloc(void **p, size_t bytes, const char *what) {
    *p = NULL;
    if (bytes == 0) bytes = 16;   /* a valid, distinct pointer for empty buffers */
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        *p = NULL;
        return zb_fail(ZB_EDEVICE, "out of GPU memory: %s needs %.2f GiB, %.2f of %.2f GiB free", what,
                       bytes / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0);
    }
    ZB_CUDA(cudaMemsetAsync(*p, 0, bytes, g_dev.stream));
    return ZB_OK;
}

extern "C" void zb_cuda_free(void *p) {
    if (!p) return;
    g_dev.wversion++;   /* the address may come back for other weights */
    g_mem_gen++;
    cudaStreamSynchronize(g_dev.stream);
    cudaFree(p);
}

static int pending_error(void) {
    if (g_dev.err) {
        g_dev.err = 0;
        return zb_fail(ZB_EDEVICE, "GPU: %s", g_dev.errmsg);
    }
    return ZB_OK;
}

extern "C" int zb_cuda_upload(void *dst, const void *src, size_t bytes) {
    if (!bytes) return ZB_OK;
    g_dev.wversion++;
    ZB_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_dev.stream));
    ZB_CUDA(cudaStreamSynchronize(g_dev.stream));   /* src may be freed by the caller next */
    return pending_error();
}

extern "C" int zb_cuda_download(void *dst, const void *src, size_t bytes) {
    if (!bytes) return ZB_OK;
    ZB_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_dev.stream));
    ZB_CUDA(cudaStreamSynchronize(g_dev.stream));
    return pending_error();
}

extern "C" void zb_cuda_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    g_dev.wversion++;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_dev.stream);
    if (e != cudaSuccess) zb_cuda_note_error2("cudaMemcpyAsync (device)", cudaGetErrorString(e), __FILE__, __LINE__);
}

extern "C" void zb_cuda_zero(void *p, size_t bytes) {
    if (!bytes) return;
    cudaError_t e = cudaMemsetAsync(p, 0, bytes, g_dev.stream);
    if (e != cudaSuccess) zb_cuda_note_error2("cudaMemsetAsync", cudaGetErrorString(e), __FILE__, __LINE__);
}

extern "C" void zb_cuda_copy_2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                size_t rows) {
    if (!width || !rows) return;
    g_dev.wversion++;
    cudaError_t e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, g_dev.stream);
    if (e != cudaSuccess) zb_cuda_note_error2("cudaMemcpy2DAsync", cudaGetErrorString(e), __FILE__, __LINE__);
}

extern "C" void zb_cuda_zero_2d(void *p, size_t pitch, size_t width, size_t rows) {
    if (!width || !rows) return;
    cudaError_t e = cudaMemset2DAsync(p, pitch, 0, width, rows, g_dev.stream);
    if (e != cudaSuccess) zb_cuda_note_error2("cudaMemset2DAsync", cudaGetErrorString(e), __FILE__, __LINE__);
}

extern "C" int zb_cuda_sync(void) {
    ZB_CUDA(cudaStreamSynchronize(g_dev.stream));
    ZB_CUDA(cudaGetLastError());
    return pending_error();
}

extern "C" int zb_cuda_status(void) { return pending_error(); }

extern "C" void *zb_cuda_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= ZB_WS_N) return NULL;
    if (bytes <= g_dev.ws_bytes[slot] && g_dev.ws[slot]) return g_dev.ws[slot];
    g_mem_gen++;
    cudaStreamSynchronize(g_dev.stream);   /* the old buffer may still be in use */
    cudaFree(g_dev.ws[slot]);
    g_dev.ws[slot] = NULL;
    g_dev.ws_bytes[slot] = 0;
    size_t want = bytes + bytes / 8 + 256;   /* some headroom: fewer regrowths */
    cudaError_t e = cudaMalloc(&g_dev.ws[slot], want);
    if (e != cudaSuccess) {
        g_dev.ws[slot] = NULL;
        char why[160];
        snprintf(why, sizeof why, "%s (%.2f GiB of scratch)", cudaGetErrorString(e), want / 1073741824.0);
        zb_cuda_note_error2("scratch allocation", why, __FILE__, __LINE__);
        return NULL;
    }
    g_dev.ws_bytes[slot] = want;
    return g_dev.ws[slot];
}

extern "C" void *zb_cuda_scratch_zeroed(int slot, size_t bytes) {
    void *old = slot >= 0 && slot < ZB_WS_N && bytes <= g_dev.ws_bytes[slot] ? g_dev.ws[slot] : NULL;
    void *p = zb_cuda_scratch(slot, bytes);
    if (p && p != old && cudaMemsetAsync(p, 0, g_dev.ws_bytes[slot], g_dev.stream) != cudaSuccess) {
        zb_cuda_note_error2("scratch allocation", "cudaMemset failed", __FILE__, __LINE__);
        return NULL;
    }
    return p;
}

/* ---- CUDA Graphs of a repeated step ------------------------------------------------------------ */

typedef struct {
    cudaGraphExec_t exec;
    long long key;
    unsigned long long mem_gen;
} zb_cuda_graph;

/* ZB_CUDA_PROFILE_STEP=N: the N-th replay (from 0) alone between cudaProfilerStart and Stop, the
 * stream drained before and after: one decode step for a profiler started with its capture off
 * (ncu --profile-from-start off, nsys --capture-range=cudaProfilerApi) */
static void profile_mark(int stop) {
    static long long want = -2, n = 0;
    static int on = 0;
    if (want == -2) {
        const char *e = getenv("ZB_CUDA_PROFILE_STEP");
        want = e && *e ? atoll(e) : -1;
    }
    if (!stop && want >= 0 && n++ == want) {
        cudaStreamSynchronize(g_dev.stream);
        cudaProfilerStart();
        on = 1;
    } else if (stop && on) {
        cudaStreamSynchronize(g_dev.stream);
        cudaProfilerStop();
        on = 0;
    }
}

extern "C" int zb_cuda_graph_replay(void *gp, long long key) {
    zb_cuda_graph *g = (zb_cuda_graph *)gp;
    if (!g || !g->exec || g->key != key || g->mem_gen != g_mem_gen || g_dev.err) return 0;
    profile_mark(0);
    cudaError_t e = cudaGraphLaunch(g->exec, g_dev.stream);
    if (e != cudaSuccess) zb_cuda_note_error2("cudaGraphLaunch", cudaGetErrorString(e), __FILE__, __LINE__);
    profile_mark(1);
    return 1;
}

/* a step being recorded (zb_cuda_recording): the recorded steps are generation's decode steps */
static int g_recording;
extern "C" int zb_cuda_recording(void) { return g_recording; }

extern "C" int zb_cuda_graph_begin(void **gp, long long key) {
    if (g_dev.err) return 0;   /* an error is pending: no capture on top of it */
    if (!*gp) *gp = calloc(1, sizeof(zb_cuda_graph));
    zb_cuda_graph *g = (zb_cuda_graph *)*gp;
    if (!g) return 0;
    if (g->exec) { cudaGraphExecDestroy(g->exec); g->exec = NULL; }
    cudaGetLastError();
    /* thread-local: a call that would synchronise this thread (an allocation, a download) fails
     * the capture instead of running */
    if (cudaStreamBeginCapture(g_dev.stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    g->key = key;
    g->mem_gen = g_mem_gen;
    g_recording = 1;
    return 1;
}

extern "C" int zb_cuda_graph_end(void *gp, int launch) {
    zb_cuda_graph *g = (zb_cuda_graph *)gp;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(g_dev.stream, &graph);
    g_recording = 0;
    int ok = e == cudaSuccess && graph && !g_dev.err && g && g->mem_gen == g_mem_gen;
    if (ok && cudaGraphInstantiate(&g->exec, graph, 0) != cudaSuccess) { g->exec = NULL; ok = 0; }
    if (graph) cudaGraphDestroy(graph);
    if (!ok) {   /* what the capture recorded was its own failure (nothing ran): cleared */
        cudaGetLastError();
        g_dev.err = 0;
        if (g) g->exec = NULL;
        return 0;
    }
    if (!launch) return 1;
    e = cudaGraphLaunch(g->exec, g_dev.stream);
    if (e != cudaSuccess) zb_cuda_note_error2("cudaGraphLaunch", cudaGetErrorString(e), __FILE__, __LINE__);
    return 1;
}

extern "C" void zb_cuda_graph_free(void *gp) {
    zb_cuda_graph *g = (zb_cuda_graph *)gp;
    if (!g) return;
    if (g->exec) cudaGraphExecDestroy(g->exec);
    free(g);
}

/* ---- the host reading queued results while later work runs; step times (backend.h step_queue) -- */

#define ZB_SQ_MARKS 8   /* step mark pairs in flight (a pair is read when its slot comes round again) */
#define ZB_SQ_DEPTH 4   /* fetches not yet waited for */

typedef struct {
    cudaEvent_t t0[ZB_SQ_MARKS], t1[ZB_SQ_MARKS];
    int tpend[ZB_SQ_MARKS], tn;
    double total;   /* seconds between the marks read so far */
    cudaEvent_t done[ZB_SQ_DEPTH];
    void *pin[ZB_SQ_DEPTH];   /* pinned host buffers: the copies run without the host */
    size_t cap[ZB_SQ_DEPTH], len[ZB_SQ_DEPTH];
    int head, n;
} zb_cuda_sq;

static int sq_get(void **qp, zb_cuda_sq **out) {
    zb_cuda_sq *q = (zb_cuda_sq *)*qp;
    if (!q) {
        if (!(q = (zb_cuda_sq *)calloc(1, sizeof *q))) return zb_fail(ZB_ENOMEM, "out of memory (step queue)");
        *qp = q;
        for (int i = 0; i < ZB_SQ_MARKS; i++) {
            ZB_CUDA(cudaEventCreate(&q->t0[i]));
            ZB_CUDA(cudaEventCreate(&q->t1[i]));
        }
        for (int i = 0; i < ZB_SQ_DEPTH; i++) ZB_CUDA(cudaEventCreateWithFlags(&q->done[i], cudaEventDisableTiming));
    }
    *out = q;
    return ZB_OK;
}

static int sq_read_mark(zb_cuda_sq *q, int k) {
    if (!q->tpend[k]) return ZB_OK;
    float ms = 0;
    ZB_CUDA(cudaEventSynchronize(q->t1[k]));
    ZB_CUDA(cudaEventElapsedTime(&ms, q->t0[k], q->t1[k]));
    q->total += ms * 1e-3;
    q->tpend[k] = 0;
    return ZB_OK;
}

extern "C" int zb_cuda_stepq_mark(void **qp, int stop) {
    zb_cuda_sq *q = NULL;
    ZB_TRY(sq_get(qp, &q));
    int k = q->tn % ZB_SQ_MARKS;
    if (!stop) {
        ZB_TRY(sq_read_mark(q, k));   /* eight steps ago: long done in a pipelined loop */
        ZB_CUDA(cudaEventRecord(q->t0[k], g_dev.stream));
    } else {
        ZB_CUDA(cudaEventRecord(q->t1[k], g_dev.stream));
        q->tpend[k] = 1;
        q->tn++;
    }
    return ZB_OK;
}

extern "C" int zb_cuda_stepq_time(void **qp, double *sec) {
    zb_cuda_sq *q = NULL;
    ZB_TRY(sq_get(qp, &q));
    for (int k = 0; k < ZB_SQ_MARKS; k++) ZB_TRY(sq_read_mark(q, k));
    *sec = q->total;
    return ZB_OK;
}

extern "C" int zb_cuda_stepq_fetch(void **qp, const void *src, size_t bytes) {
    zb_cuda_sq *q = NULL;
    ZB_TRY(sq_get(qp, &q));
    if (q->n == ZB_SQ_DEPTH) return zb_fail(ZB_EARG, "step queue: %d fetches pending", q->n);
    int k = (q->head + q->n) % ZB_SQ_DEPTH;
    if (bytes > q->cap[k]) {   /* grows once (pinned allocations are slow) */
        if (q->pin[k]) ZB_CUDA(cudaFreeHost(q->pin[k]));
        q->pin[k] = NULL;
        q->cap[k] = 0;
        ZB_CUDA(cudaMallocHost(&q->pin[k], bytes < 4096 ? 4096 : bytes));
        q->cap[k] = bytes < 4096 ? 4096 : bytes;
    }
    if (bytes) ZB_CUDA(cudaMemcpyAsync(q->pin[k], src, bytes, cudaMemcpyDeviceToHost, g_dev.stream));
    ZB_CUDA(cudaEventRecord(q->done[k], g_dev.stream));
    q->len[k] = bytes;
    q->n++;
    return ZB_OK;
}

extern "C" int zb_cuda_stepq_wait(void **qp, void *dst) {
    zb_cuda_sq *q = NULL;
    ZB_TRY(sq_get(qp, &q));
    if (!q->n) return zb_fail(ZB_EARG, "step queue: nothing fetched");
    int k = q->head;
    ZB_CUDA(cudaEventSynchronize(q->done[k]));
    if (q->len[k]) memcpy(dst, q->pin[k], q->len[k]);
    q->head = (k + 1) % ZB_SQ_DEPTH;
    q->n--;
    return pending_error();
}

extern "C" void zb_cuda_stepq_free(void *qp) {
    zb_cuda_sq *q = (zb_cuda_sq *)qp;
    if (!q) return;
    cudaStreamSynchronize(g_dev.stream);   /* no copy into a buffer being freed */
    for (int i = 0; i < ZB_SQ_MARKS; i++) {
        if (q->t0[i]) cudaEventDestroy(q->t0[i]);
        if (q->t1[i]) cudaEventDestroy(q->t1[i]);
    }
    for (int i = 0; i < ZB_SQ_DEPTH; i++) {
        if (q->done[i]) cudaEventDestroy(q->done[i]);
        if (q->pin[i]) cudaFreeHost(q->pin[i]);
    }
    free(q);
}
