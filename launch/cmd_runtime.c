/* cmd_runtime.c — process-level helpers of the inference commands: thread counts for the
 * bf16 kernels under MPI, and the resident-memory high-water mark for the final stats. */
#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "commands.h"
#include "zb_common.h"
#include "linear.h"

int zb_threads_auto(MPI_Comm comm) {
    /* OMP_NUM_THREADS wins. When OpenBLAS is its OpenMP build it follows OpenMP's count and
     * ignores OPENBLAS_NUM_THREADS, so that variable (one core per rank in tests, the demo and
     * cluster/scaling.sh) sets the one pool. Otherwise the node's cores shared by its ranks,
     * so that `mpirun -n 2` on 2 cores runs 1 thread per rank instead of 4 threads fighting. */
    if (!getenv("OMP_NUM_THREADS")) {
        const char *ob = getenv("OPENBLAS_NUM_THREADS");
        long nt = 0;
        /* a malformed value is ignored here (OpenBLAS ignores it too): the default pool */
        if (ob && zb_blas_uses_openmp() && zb_parse_long(ob, "OPENBLAS_NUM_THREADS", 1, 1 << 16, &nt) == ZB_OK) {
            zb_linear_set_threads((int)nt);
            return zb_linear_threads();
        }
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int local = 1;
        MPI_Comm node;
        if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
            MPI_Comm_size(node, &local);
            MPI_Comm_free(&node);
        }
        long n = cores > 0 ? cores / local : 1;
        zb_linear_set_threads(n < 1 ? 1 : (int)n);
    }
    return zb_linear_threads();
}

void zb_blas_check_core(int rank) {
    /* OpenBLAS builds older than the CPU fall back to an SSE3 core (Debian 12's 0.3.21 picks
     * "Prescott" on Sapphire Rapids): its sgemm then runs at a fifth of the AVX-512 one. No
     * warning when the user chose the core (OPENBLAS_CORETYPE set): they know. */
    const char *core = openblas_get_corename();
    const char *chosen = getenv("OPENBLAS_CORETYPE");
    if (chosen && *chosen) return;
    if (rank == 0 && core && !strcasecmp(core, "Prescott") && __builtin_cpu_supports("avx2"))
        fprintf(stderr, "zebra: warning: OpenBLAS chose its generic core (%s) on a CPU with %s; set "
                        "OPENBLAS_CORETYPE=%s for its fast kernels\n", core,
                __builtin_cpu_supports("avx512f") ? "AVX-512" : "AVX2",
                __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell");
}

zb_backend zb_infer_backend(zb_wdtype wt) {
    zb_backend be = *zb_backend_cpu();
    be.opts.decode_omp = wt == ZB_WEIGHTS_BF16 || zb_blas_uses_openmp();
    return be;
}

int zb_backend_from_args(int argc, char **argv, zb_wdtype wt, zb_backend *out) {
    const char *dev = zb_arg_str(argc, argv, "--device", "cpu");
    int gpu = !strcmp(dev, "cuda");
    if (!gpu && strcmp(dev, "cpu")) return zb_fail(ZB_EARG, "--device must be cpu or cuda, not '%s'", dev);
    const char *prec = zb_arg_str(argc, argv, "--precision", gpu ? "bf16" : "f32");
    const char *cache = zb_arg_str(argc, argv, "--cache", gpu ? "bf16" : "f32");
    if (strcmp(prec, "f32") && strcmp(prec, "bf16"))
        return zb_fail(ZB_EARG, "--precision must be f32 or bf16, not '%s'", prec);
    if (strcmp(cache, "f32") && strcmp(cache, "bf16"))
        return zb_fail(ZB_EARG, "--cache must be f32 or bf16, not '%s'", cache);
    if (!gpu && (!strcmp(prec, "bf16") || !strcmp(cache, "bf16")))
        return zb_fail(ZB_EARG, "--precision bf16 and --cache bf16 need --device cuda (the CPU computes in float32)");
    if (!gpu) { *out = zb_infer_backend(wt); return ZB_OK; }
    const zb_backend *b = zb_backend_get("cuda");   /* this process's GPU: its local rank picks it */
    if (!b) return ZB_EDEVICE;   /* zb_backend_get said why */
    *out = *b;
    out->opts.gpu_bf16 = !strcmp(prec, "bf16");
    out->opts.cache_bf16 = !strcmp(cache, "bf16");
    return ZB_OK;
}

long zb_vm_hwm_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) { kb = strtol(line + 6, NULL, 10); break; }
    fclose(f);
    return kb;
}
