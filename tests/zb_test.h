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
/* max over i of |a_i - b_i| / (scale mag_i): <= 1 within a per-element bound scale * mag */
double zb_bound_ratio(const float *a, const float *b, const float *mag, size_t n, double scale);
/* Checks with a printed measurement: "what: metric=... (tol ...)". */
int zb_check_max_rel(const char *what, const float *got, const float *ref, size_t n, double tol);
int zb_check_norm_rel(const char *what, const float *got, const float *ref, size_t n, double tol);

/* ---- float32 error bounds ------------------------------------------------------------------
 * Two float32 evaluations of one formula that differ only in the order of their operations
 * (another rank count, another OpenBLAS kernel, PyTorch) differ by rounding alone. Every
 * comparison bound of the tests is derived from that, never a constant picked on one CPU:
 *  - u = 2^-24: fl(x op y) = (x op y)(1 + d), |d| <= u (IEEE round to nearest).
 *  - one sum / dot product of n terms, in any order: |fl - exact| <= gamma(n-1) sum|terms|,
 *    gamma(n) = n u / (1 - n u) (Higham, Accuracy and Stability of Numerical Algorithms,
 *    2nd ed., eq. (3.4), (3.5)); two orders differ by at most twice that (zb_gamma32).
 *  - many reductions (a layer, a whole model), to first order: the error of a result is a
 *    sum of independent bounded rounding errors, one per operation on its path, each at most
 *    u times the magnitude of the terms it rounds (Higham & Mary, "A new approach to
 *    probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019: errors of mean
 *    zero, independent). With every term bounded by the magnitude M of the summed terms of the
 *    result, Hoeffding's inequality gives |error| <= lambda u sqrt(n_ops) M with probability
 *    >= 1 - 2 exp(-lambda^2/2), n_ops = the sum of the reduction lengths on the path. The
 *    assumption: each stage's terms are at the scale of the final ones (every block of the
 *    model reads an RMS-normed input). Two evaluations differ by at most twice that.
 *    zb_model_path_* give sqrt(n_ops) for a model from its config; M is computed from the
 *    data (zb_mag_*); a comparison passes when |got - ref| <= 2 ZB_LAMBDA u path M.
 *    Measured on the tests' models: the worst gradient error is ~1/5 of that bound, and the
 *    bound is small enough that a gradient scaled by 1 + 1e-3 fails (the tests check both). */
#define ZB_U32 0x1p-24
/* lambda of the probabilistic bound: 2 exp(-lambda^2/2) = 5e-7 */
#define ZB_LAMBDA 5.5
double zb_gamma32(double n);

/* Path lengths of a model's float32 arithmetic (config c, sequence length T, N = B T tokens):
 * sqrt of the sum of the reduction lengths on the longest path from the token ids to the
 * logits (fwd), and from the loss back to any parameter's gradient (bwd: the forward it
 * depends on, the loss, every layer's backward, the final sum over the N tokens).
 * Elementwise functions (exp, silu, rsqrt, softplus) count 1-2 roundings. */
double zb_model_path_fwd(const zb_config *c, int T);
/* The sum of reduction lengths (n_ops, before the square root) of one mixer over a sequence of
 * T, forward (fwd 1) or backward (fwd 0: the backward's own reductions on top of the forward's). */
double zb_ops_attn(int d, int H, int hd, int T, int fwd);
double zb_ops_mla(const zb_mla_dims *a, int d, int T, int fwd);
double zb_ops_mamba2(const zb_mamba2_dims *m, int d, int T, int fwd);
/* a block's two RMSNorms, residual adds and SwiGLU MLP (d -> F -> d), without the mixer */
double zb_ops_norms_mlp(int d, int F, int fwd);
double zb_model_path_bwd(const zb_config *c, int T, int N);

/* Magnitude of the summed terms of each logit, logits = lnf W^T:
 * mag[n,v] = sum_k |lnf[n,k]| |W[v,k]| (lnf [N,K], W [V,K]). */
void zb_mag_matmul(float *mag, const float *x, const float *w, int N, int V, int K);
/* Magnitude of the summed terms of each parameter's LM-loss gradient: the gradient is the
 * mean over the loss terms (next-token positions) of their gradients; one backward per term on
 * m (1 rank, its grad buffer is used and left zeroed) and mag[i] += sum_t |d loss_t/d p_i| / n.
 * ids [B*T]; mag has m->n_floats values. */
int zb_mag_lm_grad(zb_model *m, const int *ids, int B, int T, float *mag);
/* The same for the cross-entropy against explicit targets [B*T] (target < 0: no loss term). */
int zb_mag_ce_grad(zb_model *m, const int *ids, const int *targets, int B, int T, float *mag);

/* 2 lambda u path: the bound per unit of magnitude of two float32 evaluations along path */
double zb_bound_scale(double path);
/* One tensor (a parameter's gradient) against its reference: err = max|got - ref|, bound =
 * zb_bound_scale(path) * max(mag). *ratio = err / bound; *sensitive = 1 when the bound would
 * catch ref scaled by 1 + 1e-3 (the bound is below 1e-3 max|ref|). Returns err <= bound. */
int zb_tensor_within(const float *got, const float *ref, const float *mag, size_t n, double path, double *ratio,
                     int *sensitive);

/* The LM head of m as float32 [V, d] (a copy, malloc'd; from bf16 storage when held so). */
float *zb_test_head_f32(const zb_model *m);

/* Greedy continuation of the prompt p[np] on m with its cache, against want[ng]. At the first
 * token that differs, the two candidates' logits are compared: within both logits' float32
 * bounds (forward path, magnitudes |lnf| |head|) it is a tie up to rounding, not an error, and
 * the continuations part there. head: the LM head's values in f32 [V, d]. Returns 1 when every
 * token matches, 2 for such a tie, 0 otherwise; *matched = tokens equal before that. */
int zb_greedy_check(const zb_model *m, const float *head, const int *p, int np, const int *want, int ng, int *matched);

/* max_i |got_i - ref_i| <= bound; prints err, bound and their ratio. */
int zb_check_bound(const char *what, const float *got, const float *ref, size_t n, double bound);
/* |got_i - ref_i| <= scale * mag_i for every i; prints the worst ratio. */
int zb_check_elem_bound(const char *what, const float *got, const float *ref, const float *mag, size_t n,
                        double scale);
/* max of |x_i| */
double zb_max_abs(const float *x, size_t n);

/* ---- finite differences ------------------------------------------------------------------
 * A central difference D_h = (f(p + h) - f(p - h)) / 2h errs by h^2 f'''/6 + O(h^4) (truncation)
 * plus the rounding of f: each evaluation off by at most ef gives ef / h. D_2h's truncation
 * error is 4 times D_h's, so |D_2h - D_h| / 3 estimates D_h's (Richardson extrapolation).
 * zb_fd_grad gives num = D_h and its bound tol = 2 |D_2h - D_h| / 3 + 2 ef / h (2x on the
 * estimate for the O(h^4) terms it leaves out; the rounding of D_2h's evaluations counted
 * too). The steps are those float32 takes (fl(p + h) - p). f returns the loss (in double). */
typedef double (*zb_loss_fn)(void *ctx);
void zb_fd_grad(zb_loss_fn f, void *ctx, float *p, size_t n, double h, double ef, float *num, float *tol);
/* The float32 error of one evaluation of L = sum_i out_i R_i (summed in double) when each
 * out_i has summed terms of magnitude mag_i along n_ops: lambda u sqrt(n_ops) ||R o mag||_2
 * (all the roundings behind L as one Hoeffding sum, see above). */
double zb_loss_ef(const float *R, const float *mag, size_t n, double n_ops);
/* An analytic gradient against central differences: ||an - num||_2 <= ||tol||_2 + abound,
 * abound the analytic gradient's own float32 bound (2-norm). */
int zb_check_fd(const char *what, const float *an, const float *num, const float *tol, size_t n, double abound);

/* Fail the test binary with the current zb_errmsg() if rc != 0. */
#define ZB_TEST_OK(expr) do { int rc_ = (expr); if (rc_) { \
    fprintf(stderr, "FATAL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #expr, rc_, zb_errmsg()); \
    zb_check(0, "%s", #expr); return zb_test_finish(); } } while (0)

/* A test model source: an HF directory or .h5 (loaded), or a config .json (random weights,
 * seed 7, std 0.08). zb_test_src_is_config: 1 for the .json form. */
int zb_test_src_is_config(const char *src);
int zb_test_load_model(zb_model *m, const char *src);

#endif
