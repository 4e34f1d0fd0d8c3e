/* zb_test.h — the few helpers every test binary uses: checks that count, comparisons with
 * the metrics the issues name, and a closing "N passed, N failed" line (ctest reads the exit
 * code). Tests run under MPI (also with one rank), so zb_test_init calls MPI_Init. */
#ifndef ZB_TEST_H
#define ZB_TEST_H

#include <stddef.h>
#include <stdio.h>

#include "model.h"

void zb_test_init(int *argc, char ***argv);
/* Prints "N passed, N failed" on rank 0, finalizes MPI; returns the process exit code. */
int zb_test_finish(void);
/* Record one check; prints FAIL lines (and PASS lines when ZB_TEST_VERBOSE is set). */
int zb_check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* max|a-b| / max|b| */
double zb_max_rel(const float *a, const float *b, size_t n);
/* ||a-b||_2 / ||b||_2 */
double zb_norm_rel(const float *a, const float *b, size_t n);
double zb_max_abs_diff(const float *a, const float *b, size_t n);
/* Checks with a printed measurement: "what: metric=... (tol ...)". */
int zb_check_max_rel(const char *what, const float *got, const float *ref, size_t n, double tol);
int zb_check_norm_rel(const char *what, const float *got, const float *ref, size_t n, double tol);

/* Fail the test binary with the current zb_errmsg() if rc != 0. */
#define ZB_TEST_OK(expr) do { int rc_ = (expr); if (rc_) { \
    fprintf(stderr, "FATAL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #expr, rc_, zb_errmsg()); \
    zb_check(0, "%s", #expr); return zb_test_finish(); } } while (0)

/* A test model source: an HF directory or .h5 (loaded), or a config .json (random weights,
 * seed 7, std 0.08). zb_test_src_is_config: 1 for the .json form. */
int zb_test_src_is_config(const char *src);
int zb_test_load_model(zb_model *m, const char *src);

#endif
