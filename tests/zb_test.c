#include "zb_test.h"

#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

static int n_pass, n_fail, rank;

void zb_test_init(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
}

int zb_test_finish(void) {
    int local[2] = {n_pass, n_fail}, tot[2];
    MPI_Reduce(local, tot, 2, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    int fail = 0;
    if (rank == 0) {
        printf("%d passed, %d failed\n", tot[0], tot[1]);
        fflush(stdout);
        fail = tot[1] > 0;
    }
    MPI_Bcast(&fail, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return fail ? 1 : 0;
}

int zb_check(int ok, const char *fmt, ...) {
    va_list ap;
    if (ok) n_pass++; else n_fail++;
    if (!ok || getenv("ZB_TEST_VERBOSE")) {
        printf("%s [rank %d] ", ok ? "PASS" : "FAIL", rank);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
    }
    return ok;
}

double zb_max_rel(const float *a, const float *b, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > mr) mr = fabs(b[i]);
    }
    return mr > 0 ? md / mr : md;
}

double zb_norm_rel(const float *a, const float *b, size_t n) {
    double dd = 0, rr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        dd += d * d;
        rr += (double)b[i] * b[i];
    }
    if (isnan(dd)) return INFINITY;
    return rr > 0 ? sqrt(dd / rr) : sqrt(dd);
}

double zb_max_abs_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
    }
    return md;
}

int zb_check_max_rel(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = zb_max_rel(got, ref, n);
    return zb_check(e <= tol, "%s: max|d|/max|ref| = %.3g (tol %.1g)", what, e, tol);
}

int zb_check_norm_rel(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = zb_norm_rel(got, ref, n);
    return zb_check(e <= tol, "%s: ||d||/||ref|| = %.3g (tol %.1g)", what, e, tol);
}

int zb_test_src_is_config(const char *src) {
    size_t n = strlen(src);
    return n > 5 && !strcmp(src + n - 5, ".json");
}

int zb_test_load_model(zb_model *m, const char *src) {
    if (!zb_test_src_is_config(src)) return zb_model_load(m, src);
    zb_config c;
    ZB_TRY(zb_config_load(src, &c));
    ZB_TRY(zb_model_init(m, &c));
    zb_model_init_random(m, 7, 0.08f);
    return ZB_OK;
}
