/* zb_cuda_test.c — see zb_cuda_test.h. */
#include "zb_cuda_test.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int zb_cuda_test_init(int *argc, char ***argv) {
    zb_test_init(argc, argv);
    char why[256];
    if (zb_cuda_device_count(why, sizeof why) <= 0) {
        printf("SKIP: %s\n", why);
        fflush(stdout);
        MPI_Finalize();
        return ZB_SKIP_CODE;
    }
    if (zb_cuda_init(-1) != ZB_OK) {
        printf("SKIP: %s\n", zb_errmsg());
        fflush(stdout);
        MPI_Finalize();
        return ZB_SKIP_CODE;
    }
    printf("GPU %d: %s, %d multiprocessors\n", zb_cuda_device(), zb_cuda_device_name(), zb_cuda_sm_count());
    return 0;
}

static void die(const char *what) {
    fprintf(stderr, "FATAL: %s: %s\n", what, zb_errmsg());
    exit(1);
}

void *zb_dev_bytes(const void *h, size_t bytes) {
    void *d = NULL;
    if (zb_cuda_alloc(&d, bytes, "test buffer")) die("device allocation");
    if (h && zb_cuda_upload(d, h, bytes)) die("upload");
    return d;
}

float *zb_dev_f(const float *h, size_t n) { return (float *)zb_dev_bytes(h, n * sizeof(float)); }
int *zb_dev_i(const int *h, size_t n) { return (int *)zb_dev_bytes(h, n * sizeof(int)); }

void zb_host_f(float *h, const float *d, size_t n) {
    if (zb_cuda_download(h, d, n * sizeof(float))) die("download");
}

int zb_check_bounds(const char *what, const float *got, const float *ref, const double *bound, size_t n) {
    size_t bad = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        int ok = e <= bound[i] && !isnan(got[i]) && !isnan(ref[i]);
        double ratio = bound[i] > 0 ? e / bound[i] : (e > 0 ? INFINITY : 0);
        if (isnan(e)) ratio = INFINITY;
        if (ratio > worst) worst = ratio;
        if (!ok) {
            if (bad < 20)
                printf("  MISMATCH %s [%zu]: gpu %.9g cpu %.9g |d| %.3g bound %.3g\n", what, i, got[i], ref[i], e,
                       bound[i]);
            bad++;
        }
    }
    return zb_check(bad == 0, "%s: %zu of %zu outside the bound, max |d|/bound = %.3g", what, bad, n, worst);
}

int zb_check_mag(const char *what, const float *got, const float *ref, const double *mag, double rel,
                 double abs_tol, size_t n) {
    double *b = zb_dalloc(n);
    for (size_t i = 0; i < n; i++) b[i] = rel * (mag ? mag[i] : fabs((double)ref[i])) + abs_tol;
    int r = zb_check_bounds(what, got, ref, b, n);
    free(b);
    return r;
}

void zb_fill_uniform(float *x, size_t n, float a, zb_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = a * (2.0f * zb_rng_uniform(rng) - 1.0f);
}

float *zb_falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) { fprintf(stderr, "FATAL: out of memory\n"); exit(1); }
    return p;
}

double *zb_dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) { fprintf(stderr, "FATAL: out of memory\n"); exit(1); }
    return p;
}
