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

static int f32_or_bf16(const char *cmd, const char *flag, const char *v, int *bf16) {
    if (strcmp(v, "f32") && strcmp(v, "bf16"))
        return zb_fail(ZB_EARG, "%s: %s must be f32 or bf16, not '%s'", cmd, flag, v);
    *bf16 = !strcmp(v, "bf16");
    return ZB_OK;
}

int zb_device_args_parse(int argc, char **argv, const char *cmd, int cache_bf16_default, zb_device_args *d) {
    const char *dev = zb_arg_str(argc, argv, "--device", "cpu");
    d->gpu = !strcmp(dev, "cuda");
    if (!d->gpu && strcmp(dev, "cpu")) return zb_fail(ZB_EARG, "%s: --device must be cpu or cuda, not '%s'", cmd, dev);
    ZB_TRY(f32_or_bf16(cmd, "--precision", zb_arg_str(argc, argv, "--precision", d->gpu ? "bf16" : "f32"), &d->bf16));
    ZB_TRY(f32_or_bf16(cmd, "--cache", zb_arg_str(argc, argv, "--cache", d->gpu && cache_bf16_default ? "bf16" : "f32"),
                       &d->cache_bf16));
    if (!d->gpu && (d->bf16 || d->cache_bf16))
        return zb_fail(ZB_EARG, "%s: --precision bf16 and --cache bf16 need --device cuda (the CPU computes in float32)",
                       cmd);
    return ZB_OK;
}

int zb_device_backend(const zb_device_args *d, zb_wdtype wt, const char *cmd, zb_backend *out) {
    if (!d->gpu) { *out = zb_infer_backend(wt); return ZB_OK; }
    const zb_backend *b = zb_backend_get("cuda");   /* this process's GPU: its local rank picks it */
    if (!b) return zb_fail_prefix(ZB_EDEVICE, cmd);  /* zb_backend_get said why */
    *out = *b;
    out->opts.gpu_bf16 = d->bf16;
    out->opts.cache_bf16 = d->cache_bf16;
    return ZB_OK;
}

int zb_backend_from_args(int argc, char **argv, const char *cmd, zb_wdtype wt, zb_backend *out) {
    zb_device_args d;
    ZB_TRY(zb_device_args_parse(argc, argv, cmd, 1, &d));
    return zb_device_backend(&d, wt, cmd, out);
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
