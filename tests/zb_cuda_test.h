/* zb_cuda_test.h — what the GPU tests share: skip without a device (exit code 77, which ctest
 * reports as skipped), device buffers from host arrays, and elementwise comparisons against a
 * bound derived per element, printing every mismatch (index, both values, the bound). */
#ifndef ZB_CUDA_TEST_H
#define ZB_CUDA_TEST_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_ops.h"
#include "zb_test.h"

#define ZB_SKIP_CODE 77
/* bf16 unit roundoff (2^-9); float32's, ZB_U32, is zb_test.h's */
#define ZB_U16 1.953125e-3

/* MPI init, then the device: returns 0 when the GPU is ready, ZB_SKIP_CODE after printing
 * "SKIP: <reason>" (and finalizing MPI) when there is none: `if ((rc = ...)) return rc;`. */
int zb_cuda_test_init(int *argc, char ***argv);

/* Device copies of host arrays (the test aborts on failure). */
float *zb_dev_f(const float *h, size_t n);
int *zb_dev_i(const int *h, size_t n);
void *zb_dev_bytes(const void *h, size_t bytes);
void zb_host_f(float *h, const float *d, size_t n);   /* download (aborts with the error on failure) */

/* |got[i] - ref[i]| <= bound[i] for all i (NaN fails): one check; prints every mismatch up to 20
 * and their count, and the largest error / bound. */
int zb_check_bounds(const char *what, const float *got, const float *ref, const double *bound, size_t n);
/* The same with bound[i] = rel * mag[i] + abs_tol (mag may be NULL: |ref[i]|). */
int zb_check_mag(const char *what, const float *got, const float *ref, const double *mag, double rel,
                 double abs_tol, size_t n);
/* Host helpers: n uniform values in [-a, a) from rng; |x| into a new array. */
void zb_fill_uniform(float *x, size_t n, float a, zb_rng *rng);
float *zb_falloc(size_t n);
double *zb_dalloc(size_t n);

#endif
